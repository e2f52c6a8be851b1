"""Turn the configured host into a socket address without ever blocking exit for long.

IP literals and ``localhost`` are decided here without the resolver.  Any other
name is looked up in a background thread started at activation, because a
resolver that never answers must not hold the process at exit, and Python
3.12+ refuses to start threads once exit has begun.  The report waits for the
answer at most the remaining exit budget.
"""

from __future__ import annotations

import _thread

TYPE_CHECKING = False
if TYPE_CHECKING:
    Address = tuple[int, tuple[object, ...]]  # (address family, sockaddr)


def literal_address(host: str, port: int) -> Address | None:
    """The address of an IP literal or ``localhost``; None when a lookup is needed.

    ``localhost`` means 127.0.0.1, as the ``statsd`` client (IPv4 by default)
    and the earlier popularity-contest resolved it; skipping the resolver for it
    saves ~2 ms per process.
    """
    import _socket

    if host == "localhost":
        return (_socket.AF_INET, ("127.0.0.1", port))
    try:
        _socket.inet_pton(_socket.AF_INET, host)
        return (_socket.AF_INET, (host, port))
    except (OSError, ValueError):
        pass
    try:
        _socket.inet_pton(_socket.AF_INET6, host)
        return (_socket.AF_INET6, (host, port, 0, 0))
    except (OSError, ValueError):
        return None


def lookup(host: str, port: int) -> Address | None:
    """Blocking lookup; IPv4 first (the statsd client's default family), then IPv6."""
    import _socket

    try:
        infos = _socket.getaddrinfo(host, port, 0, _socket.SOCK_DGRAM)
    except (OSError, UnicodeError, ValueError):
        return None
    for wanted in (_socket.AF_INET, _socket.AF_INET6):
        for family, _type, _proto, _name, sockaddr in infos:
            if family == wanted:
                return (family, sockaddr)
    return None


class Resolution:
    """A host name being looked up in a daemon thread."""

    __slots__ = ("_done", "address", "host", "port")

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.address: Address | None = None
        self._done = _thread.allocate_lock()
        self._done.acquire()
        _thread.start_new_thread(self._run, ())

    def _run(self) -> None:
        try:
            self.address = lookup(self.host, self.port)
        except BaseException:
            pass
        finally:
            self._done.release()

    def wait(self, timeout: float) -> Address | None:
        """The address, or None if unknown within ``timeout`` seconds."""
        if self._done.acquire(True, max(timeout, 0.0)):
            self._done.release()
        return self.address

    def for_child(self) -> Resolution:
        """After fork the thread is gone: keep a finished answer, else ask again."""
        if self.address is not None:
            return self
        return Resolution(self.host, self.port)


def start(host: str, port: int) -> Resolution:
    return Resolution(host, port)
