"""IPython / Jupyter kernels: count what the user's code imports, not the kernel itself.

The kernel's machinery is the running IPython and ipykernel and every distribution
they declare they need (Requires-Dist without an ``extra`` marker, transitively):
those never count, though the kernel keeps importing their submodules between cells,
unless the user's code imports one by name (a cell's ``import psutil``) or something
counted requires it (``import arrow``: arrow and the python-dateutil the kernel had
loaded, as in a script).  The same holds for every distribution the kernel loaded
before our startup file ran: the machinery's optional imports (jupyter_client tries
msgpack and orjson), and what the user's startup files sorted before ours imported,
which counts when their import lines name it (IPython runs them all in path order).
Everything else counts.
"""

import os
import sys

import popcon_site

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from popcon_site._attribution import Attributor

MACHINERY = ("ipython", "ipykernel")
OWN_STARTUP_FILE = "00-popcon-site.py"


class Kernel:
    # What a kernel's checkpoints and exit report need to tell the user's code from
    # the machinery; created once, by our startup file.
    __slots__ = (
        "host",
        "loaded",
        "machinery",
        "named",
        "named_owners",
        "requires",
        "shell",
        "startup",
        "unread",
    )

    def __init__(self, machinery: "dict[str, list[str]]", startup: "frozenset[str]") -> None:
        self.machinery = machinery  # distribution -> the distributions it requires
        self.requires: dict[str, list[str]] = {}  # the same, read for counted ones
        self.startup = startup  # modules loaded by the kernel before our startup file
        self.host: frozenset[str] | None = None  # the machinery and their owners, once known
        self.named: set[str] = set()  # top-level modules the user's code imports
        self.named_owners: set[str] = set()  # their distributions, once loaded
        self.loaded: set[str] = set()  # distributions with a module loaded so far
        self.shell: object = None
        # The user's startup files, read at the first call that may: a coding cookie's
        # codec may be an import (encodings.latin_1), which a checkpoint may not do.
        self.unread: list[str] = []

    def counted(
        self,
        owners: "set[str]",
        sent: "set[str]",
        attributor: "Attributor",
        module_files: "Callable[[Iterable[str]], set[str]]",
        may_read: bool = True,
    ) -> "set[str]":
        # The distributions to count, given the owners of modules loaded since the
        # last call (those already sent included).  may_read: metadata and startup
        # files may be read and the named modules attributed (after a cell, at exit);
        # otherwise that part waits for the next call that may.  module_files is
        # _report's, passed in: _report calls this module, never the other way round.
        host = self.host
        if host is None:
            # The machinery: the declared closure, and whatever the kernel loaded before
            # our startup file (jupyter_client's optional msgpack and orjson, for one).
            startup = attributor.owners(module_files(self.startup))
            self.loaded |= startup
            host = frozenset(self.machinery.keys() | startup)
            if may_read:  # else a cold index may leave some out: again next time
                self.host = host
        self.loaded |= owners
        while may_read and self.unread:
            try:
                self.note_imports(read_source(self.unread.pop()))
            except Exception:
                continue  # unreadable, or not Python: IPython says so, not us
        named = {name for name in self.named if name in sys.modules} if may_read else ()
        if named:
            self.named.difference_update(named)
            self.named_owners |= attributor.owners(module_files(named))
        counting = {name for name in self.loaded if name not in host} | sent
        counting |= self.named_owners & self.loaded
        todo = list(counting)
        listings: dict[str, list[str]] = {}  # site directory -> its entries, for this call
        while todo:
            for required in self._requirements(todo.pop(), may_read, attributor, listings):
                loaded = required in host and required in self.loaded
                if loaded and required not in counting:
                    counting.add(required)
                    todo.append(required)
        return counting

    def _requirements(
        self, name: str, may_read: bool, attributor: "Attributor", listings: "dict[str, list[str]]"
    ) -> "list[str]":
        known = self.machinery.get(name)
        if known is None:
            known = self.requires.get(name)
        if known is None and may_read:
            try:
                known = declared_requirements(name)
            except Exception:
                known = []  # no metadata: nothing it needs is known
            self.requires[name] = known
        elif known is None:
            # Inside the program's work (a collection, an import): no importlib.metadata,
            # the files themselves; what they cannot tell waits for a call that may read.
            try:
                known = requirements_on_disk(name, attributor.site_dirs, listings)
            except Exception:
                known = None
            if known is not None:
                self.requires[name] = known
        return known or []

    def note_imports(self, source: str) -> None:
        # The top-level modules this code's import lines name (imported_names()).
        imported_names(source, self.named)


def imported_names(source: str, into: "set[str]") -> None:
    # A line scan, not a parse: its cost grows with the lines only (~20 us for a
    # 20-line cell), IPython syntax (%magic, a %%time cell's body) needs no transform,
    # and nothing is compiled twice (a second SyntaxWarning).  Recognized: a line
    # that starts, after indentation, with ``import a.b as c, d`` (a, d) or ``from
    # x.y import z`` (x; not a relative import), up to a '#' or ';'.
    for line in source.splitlines():
        line = line.lstrip()
        if line.startswith("import "):
            names = line[len("import ") :]
        elif line.startswith("from "):
            names = line[len("from ") :].partition(" import")[0].lstrip()
            if names.startswith("."):
                continue
        else:
            continue
        names = names.partition("#")[0].partition(";")[0]
        for item in names.split(","):
            words = item.split()
            top = words[0].partition(".")[0] if words else ""
            if top.isidentifier():
                into.add(top)


def declared_requirements(name: str) -> "list[str]":
    # The distributions ``name`` requires whatever extras, any other marker ignored.
    # Reads the header lines of METADATA: the email parser behind Distribution.requires
    # makes the kernel's ~30 machinery distributions cost 15-25 ms instead of ~5.
    import importlib.metadata

    distribution = importlib.metadata.distribution(name)
    text = distribution.read_text("METADATA")
    if text is not None:
        return requires_dist(text)
    if distribution.read_text("PKG-INFO") is not None:
        return requirement_names(distribution.requires or [])  # an .egg-info: requires.txt
    raise LookupError(f"no metadata for {name}")


def requirements_on_disk(
    name: str, site_dirs: "list[str]", listings: "dict[str, list[str]]"
) -> "list[str] | None":
    # declared_requirements() without importing anything, for a checkpoint inside the
    # program's work: the METADATA of the first <name>-<version>.dist-info in the site
    # directories, in sys.path order (as importlib.metadata looks); None without one
    # (an .egg-info: left to a call that may read).  One listing per site directory
    # and call, ~0.1 ms for a few hundred entries, and one read per distribution.
    ordered = [entry for entry in sys.path if entry in site_dirs] + site_dirs
    for site_dir in ordered:
        entries = listings.get(site_dir)
        if entries is None:
            try:
                entries = listings[site_dir] = os.listdir(site_dir)
            except OSError:
                entries = listings[site_dir] = []
        for entry in entries:
            stem, dash, _ = entry.partition("-")
            if dash and entry.endswith(".dist-info") and popcon_site.normalize_name(stem) == name:
                with open(os.path.join(site_dir, entry, "METADATA"), "rb") as file:
                    data = file.read(MAX_METADATA_READ)  # the header, not a whole README
                text = data.decode("utf-8", "replace").replace("\r\n", "\n").replace("\r", "\n")
                if "\n\n" not in text and len(data) == MAX_METADATA_READ:
                    return None  # a header longer than that: left to a call that may read
                return requires_dist(text)
    return None


MAX_METADATA_READ = 256 * 1024  # real headers take a few KB; the description follows


def requires_dist(metadata: str) -> "list[str]":
    # The requirement names of a METADATA text's header (its Requires-Dist lines).
    head = metadata.partition("\n\n")[0].splitlines()
    key = "Requires-Dist:"
    return requirement_names([line[len(key) :] for line in head if line.startswith(key)])


def requirement_names(lines: "list[str]") -> "list[str]":
    # Normalized names of these requirement specifiers, those under an extra left out.
    found = []
    for line in lines:
        spec, _, marker = line.partition(";")
        if "extra" in marker:
            continue
        spec = spec.strip()
        end = 0
        while end < len(spec) and (spec[end].isalnum() or spec[end] in "._-"):
            end += 1
        if end:
            found.append(popcon_site.normalize_name(spec[:end]))
    return found


def machinery_closure(roots: "list[str]") -> "dict[str, list[str]]":
    # Each installed distribution reachable from roots -> what it requires; empty when
    # a root's own metadata cannot be read.
    closure: dict[str, list[str]] = {}
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name in closure:
            continue
        try:
            closure[name] = declared_requirements(name)
        except Exception:
            if name in roots:
                return {}
            continue  # not installed here (a marker for another platform or Python)
        todo += closure[name]
    return closure


def user_startup_files(shell: object) -> "list[str]":
    # The startup files IPython runs, as IPython.core.shellapp lists them, but ours.
    import glob

    profile = getattr(getattr(shell, "profile_dir", None), "startup_dir", None)
    application = sys.modules.get("IPython.core.application")
    dirs = [profile] if isinstance(profile, str) else []
    for name in ("ENV_CONFIG_DIRS", "SYSTEM_CONFIG_DIRS"):
        dirs += [os.path.join(d, "startup") for d in getattr(application, name, [])]
    files = []
    for directory in dirs:
        for pattern in ("*.py", "*.ipy"):
            files += glob.glob(os.path.join(glob.escape(directory), pattern))
    return [path for path in files if os.path.basename(path) != OWN_STARTUP_FILE]


def kernel_for(shell: object, startup: "frozenset[str]", ran_before: str = "") -> "Kernel | None":
    # None when the machinery's metadata cannot be read: then everything loaded when
    # our startup file runs is the machinery (Session.host_modules), as it used to be.
    # ran_before: only the user's startup files sorted before this path ran.
    roots = [name for name in MACHINERY if _module_of(name) in sys.modules]
    closure = machinery_closure(roots)
    if not closure:
        if popcon_site.is_true(os.environ.get(popcon_site.ENV_DEBUG)):
            os.write(2, b"popcon-site: no metadata for IPython: its machinery is what it loaded\n")
        return None
    kernel = Kernel(closure, startup)
    kernel.shell = shell
    files = user_startup_files(shell)
    kernel.unread = [path for path in files if not ran_before or path < ran_before]
    return kernel


def read_source(path: str) -> str:
    # A startup file's text in its PEP 263 encoding (UTF-8 without a coding cookie).
    import io
    import tokenize

    with open(path, "rb") as file:
        data = file.read()
    encoding = tokenize.detect_encoding(io.BytesIO(data).readline)[0]
    return data.decode(encoding)


def application() -> object:
    # The running IPython application (a kernel, the terminal), or None; reads a class
    # attribute, runs no code.
    module = sys.modules.get("IPython.core.application")
    return getattr(getattr(module, "BaseIPythonApplication", None), "_instance", None)


# What late_kernel() imports: loaded in a kernel before any cell (jupyter_client and
# IPython's own), so a checkpoint inside the program's work may build one.
LATE_NEEDS = ("glob", "importlib.metadata")


_late_tried = False  # late_kernel() inside the program's work: once


def late_kernel(at_exit: bool) -> "Kernel | None":
    """The Kernel our startup file would have made, when it never ran.

    IPython stops running the startup files at the first that raises: one of the
    user's sorted before ours keeps ours from running.  The machinery does not depend
    on when it is read; everything loaded since activation is then sorted by it, and
    the user's startup files that ran (those sorted before ours) are the user's code.
    None while that cannot be told yet: before the first cell (ours may still run),
    or when it would import something inside the program's work (not at_exit).
    """
    app = application()
    if app is None:
        return None
    shell = getattr(app, "shell", None)
    if not at_exit:
        first_cell_ran = getattr(shell, "execution_count", 0)
        if not (isinstance(first_cell_ran, int) and first_cell_ran > 1):
            return None
        global _late_tried
        if not all(name in sys.modules for name in LATE_NEEDS) or _late_tried:
            return None
        _late_tried = True  # without the machinery's metadata, every try is in vain
    ours = os.path.join(sys.prefix, "etc", "ipython", "startup", OWN_STARTUP_FILE)
    try:
        kernel = kernel_for(shell, frozenset(), ours)
        events = getattr(shell, "events", None)
        if kernel is not None and events is not None and not at_exit:
            events.register("post_run_cell", after_cell)  # a list's append
    except Exception:
        return None
    return kernel


def _module_of(distribution: str) -> str:
    return "IPython" if distribution == "ipython" else distribution


def exclude_kernel_machinery(shell: object = None) -> None:
    """Called from the IPython startup file; a no-op unless reporting is enabled.

    Activates reporting if the start-up hook did not (``python -S``, or a kernel
    started before popcon-site was installed), tells the kernel's machinery apart
    (module docstring), and notes what the user's startup files import.  With
    ``shell`` (the startup file's ``get_ipython()``), what each cell imported is
    sent right after it, so a kernel killed later has lost nothing.
    """
    if not popcon_site.is_true(os.environ.get(popcon_site.ENV_ENABLE)):
        return
    if popcon_site.activate():
        session = popcon_site.current()
        if session is not None:
            before = session.baseline
            session.exclude_host_distributions()
            try:
                session.kernel = kernel_for(shell, session.host_modules - before)
            except Exception:
                session.kernel = None
            events = getattr(shell, "events", None)
            if events is not None:
                events.register("post_run_cell", after_cell)


def after_cell(result: object = None) -> None:
    """IPython's post_run_cell event: note the cell's imports, then a checkpoint."""
    session = popcon_site.current()
    kernel = session.kernel if session is not None else None
    cell = getattr(getattr(result, "info", None), "raw_cell", None)
    # A cell without the word costs 0.3 us; scanning one is ~20 us per 20 lines (~50 ms per 50k).
    if kernel is not None and isinstance(cell, str) and "import" in cell:
        try:
            kernel.note_imports(cell)
        except Exception:
            pass
    popcon_site._checkpoint_due("cell")
