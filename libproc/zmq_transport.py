"""ZeroMQ over TCP, driven straight off the sockets' file descriptors.

Each runtime binds one ROUTER for everything it receives and opens one DEALER per peer it sends
to, with the DEALER's routing id set to its own address so the receiver knows (and can check)
who a frame claims to come from. We do not use ``zmq.asyncio``: reading ``zmq.EVENTS`` off the
socket's fd in an ``add_reader`` callback and draining with non-blocking calls costs markedly less
per message (see ``bench/libproc_bench.py``).

Peer failure comes from three places: a socket monitor on each DEALER reports
``EVENT_DISCONNECTED`` as soon as the peer's process dies (the kernel resets the TCP connection),
and ``EVENT_CLOSED`` when a connection attempt fails (nothing listens there: see
``_MONITORED``); ZMTP heartbeats (``heartbeat_interval`` / ``heartbeat_timeout``) turn a silent
peer — a hung host, a cut network — into a disconnection too. A peer that stops cleanly is not
reported here: its runtime's goodbye, read on our ROUTER after everything it sent, is its end
(see ``Runtime._say_goodbye``), and we forget our DEALER to it, monitor and all (``forget``).
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

import zmq
import zmq.backend
from zmq.utils.monitor import parse_monitor_message

from libproc.log import get_logger
from libproc.transport import TransportEvents

__all__ = ["ZmqOptions", "ZmqTransport"]

log = get_logger("libproc.zmq")

# Plain ints: arithmetic on pyzmq's IntFlag constants costs about a microsecond a test.
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)
_RCVMORE = int(zmq.RCVMORE)
_NOBLOCK = int(zmq.NOBLOCK)
# The backend's send: zmq.Socket.send is a Python wrapper around it for draft-API arguments
# (routing_id, group) that a DEALER never takes, and costs a microsecond a message.
_send = zmq.backend.Socket.send
_READ_BUDGET = 1024  # frames per readable callback, so one busy peer cannot starve the loop
# A peer's end waits for at most this many more read passes while the ROUTER still holds frames
# (see _end_after_reading): enough for what one dead peer can have queued (recv_hwm frames) among
# other peers' frames, and a bound, so that peers that keep the ROUTER busy cannot hold it back.
_END_MAX_PASSES = 64


@dataclass
class ZmqOptions:
    heartbeat_interval: float = 1.0
    heartbeat_timeout: float = 3.0
    send_hwm: int = 1000  # frames (each frame is a batch of messages) queued inside ZeroMQ
    recv_hwm: int = 1000
    max_frame_size: int = 16 * 1024 * 1024
    reconnect_interval: float = 0.1
    linger: float = 1.0  # how long a graceful stop keeps trying to deliver what is queued


class _Peer:
    __slots__ = ("address", "blocked", "connected", "dealer", "end_passes", "excuse", "monitor")

    def __init__(self, address: str, dealer: zmq.Socket, monitor: zmq.Socket) -> None:
        self.address = address
        self.dealer = dealer
        self.monitor = monitor
        # Nothing is handed to ZeroMQ before the first connection is made (see _MONITORED):
        # until then the runtime keeps what it sends in its own queue, as for back-pressure.
        self.blocked = True
        self.connected = False  # a TCP connection was made at least once (and we saw it)
        self.end_passes = 0  # read passes its end has waited for (see _end_after_reading)
        # Opened to an address whose goodbye we read (see _MONITORED): 1 while its first
        # connection's end is not news, 2 once it has ended and ZeroMQ reconnects.
        self.excuse = 0


# What a DEALER's monitor reports. For each connection attempt that fails, libzmq 4.3 emits
# EVENT_CONNECT_DELAYED (the non-blocking connect is under way), EVENT_CLOSED (its socket closed
# without a connection: refused, unreachable, timed out) and EVENT_CONNECT_RETRIED (the next
# attempt is scheduled); after a connection's end, EVENT_DISCONNECTED then EVENT_CONNECT_RETRIED.
# So EVENT_CLOSED, and only it, says "a connection was tried and not made": nothing listens there
# (now). That is the peer's end, as a refused connect is in libprocess: its linkers are told at
# once rather than after link_timeout, and what waits for it is dropped, counted, rather than
# kept for a reconnection to whatever comes up at the address later. That is also why a DEALER
# takes no frames before its first connection (``_Peer.blocked``): they stay in the runtime's
# queue, where dropping them is counted, and none is left inside ZeroMQ to reach a runtime that
# comes up after the refusal. (A host that is there but silent, SYN dropped or hung, makes no
# such event for minutes: link_timeout and heartbeats cover it.)
#
# A DEALER opened to an address just after we read its runtime's goodbye (a reply sent in that
# read, say) can connect to that runtime, which waits for our answer before it closes: that
# connection's end is not news (the goodbye was), and reported late, after a new runtime took
# the address and we linked to it, it was taken for the new runtime's end (a false exited, and
# what we had queued for it dropped). Such a DEALER's first disconnection is therefore not
# reported: ZeroMQ reconnects, keeping what it holds, and the end is reported only if nothing
# listens there any more (the reconnection fails: EVENT_CLOSED). A new runtime that took the
# address and was the first to be reached, then crashed, is reported that way too, a
# reconnection interval later. The excuse covers a disconnection only: a first connection
# attempt that fails is the end, as for any DEALER.
_MONITORED = zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED | zmq.EVENT_CLOSED
_AFTER_GOODBYE_MAX = 10_000  # addresses remembered as having said goodbye (see forget)


class ZmqTransport:
    """One ROUTER in, one DEALER per peer out."""

    def __init__(self, options: ZmqOptions | None = None, context: zmq.Context | None = None):
        self.options = options or ZmqOptions()
        self._ctx = context or zmq.Context.instance()
        self._router: zmq.Socket | None = None
        self._peers: dict[str, _Peer] = {}
        self._events: TransportEvents | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._address = ""
        self._reading = False
        self._stopped = False
        self._frame_failures = 0
        # Addresses that said goodbye (forgotten with flush) and were not sent to since.
        self._after_goodbye: set[str] = set()
        self._sources: dict[bytes, str] = {}  # routing id -> the address it declares
        # Peers whose end came while reading was paused, or while the ROUTER still held frames
        # after a read pass: reported once what they sent is read (_end_after_reading).
        self._ends_held: dict[str, _Peer] = {}

    def pending(self) -> int:
        return 0  # frames inside ZeroMQ are not visible

    @property
    def linger(self) -> float:
        return self.options.linger

    async def start(self, events: TransportEvents, host: str, port: int) -> str:
        self._events = events
        self._loop = asyncio.get_running_loop()
        router = self._ctx.socket(zmq.ROUTER)
        router.setsockopt(zmq.LINGER, 0)
        router.setsockopt(zmq.ROUTER_HANDOVER, 1)
        router.setsockopt(zmq.RCVHWM, self.options.recv_hwm)
        # A hard guard far above the limit we count ourselves, so an absurd frame cannot make
        # ZeroMQ buffer gigabytes; frames between the two limits are counted as oversize.
        router.setsockopt(zmq.MAXMSGSIZE, 4 * self.options.max_frame_size + 4096)
        self._set_heartbeats(router)
        endpoint_host = f"[{host}]" if ":" in host else host
        try:
            if port == 0:
                router.bind(f"tcp://{endpoint_host}:*")
                endpoint = router.getsockopt(zmq.LAST_ENDPOINT).decode()
                port = int(endpoint.rsplit(":", 1)[1])
            else:
                router.bind(f"tcp://{endpoint_host}:{port}")
        except BaseException:
            # (A port in use, a bad host: the caller may retry, and each try must not leave a
            # socket open in the shared context.)
            router.close(linger=0)
            raise
        self._router = router
        self._address = f"{host}:{port}"
        self.resume_reading()
        return self._address

    def _set_heartbeats(self, sock: zmq.Socket) -> None:
        o = self.options
        sock.setsockopt(zmq.HEARTBEAT_IVL, int(o.heartbeat_interval * 1000))
        sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, int(o.heartbeat_timeout * 1000))
        sock.setsockopt(zmq.HEARTBEAT_TTL, int(o.heartbeat_timeout * 1000))

    # ------------------------------------------------------------------ receiving

    def pause_reading(self) -> None:
        if self._reading and self._router is not None:
            self._reading = False
            self._loop.remove_reader(self._router.FD)  # type: ignore[union-attr]

    def resume_reading(self) -> None:
        if not self._reading and self._router is not None and not self._stopped:
            self._reading = True
            self._loop.add_reader(self._router.FD, self._on_readable)  # type: ignore[union-attr]
            # The fd is edge-triggered: frames may already be waiting.
            self._loop.call_soon(self._on_readable)  # type: ignore[union-attr]
            if self._ends_held:
                self._loop.call_soon(self._report_held_ends)  # type: ignore[union-attr]

    def _on_readable(self) -> None:
        router = self._router
        if router is None or not self._reading:
            return
        events = self._events
        # Replies that handlers make while we read leave when the read is over (_read_end), in
        # this loop turn, coalesced per peer.
        events._read_begin()  # type: ignore[union-attr]
        try:
            self._read(router, events)  # type: ignore[arg-type]
        finally:
            events._read_end()  # type: ignore[union-attr]

    def _read(self, router: zmq.Socket, events: TransportEvents) -> None:
        get = router.get
        recv = router.recv
        sources = self._sources
        for i in range(_READ_BUDGET):
            # We are called because the fd woke, which (the ROUTER never sends) is nearly always
            # a frame arriving: try it straight away. After that, ask ZMQ_EVENTS rather than recv
            # until zmq.Again: raising Again costs more than a message. Either way a look that
            # finds nothing re-arms the edge-triggered fd (both process the socket's commands).
            if i and not get(_EVENTS) & _POLLIN:
                return
            try:
                # A ROUTER hands over the routing id and then at least one part (ZeroMQ has no
                # empty messages, and the parts of one arrive together), so RCVMORE is only
                # worth asking after the second part: whether a third follows.
                ident = recv(_NOBLOCK)
                frame = recv(_NOBLOCK)
                extra = 0
                while get(_RCVMORE):
                    recv(_NOBLOCK)
                    extra += 1
            except zmq.Again:
                return
            except zmq.ZMQError as e:  # pragma: no cover - socket closed under us
                log.warning("recv_failed", error=str(e))
                return
            if extra:
                events._on_bad_frame(
                    "bad_frames",
                    ident.decode("ascii", "replace"),
                    f"expected 1 frame after the routing id, got {extra + 1}",
                )
                continue
            source = sources.get(ident)
            if source is None:
                try:
                    source = ident.decode("ascii")
                except UnicodeDecodeError:
                    source = ident.hex()
                if len(sources) > 10_000:  # routing ids are the peers' to choose: bound them
                    sources.clear()
                sources[ident] = source
            try:
                events._on_frame(source, frame)
            except Exception as e:
                # Nothing a frame holds may stop this loop: the fd is edge-triggered, so frames
                # left unread after an escaping exception would never be read at all. The
                # traceback is logged once; the runtime counts every occurrence.
                if not self._frame_failures:
                    log.error("frame_failed", peer=source, error=repr(e), exc_info=e)
                self._frame_failures += 1
                events._on_bad_frame("internal_error", source, repr(e))
            if not self._reading:
                return
        if get(_EVENTS) & _POLLIN:
            self._loop.call_soon(self._on_readable)  # type: ignore[union-attr]

    # ------------------------------------------------------------------ sending

    def _peer(self, address: str) -> _Peer:
        peer = self._peers.get(address)
        if peer is not None:
            return peer
        o = self.options
        dealer = self._ctx.socket(zmq.DEALER)
        dealer.setsockopt(zmq.ROUTING_ID, self._address.encode())
        dealer.setsockopt(zmq.SNDHWM, o.send_hwm)
        dealer.setsockopt(zmq.LINGER, int(o.linger * 1000))
        dealer.setsockopt(zmq.RECONNECT_IVL, int(o.reconnect_interval * 1000))
        dealer.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
        self._set_heartbeats(dealer)
        after_goodbye = address in self._after_goodbye
        self._after_goodbye.discard(address)
        monitor = dealer.get_monitor_socket(_MONITORED)
        host, _, port = address.rpartition(":")
        host = f"[{host}]" if ":" in host and not host.startswith("[") else host
        dealer.connect(f"tcp://{host}:{port}")
        peer = _Peer(address, dealer, monitor)
        peer.excuse = 1 if after_goodbye else 0
        self._peers[address] = peer
        self._loop.add_reader(monitor.FD, self._on_monitor, peer, True)  # type: ignore[union-attr]
        # ZeroMQ's fd only signals a pipe going from empty to non-empty *after* a read found it
        # empty; without this first read, the first monitor event (the peer dying) never wakes
        # the loop and the disconnection goes unnoticed. It is the loop's next turn, not now:
        # on loopback a refused connection can already be news, and an end is not to be
        # reported from inside a send (the answer to a goodbye, say, whose peer is forgotten
        # right after: the refusal is not news then).
        self._loop.call_soon(self._on_monitor, peer, True)  # type: ignore[union-attr]
        return peer

    def send(self, address: str, frame: bytes) -> bool:
        if self._stopped:
            return True  # dropped: a stopped runtime opens no new connections
        peer = self._peers.get(address) or self._peer(address)
        if peer.blocked:  # (back-pressure, or no connection made yet)
            return False
        try:
            _send(peer.dealer, frame, _NOBLOCK)
            return True
        except zmq.Again:
            peer.blocked = True
            self._loop.add_reader(peer.dealer.FD, self._on_dealer_event, peer)  # type: ignore[union-attr]
            self._loop.call_soon(self._on_dealer_event, peer)  # type: ignore[union-attr]
            return False

    def _on_dealer_event(self, peer: _Peer) -> None:
        if not peer.blocked or peer.dealer.closed:
            return
        if peer.dealer.getsockopt(zmq.EVENTS) & zmq.POLLOUT:
            peer.blocked = False
            self._loop.remove_reader(peer.dealer.FD)  # type: ignore[union-attr]
            self._events._on_writable(peer.address)  # type: ignore[union-attr]

    def _on_monitor(self, peer: _Peer, drain: bool = False) -> None:
        """Take in the DEALER's connection events; ``drain`` (called by the loop, not from
        inside a send or a handler): read what the ROUTER holds before reporting the peer
        down, and let the runtime send at once what waited for a first connection."""
        if peer.monitor.closed:
            return
        down = opened = False
        while True:
            try:
                msg = peer.monitor.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            except zmq.ZMQError:
                break
            kind = parse_monitor_message(msg)["event"]
            if kind == zmq.EVENT_CONNECTED:
                if not peer.connected:
                    peer.connected = opened = True
                if peer.excuse == 2:
                    peer.excuse = 0  # reconnected: to whatever listens there now
            elif kind == zmq.EVENT_DISCONNECTED:
                if peer.excuse == 1:
                    peer.excuse = 2  # perhaps the runtime that said goodbye (see _Peer)
                else:
                    down = True
            elif kind == zmq.EVENT_CLOSED:
                # A connection attempt failed: nothing listens there (see _MONITORED). Also
                # when a later event says ZeroMQ has since connected to a runtime that came up
                # there: what we sent before was refused, and is not to reach it.
                down = True
        if self._peers.get(peer.address) is not peer:
            return  # forgotten: its end is reported, or not news
        if down:
            if drain:
                self._end_after_reading(peer)
            else:
                self._report_end(peer)
        elif opened:
            peer.blocked = False  # (the first connection: nothing was handed to ZeroMQ yet)
            if drain:
                self._events._on_writable(peer.address)  # type: ignore[union-attr]
            else:  # (from refresh, inside whatever the caller is doing: not now)
                self._loop.call_soon(self._writable, peer)  # type: ignore[union-attr]

    def _writable(self, peer: _Peer) -> None:
        if self._peers.get(peer.address) is peer:
            self._events._on_writable(peer.address)  # type: ignore[union-attr]

    def connecting(self, address: str) -> bool:
        """Whether frames for ``address`` wait for a first connection to it (``send`` refuses
        them until then, and that is not back-pressure)."""
        peer = self._peers.get(address)
        return peer is not None and not peer.connected

    def _end_after_reading(self, peer: _Peer) -> None:
        """What the peer sent before it went away (its last replies, the exited notices of a
        graceful stop) comes on its own connection, to our ROUTER, and may be there unread: it
        is read first, so that the news of the peer's end does not overtake it. While reading
        is paused (back-pressure) that read waits, and so does the end (``resume_reading``).

        One read pass takes at most ``_READ_BUDGET`` frames; when the ROUTER still holds some
        after it, the end waits for the next pass too (scheduled after it, as the pass itself
        schedules the next read), up to ``_END_MAX_PASSES`` passes. Frames that ZeroMQ's I/O
        thread has yet to hand to the ROUTER cannot be waited for here: that is why a runtime
        that stops cleanly says goodbye after its last frame and waits for it to be read
        (``Runtime._say_goodbye``); reading it, the runtime reports the end and forgets the
        peer, and a disconnection seen after that is not reported."""
        try:
            self._on_readable()
        except BaseException:
            # The monitor's event is consumed: an end not reported now never would be, and
            # links to the peer would wait for ever.
            self._report_end(peer)
            raise
        if self._peers.get(peer.address) is not peer:
            return  # forgotten while we read (its goodbye was among the frames): reported
        if self._stopped:
            self._report_end(peer)
        elif not self._reading:
            self._ends_held[peer.address] = peer
        elif peer.end_passes < _END_MAX_PASSES and self._router.get(_EVENTS) & _POLLIN:  # type: ignore[union-attr]
            peer.end_passes += 1
            self._ends_held[peer.address] = peer
            self._loop.call_soon(self._report_held_ends)  # type: ignore[union-attr]
        else:
            self._report_end(peer)

    def _report_held_ends(self) -> None:
        held, self._ends_held = self._ends_held, {}
        for peer in held.values():
            if self._peers.get(peer.address) is peer:  # (not forgotten meanwhile)
                self._end_after_reading(peer)

    def _report_end(self, peer: _Peer) -> None:
        if self._peers.get(peer.address) is peer:
            self.forget(peer.address)
            # Still excused and never connected: refused before it reached anything, having been
            # opened after the address's goodbye (that was the end of the runtime we knew).
            after_goodbye = peer.excuse == 1 and not peer.connected
            self._events._on_peer_down(peer.address, after_goodbye)  # type: ignore[union-attr]

    def ever_connected(self, address: str) -> bool:
        """Whether a connection to ``address`` was ever made (it may be down now)."""
        self.refresh(address)
        peer = self._peers.get(address)
        return peer is not None and peer.connected

    def refresh(self, address: str) -> None:
        """Take in the DEALER's events not read yet (the loop reads them a turn later, or more
        when busy): an end among them is reported now, before anything that follows."""
        peer = self._peers.get(address)
        if peer is not None:
            self._on_monitor(peer)

    def forget(self, address: str, flush: bool = False) -> None:
        """Close our DEALER to ``address`` with its monitor, whose events are then never read:
        an end already reported (or said in a goodbye) is not reported again.

        ``flush``: the answer to a goodbye was just sent on it. A DEALER that has a connection
        is closed with a linger shorter than ``reconnect_interval``: long enough for the answer
        to leave on that connection, too short for ZeroMQ to make another (it waits at least
        that interval before reconnecting). One that never connected is closed at once: the
        peer does not wait for our answer (it waits only for runtimes whose actors linked to
        its own, and those have a connection to it). A DEALER closed with the full linger could
        reconnect, out of our sight, to a new runtime at that address; if we also open a DEALER
        to that runtime, the two share our routing id, its ROUTER hands the id to the latest
        connection, and what the other one carries is never read."""
        peer = self._peers.pop(address, None)
        self._ends_held.pop(address, None)
        if flush:
            if len(self._after_goodbye) >= _AFTER_GOODBYE_MAX:
                self._after_goodbye.clear()
            self._after_goodbye.add(address)
        if peer is None:
            return
        linger = 0.0
        if flush:
            self._on_monitor(peer)  # (takes in whether it has connected; reports nothing now)
            if peer.connected:
                linger = min(self.options.linger, self.options.reconnect_interval / 2)
        self._close_peer(peer, linger=int(linger * 1000))

    def _close_peer(self, peer: _Peer, linger: int | None) -> None:
        loop = self._loop
        with contextlib.suppress(Exception):
            loop.remove_reader(peer.monitor.FD)  # type: ignore[union-attr]
        if peer.blocked:
            with contextlib.suppress(Exception):
                loop.remove_reader(peer.dealer.FD)  # type: ignore[union-attr]
        with contextlib.suppress(zmq.ZMQError):
            peer.dealer.disable_monitor()
        peer.monitor.close(linger=0)
        peer.dealer.close(linger=linger)

    async def stop(self) -> None:
        if self._stopped:
            return
        self.pause_reading()
        self._stopped = True
        # Give queued frames (exited notices, last replies) a moment to leave.
        deadline = self._loop.time() + self.options.linger  # type: ignore[union-attr]
        peers = list(self._peers.values())
        self._peers.clear()
        for peer in peers:
            remaining = max(0, int((deadline - self._loop.time()) * 1000))  # type: ignore[union-attr]
            self._close_peer(peer, linger=remaining)
        if self._router is not None:
            self._router.close(linger=0)
            self._router = None
