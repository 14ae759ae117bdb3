"""Loopback ports for tests that need an address where nothing listens, or that restart something
at the address it had.

Such a port is taken below the kernel's ephemeral range. A socket reconnecting to a closed port
in that range can be handed the very same port as its own source port and, on loopback, connect
to itself (TCP self-connect): the port is then taken, a restart there waits in vain, and a
connection there is made rather than refused. Source ports come from the ephemeral range, so a
port below it cannot be taken that way.
"""

from __future__ import annotations

import contextlib
import random
import socket
from pathlib import Path

__all__ = ["port_free", "quiet_port", "quiet_ports"]


def _ephemeral_low() -> int:
    with contextlib.suppress(OSError, ValueError, IndexError):
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    return 32768


def quiet_ports() -> list[int]:
    """Candidate ports below the ephemeral range, in random order (to bind at once, and try the
    next if another process was quicker)."""
    low = _ephemeral_low()
    ports = list(range(max(1024, low - 12000), low))
    random.shuffle(ports)
    return ports[:200]


def quiet_port() -> int:
    """A port below the ephemeral range where nothing listens now."""
    for port in quiet_ports():
        if port_free(port):
            return port
    raise RuntimeError("no free port below the ephemeral range")


def port_free(port: int) -> bool:
    """Whether a listening socket could bind 127.0.0.1:``port`` now (nothing listens there)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True
