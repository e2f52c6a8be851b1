"""Host name lookup that can never hold the process at exit.

Imported at start-up only when the configured host is a name (not
``localhost``, not an IP literal).  The lookup runs in a daemon thread started
at activation, because a resolver that never answers must not delay exit, and
Python 3.12+ refuses to start threads once exit has begun.  The report waits
for the answer at most its network budget.
"""

import _socket  # imported by the activating thread: the lookup thread imports nothing
import _thread

TYPE_CHECKING = False
if TYPE_CHECKING:
    Address = tuple[int, tuple[object, ...]]  # (address family, sockaddr)


def lookup(host: str, port: "int | None" = None) -> "Address | None":
    """Blocking lookup; IPv4 first (the statsd client's default family), then IPv6."""
    try:
        # bytes: a str host is encoded with the "idna" codec, whose first use imports
        # encodings.idna, stringprep and unicodedata in this thread; a child forked
        # meanwhile inherits their import locks, held by a thread it does not have, and
        # hangs at its first import of any of them.
        infos = _socket.getaddrinfo(host.encode("ascii"), port, 0, _socket.SOCK_DGRAM)
    except (OSError, UnicodeError, ValueError):
        return None
    for wanted in (_socket.AF_INET, _socket.AF_INET6):
        for family, _type, _proto, _name, sockaddr in infos:
            if family == wanted:
                return (family, tuple(sockaddr))
    return None


class Resolution:
    """A host name being looked up in a daemon thread."""

    __slots__ = ("_done", "address", "host")

    def __init__(self, host: str) -> None:
        self.host = host
        self.address: Address | None = None
        self._done = _thread.allocate_lock()
        self._done.acquire()
        _thread.start_new_thread(self._run, ())

    def _run(self) -> None:
        try:
            self.address = lookup(self.host)
        except BaseException:
            pass
        finally:
            self._done.release()

    def wait(self, timeout: float) -> "Address | None":
        """The address (port 0), or None if unknown within ``timeout`` seconds."""
        if self._done.acquire(True, max(timeout, 0.0)):
            self._done.release()
        return self.address

    def for_child(self) -> "Resolution":
        """After fork the thread is gone: keep a finished answer, else ask again."""
        if self.address is not None:
            return self
        return Resolution(self.host)
