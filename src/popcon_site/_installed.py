"""What is installed: distributions, their sizes and requirements, and the metadata
that proves why a file is credited (for the CLI only; never loaded by a reporting process).
"""

from __future__ import annotations

import os
import re
import site
from typing import Any

from popcon_site import normalize_name
from popcon_site._attribution import Attributor, site_dirs
from popcon_site._indexer import MODULE_SUFFIXES, distribution_name


def user_site() -> str | None:
    try:
        return os.path.normpath(site.getusersitepackages())
    except Exception:
        return None


def environment_site_dirs() -> list[str]:
    """This environment's site directories (and the base's when visible), not the user's."""
    user = user_site()
    return [d for d in site_dirs() if d != user]


class Installed:
    """One installed distribution: name, version, size on disk, what it requires."""

    def __init__(self, name: str, display: str, version: str, site_dir: str) -> None:
        self.name = name
        self.display = display
        self.version = version
        self.site_dir = site_dir
        self.size: int | None = None
        self.has_modules = True
        self.requires: set[str] = set()
        self.required_by: set[str] = set()


# The distribution name at the start of a Requires-Dist value (PEP 508).
_REQUIREMENT_NAME = re.compile(r"^\s*([A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)")
_EXTRA_MARKER = re.compile(r"\bextra\b")
_OR_MARKER = re.compile(r"\bor\b")


def required_name(requirement: str) -> str | None:
    """The normalized name a Requires-Dist line needs, or None if only an extra needs it.

    Markers are not evaluated (that needs ``packaging``, which is not a
    dependency): a requirement limited to some Python version or platform is
    taken as required, the safe side for "removing it is not safe".  A
    requirement that only an extra asks for (``; extra == "x"``) is ignored,
    as ``pip check`` does: nothing records which extras were installed.
    """
    match = _REQUIREMENT_NAME.match(requirement)
    if match is None:
        return None
    _, _, marker = requirement.partition(";")
    if _EXTRA_MARKER.search(marker) and not _OR_MARKER.search(marker):
        return None
    return normalize_name(match.group(1))


def installed_distributions(directories: list[str]) -> dict[str, Installed]:
    """Distributions visible in these site directories; the first of a name wins, as imports."""
    from importlib_metadata import distributions

    found: dict[str, Installed] = {}
    for site_dir in directories:
        for dist in distributions(path=[site_dir]):
            try:
                display = distribution_name(dist)
                name = normalize_name(display)
                if not name or name in found:
                    continue
                item = Installed(name, display, dist.version or "", site_dir)
                item.size, item.has_modules = disk_usage(dist)
                for requirement in dist.requires or ():
                    needed = required_name(requirement)
                    if needed and needed != name:
                        item.requires.add(needed)
            except Exception:
                continue
            found[name] = item
    for item in found.values():
        for needed in item.requires:
            if needed in found:
                found[needed].required_by.add(item.name)
    return found


def disk_usage(dist: Any) -> tuple[int | None, bool]:
    """Bytes on disk of every file in RECORD (stat, else RECORD's size) and any modules?"""
    files = dist.files
    if not files:
        return None, True
    total = 0
    has_modules = False
    for file in files:
        path = str(file).replace("\\", "/")
        top = path.split("/", 1)[0]
        if (
            path.endswith(MODULE_SUFFIXES)
            and ".." not in path.split("/")
            and not top.endswith((".dist-info", ".egg-info", ".data"))
        ):
            has_modules = True
        try:
            total += os.lstat(file.locate()).st_size
        except (OSError, ValueError):
            total += file.size or 0
    return total, has_modules


def record_evidence(site_dir: str, relative: str, owner: str, attributor: Attributor) -> str:
    """The RECORD line that credits the file, and the index entry that made the decision."""
    from importlib_metadata import distributions

    index = attributor.index(site_dir)
    key = None
    if index is not None:
        parts = relative.split("/")
        for depth in range(1, len(parts) + 1):
            if "/".join(parts[:depth]) in index.owners:
                key = "/".join(parts[:depth])
                break
    entry = f"index entry {key!r} -> {owner}" if key else f"index -> {owner}"
    for dist in distributions(path=[site_dir]):
        try:
            display = distribution_name(dist)
            if normalize_name(display) != owner:
                continue
            label = f"{display} {dist.version}"
            files = dist.files
            if files and any(str(f).replace("\\", "/") == relative for f in files):
                record = "RECORD" if dist.read_text("RECORD") is not None else "file list"
                return f"{record} of {label} lists {relative}; {entry}"
            if files:
                return f"{relative} is under a path only {label} installed; {entry}"
            return f"top_level.txt of {label} (it has no RECORD); {entry}"
        except Exception:
            continue
    return entry


def claimants(site_dir: str, relative: str) -> list[str]:
    """The distributions whose file list (or top_level.txt) names this file of site_dir."""
    from importlib_metadata import distributions

    top = relative.split("/", 1)[0].split(".", 1)[0]
    found = set()
    for dist in distributions(path=[site_dir]):
        try:
            files = dist.files
            if files is not None:
                listed = any(str(f).replace("\\", "/") == relative for f in files)
            else:
                listed = top in (dist.read_text("top_level.txt") or "").split()
            if listed:
                found.add(normalize_name(distribution_name(dist)))
        except Exception:
            continue
    return sorted(found)
