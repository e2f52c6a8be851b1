# Host name lookups without a thread in the host process.
#
# A thread would make every later os.fork() of the program a "multi-threaded fork"
# (Python 3.12+ warns, and raises under -W error), so the lookup runs in a child
# interpreter started with posix_spawn (no fork of the host: no warning, no at-fork
# hooks): ``python -I -S`` never loads site, so popcon-site never activates in it.
# The child answers on a pipe and keeps the answer in a per-user cache file,
# ``<user cache>/resolved/<host>``, which the next processes read instead.
#
# Loaded at exit (or at a checkpoint, straight from its file) only when the statsd
# host is a name.  It imports only ``_socket``, which sending needs anyway, and
# ``select`` in a process that waits for a child.

import _socket
import os
import sys

import popcon_site

TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import ModuleType

    Address = tuple[int, tuple[object, ...]]  # (address family, sockaddr)

FORMAT = "popcon-site-resolved 1"
# An entry this young is used without asking again: a statsd host moved to a new
# address loses at most 5 minutes of counts, and a machine running 1000 processes a
# minute starts one lookup per 5 minutes instead of 1000.
FRESH_FOR = 300.0
# "Does not resolve" is kept for less: a name just added to DNS counts within a minute.
FAILED_FOR = 60.0
# The child gives up (SIGALRM) after this long; a lookup marker older than it is dead.
CHILD_LIMIT = 10
MAX_ENTRY_BYTES = 1024  # a real entry is < 100 bytes
ANOTHER_LOOKUP = "a lookup started by another process"
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-.")
# The child's whole program: the package's directory comes after the standard library's.
CHILD_CODE = (
    "import sys; sys.path.append(sys.argv[1]); "
    "from popcon_site._resolve import child_main; child_main(sys.argv[2:])"
)


class Entry:
    # One cached answer: the address (port 0), or None for "does not resolve".
    __slots__ = ("address", "resolved_at")

    def __init__(self, address: "Address | None", resolved_at: float) -> None:
        self.address = address
        self.resolved_at = resolved_at

    def age(self, now: float) -> float:
        return now - self.resolved_at

    def fresh(self, now: float) -> bool:
        # A clock set back makes an entry "from the future": stale, asked again.
        limit = FRESH_FOR if self.address is not None else FAILED_FOR
        return 0 <= self.age(now) < limit


def lookup(host: str) -> "Address | None":
    # Blocking lookup; IPv4 first (the statsd client's default family), then IPv6.
    try:
        infos = _socket.getaddrinfo(host.encode("ascii"), None, 0, _socket.SOCK_DGRAM)
    except (OSError, UnicodeError, ValueError):
        return None
    for wanted in (_socket.AF_INET, _socket.AF_INET6):
        for family, _type, _proto, _name, sockaddr in infos:
            if family == wanted:
                return (family, tuple(sockaddr))
    return None


def with_port(address: "Address", port: int) -> "Address":
    family, sockaddr = address
    return (family, (sockaddr[0], port, *sockaddr[2:]))


# -- the cache file ---------------------------------------------------------------


def resolved_dir(cache_dir: str) -> str:
    return os.path.join(cache_dir, "resolved")


def entry_name(host: str) -> str:
    # The host name itself when it is a plain DNS name (``status`` readers see it),
    # else a hash of it: a name never picks a path of its own.
    name = host.lower()
    if 0 < len(name) <= 253 and set(name) <= _NAME_CHARS and name[0] not in ".-":
        return name
    return "h-" + str(_index().file_name(host))[:-4]


def to_text(host: str, entry: Entry) -> str:
    return f"{FORMAT}\n{host}\n{entry.resolved_at!r}\n{address_text(entry.address)}\n"


def address_text(address: "Address | None") -> str:
    # "<family> <ip> <IPv6 scope id>", or "none" for a name that does not resolve.
    if address is None:
        return "none"
    family, sockaddr = address
    scope = sockaddr[3] if family == _socket.AF_INET6 and len(sockaddr) > 3 else 0
    return f"{family} {sockaddr[0]} {scope}"


def parse_address(text: str) -> "tuple[bool, Address | None]":
    # (well formed, address); "none" is well formed and no address.
    if text == "none":
        return True, None
    parts = text.split(" ")
    if len(parts) != 3 or not parts[0].isdigit() or not parts[2].isdigit():
        return False, None
    family, ip, scope = int(parts[0]), parts[1], int(parts[2])
    if family not in (_socket.AF_INET, _socket.AF_INET6):
        return False, None
    try:
        _socket.inet_pton(family, ip)
    except (OSError, ValueError):
        return False, None
    if family == _socket.AF_INET:
        return True, (family, (ip, 0))
    return True, (family, (ip, 0, 0, scope))


def read_entry(cache_dir: str, host: str) -> "tuple[Entry | None, str]":
    # (entry, "") or (None, why there is none usable); the file is hostile input.
    path = os.path.join(resolved_dir(cache_dir), entry_name(host))
    data, why = _index().read_trusted(path, {os.geteuid()}, MAX_ENTRY_BYTES)
    if data is None:
        return None, why if os.path.lexists(path) else "none yet"
    lines = data.decode("ascii", "replace").split("\n")
    # Names are case-insensitive: "VM" and "vm" share one entry (entry_name).
    if len(lines) != 5 or lines[0] != FORMAT or lines[1].lower() != host.lower() or lines[4]:
        return None, "refused: malformed"
    try:
        resolved_at = float(lines[2])
    except ValueError:
        return None, "refused: malformed"
    well_formed, address = parse_address(lines[3])
    if not well_formed or resolved_at != resolved_at:  # NaN
        return None, "refused: malformed"
    return Entry(address, resolved_at), ""


def save_entry(cache_dir: str, host: str, entry: Entry) -> bool:
    index = _index()
    directory = resolved_dir(cache_dir)
    if not (index.private_dir(cache_dir) and index.private_dir(directory)):
        return False
    data = to_text(host, entry).encode("ascii")
    return bool(index.write_atomically(directory, entry_name(host), data))


def _index() -> "ModuleType":
    # The cache file rules live with the index's (no import lock: see _sibling).
    return popcon_site._sibling("_index")


# -- the child that looks up ---------------------------------------------------------


def child_main(argv: "list[str]") -> None:
    # In the child: look up, answer on fd 3, keep the answer, drop the lookup marker.
    import _signal  # type: ignore[import-not-found]  # no stubs; signal would import enum
    import time

    _signal.signal(_signal.SIGALRM, _signal.SIG_DFL)  # the program may ignore it
    _signal.alarm(CHILD_LIMIT)  # a resolver that never answers: the child dies
    host, cache_dir = argv[0], argv[1]
    address = lookup(host)
    try:
        os.write(3, (address_text(address) + "\n").encode("ascii"))
        os.close(3)
    except OSError:
        pass  # the parent is gone: the cache is for the next process
    if cache_dir:
        save_entry(cache_dir, host, Entry(address, time.time()))
        _release_lookup(cache_dir, host)


def _marker(cache_dir: str, host: str) -> str:
    # A leading dot: never the name of an entry (entry_name).
    return os.path.join(resolved_dir(cache_dir), ".lookup-" + entry_name(host))


def _claim_lookup(cache_dir: "str | None", host: str, now: float) -> bool:
    # False when another process started a lookup of this name that may still answer:
    # a resolver that never answers then costs one child per CHILD_LIMIT, not one per
    # process.  No cache dir: nothing to share, every process asks.
    if cache_dir is None or not _index().private_dir(resolved_dir(cache_dir)):
        return True
    path = _marker(cache_dir, host)
    for _attempt in range(2):
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
            return True
        except FileExistsError:
            try:
                if 0 <= now - os.lstat(path).st_mtime < CHILD_LIMIT + 1:
                    return False
                os.unlink(path)  # its child died: claim it again
            except OSError:
                pass
        except OSError:
            return True
    return False


def _release_lookup(cache_dir: "str | None", host: str) -> None:
    if cache_dir:
        try:
            os.unlink(_marker(cache_dir, host))
        except OSError:
            pass


class Lookup:
    # A child looking a name up; wait() reads its answer from the pipe.
    __slots__ = ("pid", "reader")

    def __init__(self, pid: int, reader: int) -> None:
        self.pid = pid
        self.reader = reader

    def wait(self, timeout: float) -> "tuple[bool, Address | None]":
        # (answered, address) within ``timeout`` seconds; the pipe is closed either way.
        import select  # ~0.3 ms, only in a process that starts a lookup
        import time

        deadline = time.monotonic() + timeout
        answer = b""
        try:
            while not answer.endswith(b"\n"):
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not select.select([self.reader], [], [], remaining)[0]:
                    return False, None
                chunk = os.read(self.reader, 256)
                if not chunk:
                    break
                answer += chunk
        except (OSError, ValueError):
            return False, None
        finally:
            os.close(self.reader)
        well_formed, address = parse_address(answer.decode("ascii", "replace").strip())
        return well_formed, address


def start_lookup(host: str, cache_dir: "str | None", now: float) -> "Lookup | str":
    # A child looking ``host`` up, or why none was started.
    executable = sys.executable
    if not os.path.basename(executable).startswith(("python", "pypy")):
        return "no Python interpreter to look it up with"  # embedded: sys.executable is the app
    if not hasattr(os, "posix_spawn"):
        return "no posix_spawn here"
    if not _claim_lookup(cache_dir, host, now):
        return ANOTHER_LOOKUP
    package = os.path.dirname(os.path.dirname(os.path.abspath(popcon_site.__file__)))
    argv = [executable, "-I", "-S", "-c", CHILD_CODE, package, host, cache_dir or ""]
    try:
        reader, writer = os.pipe()  # both close-on-exec: the child gets a dup as fd 3
    except OSError as exc:
        _release_lookup(cache_dir, host)
        return f"cannot start a lookup: {exc}"
    try:
        actions = _file_actions(writer)
        # setsid: the terminal's Ctrl-C and hang-up are the program's; no signal blocked.
        pid = os.posix_spawn(
            executable, argv, os.environ, file_actions=actions, setsid=True, setsigmask=()
        )
    except Exception as exc:
        os.close(reader)
        _release_lookup(cache_dir, host)
        return f"cannot start a lookup: {exc}"
    finally:
        os.close(writer)
    return Lookup(pid, reader)


def _file_actions(writer: int) -> "list[tuple[object, ...]]":
    # stdin/stdout/stderr on /dev/null, the pipe as fd 3, none of the program's files:
    # an inherited pipe end the child kept would tell the program's own parent late
    # that the program ended.  Closed in the child only.
    null = os.devnull
    actions: list[tuple[object, ...]] = [
        (os.POSIX_SPAWN_OPEN, 0, null, os.O_RDONLY, 0),
        (os.POSIX_SPAWN_OPEN, 1, null, os.O_WRONLY, 0),
        (os.POSIX_SPAWN_OPEN, 2, null, os.O_WRONLY, 0),
        (os.POSIX_SPAWN_DUP2, writer, 3),
    ]
    closefrom = getattr(os, "POSIX_SPAWN_CLOSEFROM", None)  # Python 3.13+
    if closefrom is not None:
        actions.append((closefrom, 4))
        return actions
    fd_dir = "/proc/self/fd" if os.path.isdir("/proc/self/fd") else "/dev/fd"
    for name in os.listdir(fd_dir):  # the program's inheritable files, if any
        fd = int(name)
        if fd > 3 and fd != writer and _inheritable(fd):
            actions.append((os.POSIX_SPAWN_CLOSE, fd))
    return actions


def _inheritable(fd: int) -> bool:
    try:
        return os.get_inheritable(fd)
    except OSError:  # the listing's own descriptor, closed since
        return False


# -- what a reporting process does ------------------------------------------------------


def address_for(host: str, may_start: bool, timeout: float) -> "tuple[Address | None, str]":
    # (address with port 0, "") or (None, why not).  A fresh entry is used; a stale one
    # is used and a lookup is started for the next process; with no entry a lookup is
    # started and waited for, at most ``timeout``.  may_start=False (inside the
    # program's work: a child would send it SIGCHLD) only reads the cache.
    import time

    cache_dir = _index().user_cache_dir()
    now = time.time()
    entry = None if cache_dir is None else read_entry(cache_dir, host)[0]
    if entry is not None and (entry.fresh(now) or not may_start):
        return entry.address, "" if entry.address else "does not resolve (cached)"
    if not may_start:
        return None, "no cached address yet"
    reap_children()
    started = start_lookup(host, cache_dir, now)
    if entry is not None and entry.address is not None:
        if isinstance(started, Lookup):
            # Not waited for: the child's answer meets a closed pipe (EPIPE, ignored
            # by Python) and still goes to the cache.
            os.close(started.reader)
            _children.append(started.pid)
        return entry.address, ""
    if started == ANOTHER_LOOKUP and cache_dir is not None:
        entry = wait_for_entry(cache_dir, host, timeout)
        if entry is None:
            return None, f"{ANOTHER_LOOKUP} did not answer within {timeout:g} s"
        return entry.address, "" if entry.address else "does not resolve"
    if isinstance(started, str):
        return None, started
    answered, address = started.wait(timeout)
    _children.append(started.pid)
    if not answered:
        return None, f"the lookup did not answer within {timeout:g} s"
    return address, "" if address else "does not resolve"


def wait_for_entry(cache_dir: str, host: str, timeout: float) -> "Entry | None":
    # A fresh entry written by another process's lookup child within ``timeout``:
    # processes started together all wait for the one lookup, at most the budget.
    import time

    deadline = time.monotonic() + timeout
    while True:
        entry = read_entry(cache_dir, host)[0]  # ~20 us
        if entry is not None and entry.fresh(time.time()):
            return entry
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        time.sleep(min(0.005, remaining))


# Lookup children that answered (or were not waited for) and may not have exited yet:
# a kernel, which starts lookups after cells, must not collect zombies.
_children: "list[int]" = []


def reap_children() -> None:
    for pid in list(_children):
        try:
            done = os.waitpid(pid, os.WNOHANG)[0] == pid
        except OSError:  # the program reaped it (its own wait()), or ignores SIGCHLD
            done = True
        if done:
            _children.remove(pid)
