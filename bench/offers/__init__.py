"""The offer-throughput suite: how far one mesa master goes.

``python -m bench.offers`` starts a real master in its own OS process, many real agents (with a
simulated containerizer, :mod:`bench.offers.sim`) in several agent processes, and frameworks
written on the real scheduler SDK in framework processes (:mod:`bench.offers.worker`), and
measures the offer loop over a sweep of agents and frameworks (:mod:`bench.offers.run`). See
``docs/bench.md`` for what each figure means and the latest results.
"""
