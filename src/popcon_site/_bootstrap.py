"""Start-up half of popcon-site: snapshot the baseline, watch imports, arm the report.

Imported by the start-up hook of every enabled process, so it must stay
cheap: it imports only modules the interpreter has already loaded (plus
``atexit`` and ``_thread``, both built in) and defers everything else to exit.
"""

from __future__ import annotations

import os
import sys

from popcon_site import _config

TYPE_CHECKING = False
if TYPE_CHECKING:
    from popcon_site._resolve import Resolution


class ImportWatcher:
    """A ``sys.meta_path`` finder that finds nothing and notes every name asked for.

    ``sys.modules`` at exit already shows most of what was imported; this only
    adds modules that were imported and then deleted from ``sys.modules``.
    """

    __slots__ = ("seen",)

    def __init__(self) -> None:
        self.seen: set[str] = set()

    def find_spec(self, fullname: str, path: object = None, target: object = None) -> None:
        self.seen.add(fullname)

    def invalidate_caches(self) -> None:
        """Nothing cached; present because importlib calls it on every finder."""


class Session:
    """What one process knows between activation and its exit report."""

    __slots__ = ("baseline", "config", "error", "pid", "reported", "resolution", "watcher")

    def __init__(self, config: _config.Config | None, error: str | None) -> None:
        self.config = config
        self.error = error
        self.baseline: frozenset[str] = frozenset(sys.modules)
        self.watcher = ImportWatcher()
        self.pid = os.getpid()
        self.reported = False
        self.resolution: Resolution | None = None

    def imported_names(self) -> set[str]:
        """Modules imported since activation: still loaded, or seen by the watcher."""
        for _attempt in range(3):  # a daemon thread importing during exit can resize the dict
            try:
                loaded = set(sys.modules)
                break
            except RuntimeError:
                continue
        else:
            loaded = set()
        return (loaded | set(self.watcher.seen)) - self.baseline

    def forget_inherited(self) -> None:
        """Everything loaded so far becomes baseline (fork child, IPython kernel start)."""
        self.baseline = frozenset(sys.modules).union(self.watcher.seen, self.baseline)
        self.watcher.seen = set()


_session: Session | None = None


def current() -> Session | None:
    return _session


def activate() -> bool:
    """Activate reporting once per process; never raises.  True when active."""
    global _session
    if _session is not None:
        return _session.config is not None
    try:
        try:
            config: _config.Config | None = _config.from_environ()
            error = None
        except _config.ConfigError as exc:
            config, error = None, str(exc)
        session = Session(config, error)
        _session = session
        if config is None:
            if _config.debug_requested():
                _debug(f"not reporting: {error}")
            return False
        if config.host != "localhost" and not _looks_numeric(config.host):
            from popcon_site import (
                _resolve,
            )  # starts a background lookup: exit must not wait on DNS

            session.resolution = _resolve.start(config.host, config.port)
        sys.meta_path.insert(0, session.watcher)
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=_after_fork_in_child)
        import atexit

        atexit.register(_at_exit)
        return True
    except BaseException:  # never break start-up, whatever happened
        return False


def _looks_numeric(host: str) -> bool:
    """IP literals need no lookup; decided without importing the socket module."""
    return ":" in host or host.replace(".", "").isdigit()


def _after_fork_in_child() -> None:
    session = _session
    if session is None:
        return
    session.forget_inherited()
    session.pid = os.getpid()
    if session.resolution is not None:
        session.resolution = session.resolution.for_child()
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
    debug = session.config is not None and session.config.debug
    try:
        # Snapshot before importing the reporter, so its imports never count.
        names = session.imported_names()
        from popcon_site import _report

        summary = _report.report(session, names)
    except BaseException as exc:  # KeyboardInterrupt at exit included: the host process wins
        summary = f"report failed: {type(exc).__name__}: {exc}"
    if debug:
        _debug(summary)


def _debug(message: str) -> None:
    try:
        os.write(2, f"popcon-site: {message}\n".encode("utf-8", "backslashreplace"))
    except BaseException:
        pass
