# Records: what a running process imports, kept where a kill cannot lose it (issue 22).
#
# At its first import of a top-level module outside the standard library, an enabled
# process creates its record: a file in a user-only directory on node-local memory
# ($XDG_RUNTIME_DIR/popcon-site, else /dev/shm/popcon-site-<uid>), locked with
# os.lockf() for the life of the process (the kernel releases the lock at death, and a
# fork child does not inherit it), mapped in memory with mmap.  The watcher then notes
# each new top-level name with one slice assignment into the map (no system call);
# checkpoints note what they are about to send.  A normal exit unlinks the record before
# it sends, so nothing is ever sent twice; a killed process leaves its record, and a
# sweeper whose lock attempt succeeds knows the process is dead: it attributes the names
# in the dead process's environment (its sys.path, site directories, extension suffixes
# and configuration, all in the record) and sends what the exit report would have sent.
#
# Loaded by popcon_site._sibling() (no import system) inside an import; imports only
# what the interpreter has loaded already, bar mmap (~0.3 ms, once per recording
# process, and only while no thread is importing it).  The sweeper half loads
# _report and _attribution, like the exit report.

import os
import sys
from _thread import allocate_lock  # built in, loaded by importlib already
from time import monotonic  # loaded already: popcon_site imports it

import popcon_site

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Any

    from popcon_site import Session
    from popcon_site._attribution import Attributor

MAGIC = "popcon-site record 1\n"
SUFFIX = ".rec"
START_SIZE = 1 << 14  # tmpfs allocates pages as they are written: 4 KiB for most
MAX_SIZE = 1 << 20  # a record never grows past this; a larger file is refused
SWEEP_AT_EXIT = 2  # dead records an exiting process sends at most (~1 ms each, warm)
LOOK_AT_EXIT = 32  # records an exiting process tries to lock at most
RANK_VARIABLES = ("PMI_RANK", "PMIX_RANK", "OMPI_COMM_WORLD_RANK", "SLURM_PROCID")


def directories(uid: "int | None" = None) -> "list[str]":
    # Where this user's records may be, the one records are created in first.
    uid = os.getuid() if uid is None else uid
    found = []
    runtime = os.environ.get("XDG_RUNTIME_DIR", "")
    if os.path.isabs(runtime):
        found.append(os.path.join(runtime, "popcon-site"))
    run_user = f"/run/user/{uid}/popcon-site"
    if run_user not in found:
        found.append(run_user)
    found.append(f"/dev/shm/popcon-site-{uid}")
    return found


def usable(directory: str, create: bool) -> bool:
    # A directory of ours, 0700, not a symlink; created (0700) when asked.
    if create:
        try:
            os.mkdir(directory, 0o700)
        except OSError:
            pass
    try:
        st = os.lstat(directory)
    except OSError:
        return False
    is_dir = (st.st_mode & 0o170000) == 0o040000
    return is_dir and st.st_uid == os.geteuid() and (st.st_mode & 0o077) == 0


def _stdlib_names() -> "frozenset[str]":
    names = getattr(sys, "stdlib_module_names", None)
    if names is not None:
        return frozenset(names)
    # 3.9: the names the standard library's directories hold (listed once per process).
    found = set(sys.builtin_module_names)
    stdlib = popcon_site_stdlib()
    for directory in (stdlib, os.path.join(stdlib or "", "lib-dynload")):
        try:
            listing = os.listdir(directory) if directory else []
        except OSError:
            continue
        found.update(entry.partition(".")[0] for entry in listing if entry != "site-packages")
    return frozenset(found)


def popcon_site_stdlib() -> "str | None":
    directory = getattr(sys, "_stdlib_dir", None)
    if not directory:
        os_file = getattr(os, "__file__", None)
        directory = os.path.dirname(os_file) if os_file else None
    return directory


_STDLIB: "frozenset[str] | None" = None


class Record:
    # This process's record, open, locked and mapped.
    __slots__ = ("fd", "lock", "map", "path", "pid", "pos", "size", "written")

    def __init__(self, fd: int, path: str, mapped: "Any", size: int) -> None:
        self.fd, self.path, self.map, self.size = fd, path, mapped, size
        self.pos = 0
        self.written: set[str] = set()
        self.pid = os.getpid()
        self.lock = allocate_lock()

    def add(self, name: str) -> None:
        # The watcher's note for a new top-level name (the hot path: ~0.3 us).
        if name not in self.written and name not in _STDLIB:  # type: ignore[operator]
            self.written.add(name)  # a failed import tried in a loop is written once
            self.write(name + "\n")

    def write(self, text: str) -> None:
        data = text.encode("utf-8", "backslashreplace")
        # Threads hold it for a microsecond; held by this very thread (a signal handler
        # that imports, run inside this method), the name is dropped after 10 ms, never
        # a hang.
        if not self.lock.acquire(True, 0.01):
            return
        try:
            end = self.pos + len(data)
            if end > self.size and not self._grow(end):
                return
            self.map[self.pos : end] = data
            self.pos = end
        finally:
            self.lock.release()

    def _grow(self, end: int) -> bool:
        size = self.size
        while size < end:
            size *= 2
        if size > MAX_SIZE:
            return False
        try:
            os.ftruncate(self.fd, size)
            self.map.resize(size)
        except Exception:  # a full location: the names recorded so far stay
            return False
        self.size = size
        return True

    def discard(self) -> None:
        # A normal exit, before it sends: no sweeper may send this record after it.
        try:
            os.unlink(self.path)
        except OSError:
            pass


def start(session: "Session", name: str) -> None:
    # The watcher's first note after start-up (or a fork): create the record, or stop
    # noting.  Called inside an import; raises nothing.
    global _STDLIB
    watcher = session.watcher
    main = getattr(sys.modules.get("_thread"), "_is_main_interpreter", None)
    if session.finished or (callable(main) and not main()):
        # A subinterpreter shares the process's locks, so its record could not tell its
        # death from the process's: it reports at its own end, as before records.
        watcher.note = _ignore
        return
    try:
        if _STDLIB is None:
            _STDLIB = _stdlib_names()
        if name in _STDLIB:
            return  # the standard library only, so far: no record yet
        if "mmap" not in sys.modules and not _may_import("mmap"):
            return  # another thread is importing it: the next new name creates the record
        record = create(session)
    except Exception:
        record = None
    watcher.note = record.add if record is not None else _ignore


def _ignore(name: str) -> None:
    pass


def _may_import(name: str) -> bool:
    # Inside find_spec this thread holds the global import lock: importing `name` can only
    # wait on a thread that is importing it (and waits for that lock): not while it does.
    locks = getattr(sys.modules.get("_frozen_importlib"), "_module_locks", None)
    return isinstance(locks, dict) and name not in locks


def create(session: "Session") -> "Record | None":
    # In $XDG_RUNTIME_DIR/popcon-site when set and usable, else /dev/shm/popcon-site-<uid>.
    runtime = os.environ.get("XDG_RUNTIME_DIR", "")
    first = [os.path.join(runtime, "popcon-site")] if os.path.isabs(runtime) else []
    for directory in [*first, f"/dev/shm/popcon-site-{os.getuid()}"]:
        if not usable(directory, create=True):
            continue
        record = _create_in(directory, session)
        if record is not None:
            return record
    return None


def _create_in(directory: str, session: "Session") -> "Record | None":
    import mmap

    pid = os.getpid()
    base = os.path.join(directory, f"{pid}-{id(session):x}-{int(monotonic() * 1e6)}")
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(base + ".new", flags, 0o600)
    except OSError:
        return None
    try:
        os.lockf(fd, os.F_TLOCK, 0)  # held until this process dies
        header, names = _header(session)
        size = START_SIZE
        while size < len(header.encode("utf-8", "backslashreplace")) + 256:
            size *= 2
        os.ftruncate(fd, size)
        record = Record(fd, base + SUFFIX, mmap.mmap(fd, size), size)
        record.write(header)
        record.written.update(names)
        os.rename(base + ".new", base + SUFFIX)  # complete and locked: sweepers may look
        return record
    except Exception:  # a full or read-only location: as before records existed
        try:
            os.unlink(base + ".new")
        except OSError:
            pass
        os.close(fd)
        return None


def _header(session: "Session") -> "tuple[str, list[str]]":
    import _imp

    lines = [MAGIC.rstrip("\n"), f"!pid {os.getpid()}", f"!exe {sys.executable}"]
    lines += [f"!prefix {sys.prefix}", f"!stdlib {popcon_site_stdlib() or ''}"]
    lines.append("!main 1")  # subinterpreters keep no record (start())
    lines += [f"!suffix {suffix}" for suffix in _imp.extension_suffixes()]
    try:
        cwd = os.getcwd()
    except OSError:
        cwd = ""  # a deleted working directory: relative entries find nothing here either
    for entry in sys.path:
        if isinstance(entry, str) and (cwd or os.path.isabs(entry)):
            lines.append(f"!path {_quote(os.path.join(cwd, entry) if entry else cwd)}")
    for key, value in os.environ.items():
        if key.startswith("PYTHON_POPCONTEST_") or key in RANK_VARIABLES:
            lines.append(f"!env {_quote(key)}={_quote(value)}")
    # Names already imported since start-up (the record is created at the first new one).
    seen = {name.partition(".")[0] for name in session.imported_names()}
    seen.discard("popcon_site")  # its own modules (this one) never count
    names = sorted(name for name in seen if name not in _STDLIB)  # type: ignore[operator]
    return "\n".join(lines + names) + "\n", names


def _quote(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _unquote(text: str) -> str:
    return text.replace("\\n", "\n").replace("\\\\", "\\")


def current(session: "Session") -> "Record | None":
    record = getattr(session.watcher.note, "__self__", None)
    return record if isinstance(record, Record) and record.pid == os.getpid() else None


def note_sent(session: "Session", lines: "list[str]", prefix: str, reports: str) -> None:
    # A checkpoint is about to send these lines: a sweeper never sends them again.
    record = current(session)
    if record is None:
        return
    start = len(prefix) + 1
    for line in lines:
        if line == f"{reports}:1|c":
            record.write("!reports\n")
        else:
            record.write(f"!sent {line[start : -len(':1|c')]}\n")


_swept_dir = ""  # where this process's record was: its exit sweeps that directory


def discard(session: "Session") -> bool:
    # At exit, before the report is sent (or when told to stop): True when a record of
    # this process existed.  Its file is unlinked; the lock goes with the process.
    global _swept_dir
    record = current(session)
    session.watcher.note = _ignore
    if record is None:
        return False
    record.discard()
    _swept_dir = os.path.dirname(record.path)
    return True


# -- the sweeper ----------------------------------------------------------------------


class Dead:
    # What a dead process's record says.
    __slots__ = ("env", "main", "names", "path", "reports_sent", "sent", "stdlib", "suffixes")

    def __init__(self) -> None:
        self.names: set[str] = set()
        self.sent: set[str] = set()
        self.path: list[str] = []
        self.suffixes: list[str] = []
        self.env: dict[str, str] = {}
        self.stdlib = ""
        self.main = True
        self.reports_sent = False


def parse(data: bytes) -> "Dead | None":
    # None for anything that is not a record this version wrote.
    text = data.partition(b"\0")[0].decode("utf-8", "replace")
    if not text.startswith(MAGIC):
        return None
    dead = Dead()
    lines = text.split("\n")
    for line in lines[1:-1]:  # the last one is empty, or cut short by the kill
        key, _, value = line.partition(" ")
        if key == "!path":
            dead.path.append(_unquote(value))
        elif key == "!suffix":
            dead.suffixes.append(value)
        elif key == "!env":
            name, _, raw = value.partition("=")
            dead.env[_unquote(name)] = _unquote(raw)
        elif key == "!stdlib":
            dead.stdlib = value
        elif key == "!main":
            dead.main = value == "1"
        elif key == "!sent":
            dead.sent.add(value)
        elif key == "!reports":
            dead.reports_sent = True
        elif not line.startswith("!") and line.isidentifier():
            dead.names.add(line)
    return dead


def locate(name: str, dead: Dead) -> "str | None":
    # The file the dead process imported top-level `name` from, as its path finder
    # would have found it (packages, modules, extensions, sourceless); a namespace
    # package has none, as for the exit report.
    for entry in dead.path:
        base = os.path.join(entry, name)
        init = os.path.join(base, "__init__.py")
        if os.path.isfile(init):
            return init
        for suffix in (*dead.suffixes, ".py", ".pyc"):
            if os.path.isfile(base + suffix):
                return base + suffix
    return None


def site_dirs_of(dead: Dead) -> "list[str]":
    # The dead process's counted directories, as _attribution.site_dirs() finds them.
    found: list[str] = []
    for entry in dead.path:
        directory = os.path.normpath(entry)
        if directory in found or directory == dead.stdlib or not os.path.isdir(directory):
            continue
        if os.path.basename(directory) in ("site-packages", "dist-packages"):
            found.append(directory)
            continue
        try:
            listing = os.listdir(directory)
        except OSError:
            continue
        if any(item.endswith((".dist-info", ".egg-info")) for item in listing):
            found.append(directory)
    return found


class Refused(Exception):
    pass


def claim(path: str, build: bool) -> "tuple[str, list[str]] | None":
    # Send a dead process's record and remove it; None when it belongs to a live process
    # (or another sweeper has it).  Raises Refused (one line) for a planted or
    # malformed record.  The lock is held from the check to the unlink: two sweepers
    # never both read a record that is still linked.
    st = _checked(path)
    if st is None:
        return None
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        try:
            os.lockf(fd, os.F_TLOCK, 0)
        except OSError:
            return None  # its process is alive
        opened = os.fstat(fd)
        if opened.st_nlink == 0 or (opened.st_ino, opened.st_dev) != (st.st_ino, st.st_dev):
            return None  # sent and removed by another sweeper meanwhile
        data = os.pread(fd, MAX_SIZE, 0)
        dead = parse(data)
        if dead is None:
            _unlink(path)
            raise Refused(f"{path}: not a record; removed")
        lines, summary = lines_for(dead, build)
        _unlink(path)  # before sending: a sweeper killed now loses it, never sends twice
    finally:
        os.close(fd)
    if lines is None:
        return summary, []
    return send(dead, lines, summary)


def _checked(path: str) -> "os.stat_result | None":
    # The record's lstat(), None when it is gone; Refused when it cannot be a record.
    try:
        st = os.lstat(path)
    except OSError:
        return None
    if (st.st_mode & 0o170000) != 0o100000:
        raise Refused(f"{path}: not a regular file")
    if st.st_uid != os.geteuid() or st.st_mode & 0o077:
        raise Refused(f"{path}: not this user's, or readable by others")
    if st.st_size > MAX_SIZE:
        raise Refused(f"{path}: {st.st_size} bytes, over {MAX_SIZE}")
    return st


def survey(dirs: "list[str] | None" = None) -> "list[tuple[str, str]]":
    # (path, "live" / "dead" / "refused: why") for each record, sending nothing.
    found = []
    for path in records(directories() if dirs is None else dirs):
        try:
            if _checked(path) is None:
                continue
            fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        except Refused as exc:
            found.append((path, f"refused: {exc}"))
            continue
        except OSError:
            continue
        try:
            os.lockf(fd, os.F_TLOCK, 0)
            dead = parse(os.pread(fd, MAX_SIZE, 0))
            found.append((path, "dead" if dead is not None else "refused: not a record"))
        except OSError:
            found.append((path, "live"))
        finally:
            os.close(fd)  # releases the lock taken here, if any
    return found


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def lines_for(dead: Dead, build: bool) -> "tuple[list[str] | None, str]":
    # The lines the dead process's exit report would have sent (less what its
    # checkpoints sent).  Raises NotBuilt when an index is missing and build is False.
    report = popcon_site._sibling("_report")
    try:
        config = report.config_from_environ(dead.env)
    except report.ConfigError as exc:
        return None, f"not sent: {exc}"
    if config.rank0_only and popcon_site._sibling("_select").rank(dead.env):
        return None, "not sent: a rank other than 0"
    if "IPython" in dead.names:
        return None, "not sent: an IPython kernel or shell (its cells' checkpoints report)"
    attributor = _attributor(dead, build)
    files = [path for path in (locate(name, dead) for name in sorted(dead.names)) if path]
    used = attributor.owners(files)
    if config.include or config.exclude:
        used = {name for name in used if config.allows(name)}
    used -= dead.sent
    with_reports = dead.main and not dead.reports_sent
    lines = report.counter_lines(config.prefix, config.reports_name, used, with_reports)
    return lines, ", ".join(sorted(used)) or "no distributions"


def _attributor(dead: Dead, build: bool) -> "Attributor":
    attribution: Any = popcon_site._sibling("_attribution")

    class Reading(attribution.Attributor):  # type: ignore[misc]
        def index(self, site_dir: str) -> "Any":
            if site_dir not in self.indexes:
                self.indexes[site_dir] = attribution.fresh_index(site_dir, build=build)
            return self.indexes[site_dir]

    return Reading(site_dirs_of(dead), dead.stdlib or None)


def send(dead: Dead, lines: "list[str]", summary: str) -> "tuple[str, list[str]]":
    report = popcon_site._sibling("_report")
    config = report.config_from_environ(dead.env)
    if not lines:
        return "nothing to send", []
    address = report.literal_address(config.host, config.port)
    if address is None and not popcon_site.is_literal_host(config.host):
        resolve = popcon_site._sibling("_resolve")
        found = resolve.address_for(config.host, True, report.NETWORK_BUDGET)[0]
        if found is not None:
            address = resolve.with_port(found, config.port)
    if address is None:
        return f"not sent ({summary}): cannot resolve {config.host!r}", []
    if config.protocol == "tcp":
        from popcon_site._tcp import send_tcp

        try:
            send_tcp(address, lines, report.NETWORK_BUDGET)
        except Exception as exc:
            return f"not sent ({summary}): {type(exc).__name__}", []
        return f"sent {summary}", lines
    payloads = report.datagrams(lines)
    sent = report.send_udp(address, payloads)
    return f"sent {summary} in {sent} of {len(payloads)} datagram(s)", lines


def records(dirs: "list[str]") -> "Iterator[str]":
    # The record files in these directories (the usable ones only).
    for directory in dirs:
        if not usable(directory, create=False):
            continue
        try:
            names = sorted(os.listdir(directory))
        except OSError:
            continue
        for name in names:
            if name.endswith(SUFFIX):
                yield os.path.join(directory, name)


def sweep(build: bool, limit: int, look: int, dirs: "list[str] | None" = None) -> "list[str]":
    # Send and remove dead processes' records; one line per record looked at that was
    # dead or refused.  Raises nothing.
    said: list[str] = []
    sent = 0
    own = f"{os.getpid()}-"  # this process's locks are its own to take again: never swept
    for index, path in enumerate(records(directories() if dirs is None else dirs)):
        if index >= look or sent >= limit:
            break
        if os.path.basename(path).startswith(own):
            continue
        try:
            found = claim(path, build)
        except Refused as exc:
            said.append(f"refused {exc}")
            continue
        except Exception as exc:  # an index to build, a network error: left for later
            said.append(f"{path}: left for later ({type(exc).__name__})")
            continue
        if found is not None:
            sent += 1
            said.append(f"{os.path.basename(path)}: {found[0]}")
    return said


def sweep_at_exit() -> None:
    # After the exit report of a process that recorded (a stdlib-only exit pays nothing):
    # send up to SWEEP_AT_EXIT dead records of this user's; never builds an index.
    said = sweep(build=False, limit=SWEEP_AT_EXIT, look=LOOK_AT_EXIT, dirs=[_swept_dir])
    if said and popcon_site.is_true(os.environ.get(popcon_site.ENV_DEBUG)):
        try:
            os.write(2, "".join(f"popcon-site: sweep: {line}\n" for line in said).encode())
        except OSError:
            pass
