"""IPython / Jupyter kernels: count what the user's code imports, not the kernel itself.

The kernel's machinery is the running IPython and ipykernel and every distribution
they declare they need (Requires-Dist without an ``extra`` marker, transitively):
those never count, though the kernel keeps importing their submodules between cells,
unless the user's code imports one by name (a cell's ``import psutil``) or something
counted requires it (``import arrow``: arrow and the python-dateutil the kernel had
loaded, as in a script).  Everything else counts, including what the user's own
startup files imported before ours ran (IPython runs them all in path order).
"""

import os
import sys

import popcon_site

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

MACHINERY = ("ipython", "ipykernel")
OWN_STARTUP_FILE = "00-popcon-site.py"


class Kernel:
    # What a kernel's checkpoints and exit report need to tell the user's code from
    # the machinery; created once, by our startup file.
    __slots__ = ("loaded", "machinery", "named", "named_owners", "requires", "shell", "startup")

    def __init__(self, machinery: "dict[str, list[str]]", startup: "frozenset[str]") -> None:
        self.machinery = machinery  # distribution -> the distributions it requires
        self.requires: dict[str, list[str]] = {}  # the same, read for counted ones
        self.startup = startup  # modules loaded by the kernel before our startup file
        self.named: set[str] = set()  # top-level modules the user's code imports
        self.named_owners: set[str] = set()  # their distributions, once loaded
        self.loaded: set[str] = set()  # distributions with a module loaded so far
        self.shell: object = None

    def counted(
        self,
        owners: "set[str]",
        sent: "set[str]",
        owners_of: "Callable[[Iterable[str]], set[str]]",
        may_read: bool = True,
    ) -> "set[str]":
        # The distributions to count, given the owners of modules loaded since the
        # last call (those already sent included).  may_read: metadata files may be
        # read and the named modules attributed (after a cell, at exit); otherwise
        # that part waits for the next call that may.
        self.loaded |= owners
        found = {name for name in self.named if name in sys.modules} if may_read else ()
        if found:
            self.named.difference_update(found)
            self.named_owners |= owners_of(found)
        counting = {name for name in owners if name not in self.machinery} | sent
        counting |= self.named_owners & self.loaded
        todo = list(counting)
        while todo:
            for required in self._requirements(todo.pop(), may_read):
                loaded = required in self.machinery and required in self.loaded
                if loaded and required not in counting:
                    counting.add(required)
                    todo.append(required)
        return counting

    def _requirements(self, name: str, may_read: bool) -> "list[str]":
        known = self.machinery.get(name)
        if known is None:
            known = self.requires.get(name)
        if known is None and may_read:
            try:
                known = declared_requirements(name)
            except Exception:
                known = []  # no metadata: nothing it needs is known
            self.requires[name] = known
        return known or []

    def note_imports(self, source: str, ipython_syntax: bool) -> None:
        # The top-level modules imported by absolute imports in this code; a cell or
        # a .ipy file may be IPython syntax (%magic, !shell), turned into Python first.
        import ast
        import warnings

        # IPython compiles the cell itself and shows its warnings; a second parse here
        # would print each SyntaxWarning (an invalid escape, 3.12+) once more.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                tree = ast.parse(source)
            except SyntaxError:
                transform = getattr(self.shell, "transform_cell", None)
                if not ipython_syntax or transform is None:
                    return
                tree = ast.parse(transform(source))
        imported_names(tree.body, self.named)


def imported_names(body: "Iterable[object]", into: "set[str]") -> None:
    # Walks statements only (imports are statements): ~10 us for a 20-line cell.
    import ast

    for node in body:
        if isinstance(node, ast.Import):
            into.update(alias.name.partition(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if not node.level and node.module:
                into.add(node.module.partition(".")[0])
        else:
            for field in ("body", "orelse", "finalbody", "handlers", "cases"):
                inner = getattr(node, field, None)
                if isinstance(inner, list):
                    imported_names(inner, into)


def declared_requirements(name: str) -> "list[str]":
    # The distributions ``name`` requires whatever extras, any other marker ignored.
    # Reads the header lines of METADATA: the email parser behind Distribution.requires
    # makes the kernel's ~30 machinery distributions cost 15-25 ms instead of ~5.
    import importlib.metadata

    distribution = importlib.metadata.distribution(name)
    text = distribution.read_text("METADATA")
    if text is not None:
        head = text.partition("\n\n")[0].splitlines()
        lines = [line[14:] for line in head if line.startswith("Requires-Dist:")]
    elif distribution.read_text("PKG-INFO") is not None:
        lines = distribution.requires or []  # an .egg-info: requires.txt
    else:
        raise LookupError(f"no metadata for {name}")
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


def kernel_for(shell: object, startup: "frozenset[str]") -> "Kernel | None":
    # None when the machinery's metadata cannot be read: then everything loaded when
    # our startup file runs is the machinery (Session.host_modules), as it used to be.
    roots = [name for name in MACHINERY if _module_of(name) in sys.modules]
    closure = machinery_closure(roots)
    if not closure:
        if popcon_site.is_true(os.environ.get(popcon_site.ENV_DEBUG)):
            os.write(2, b"popcon-site: no metadata for IPython: its machinery is what it loaded\n")
        return None
    kernel = Kernel(closure, startup)
    kernel.shell = shell
    for path in user_startup_files(shell):
        try:
            with open(path, encoding="utf-8") as file:
                kernel.note_imports(file.read(), path.endswith(".ipy"))
        except Exception:
            continue  # unreadable, or not Python: IPython says so, not us
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
    # A cell without the word costs 0.3 us; parsing one is ~200 us per 20 lines.
    if kernel is not None and isinstance(cell, str) and "import" in cell:
        try:
            kernel.note_imports(cell, True)
        except Exception:
            pass
    popcon_site._checkpoint_due("cell")
