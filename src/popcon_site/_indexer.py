"""Builds the index of one site directory from installed metadata (importlib-metadata).

Runs only when no fresh index exists: after an install, or the first time.
Costs tens of milliseconds for a hundred distributions; every process after
that reads the result instead.
"""

from __future__ import annotations

import csv
import os
from collections import defaultdict

from popcon_site import is_safe_name, normalize_name
from popcon_site._index import SiteIndex, stamp_of

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

    Distribution = Any  # importlib-metadata's Distribution or its IDistribution protocol

_METADATA_DIR_SUFFIXES = (".dist-info", ".egg-info", ".data")
MODULE_SUFFIXES = (".py", ".pyc", ".so", ".pyd", ".pyw")

Parts = tuple[str, ...]


def build(site_dir: str) -> SiteIndex:
    """Index every distribution installed in ``site_dir``; broken ones are skipped."""
    # Stamp first: an install racing with the scan leaves a stale index, never a wrong fresh one.
    stamp = stamp_of(site_dir) or ""
    from importlib_metadata import distributions

    owned: dict[Parts, set[str]] = defaultdict(set)
    roots: dict[str, str] = {}
    listing: list[str] | None = None
    total = failures = 0
    for dist in distributions(path=[site_dir]):
        total += 1
        try:
            name = normalize_name(distribution_name(dist))
            if not is_safe_name(name):
                continue
            installed = _installed_paths(dist)
            paths = [parts for parts in installed if _inside_site_dir(parts)]
            if not paths:
                if listing is None:
                    listing = _listing(site_dir)
                paths = _top_level_paths(dist, listing, name)
            for parts in paths:
                owned[parts].add(name)
            for root in _editable_roots(dist, installed, site_dir):
                roots.setdefault(root, name)
        except Exception:  # one broken distribution must not cost the others
            failures += 1
            continue
    index = SiteIndex(site_dir, stamp, shortest_unique_prefixes(owned), roots)
    # A broken distribution or two fail the same way every time; most of them failing at
    # once is this process's state (sys.modules replaced, no file descriptors left...),
    # and must not be saved for every later process.
    index.complete = failures == 0 or failures * 2 < total
    return index


def shortest_unique_prefixes(owned: Mapping[Parts, set[str]]) -> dict[str, str]:
    """Map each path prefix owned by exactly one distribution to it, as short as possible.

    ``yaml/...`` is all pyyaml's, so ``yaml`` is enough; ``google/`` holds
    files of several distributions, so it is split into ``google/protobuf``,
    ``google/api``...  A file that several distributions list (a pkgutil-style
    namespace ``__init__.py`` such as ``backports/__init__.py``, or a name several
    top_level.txt claim) stays unowned: it counts for none of them by itself.
    """
    result: dict[str, str] = {}
    pending: list[tuple[int, list[tuple[Parts, set[str]]]]] = [(0, list(owned.items()))]
    while pending:
        depth, items = pending.pop()
        groups: dict[Parts, list[tuple[Parts, set[str]]]] = defaultdict(list)
        for parts, owners in items:
            if len(parts) > depth:
                groups[parts[: depth + 1]].append((parts, owners))
        for prefix, group in groups.items():
            owners = set().union(*(owners for _, owners in group))
            if len(owners) == 1:
                result["/".join(prefix)] = next(iter(owners))
            else:
                pending.append((depth + 1, group))
    return result


def distribution_name(dist: Distribution) -> str:
    """The Name header, read directly: the email parser behind ``dist.metadata``
    costs more than everything else the build does."""
    text = dist.read_text("METADATA") or dist.read_text("PKG-INFO") or ""
    for line in text.splitlines():
        if not line.strip():
            break  # end of the headers
        key, colon, value = line.partition(":")
        if colon and key.strip().lower() == "name":
            return value.strip()
    return ""


def _installed_paths(dist: Distribution) -> list[Parts]:
    """Every path the installer recorded, relative to the site directory.

    RECORD is read as CSV text (``dist.files`` builds an object per line);
    without one, importlib-metadata's fallbacks (installed-files.txt, SOURCES.txt).
    """
    record = dist.read_text("RECORD")
    if record is not None:
        names = [row[0] for row in csv.reader(record.splitlines()) if row]
    else:
        names = [str(file) for file in dist.files or ()]
    return [tuple(name.replace("\\", "/").split("/")) for name in names]


def _inside_site_dir(parts: Parts) -> bool:
    return bool(
        parts
        and parts[0]
        and not parts[0].endswith(_METADATA_DIR_SUFFIXES)
        and ".." not in parts
        and "__pycache__" not in parts
        and not any("\n" in part or "\r" in part for part in parts)
    )


def _top_level_paths(dist: Distribution, listing: list[str], name: str) -> list[Parts]:
    """Without a file list, the site directory entries named in top_level.txt.

    Without that too (Debian's python3-numpy ships a .dist-info with neither RECORD
    nor top_level.txt), the module named like the distribution: ``numpy``.
    """
    text = dist.read_text("top_level.txt")
    if text is None:
        text = name.replace("-", "_")
    names = {line.strip() for line in text.splitlines() if line.strip()}
    paths: list[Parts] = []
    for entry in listing:
        module = entry.split(".", 1)[0]
        is_module_file = entry != module and entry.endswith(MODULE_SUFFIXES)
        if module in names and (entry == module or is_module_file):
            paths.append((entry,))
    return paths


def _listing(site_dir: str) -> list[str]:
    try:
        return os.listdir(site_dir)
    except OSError:
        return []


def _editable_roots(dist: Distribution, installed: list[Parts], site_dir: str) -> list[str]:
    """Source directories an editable install put on sys.path (PEP 660 .pth or finder)."""
    top_files = [parts[0] for parts in installed if len(parts) == 1]
    if not any(name.endswith((".pth", "_finder.py")) for name in top_files):
        return []
    if not _is_editable(dist):
        return []
    roots = []
    for name in top_files:
        if name.endswith(".pth"):
            roots += _pth_paths(os.path.join(site_dir, name), site_dir)
        elif name.startswith("__editable__") and name.endswith("_finder.py"):
            roots += _finder_mapping_paths(os.path.join(site_dir, name))
    return [root for root in roots if _usable_root(root)]


def _is_editable(dist: Distribution) -> bool:
    import json

    try:
        info = json.loads(dist.read_text("direct_url.json") or "{}")
        return bool(info.get("dir_info", {}).get("editable"))
    except (ValueError, AttributeError):
        return False


def _pth_paths(pth_file: str, site_dir: str) -> list[str]:
    with open(pth_file, encoding="utf-8", errors="surrogateescape") as stream:
        lines = [line.strip() for line in stream]
    return [
        os.path.normpath(os.path.join(site_dir, line))
        for line in lines
        if line and not line.startswith(("#", "import ", "import\t"))
    ]


def _finder_mapping_paths(finder_file: str) -> list[str]:
    """setuptools' editable finder keeps ``MAPPING = {'pkg': '/src/pkg'}``; read it as data."""
    import ast

    with open(finder_file, encoding="utf-8") as stream:
        tree = ast.parse(stream.read())
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
        value = getattr(node, "value", None)
        if value is not None and any(getattr(t, "id", None) == "MAPPING" for t in targets):
            mapping = ast.literal_eval(value)
            if isinstance(mapping, dict):
                return [os.path.normpath(str(path)) for path in mapping.values()]
    return []


def _usable_root(root: str) -> bool:
    """A root must be a real directory, and not the file system root (it would own everything).

    A root may contain site directories (a project with its .venv inside):
    site directories are matched before editable roots.
    """
    return os.path.isabs(root) and root != os.path.dirname(root) and os.path.isdir(root)
