# popcon-site: which installed distributions do the processes of this environment import?
#
# This module is the start-up half.  The hook (popcon_site.pth, or popcon_site.start
# from Python 3.18; see hatch_build.py) imports it in every process that has
# PYTHON_POPCONTEST_ENABLE set; activate() snapshots sys.modules, puts a name-noting
# finder first in sys.meta_path and registers the exit report, which lives in
# popcon_site._report.
#
# Every process pays for this file, so it stays small: comments rather than
# docstrings (they are loaded with the bytecode), no `from __future__` (one more
# module), and no import the interpreter has not made already, bar the built-in
# atexit (and gc, at exit).  Measured here, each module import costs ~0.2 ms plus
# ~10 us per KB of bytecode.

import os
import sys

__version__ = "1.0.0"
__all__ = ["activate", "setup_reporter"]

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from types import FrameType, ModuleType
    from typing import Any

TRUE_WORDS = ("1", "true", "yes", "on")


# A sys.meta_path finder that finds nothing and notes every name asked for:
# sys.modules at exit shows what is still loaded, this adds modules that were
# imported and then deleted.  While start-up is still running it also watches for
# the first import that does not come from `site` (see Session).
class ImportWatcher:
    __slots__ = ("seen", "session")

    def __init__(self, session: "Session") -> None:
        self.seen: set[str] = set()
        self.session = session

    def find_spec(self, fullname: str, path: object = None, target: object = None) -> None:
        if not _called_from_site():
            self.session.start_up_over()
        self.seen.add(fullname)

    def invalidate_caches(self) -> None:
        pass  # nothing cached; importlib calls this on every finder


# The same watcher once start-up is over: only the set.add() is left (~0.5 us
# per new module).  Same slots, so the object in sys.meta_path changes class.
class _SteadyWatcher(ImportWatcher):
    __slots__ = ()

    def find_spec(self, fullname: str, path: object = None, target: object = None) -> None:
        self.seen.add(fullname)


def _called_from_site() -> bool:
    # True while `site` is still running start-up code (.pth lines, sitecustomize).
    frame: FrameType | None = sys._getframe(2)
    while frame is not None:
        if frame.f_globals.get("__name__") == "site":
            return True
        frame = frame.f_back
    return False


# What one process knows between activation and its exit report.  The hook runs
# in the middle of start-up: .pth files sorted after ours, sitecustomize and
# usercustomize still import things.  Those are site machinery, not the
# program's, so the baseline is taken again at the first import not from `site`.
class Session:
    __slots__ = (
        "baseline",
        "host_modules",
        "pid",
        "reported",
        "resolution",
        "starting",
        "watcher",
    )

    def __init__(self) -> None:
        self.baseline: frozenset[str] = frozenset(sys.modules)
        self.host_modules: frozenset[str] = frozenset()  # an IPython kernel's own
        self.starting = "site" in sys.modules and _called_from_site()
        self.watcher = ImportWatcher(self) if self.starting else _SteadyWatcher(self)
        self.pid = os.getpid()
        self.reported = False
        self.resolution: object = None  # a _resolve.Resolution when the host is a name

    def start_up_over(self) -> None:
        # Only what the watcher saw site import (and is loaded) becomes baseline: modules
        # the program imported through a finder ahead of the watcher still count.
        self.starting = False
        self.baseline = self.baseline.union(self.watcher.seen.intersection(sys.modules))
        self.watcher.seen = set()
        self.watcher.__class__ = _SteadyWatcher

    def imported_names(self) -> "set[str]":
        # Modules imported since activation: still loaded, or seen by the watcher.
        loaded: set[str] = set()
        for _attempt in range(3):  # a daemon thread importing during exit can resize it
            try:
                loaded = set(sys.modules)
                break
            except RuntimeError:
                continue
        if self.starting:
            # The watcher saw no import of the program's: it imported nothing, or a
            # finder ahead of the watcher answered them all, or the program removed it.
            # What the watcher did see is site's start-up work.
            return loaded - self.baseline - self.watcher.seen
        return (loaded | set(self.watcher.seen)) - self.baseline

    def forget_inherited(self) -> None:
        # Everything loaded so far becomes baseline (a fork child, a kernel).  Names
        # seen but not loaded stay out: failed imports, such as optional dependencies
        # probed at start-up, which the program may still install and import later.
        self.starting = False
        self.baseline = self.baseline.union(sys.modules)
        self.watcher.seen = set()

    def exclude_host_distributions(self) -> None:
        # For an IPython kernel: IPython, ipykernel, zmq... keep importing their own
        # submodules while cells run, so their distributions never count; which
        # ones they are is worked out at exit from the modules loaded now.
        self.forget_inherited()
        self.host_modules = self.baseline


_session = None  # type: Session | None


def current() -> "Session | None":
    return _session


def activate() -> bool:
    """Watch this process's imports and report once at exit; True when active.

    Called by the start-up hook when PYTHON_POPCONTEST_ENABLE is true.  Call it
    yourself where start-up files do not run (python -S, embedded interpreters):
    the call is the opt-in.  Modules loaded before it are never counted.  Runs at
    most once per process and never raises.
    """
    global _session
    if _session is not None:
        return True
    try:
        session = Session()
        _session = session
        host = os.environ.get("PYTHON_POPCONTEST_STATSD_HOST", "localhost").strip()
        if _needs_lookup(host):
            # Look the name up now, in the background: exit must never wait on DNS.
            from popcon_site import _resolve

            session.resolution = _resolve.Resolution(host)
        sys.meta_path.insert(0, session.watcher)
        if hasattr(os, "register_at_fork"):
            _fork_hooks.append(_after_fork_in_child)
            os.register_at_fork(after_in_child=_fork_stub())
        import atexit

        atexit.register(_at_exit)
        return True
    except BaseException:  # whatever happened, start-up goes on
        return False


def setup_reporter() -> bool:
    """Same as activate(), under the name popularity_contest.reporter used."""
    return activate()


def _startup_hook() -> None:
    # PEP 829 entry point (popcon_site.start, Python 3.18+), and the .pth line's target.
    if os.environ.get("PYTHON_POPCONTEST_ENABLE", "").strip().lower() in TRUE_WORDS:
        activate()


def _needs_lookup(host: str) -> bool:
    # False for localhost and IP literals, decided without importing socket.
    return not (host == "localhost" or ":" in host or not host or host.replace(".", "").isdigit())


# What the interpreter's at-fork registry holds.  It keeps its callables until after
# every module is torn down, so a plain function of this module would keep this
# module's globals alive, and through them os, sys and most of the module graph: the
# collection at exit that would have freed them all at once cannot, and tearing
# them down one by one costs ~0.2 ms here.  So the registered callable is a stub with
# globals of its own, and _release() empties the list it calls.
_fork_hooks = []  # type: list[Callable[[], None]]


def _call_fork_hooks() -> None:
    for hook in _fork_hooks:
        hook()


def _fork_stub() -> "Callable[[], None]":
    # _call_fork_hooks with the list as its only global: holding it holds no module.
    function = _call_fork_hooks
    return type(function)(function.__code__, {"_fork_hooks": _fork_hooks})  # type: ignore[misc,no-any-return]


def _after_fork_in_child() -> None:
    session = _session
    if session is not None:
        session.forget_inherited()
        session.watcher.__class__ = _SteadyWatcher
        session.pid = os.getpid()
        # Most forks need nothing more; importing the exit module would cost each one.
        if session.resolution is None and "multiprocessing.util" not in sys.modules:
            return
        try:
            from popcon_site import _fork

            _fork.after_fork_in_child(session, _at_exit)
        except BaseException:
            pass


def _at_exit() -> None:
    session = _session
    if session is None or session.reported or session.pid != os.getpid():
        return
    session.reported = True
    try:
        import gc  # built in, and the standard library never counts

        # The report allocates enough to set off the collector, whose young
        # generations can hold most of what the program built (1.5 ms here once
        # pandas is imported).  The collection at teardown frees it all the same.
        collecting = gc.isenabled()
        gc.disable()
        try:
            # Snapshot before loading the reporter, so that its own imports never count.
            names = session.imported_names()
            _exit_module().at_exit(session, names)
        finally:
            if collecting:
                gc.enable()
    except BaseException:  # KeyboardInterrupt at exit included: the host process wins
        pass
    _release(session)


def _release(session: Session) -> None:
    # Once the report is sent nothing of ours is needed, and nothing the interpreter
    # still holds at teardown may lead back to this module (see _fork_hooks).
    try:
        sys.meta_path.remove(session.watcher)
    except BaseException:  # removed or replaced by the program: nothing to release
        pass
    del _fork_hooks[:]


def _exit_module() -> "ModuleType":
    # popcon_site._report.  A regular import would first set up the import system's
    # finder for this package's directory (a path hook, a directory listing, stat
    # calls: ~0.2 ms here) to find a file whose path is known.  The loader that loaded
    # this file loads its sibling directly instead, bytecode cache included.
    name = __name__ + "._report"
    module = sys.modules.get(name)
    if module is not None:
        return module
    loader: Any = getattr(__spec__, "loader", None)
    if type(loader).__name__ != "SourceFileLoader" or not __file__.endswith("__init__.py"):
        from popcon_site import _report  # zip files, frozen apps: the regular way

        return _report
    path = __file__[: -len("__init__.py")] + "_report.py"
    loader = type(loader)(name, path)
    module = type(sys)(name)
    module.__spec__ = type(__spec__)(name, loader, origin=path)
    module.__spec__.has_location = True
    module.__file__, module.__loader__, module.__package__ = path, loader, __name__
    code = loader.get_code(name)
    sys.modules[name] = module
    try:
        exec(code, module.__dict__)
    except BaseException:
        del sys.modules[name]
        raise
    globals()["_report"] = module  # as the import system binds a submodule
    return module
