"""Which installed distribution does a loaded module belong to?

Decided by where the module was loaded from: its file's site directory and
that directory's index (RECORD-derived), or the source tree of an editable
install.  Files in the standard library, the script's directory or any other
path no distribution installed belong to nobody.
"""

from __future__ import annotations

import os
import sys

from popcon_site import _index

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable

OWN_DISTRIBUTION = "popcon-site"


def module_file(module: object) -> str | None:
    """The file a module object was loaded from, read without triggering lazy loaders.

    ``sys.modules`` may hold lazy modules or arbitrary objects; reading the
    instance dictionary directly runs no ``__getattr__`` of theirs.
    """
    try:
        namespace = object.__getattribute__(module, "__dict__")
        path = namespace.get("__file__")
    except Exception:
        return None
    return path if isinstance(path, str) and os.path.isabs(path) else None


def locate_unloaded(name: str) -> str | None:
    """Where a module that left ``sys.modules`` would be loaded from (path-based finders)."""
    external = sys.modules.get("_frozen_importlib_external")
    finder = getattr(external, "PathFinder", None)
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


def site_dirs() -> list[str]:
    """The site directories of this interpreter (environment, base when visible, user site).

    Also any ``site-packages`` / ``dist-packages`` directory on ``sys.path``:
    with ``-S`` or in an embedded interpreter the program adds them itself.
    """
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
    unique = []
    for directory in dirs:
        directory = os.path.normpath(directory)
        if directory not in unique and os.path.isdir(directory):
            unique.append(directory)
    return unique


def stdlib_dir() -> str | None:
    directory = getattr(sys, "_stdlib_dir", None)
    if not directory:
        os_file = getattr(os, "__file__", None)
        directory = os.path.dirname(os_file) if os_file else None
    return directory


class Attributor:
    """Maps module files to distribution names, loading each site index at most once."""

    def __init__(
        self,
        site_dirs: list[str],
        stdlib: str | None,
        cache_dir: str | None,
        system_dirs: list[str],
    ) -> None:
        # Longest first, so a site directory nested in another wins.
        self.site_dirs = sorted(site_dirs, key=len, reverse=True)
        self.stdlib = stdlib
        self.cache_dir = cache_dir
        self.system_dirs = system_dirs
        self.indexes: dict[str, _index.SiteIndex | None] = {}
        self.built: list[str] = []

    @classmethod
    def for_this_process(cls) -> Attributor:
        return cls(site_dirs(), stdlib_dir(), _index.user_cache_dir(), _index.system_index_dirs())

    def distributions(self, files: Iterable[str]) -> set[str]:
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
                owner = _owner_by_root(path, roots)
                if owner is not None:
                    found.add(owner)
        found.discard(OWN_DISTRIBUTION)
        return found

    def owner_in_site_dir(self, path: str) -> tuple[str | None, bool]:
        """(owner, decided): decided is False when only editable roots can tell."""
        sep = os.sep
        for site_dir in self.site_dirs:
            if path.startswith(site_dir) and path[len(site_dir) : len(site_dir) + 1] == sep:
                index = self.index(site_dir)
                if index is None:
                    return None, True
                return index.owner_of(path[len(site_dir) + 1 :].split(sep)), True
        if self.stdlib and path.startswith(self.stdlib + sep):
            return None, True
        return None, False

    def editable_roots(self) -> list[tuple[str, str]]:
        roots: dict[str, str] = {}
        for site_dir in self.site_dirs:
            index = self.index(site_dir)
            if index is not None:
                for root, owner in index.roots.items():
                    roots.setdefault(root, owner)
        return sorted(roots.items(), key=lambda item: len(item[0]), reverse=True)

    def index(self, site_dir: str) -> _index.SiteIndex | None:
        if site_dir not in self.indexes:
            self.indexes[site_dir] = self._fresh_index(site_dir)
        return self.indexes[site_dir]

    def _fresh_index(self, site_dir: str) -> _index.SiteIndex | None:
        stamp = _index.stamp_of(site_dir)
        if stamp is None:
            return None
        for directory in self.system_dirs:
            found = _index.load(directory, site_dir, stamp, shared=True)
            if found is not None:
                return found
        if self.cache_dir is not None:
            found = _index.load(self.cache_dir, site_dir, stamp, shared=False)
            if found is not None:
                return found
        from popcon_site._build import build

        built = build(site_dir)
        self.built.append(site_dir)
        if self.cache_dir is not None and built.stamp == stamp:
            _index.save(built, self.cache_dir)
        return built


def _owner_by_root(path: str, roots: list[tuple[str, str]]) -> str | None:
    for root, owner in roots:
        if path.startswith(root) and path[len(root) : len(root) + 1] == os.sep:
            return owner
    return None
