"""popcon-site: which installed distributions do the processes of this environment import?

This module is the start-up half, imported by the hook (``popcon_site.pth``,
or ``popcon_site.start`` on Python 3.15+) of every process that has
``PYTHON_POPCONTEST_ENABLE`` set.  Importing it changes nothing; activation
snapshots ``sys.modules``, puts a name-noting finder in ``sys.meta_path`` and
registers the exit report, which lives in ``popcon_site._report``.

It is deliberately one module with no ``from __future__`` import and nothing
imported that the interpreter has not loaded already (bar the built-in
``atexit``): on start-up every extra module costs every process ~0.2 ms.
"""

import os
import sys

__version__ = "1.0.0"
__all__ = ["activate", "setup_reporter"]

TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import FrameType

TRUE_WORDS = ("1", "true", "yes", "on")


class ImportWatcher:
    """A ``sys.meta_path`` finder that finds nothing and notes every name asked for.

    ``sys.modules`` at exit already shows most of what was imported; this adds
    the modules that were imported and then deleted from ``sys.modules``.  It
    also tells when start-up is over (see :meth:`Session.start_up_over`).
    """

    __slots__ = ("seen", "session")

    def __init__(self, session: "Session") -> None:
        self.seen: set[str] = set()
        self.session = session

    def find_spec(self, fullname: str, path: object = None, target: object = None) -> None:
        if self.session.starting and not _called_from_site():
            self.session.start_up_over()
        self.seen.add(fullname)

    def invalidate_caches(self) -> None:
        """Nothing is cached; importlib calls this on every finder."""


def _called_from_site() -> bool:
    """True while ``site`` is still running start-up code (.pth lines, sitecustomize)."""
    frame: FrameType | None = sys._getframe(2)
    while frame is not None:
        if frame.f_globals.get("__name__") == "site":
            return True
        frame = frame.f_back
    return False


class Session:
    """What one process knows between activation and its exit report.

    The hook runs in the middle of start-up: ``.pth`` files sorted after ours,
    ``sitecustomize`` and ``usercustomize`` still import things after it.  Those
    are site machinery, not the program's, so the baseline is taken again at
    the first import that does not come from ``site``.
    """

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
        self.host_modules: frozenset[str] = frozenset()
        self.starting = "site" in sys.modules and _called_from_site()
        self.watcher = ImportWatcher(self)
        self.pid = os.getpid()
        self.reported = False
        self.resolution: object = None  # a _resolve.Resolution when the host is a name

    def start_up_over(self) -> None:
        self.starting = False
        self.forget_inherited()

    def imported_names(self) -> "set[str]":
        """Modules imported since activation: still loaded, or seen by the watcher."""
        if self.starting:  # the program never imported anything after start-up
            return set()
        loaded: set[str] = set()
        for _attempt in range(3):  # a daemon thread importing during exit can resize the dict
            try:
                loaded = set(sys.modules)
                break
            except RuntimeError:
                continue
        return (loaded | set(self.watcher.seen)) - self.baseline

    def exclude_host_distributions(self) -> None:
        """Never count the distributions whose modules are loaded now, whatever loads later.

        For an IPython kernel: IPython, ipykernel, zmq... keep importing their
        own submodules lazily while the user's cells run.  Which distributions
        those are is worked out at exit, from the modules loaded now.
        """
        self.forget_inherited()
        self.host_modules = self.baseline

    def forget_inherited(self) -> None:
        """Everything loaded so far becomes baseline (a fork child, an IPython kernel).

        Names the watcher saw but that are not loaded are left out: they are
        failed imports (optional dependencies probed at start-up) that the
        program may still install and import later.
        """
        self.starting = False
        self.baseline = self.baseline.union(sys.modules)
        self.watcher.seen = set()


_session = None  # type: Session | None


def current() -> "Session | None":
    return _session


def activate() -> bool:
    """Start watching imports in this process and report once at exit.

    The start-up hook calls this when ``PYTHON_POPCONTEST_ENABLE`` is true.
    Call it yourself where start-up files do not run (``python -S``, embedded
    interpreters): the call is the opt-in, so the variable is not required.
    Modules loaded before activation are the baseline and never count.  Runs
    at most once per process, never raises, and returns True when active.
    Where and under which names it reports is read from the
    ``PYTHON_POPCONTEST_*`` variables at exit; invalid values disable the report.
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
            os.register_at_fork(after_in_child=_after_fork_in_child)
        import atexit

        atexit.register(_at_exit)
        return True
    except BaseException:  # whatever happened, start-up goes on
        return False


def setup_reporter() -> bool:
    """Same as :func:`activate`, under the name ``popularity_contest.reporter`` used."""
    return activate()


def _startup_hook() -> None:
    """PEP 829 entry point (``popcon_site.start``, Python 3.15+); same check as the .pth line."""
    if os.environ.get("PYTHON_POPCONTEST_ENABLE", "").strip().lower() in TRUE_WORDS:
        activate()


def _needs_lookup(host: str) -> bool:
    """False for ``localhost`` and IP literals, decided without importing socket."""
    return not (host == "localhost" or ":" in host or not host or host.replace(".", "").isdigit())


def _after_fork_in_child() -> None:
    session = _session
    if session is None:
        return
    session.forget_inherited()
    session.pid = os.getpid()
    resolution = session.resolution
    if resolution is not None:
        session.resolution = resolution.for_child()  # type: ignore[attr-defined]
    # multiprocessing's fork and forkserver children end with os._exit(), which
    # skips atexit; they do run multiprocessing's own exit finalizers.
    mp_util = sys.modules.get("multiprocessing.util")
    if mp_util is not None:
        try:
            mp_util.register_after_fork(_at_exit, _report_from_multiprocessing_exit)
        except Exception:
            pass


def _report_from_multiprocessing_exit(callback: object) -> None:
    """Runs in a multiprocessing child after its finalizer registry was reset."""
    mp_util = sys.modules.get("multiprocessing.util")
    if mp_util is not None:
        mp_util.Finalize(None, callback, exitpriority=-1000)


def _at_exit() -> None:
    session = _session
    if session is None or session.reported or session.pid != os.getpid():
        return
    session.reported = True
    debug = False
    try:
        debug = os.environ.get("PYTHON_POPCONTEST_DEBUG", "").strip().lower() in TRUE_WORDS
        # Snapshot before importing the reporter, so its own imports never count.
        names = session.imported_names()
        from popcon_site import _report

        summary = _report.report(session, names)
    except BaseException as exc:  # KeyboardInterrupt at exit included: the host process wins
        summary = f"report failed: {type(exc).__name__}: {exc}"
    if debug:
        try:
            os.write(2, f"popcon-site: {summary}\n".encode("utf-8", "backslashreplace"))
        except BaseException:
            pass
    _keep_sigint_exit(session)


def _keep_sigint_exit(session: Session) -> None:
    """A process ended by an unhandled Ctrl-C must still die by SIGINT (status 130).

    CPython remembers the unhandled KeyboardInterrupt in a flag that any exec()
    of a string clears, and building the index runs one (namedtuple() inside
    importlib-metadata).  Raising it again through exec() sets the flag again.
    Not in the REPL or a kernel, where sys.last_value may be an earlier input's.
    """
    try:
        last = getattr(sys, "last_exc", None) or getattr(sys, "last_value", None)
        interactive = hasattr(sys, "ps1") or session.host_modules
        if isinstance(last, KeyboardInterrupt) and not interactive:
            exec("raise KeyboardInterrupt")
    except BaseException:  # the KeyboardInterrupt raised on purpose, or anything else
        pass
