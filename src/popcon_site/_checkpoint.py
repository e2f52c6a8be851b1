# Checkpoints: a process still running some seconds after activation sends what it
# has imported so far, and its reports counter, without waiting for its exit; the
# exit report then sends only the rest (Session.sent, Session.reports_sent).
#
# Loaded straight from its file (popcon_site._sibling, no import lock) the first time
# a checkpoint is due.  The triggers live in popcon_site and cost one monotonic() and
# a compare until then: the import watcher (every new import), a gc.callbacks entry
# (collections: any thread, almost any allocation point) and, in a kernel, IPython's
# post_run_cell event (after every cell).  The session's busy lock lets one run at a
# time; a checkpoint due while another runs is skipped, not waited for.
#
# What may run where.  After an import or a collection the checkpoint runs inside the
# program's own work, so it takes no import lock except for _socket (an extension that
# imports nothing, and only while no thread is importing it), builds no cold index and
# imports neither fnmatch nor statsd; what needs them waits for a later checkpoint,
# the next cell or the exit report.  After a cell (the kernel's main thread, between
# two cells) all of that is allowed.

import os
import sys
from time import monotonic

import popcon_site

TYPE_CHECKING = False
if TYPE_CHECKING:
    from popcon_site import Session, _attribution, _report
    from popcon_site._index import SiteIndex
    from popcon_site._report import Config
    from popcon_site._resolve import Address
else:  # loaded as this module was, without the import system
    _report = popcon_site._sibling("_report")
    popcon_site._sibling("_index")  # so that fresh_index's import of it finds it loaded
    _attribution = popcon_site._sibling("_attribution")

# Checkpoints come at the delay, then twice as far apart each time, at most CAP: a
# checkpoint that finds nothing new costs ~0.1 ms, and a counter late by 5 minutes
# still falls in the same increase()/rate() window of a dashboard.
CAP = 300.0
RETRY = 1.0  # when a checkpoint could not finish here (a lock, a cold index, no address)

DONE, LATER, OFF = "done", "later", "off"


class _Attributor(_attribution.Attributor):
    # Reads the indexes that exist; builds a missing or stale one only where it is safe.

    def __init__(self, site_dirs: "list[str]", stdlib: "str | None") -> None:
        super().__init__(site_dirs, stdlib)
        self.cold: set[str] = set()
        self.may_build = False

    def index(self, site_dir: str) -> "SiteIndex | None":
        if site_dir in self.indexes:
            return self.indexes[site_dir]
        if site_dir in self.cold:
            return None  # looked up once a checkpoint, not once a file of it (~0.1 ms each)
        try:
            found = _attribution.fresh_index(site_dir, build=self.may_build)
        except _attribution.NotBuilt:
            self.cold.add(site_dir)  # not kept: tried again at the next checkpoint
            return None
        self.indexes[site_dir] = found
        return found

    def decided(self, path: str, where: str) -> bool:
        # False when credit(path) needed an index still to build: the file's own, or for
        # a file outside the site directories any index (it may name an editable root).
        if not self.cold or where == _attribution.IN_STDLIB:
            return True
        return where == _attribution.IN_SITE_DIR and self.site_dir_of(path) not in self.cold


class State:
    # What one process's checkpoints keep between two of them.
    __slots__ = ("attributor", "checked", "config", "host", "interval", "off", "pid")

    def __init__(self, delay: float) -> None:
        self.pid = os.getpid()
        self.interval = delay
        self.checked: set[str] = set()  # module names attributed and sent (or never to send)
        self.config: Config | None = None
        self.off = False  # the configuration allows no report from here
        self.attributor: _Attributor | None = None
        # Without a Kernel (no metadata for IPython): the owners of what the kernel
        # loaded before our startup file ran, all of it machinery, never counted.
        self.host: frozenset[str] | None = None


def run(session: "Session", trigger: str) -> None:
    # One checkpoint; trigger is "import", "gc" or "cell".  Raises nothing but a
    # KeyboardInterrupt (or other BaseException) raised into it by the program.
    state = session.checkpoint
    if not isinstance(state, State) or state.pid != os.getpid():
        state = State(session.delay)
        session.checkpoint = state
    safe = trigger == "cell"
    loaded = frozenset(sys.modules) if safe else None
    try:
        outcome = OFF if state.off else checkpoint(state, session, safe)
    except Exception:
        outcome = DONE  # a bug or an odd program state: try again at the next one
    if loaded is not None:
        # What it imported (importlib-metadata to build an index, statsd) is ours, not
        # the program's, as the exit report's own imports are.
        session.baseline = session.baseline.union(frozenset(sys.modules) - loaded)
    if trigger == "cell":
        return  # cells do not move the clock: it also covers threads between cells
    now = monotonic()
    if outcome == OFF:
        session.due = popcon_site._NEVER
    elif outcome == LATER:
        session.due = now + min(RETRY, state.interval)
    else:
        session.due = now + state.interval
        state.interval = min(state.interval * 2, max(CAP, state.interval))


def checkpoint(state: State, session: "Session", safe: bool) -> str:
    names = session.imported_names()  # first: what a checkpoint imports never counts
    config = state.config or configure(state)
    if config is None:
        return OFF
    if config.protocol == "tcp" and not safe:
        return OFF  # statsd's client is an import: TCP reports after cells and at exit
    patterns = config.include + config.exclude
    if not safe and "fnmatch" not in sys.modules and any(set(p) & set("*?[") for p in patterns):
        return LATER
    if session.kernel is None and not session.host_modules and _ipython_starting():
        # Its startup file has not yet told the kernel's machinery apart, or never will.
        session.kernel = popcon_site._sibling("_ipython").late_kernel(at_exit=False)
        if session.kernel is None:
            return LATER
    if not safe and "site" not in sys.modules:
        return LATER  # python -S: finding the site directories would import site

    attributor = state.attributor
    if attributor is None:
        attributor = state.attributor = _Attributor(
            _attribution.site_dirs(), _attribution.stdlib_dir()
        )
    attributor.cold = set()
    attributor.reset_editable_roots()  # an index cold last time may have some now
    attributor.may_build = safe
    host = state.host
    kernel = session.kernel
    if host is None and session.host_modules and kernel is None:
        host = frozenset(attributor.owners(_report.module_files(session.host_modules)))
        if attributor.cold:
            return LATER
        state.host = host

    owners, checked, complete = attribute(names - state.checked, attributor)
    if kernel is not None:
        used = kernel.counted(owners, session.sent, attributor, _report.module_files, safe)
    else:
        used = owners - (host or frozenset())
    used -= session.sent
    if config.include or config.exclude:
        used = {name for name in used if config.allows(name)}
    with_reports = not session.reports_sent and _report.in_main_interpreter()
    lines = _report.counter_lines(config.prefix, config.reports_name, used, with_reports)
    if lines and not send(session, config, lines, safe):
        return LATER
    state.checked.update(checked)
    return DONE if complete else LATER


def configure(state: State) -> "Config | None":
    # The exit report's configuration, read once; None where no checkpoint may report.
    env = os.environ
    if env.get(popcon_site.ENV_INCLUDE) or env.get(popcon_site.ENV_EXCLUDE):
        popcon_site._sibling("_select")  # config_from_environ imports it: no import lock
    config: Config | None
    try:
        config = _report.config_from_environ()
        if config.rank0_only and popcon_site._sibling("_select").rank(env):
            config = None
    except _report.ConfigError:
        config = None  # the exit report says why, in debug mode
    state.off = config is None
    state.config = config
    return config


def attribute(names: "set[str]", attributor: _Attributor) -> "tuple[set[str], list[str], bool]":
    # (distributions, module names decided, whether every new module was decided).
    # Modules not loaded right now (deleted, blocked, failed, being found) are left to
    # the exit report, which has the means to tell them apart.
    modules = sys.modules
    stdlib_names: frozenset[str] = getattr(sys, "stdlib_module_names", frozenset())
    checked: list[str] = []
    files: dict[str, list[str]] = {}
    for name in names:
        if name.partition(".")[0] in stdlib_names:
            checked.append(name)
            continue
        module = modules.get(name)
        if module is None:
            continue
        path = _report.module_file(module)
        if path is not None:
            files.setdefault(path, []).append(name)
        elif isinstance(module, type(sys)):
            checked.append(name)  # built in, or a namespace package: nothing to count
    owners: set[str] = set()
    complete = True
    for path, found in files.items():
        owner, where = attributor.credit(path)
        if not attributor.decided(path, where):
            complete = False
            continue
        if owner is not None:
            owners.add(owner)
        checked += found
    owners.discard(_attribution.OWN_DISTRIBUTION)
    return owners, checked, complete


def send(session: "Session", config: "Config", lines: "list[str]", safe: bool) -> bool:
    # Send and note what went out; False when nothing could be sent from here.
    address = _address(session, config, safe)
    if address is None:
        return False
    # Noted in this process's record first: a sweeper never sends these lines again.
    popcon_site._sibling("_record").note_sent(session, lines, config.prefix, config.reports_name)
    # Distinct users (issue 23): claimed here, once the lines can go out.
    lines = lines + popcon_site._sibling("_users").extra_lines(config, lines)
    if config.protocol == "tcp":
        from popcon_site._tcp import send_tcp  # after a cell only

        try:
            send_tcp(address, lines, _report.NETWORK_BUDGET)
        except Exception:
            return False
        sent = lines
    else:
        sent = []
        for payload in _report.datagrams(lines):
            if _report.send_udp(address, [payload]):
                sent += payload.decode("ascii").split("\n")
    start = len(config.prefix) + 1
    for line in sent:
        if line == f"{config.reports_name}:1|c":
            session.reports_sent = True
        elif line.startswith(config.prefix + "."):  # not the user lines (issue 23)
            session.sent.add(line[start : -len(":1|c")])
    return len(sent) == len(lines)


def _address(session: "Session", config: "Config", safe: bool) -> "Address | None":
    if not (safe or "_socket" in sys.modules or _may_import_now("_socket")):
        return None
    address: Address | None = _report.literal_address(config.host, config.port)
    if address is None and not popcon_site.is_literal_host(config.host):
        # After an import or a collection only the cache is read: a lookup child's exit
        # would send the program a SIGCHLD, and its own os.wait() could reap the child.
        resolve = popcon_site._sibling("_resolve")
        found = resolve.address_for(config.host, safe, _report.NETWORK_BUDGET)[0]
        if found is not None:
            address = resolve.with_port(found, config.port)
    return address


def _may_import_now(name: str) -> bool:
    # True when importing `name` here can neither wait on a thread that waits on this
    # one nor load it twice: nobody holds the global import lock or is importing it.
    bootstrap = sys.modules.get("_frozen_importlib")
    imp = sys.modules.get("_imp")
    locks = getattr(bootstrap, "_module_locks", None)
    lock_held = getattr(imp, "lock_held", None)
    return isinstance(locks, dict) and name not in locks and callable(lock_held) and not lock_held()


def _ipython_starting() -> bool:
    # An IPython application (a kernel, the terminal) exists: its machinery is not
    # baseline until its startup file ran.  Reads a class attribute; runs no code.
    application = sys.modules.get("IPython.core.application")
    app_class = getattr(application, "BaseIPythonApplication", None)
    return getattr(app_class, "_instance", None) is not None
