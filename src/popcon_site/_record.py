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
# sweeper (popcon_site._sweep) whose lock attempt succeeds knows the process is dead: it
# attributes the names in the dead process's environment (its sys.path, site
# directories, extension suffixes and configuration, all in the record) and sends what
# the exit report would have sent.
#
# Loaded by popcon_site._sibling() (no import system) inside an import; imports only
# what the interpreter has loaded already, bar mmap (~0.3 ms, once per recording
# process, and only while no thread is importing it).

import os
import sys
from _thread import allocate_lock  # built in, loaded by importlib already
from time import monotonic  # loaded already: popcon_site imports it

import popcon_site

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from popcon_site import Session

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
        # Names written, and the standard library's: one set lookup per top-level import.
        self.written: set[str] = set(_STDLIB or ())
        self.pid = os.getpid()
        self.lock = allocate_lock()

    def add(self, name: str) -> None:
        # The watcher's note for a top-level name (the hot path: one set lookup, and when
        # the name is new a write, ~0.5-1 us on tmpfs).  Raises nothing into the import.
        if name not in self.written:
            self.written.add(name)  # a failed import tried in a loop is written once
            try:
                self.write(name + "\n")
            except Exception:
                pass

    def write(self, text: str) -> None:
        data = text.encode("utf-8", "backslashreplace")
        # Threads hold it for a microsecond; held by this very thread (a signal handler
        # that imports, run inside this method), the name is dropped after 10 ms, never
        # a hang.
        lock = self.lock
        if not (lock.acquire(False) or lock.acquire(True, 0.01)):
            return
        try:
            pos = self.pos
            end = pos + len(data)
            if end > self.size and not self._grow(end):
                return
            self.map[pos:end] = data
            self.pos = end
        finally:
            lock.release()

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


def unquote(text: str) -> str:
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


def sweep_at_exit() -> None:
    # After the exit report of a process that recorded: its directory's dead records.
    popcon_site._sibling("_sweep").sweep_at_exit(_swept_dir)
