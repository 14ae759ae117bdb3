"""The transport seam: how frames get between runtimes.

A runtime hands its transport whole frames (a batch of messages to one peer address) and gets
frames back through two callbacks. Everything above this line — batching, decoding, validation,
links, back-pressure accounting — is shared, so the ZeroMQ transport and the in-memory one behave
the same way by construction.
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["Transport", "TransportEvents"]


class TransportEvents(Protocol):
    """What a transport calls back into (the runtime)."""

    def _on_frame(self, source: str, frame: bytes) -> None:
        """A frame arrived; ``source`` is the address the sending side declared."""

    def _read_begin(self) -> None:
        """A read callback starts handing over frames; call :meth:`_read_end` when it is done.

        Sends made in between (replies of handlers that ran inline) are held and leave at
        ``_read_end``, in the same loop turn, instead of a loop iteration later.
        """

    def _read_end(self) -> None:
        """The read callback has handed over everything it read."""

    def _on_bad_frame(self, kind: str, source: str, detail: str) -> None:
        """Something arrived that is not a frame at all (wrong number of parts, …)."""

    def _on_peer_down(self, address: str, after_goodbye: bool = False) -> None:
        """The peer at ``address`` died or became unreachable, or nothing listens there (a
        connection to it was refused). ``after_goodbye``: refused before any connection was
        made, on a connection opened after that address's goodbye was read."""

    def _on_writable(self, address: str) -> None:
        """A send that returned False may now be retried."""


class Transport(Protocol):
    """A way to move frames. ``start`` returns the address the runtime is reachable at."""

    #: How long a clean stop may wait for what is queued to leave and for peers to read its
    #: goodbye (see ``Runtime._say_goodbye``); 0 where frames and ends cannot be reordered.
    linger: float

    async def start(self, events: TransportEvents, host: str, port: int) -> str: ...

    def send(self, address: str, frame: bytes) -> bool:
        """Queue ``frame`` for ``address``; False when the peer cannot take it now (its queue
        is full, or no connection to it is made yet): ``_on_writable`` follows once it can, or
        ``_on_peer_down`` if it never will (a refused connection is the peer's end)."""

    def connecting(self, address: str) -> bool:
        """Whether frames for ``address`` wait for a first connection (so a refused ``send``
        is not back-pressure). Asked only after a refusal: it may cost more than a send."""

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    def ever_connected(self, address: str) -> bool:
        """Whether a connection to ``address`` was ever made; False for a dead address."""

    def refresh(self, address: str) -> None:
        """Take in what is known of the connection to ``address`` and not yet reported: an end
        found (``_on_peer_down``) is reported now rather than on a later loop turn."""

    def forget(self, address: str, flush: bool = False) -> None:
        """Drop the connection to ``address`` (the peer is dead, or said goodbye), and report
        nothing more of it: a later end is only reported for a new connection. ``flush``: let
        what was just sent to it (the answer to its goodbye) leave first, within ``linger``."""

    async def stop(self) -> None: ...

    def pending(self) -> int:
        """Frames on their way that ``settle`` should wait for (0 where they are invisible)."""
