# popcon-site: which installed distributions do the processes of this environment import?
# The start-up half.  The hook (popcon_site.pth, or popcon_site.start from 3.18; see
# hatch_build.py) imports it in every process with PYTHON_POPCONTEST_ENABLE set;
# activate() snapshots sys.modules, puts a name-noting finder first in sys.meta_path and
# registers the exit report (_report).  The bottom of the import graph: the shared
# vocabulary lives here (CONTRIBUTING.md).  Every process pays for this file: comments,
# not docstrings; no `from __future__`; no import the interpreter has not made already,
# bar atexit (and gc, at exit).  A module import costs ~0.2 ms + ~10 us/KB here.

import os
import sys
from _thread import allocate_lock as _allocate_lock  # built in, loaded by importlib already
from _thread import interrupt_main as _interrupt_main
from time import monotonic as _monotonic  # loaded already: no import at start-up

__version__ = "1.0.0"
__all__ = ["activate", "setup_reporter", "stop_reporting"]

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Generator
    from types import FrameType, ModuleType
    from typing import Any

    from popcon_site._ipython import Kernel

# -- the configuration vocabulary --------------------------------------------------
# popcon_site.pth spells ENV_ENABLE and TRUE_WORDS out once more: it runs before any
# import, in every process, enabled or not.

ENV_ENABLE = "PYTHON_POPCONTEST_ENABLE"
ENV_DEBUG = "PYTHON_POPCONTEST_DEBUG"
ENV_HOST = "PYTHON_POPCONTEST_STATSD_HOST"
ENV_PORT = "PYTHON_POPCONTEST_STATSD_PORT"
ENV_PREFIX = "PYTHON_POPCONTEST_STATSD_PREFIX"
ENV_PROTOCOL = "PYTHON_POPCONTEST_STATSD_PROTOCOL"
ENV_INCLUDE = "PYTHON_POPCONTEST_INCLUDE"
ENV_EXCLUDE = "PYTHON_POPCONTEST_EXCLUDE"
ENV_RANK0_ONLY = "PYTHON_POPCONTEST_RANK0_ONLY"
ENV_CACHE_DIR = "PYTHON_POPCONTEST_CACHE_DIR"

DEFAULT_HOST = "localhost"
DEFAULT_PORT = 8125
DEFAULT_PREFIX = "python_popcon.library_used"
DEFAULT_PROTOCOL = "udp"

TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("", "0", "false", "no", "off")


def is_true(value: "str | None") -> bool:
    return value is not None and value.strip().lower() in TRUE_WORDS


def split_host_port(raw: str) -> "tuple[str, str | None]":
    # PYTHON_POPCONTEST_STATSD_HOST as admins write it: ``host``, ``host:port``,
    # ``[v6]``, ``[v6]:port`` or a bare IPv6 address -> (host, port text or None).
    text = raw.strip()
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if bracket and rest[:1] == ":":
            return host, rest[1:]
        return (host, None) if bracket and not rest else (text, None)
    host, colon, port = text.rpartition(":")
    if colon and ":" not in host:
        return host, port
    return text, None


def is_literal_host(host: str) -> bool:
    # localhost or an IP literal (host part only): no lookup needed.  Decided without
    # importing socket; the exit report checks it with inet_pton, a failure is an error.
    return host == "localhost" or ":" in host or host.replace(".", "").isdigit()


# -- a distribution's name on the wire ------------------------------------------------

MAX_NAME = 200  # PyPI has no longer names; caps what one line can cost.
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-")


def normalize_name(name: str) -> str:
    # PEP 503 normalization without ``re`` (not loaded in most processes at exit).
    text = name.lower().replace("_", "-").replace(".", "-")
    while "--" in text:
        text = text.replace("--", "-")
    return text


def is_safe_name(name: str) -> bool:
    # True for a normalized name that can only ever be one metric component.  Checked
    # right before sending, whatever the index says, so metadata never injects a line.
    fits = 0 < len(name) <= MAX_NAME and set(name) <= _NAME_CHARS
    return fits and name[0] != "-" and name[-1] != "-"


ENV_CHECKPOINT = "PYTHON_POPCONTEST_CHECKPOINT"
CHECKPOINT_DELAY = 10.0  # seconds from activation to the first checkpoint
_NEVER = float("inf")
_STDLIB = getattr(sys, "stdlib_module_names", sys.builtin_module_names)  # never recorded


# A sys.meta_path finder that finds nothing and notes every name an import asks for (not
# a find_spec() lookup: only an import holds the name's lock in _module_locks), so that
# modules imported then deleted count too; during start-up it also watches for the first
# import not from `site` (Session).  New top-level names also go to the record (note).
class ImportWatcher:
    __slots__ = ("importing", "note", "seen", "session")

    def __init__(self, session: "Session") -> None:
        self.seen: set[str] = set()
        self.session = session
        self.note = _no_note if session.starting else _start_note  # the record (_record.py)
        self.importing = getattr(sys.modules.get("_frozen_importlib"), "_module_locks", {})

    def find_spec(self, fullname: str, path: object = None, target: object = None) -> None:
        if not _called_from_site():
            self.session.start_up_over()
        _SteadyWatcher.find_spec(self, fullname)  # type: ignore[arg-type]  # same slots

    def invalidate_caches(self) -> None:
        pass  # nothing cached; importlib calls this on every finder


# The same watcher once start-up is over (same slots: the object changes class).
class _SteadyWatcher(ImportWatcher):
    __slots__ = ()

    def find_spec(self, fullname: str, path: object = None, target: object = None) -> None:
        if fullname in self.importing or _searching_for_main():
            self.seen.add(fullname)
            if "." not in fullname:
                self.note(fullname)
        if _monotonic() >= self.session.due:
            _checkpoint_due("import")


def _searching_for_main() -> bool:
    # `python -m six`: runpy finds six by find_spec() and runs it as __main__, unimported:
    # it counts.  Only runpy's own lookup (4-5 frames up), not one by `-m pkg.tool`'s pkg.
    try:
        if sys.argv[0] != "-m":
            return False
        caller = (frame := sys._getframe(4)).f_back or frame
        return "runpy" in (frame.f_globals.get("__name__"), caller.f_globals.get("__name__"))
    except Exception:
        return False


def _called_from_site() -> bool:
    # True while `site` is still running start-up code (.pth lines, sitecustomize).
    frame: FrameType | None = sys._getframe(2)
    while frame is not None:
        if frame.f_globals.get("__name__") == "site":
            return True
        frame = frame.f_back
    return False


# What one process knows between activation and its exit report.  The hook runs mid
# start-up: later .pth files, sitecustomize and usercustomize are site machinery, so the
# baseline is taken again at the first import not from `site`.
class Session:
    __slots__ = (
        "baseline",
        "busy",
        "checkpoint",
        "delay",
        "due",
        "finished",
        "host_modules",
        "kernel",
        "pid",
        "reports_sent",
        "sent",
        "starting",
        "watcher",
    )

    def __init__(self) -> None:
        self.baseline: frozenset[str] = frozenset(sys.modules)
        self.host_modules: frozenset[str] = frozenset()  # an IPython kernel's own
        self.kernel: Kernel | None = None  # its machinery and the user's code, told apart
        self.starting = "site" in sys.modules and _called_from_site()
        self.watcher = ImportWatcher(self) if self.starting else _SteadyWatcher(self)
        self.pid = os.getpid()
        self.finished = False  # nothing more is sent: reported, or told to stop
        # Checkpoints: when the next is due, what this process sent so far (the exit
        # report sends the rest), and the claim that lets only one run at a time.
        self.delay = _checkpoint_delay()
        self.busy = _allocate_lock()
        self.checkpoint: object = None  # a _checkpoint.State once one ran
        self.sent: set[str] = set()
        self.reports_sent = False
        self.due = _monotonic() + self.delay

    def start_up_over(self) -> None:
        # Only what the watcher saw site import (and is loaded) becomes baseline: modules
        # the program imported through a finder ahead of the watcher still count.
        self.starting = False
        self.baseline = self.baseline.union(self.watcher.seen.intersection(sys.modules))
        self.watcher.seen = set()
        self.watcher.__class__ = _SteadyWatcher
        self.watcher.note = _start_note
        _watch_collections(self)

    def restart_checkpoints(self) -> None:
        # A fork child is a process of its own: nothing sent yet, its own first delay.
        # A kernel's child: what the kernel's user code imported is inherited, baseline.
        self.kernel = None
        self.busy = _allocate_lock()
        self.checkpoint = None
        self.sent = set()
        self.reports_sent = False
        self.due = _monotonic() + self.delay

    def imported_names(self) -> "set[str]":
        # Modules imported since activation: still loaded, or whose import the watcher saw.
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
_collection_hooks = []  # type: list[Callable[[str, dict[str, int]], object]]


def _no_note(name: object) -> None:
    pass


def _start_note(name: str) -> None:
    try:  # the first top-level name after start-up outside the stdlib (3.9: builtins)
        name in _STDLIB or _sibling("_record").start(_session, name)
    except Exception:
        pass


def _checkpoint_delay() -> float:
    # PYTHON_POPCONTEST_CHECKPOINT: seconds to the first checkpoint; 0, off or anything
    # that is not a positive number turns checkpoints off.  Read only when set.
    raw = os.environ.get(ENV_CHECKPOINT)
    if raw is None:
        return CHECKPOINT_DELAY
    try:
        delay = float(raw)
    except ValueError:
        return _NEVER
    return delay if 0 < delay < _NEVER else _NEVER


def _watch_collections(session: Session) -> None:
    # The garbage collector is the checkpoints' clock between imports, registered at the
    # program's first import: `python -c pass` never imports gc (the exit hook does).
    if session.delay == _NEVER or _collection_hooks:
        return
    import gc

    clock = _collection_clock()
    next(clock)
    method: Any = type(session.start_up_over)  # types.MethodType, without importing types

    # gc calls hook(phase, info) = getattr(phases, phase, info): C up to the clock's `yield`
    # (no frame of ours outside its try); "stop" resumes the clock once per collection.
    class Phases:
        __slots__ = ()
        start = None
        stop = property(method(next, clock))

    _collection_hooks.append(method(getattr, Phases()))
    gc.callbacks.append(_collection_hooks[0])


def _collection_clock() -> "Generator[int, None, None]":
    # A signal handler that raises (Ctrl-C; sys.exit() on SIGTERM) during a collection runs
    # at the first eval-breaker check of Python code: the resume after `yield` or a
    # back-jump, each inside a try: it is raised again in the program (escaped into gc it
    # would be lost).  A second one pending raises at the middle loop's back-jump, caught
    # by the outer try.  gc never nests collections: no resume while a checkpoint runs.
    deliver, due, now = _deliver_again, _checkpoint_due, _monotonic  # None at 3.9's teardown
    interrupted: BaseException | None = None
    while True:
        try:
            while True:
                if interrupted is not None:
                    deliver(interrupted)
                    interrupted = None
                try:
                    while True:
                        yield 0
                        session = _session
                        if session is not None and now() >= session.due:
                            due("gc")
                except GeneratorExit:  # closed once the callback is released
                    return
                except BaseException as exc:
                    interrupted = exc
        except GeneratorExit:
            return
        except BaseException as exc:
            interrupted = exc


def _checkpoint_due(trigger: str) -> None:
    # Runs a checkpoint (popcon_site._checkpoint), never two at once, in any thread.
    session = _session
    if session is None or not session.busy.acquire(False):
        return
    try:
        _sibling("_checkpoint").run(session, trigger)
    except Exception:  # run() raises none: this one is unusable, so no more checkpoints
        session.due = _NEVER
    except BaseException as exc:  # a Ctrl-C, or an exit from a signal handler
        if trigger == "import":
            raise  # a Ctrl-C during an import: the program's import gets it, as it would
        _deliver_again(exc)
    finally:
        session.busy.release()


def _deliver_again(exc: BaseException) -> None:
    # After a collection or a cell: the program's interrupt (Ctrl-C, sys.exit() from a
    # handler) is raised again at its next call or return outside popcon-site by a one-shot
    # profile function (a signal sent again would run its handler twice).  Profiled: SIGINT.
    try:
        if sys.getprofile() is not None:
            if isinstance(exc, KeyboardInterrupt):
                _interrupt_main()
            return

        def raise_outside(frame: "FrameType", event: str, arg: object) -> None:
            if str(frame.f_globals.get("__name__", "")).startswith(__name__):
                return
            sys.setprofile(None)
            raise exc

        sys.setprofile(raise_outside)
    except BaseException:
        pass


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
        sys.meta_path.insert(0, session.watcher)
        if not session.starting:
            _watch_collections(session)  # activated by hand: no start-up to wait for
        if hasattr(os, "register_at_fork"):
            _fork_hooks.append(_after_fork_in_child)
            os.register_at_fork(after_in_child=_fork_stub())
        import atexit

        atexit.register(_at_exit)
        return True
    except BaseException:  # whatever happened, start-up goes on
        return False


def stop_reporting() -> None:
    """Send nothing from this process, ever (popcon-site's own CLI calls it)."""
    if _session is not None:
        _session.finished = True
        _session.due = _NEVER
        getattr(sys.modules.get(__name__ + "._record"), "discard", _no_note)(_session)


def setup_reporter() -> bool:
    """Same as activate(), under the name popularity_contest.reporter used."""
    return activate()


def _startup_hook() -> None:
    # PEP 829 entry point (popcon_site.start, Python 3.18+), and the .pth line's target.
    # The .pth line calls it for any value but the false words: a value that is neither
    # gets its one-line reason in debug mode instead of silence.
    global _enable_problem_said
    value = os.environ.get(ENV_ENABLE, "")
    if is_true(value):
        activate()
    elif value.strip().lower() not in FALSE_WORDS and is_true(os.environ.get(ENV_DEBUG)):
        if _enable_problem_said:  # a venv reads its .pth files twice (cpython#75723)
            return
        _enable_problem_said = True
        try:
            os.write(2, f"popcon-site: not reporting: {enable_problem(value)}\n".encode())
        except BaseException:
            pass


_enable_problem_said = False


def enable_problem(value: str) -> str:
    return f"{ENV_ENABLE}={value[:40]!a} is not one of 1/true/yes/on (0/false/no/off: off)"


# The at-fork registry keeps its callables past teardown: a function of this module would
# keep its globals (os, sys, most modules) alive, torn down one by one (~0.2 ms), not at
# once.  So a stub with globals of its own is registered; _release() empties its list.
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
        session.watcher.note = _start_note  # a record of its own, at its first new name
        session.restart_checkpoints()
        # Most forks need nothing more; importing the exit module would cost each one.
        if "multiprocessing.util" not in sys.modules:
            return
        try:
            from popcon_site import _fork

            _fork.after_fork_in_child(_at_exit)
        except BaseException:
            pass


def _at_exit() -> None:
    session = _session
    if session is None or session.finished or session.pid != os.getpid():
        return
    session.finished = True
    session.due = _NEVER
    try:
        # A checkpoint running in another thread finishes first: it may be sending.
        session.busy.acquire(True, 0.1)
        import gc  # built in, and the standard library never counts

        # The report allocates enough to set off the collector, whose young
        # generations can hold most of what the program built (1.5 ms here once
        # pandas is imported).  The collection at teardown frees it all the same.
        collecting = gc.isenabled()
        gc.disable()
        try:
            # Snapshot before loading the reporter, so that its own imports never count.
            names = session.imported_names()
            recorder = sys.modules.get(__name__ + "._record")  # loaded when this recorded
            recorded = recorder is not None and recorder.discard(session)  # before sending
            _exit_module().at_exit(session, names)
            recorded and recorder.sweep_at_exit()  # type: ignore[union-attr]  # dead ones
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
    try:
        for hook in _collection_hooks:
            sys.modules["gc"].callbacks.remove(hook)
    except BaseException:
        pass
    del _collection_hooks[:]


def _exit_module() -> "ModuleType":
    return _sibling("_report")


def _sibling(short: str) -> "ModuleType":
    # popcon_site._report, _checkpoint...  loaded by this file's loader, bytecode cache
    # included: a regular import would set up a finder for this directory (~0.2 ms here)
    # and take the import lock, which a checkpoint in a garbage collection must not.
    name = __name__ + "." + short
    module = sys.modules.get(name)
    if module is not None:
        return module
    loader: Any = getattr(__spec__, "loader", None)
    if type(loader).__name__ != "SourceFileLoader" or not __file__.endswith("__init__.py"):
        __import__(name)  # zip files, frozen apps: the regular way
        return sys.modules[name]
    path = __file__[: -len("__init__.py")] + short + ".py"
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
    globals()[short] = module  # as the import system binds a submodule
    return module
