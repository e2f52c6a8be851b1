# Which installed distribution a module file belongs to.
#
# Imported at exit only when the process imported something from outside the
# standard library: a module file -> the site directory holding it -> that
# directory's index (popcon_site._index), or an editable install's source root.

import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable

    from popcon_site._index import SiteIndex

OWN_DISTRIBUTION = "popcon-site"


def locate_unloaded(name: str) -> "str | None":
    # Where a module that left ``sys.modules`` would be loaded from (path-based finders).
    finder = getattr(sys.modules.get("_frozen_importlib_external"), "PathFinder", None)
    if finder is None:
        return None
    search_path = None
    parts = name.split(".")
    for depth in range(1, len(parts) + 1):
        try:
            spec = finder.find_spec(".".join(parts[:depth]), search_path)
        except Exception:
            return None
        if spec is None:
            return None
        is_last = depth == len(parts) or not spec.submodule_search_locations
        if spec.has_location and isinstance(spec.origin, str) and is_last:
            return str(spec.origin)
        search_path = spec.submodule_search_locations
        if search_path is None:
            return None
    return None


def site_dirs() -> "list[str]":
    # The site directories of this interpreter (environment, base when visible, user site).
    #
    # Also any ``site-packages`` / ``dist-packages`` directory on ``sys.path``:
    # with ``-S`` or in an embedded interpreter the program adds them itself.
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
    unique: list[str] = []
    for directory in dirs:
        directory = os.path.normpath(directory)
        if directory not in unique and os.path.isdir(directory):
            unique.append(directory)
    return unique


def stdlib_dir() -> "str | None":
    directory = getattr(sys, "_stdlib_dir", None)
    if not directory:
        os_file = getattr(os, "__file__", None)
        directory = os.path.dirname(os_file) if os_file else None
    return directory


class Attributor:
    # Maps module files to distribution names, loading each site index at most once.

    def __init__(self, site_dirs: "list[str]", stdlib: "str | None") -> None:
        # Longest first, so that a site directory nested in another one wins.
        self.site_dirs = sorted(site_dirs, key=len, reverse=True)
        self.stdlib = stdlib
        self.indexes: dict[str, SiteIndex | None] = {}
        self.built: list[str] = []

    @classmethod
    def for_this_process(cls) -> "Attributor":
        return cls(site_dirs(), stdlib_dir())

    def distributions(self, files: "Iterable[str]") -> "set[str]":
        found: set[str] = set()
        outside: list[str] = []
        for path in files:
            owner, decided = self.owner_in_site_dir(path)
            if owner is not None:
                found.add(owner)
            elif not decided:
                outside.append(path)
        if outside:
            roots = self.editable_roots()
            for path in outside:
                owner = owner_by_root(path, roots)
                if owner is not None:
                    found.add(owner)
        found.discard(OWN_DISTRIBUTION)
        return found

    def site_dir_of(self, path: str) -> "str | None":
        for site_dir in self.site_dirs:
            if path.startswith(site_dir) and path[len(site_dir) : len(site_dir) + 1] == os.sep:
                return site_dir
        return None

    def in_stdlib(self, path: str) -> bool:
        return bool(self.stdlib) and path.startswith(f"{self.stdlib}{os.sep}")

    def owner_in_site_dir(self, path: str) -> "tuple[str | None, bool]":
        # (owner, decided): decided is False when only editable roots can tell.
        site_dir = self.site_dir_of(path)
        if site_dir is not None:
            index = self.index(site_dir)
            if index is None:
                return None, True
            return index.owner_of(path[len(site_dir) + 1 :].split(os.sep)), True
        return None, self.in_stdlib(path)

    def editable_roots(self) -> "list[tuple[str, str]]":
        roots: dict[str, str] = {}
        for site_dir in self.site_dirs:
            index = self.index(site_dir)
            if index is not None:
                for root, owner in index.roots.items():
                    roots.setdefault(root, owner)
        return sorted(roots.items(), key=lambda item: len(item[0]), reverse=True)

    def index(self, site_dir: str) -> "SiteIndex | None":
        if site_dir not in self.indexes:
            from popcon_site import _index

            found, built = _index.fresh_index(site_dir)
            if built:
                self.built.append(site_dir)
            self.indexes[site_dir] = found
        return self.indexes[site_dir]


def owner_by_root(path: str, roots: "list[tuple[str, str]]") -> "str | None":
    for root, owner in roots:
        if path.startswith(root) and path[len(root) : len(root) + 1] == os.sep:
            return owner
    return None
