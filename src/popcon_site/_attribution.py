# Which installed distribution a module file is credited to, and why.
#
# Imported at exit only when the process imported something from outside the
# standard library: a module file -> the site directory holding it -> that
# directory's index (popcon_site._index, built by popcon_site._indexer when no
# fresh one exists), or an editable install's source root.  ``popcon-site which``
# and checkpoints call the same Attributor.credit() the exit report does, so they
# cannot disagree.

import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from typing import Any

    from popcon_site._index import SiteIndex

    ModuleSpec = Any  # importlib.machinery.ModuleSpec, not imported at exit

OWN_DISTRIBUTION = "popcon-site"

# Where a file is, as Attributor.credit() sees it.
IN_SITE_DIR = "site directory"  # owned by the distribution its index names, or by none
IN_EDITABLE_ROOT = "editable install"  # inside the source tree of an editable install
IN_STDLIB = "standard library"
OUTSIDE = "outside"  # a script directory, PYTHONPATH, pip --target: never counted


def specs_along(name: str, find_top: "Callable[[str], ModuleSpec | None]") -> "list[ModuleSpec]":
    # The specs of ``name``'s packages and of ``name`` itself, found without importing
    # any of them; shorter than the dotted name when a part is missing or a plain module.
    path_finder = getattr(sys.modules.get("_frozen_importlib_external"), "PathFinder", None)
    specs: list[ModuleSpec] = []
    parts = name.split(".")
    for depth in range(1, len(parts) + 1):
        partial = ".".join(parts[:depth])
        if depth == 1:
            spec = find_top(partial)
        else:
            search_path = specs[-1].submodule_search_locations
            if not search_path or path_finder is None:
                break
            spec = path_finder.find_spec(partial, list(search_path))
        if spec is None:
            break
        specs.append(spec)
    return specs


def locate_unloaded(name: str) -> "str | None":
    # Where a module that left ``sys.modules`` would be loaded from (path-based finders).
    path_finder = getattr(sys.modules.get("_frozen_importlib_external"), "PathFinder", None)
    if path_finder is None:
        return None
    try:
        specs = specs_along(name, path_finder.find_spec)
    except Exception:
        return None
    if not specs:
        return None
    last = specs[-1]
    # A plain module's attribute (``os.path``) comes from that module's file.
    if len(specs) < name.count(".") + 1 and last.submodule_search_locations:
        return None
    if last.has_location and isinstance(last.origin, str):
        return str(last.origin)
    return None


def site_dirs() -> "list[str]":
    # The directories whose distributions are counted: this interpreter's site
    # directories (environment, base when visible, user site), any ``site-packages`` /
    # ``dist-packages`` directory on ``sys.path`` (``-S``, embedded interpreters,
    # PYTHONPATH), and any other ``sys.path`` directory that holds distribution
    # metadata (``pip install --target DIR`` put on PYTHONPATH, as module trees do).
    dirs = [
        entry
        for entry in sys.path
        if isinstance(entry, str) and os.path.basename(entry) in ("site-packages", "dist-packages")
    ]
    try:
        import site

        dirs += site.getsitepackages()
        if site.ENABLE_USER_SITE and not sys.flags.no_user_site:
            dirs.append(site.getusersitepackages())
    except Exception:
        pass
    dirs += _metadata_dirs_on_path()
    unique: list[str] = []
    for directory in dirs:
        directory = os.path.normpath(directory)
        if directory not in unique and os.path.isdir(directory):
            unique.append(directory)
    return unique


def _metadata_dirs_on_path() -> "list[str]":
    # sys.path directories holding a *.dist-info or *.egg-info entry, told from the
    # listings the import system already cached (no system call); the standard
    # library's own directories are left out.
    stdlib = stdlib_dir()
    found = []
    for entry in sys.path:
        if not isinstance(entry, str) or not entry or entry == stdlib:
            continue
        listing = getattr(sys.path_importer_cache.get(entry), "_path_cache", None)
        if isinstance(listing, (set, frozenset)) and any(
            name.endswith((".dist-info", ".egg-info")) for name in listing
        ):
            found.append(entry)
    return found


def stdlib_dir() -> "str | None":
    directory = getattr(sys, "_stdlib_dir", None)
    if not directory:
        os_file = getattr(os, "__file__", None)
        directory = os.path.dirname(os_file) if os_file else None
    return directory


class NotBuilt(Exception):
    # fresh_index(build=False) found no fresh index saved: one has to be built.
    pass


def fresh_index(site_dir: str, build: bool = True) -> "SiteIndex | None":
    # A fresh index for ``site_dir``: the environment's shared one (``popcon-site index
    # --system``), else the user's cache; failing both, built now and cached, or with
    # build=False (a checkpoint inside the program's own work) NotBuilt is raised.
    from popcon_site import _index

    stamp = _index.stamp_of(site_dir)
    if stamp is None:
        return None
    for directory in _index.system_index_dirs():
        found = _index.load(directory, site_dir, stamp, shared=True)
        if found is not None:
            return found
    cache_dir = _index.user_cache_dir()
    if cache_dir is not None:
        found = _index.load(cache_dir, site_dir, stamp, shared=False)
        if found is not None:
            return found
    if not build:
        raise NotBuilt(site_dir)
    stale = _index.load(cache_dir, site_dir, None, shared=False) if cache_dir is not None else None
    from popcon_site._indexer import build as build_index

    built = build_index(site_dir)
    # A build in which most distributions failed says more about this process (sys.modules
    # replaced, no file descriptors left...) than about the directory: never keep it.
    if cache_dir is not None and built.stamp == stamp and built.complete:
        _index.save(built, cache_dir)
    if stale is not None:
        # Distributions removed while this process ran: what it imported from them still counts.
        built.fallback = stale.owners
    return built


class Attributor:
    # Credits module files to distributions, loading each site index at most once.

    def __init__(self, site_dirs: "list[str]", stdlib: "str | None") -> None:
        # Longest first, so that a site directory nested in another one wins.
        self.site_dirs = sorted(site_dirs, key=len, reverse=True)
        self.stdlib = stdlib
        self.indexes: dict[str, SiteIndex | None] = {}
        self._editable_roots: list[tuple[str, str]] | None = None

    @classmethod
    def for_this_process(cls) -> "Attributor":
        return cls(site_dirs(), stdlib_dir())

    def owners(self, files: "Iterable[str]") -> "set[str]":
        # The distributions these files are credited to (never popcon-site itself).
        found = {owner for owner in (self.credit(path)[0] for path in files) if owner}
        found.discard(OWN_DISTRIBUTION)
        return found

    def credit(self, path: str) -> "tuple[str | None, str]":
        # (owner or None, where the file is: IN_SITE_DIR, IN_EDITABLE_ROOT, IN_STDLIB, OUTSIDE).
        site_dir = self.site_dir_of(path)
        if site_dir is not None:
            index = self.index(site_dir)
            relative = path[len(site_dir) + 1 :].split(os.sep)
            return (index.owner_of(relative) if index is not None else None), IN_SITE_DIR
        if self.in_stdlib(path):
            return None, IN_STDLIB
        owner = owner_by_root(path, self.editable_roots())
        return (owner, IN_EDITABLE_ROOT) if owner is not None else (None, OUTSIDE)

    def site_dir_of(self, path: str) -> "str | None":
        for site_dir in self.site_dirs:
            if path.startswith(site_dir) and path[len(site_dir) : len(site_dir) + 1] == os.sep:
                return site_dir
        return None

    def in_stdlib(self, path: str) -> bool:
        return bool(self.stdlib) and path.startswith(f"{self.stdlib}{os.sep}")

    def editable_roots(self) -> "list[tuple[str, str]]":
        # (source root, owner), longest first; read from the indexes once, when first needed.
        if self._editable_roots is None:
            roots: dict[str, str] = {}
            for site_dir in self.site_dirs:
                index = self.index(site_dir)
                if index is not None:
                    for root, owner in index.roots.items():
                        roots.setdefault(root, owner)
            self._editable_roots = sorted(roots.items(), key=lambda item: -len(item[0]))
        return self._editable_roots

    def reset_editable_roots(self) -> None:
        self._editable_roots = None

    def index(self, site_dir: str) -> "SiteIndex | None":
        if site_dir not in self.indexes:
            self.indexes[site_dir] = fresh_index(site_dir)
        return self.indexes[site_dir]

    def namespace_owners(self, locations: "Iterable[str]") -> "set[str]":
        # The distributions that installed something under these namespace package dirs.
        found: set[str] = set()
        for location in locations:
            site_dir = self.site_dir_of(location)
            index = self.index(site_dir) if site_dir else None
            if index is None or site_dir is None:
                continue
            key = os.path.relpath(location, site_dir).replace(os.sep, "/") + "/"
            found |= {owner for path, owner in index.owners.items() if path.startswith(key)}
        found.discard(OWN_DISTRIBUTION)
        return found


def owner_by_root(path: str, roots: "list[tuple[str, str]]") -> "str | None":
    # The editable install whose source root holds ``path`` (roots longest first).
    for root, owner in roots:
        if path.startswith(root) and path[len(root) : len(root) + 1] == os.sep:
            return owner
    return None
