"""Which start-up hook file this interpreter runs, and why (for ``popcon-site status``).

3.9-3.14 know only ``.pth`` import lines.  3.15-3.17 also run PEP 829 ``.start``
entry points, and a ``.start`` beside a ``.pth`` of the same name switches that
``.pth``'s import lines off; any ``.start`` makes ``site`` import pkgutil in every
process (~1.75x ``python -c pass`` on 3.15).  3.18 ignores ``.pth`` import lines.
The wheels hold one file each (hatch_build.py); both together mean a build for a
site directory shared by several Python versions.
"""

from __future__ import annotations

import os
import sys
from typing import Any

PTH, START = "popcon_site.pth", "popcon_site.start"
ROLES = {
    PTH: "start-up hook, Python 3.9-3.17 when no .start is beside it",
    START: "start-up hook, Python 3.15+ (PEP 829); the only one from 3.18",
}


def state(site_dirs: list[str], version: tuple[int, int] | None = None) -> dict[str, Any]:
    """The hook files in ``site_dirs``, the one this Python runs, whether it is there, and why."""
    version = version or (sys.version_info[0], sys.version_info[1])
    files: list[dict[str, str]] = []
    found = {PTH: False, START: False}
    pth_alone = False
    for directory in site_dirs:
        here = {name: os.path.isfile(os.path.join(directory, name)) for name in ROLES}
        for name, present in here.items():
            if present:
                files.append({"file": os.path.join(directory, name), "role": ROLES[name]})
                found[name] = True
        pth_alone = pth_alone or (here[PTH] and not here[START])
    used, why = _used(version, found[START], pth_alone)
    return {"installed": found[used], "used_by_this_python": used, "why": why, "files": files}


def _used(version: tuple[int, int], any_start: bool, pth_alone: bool) -> tuple[str, str]:
    minor = f"{version[0]}.{version[1]}"
    if version >= (3, 18):
        return START, f"Python {minor} ignores .pth import lines: the .start entry point runs"
    if version < (3, 15):
        return PTH, f"Python {minor} runs .pth import lines and knows no .start files (3.15+)"
    if pth_alone or not any_start:
        return PTH, (
            f"Python {minor} still runs .pth import lines; no .start beside it, so site does"
            " not import pkgutil for one (a .start costs every process ~12 ms)"
        )
    return START, (
        f"popcon_site.start beside popcon_site.pth switches its import line off on {minor}:"
        " the entry point runs, and site imports pkgutil for it in every process (~12 ms,"
        " reporting on or off); installed for several Python versions at once?"
        " The popcon-site wheel for 3.9-3.17 has the .pth alone"
    )
