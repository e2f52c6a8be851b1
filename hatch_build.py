"""Hatchling build hook: which start-up hook files a wheel holds, and the tag that says where.

Python 3.15-3.17 run a ``.pth`` import line unless a ``.start`` of the same name is
beside it, and pay ~12 ms per process (``site`` imports pkgutil) for any ``.start``;
3.18 ignores ``.pth`` import lines.  So a wheel carries one hook, and its tag keeps it
off the interpreters where that hook would be wrong:

- ``pth``: popcon_site.pth, tagged ``cp39.cp310...cp317-none-any``.  ``cpXY-none-any``
  fits CPython X.Y only, where ``pyXY`` would also fit every later Python;
- ``start``: popcon_site.start, tagged ``py318-none-any`` (3.18 and later only);
- ``both``: both files, ``py3-none-any``, for a site directory shared by several Python
  versions (a distro package); 3.15-3.17 then run the ``.start`` and pay for it.

``POPCON_SITE_HOOKS=pth|start|both`` picks one (the published wheels are ``pth`` and
``start``).  Unset, as in ``pip install .``, ``uv pip install .`` and installs from
the sdist: the hook of the interpreter running the build, tagged for that interpreter
alone (``cp311-none-any``; ``py318-none-any`` from 3.18), so no wheel cache hands the
build to an interpreter it does not fit.  Editable wheels get hatchling's own
``py3-none-any`` whatever this hook says; pip and uv do not cache them across envs.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

HOOK_FILES = {
    "pth": ["popcon_site.pth"],
    "start": ["popcon_site.start"],
    "both": ["popcon_site.pth", "popcon_site.start"],
}
FIRST_START_ONLY = (3, 18)  # the first Python that ignores .pth import lines
PTH_TAG = ".".join(f"cp3{minor}" for minor in range(9, FIRST_START_ONLY[1])) + "-none-any"
PUBLISHED_TAGS = {"pth": PTH_TAG, "start": "py318-none-any", "both": "py3-none-any"}
VARIABLE = "POPCON_SITE_HOOKS"


def choose(
    requested: str | None, version: tuple[int, int], interpreter_tag: str
) -> tuple[str, str]:
    """(variant, wheel tag) for a build asked for ``requested`` on this interpreter."""
    if requested:
        if requested not in HOOK_FILES:
            raise ValueError(f"{VARIABLE}={requested!r}: expected one of {sorted(HOOK_FILES)}")
        return requested, PUBLISHED_TAGS[requested]
    if version >= FIRST_START_ONLY:
        return "start", PUBLISHED_TAGS["start"]
    return "pth", f"{interpreter_tag}-none-any"


class HooksBuildHook(BuildHookInterface):  # type: ignore[type-arg]
    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        from packaging.tags import interpreter_name, interpreter_version

        variant, tag = choose(
            os.environ.get(VARIABLE, "").strip() or None,
            sys.version_info[:2],
            interpreter_name() + interpreter_version(),
        )
        for name in HOOK_FILES[variant]:
            # The root of site-packages, listed in RECORD: `pip uninstall` removes it.
            build_data["force_include"][os.path.join(self.root, name)] = name
        build_data["tag"] = tag  # editable builds overwrite it with py3-none-any
