"""Actor addresses.

A UPID names one actor anywhere: ``id@host:port``. The ``host:port`` part is the address of the
runtime the actor lives in (its ZeroMQ endpoint, or its name on an in-memory network), so two
UPIDs with the same address are served by the same runtime.
"""

from __future__ import annotations

from typing import Any

__all__ = ["UPID", "UPIDError"]


class UPIDError(ValueError):
    """A string that is not a well-formed ``id@host:port``."""


class UPID:
    """An actor's address. Immutable, hashable, ordered by its text form."""

    __slots__ = ("_hash", "_str", "address", "host", "id", "port")

    id: str
    host: str
    port: int
    address: str
    _str: str
    _hash: int

    def __init__(self, id: str, host: str, port: int) -> None:
        if not id or "@" in id or "/" in id:
            raise UPIDError(f"bad actor id {id!r}: must be non-empty without '@' or '/'")
        if not host or (":" in host and not host.startswith("[")):
            raise UPIDError(f"bad host {host!r}")
        if not isinstance(port, int) or not 0 <= port <= 65535:
            raise UPIDError(f"bad port {port!r}: must be an integer in 0..65535")
        address = f"{host}:{port}"
        text = f"{id}@{address}"
        object.__setattr__(self, "id", id)
        object.__setattr__(self, "host", host)
        object.__setattr__(self, "port", port)
        object.__setattr__(self, "address", address)
        object.__setattr__(self, "_str", text)
        object.__setattr__(self, "_hash", hash(text))

    @classmethod
    def parse(cls, text: str) -> UPID:
        """Parse ``id@host:port``; raises :class:`UPIDError` naming what is wrong."""
        if isinstance(text, UPID):
            return text
        if not isinstance(text, str):
            raise UPIDError(f"a UPID is a string 'id@host:port', not {type(text).__name__}")
        ident, sep, address = text.rpartition("@")
        if not sep or not ident:
            raise UPIDError(f"bad UPID {text!r}: expected 'id@host:port'")
        host, sep, port_text = address.rpartition(":")
        if not sep or not host:
            raise UPIDError(f"bad UPID {text!r}: expected 'host:port' after '@'")
        # isascii(): str.isdigit() also accepts '²' (int() refuses it) and other scripts' digits
        # (int() reads them, so the UPID would not print back as the text it came from).
        if not (port_text.isascii() and port_text.isdigit()):
            raise UPIDError(f"bad UPID {text!r}: port {port_text!r} is not a number")
        try:
            return cls(ident, host, int(port_text))
        except UPIDError as e:
            raise UPIDError(f"bad UPID {text!r}: {e}") from None

    def with_id(self, id: str) -> UPID:
        """Another actor in the same runtime."""
        return UPID(id, self.host, self.port)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("UPID is immutable")

    def __str__(self) -> str:
        return self._str

    def __repr__(self) -> str:
        return f"UPID({self._str!r})"

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        if isinstance(other, UPID):
            return self._str == other._str
        return NotImplemented

    def __lt__(self, other: UPID) -> bool:
        return self._str < other._str

    def __reduce__(self) -> tuple[Any, ...]:
        return (UPID, (self.id, self.host, self.port))
