"""``popcon-site which MODULE...``: the distribution each module would be credited to, and why.

The verdict comes from Attributor.credit(), the function the exit report uses.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from typing import Any

from popcon_site import ENV_EXCLUDE, ENV_INCLUDE, is_safe_name
from popcon_site._attribution import (
    IN_EDITABLE_ROOT,
    IN_SITE_DIR,
    IN_STDLIB,
    OWN_DISTRIBUTION,
    Attributor,
    specs_along,
)
from popcon_site._installed import claimants, record_evidence
from popcon_site._report import Config, ConfigError, config_from_environ
from popcon_site.cli._output import EXIT_EMPTY, EXIT_OK, print_json

HELP = "the distribution each module would be credited to, and why"

BASELINE_NOTE = (
    "not applicable outside a running process: a module already loaded when a process "
    "starts reporting (start-up, or an IPython kernel's own modules) is not counted in that "
    "process. `popcon-site watch -- COMMAND` shows what a real process sends."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("modules", nargs="+", metavar="MODULE", help="e.g. yaml, google.protobuf")


def run(args: argparse.Namespace) -> int:
    attributor = Attributor.for_this_process()
    try:
        config: Config | None = config_from_environ()
    except ConfigError:
        config = None
    rows = []
    missing = []
    for name in args.modules:
        try:
            row = explain(name, attributor, config)
        except LookupError as exc:
            missing.append(f"{name}: {exc}")
            row = _row(name, found=False, reason=str(exc))
        rows.append(row)
    if args.json:
        print_json({"modules": rows, "baseline": BASELINE_NOTE})
    else:
        for row in rows:
            if not row["found"]:
                continue
            verdict = f"{row['distribution']} (counted)" if row["counted"] else "not counted"
            print(f"{row['module']}: {verdict}")
            print(f"    file:  {row['file'] or '-'}")
            print(f"    why:   {row['reason']}")
            if row["evidence"]:
                print(f"    proof: {row['evidence']}")
        if len(missing) < len(rows):
            print(f"baseline: {BASELINE_NOTE}")
    for line in missing:
        print(f"popcon-site: which {line}", file=sys.stderr)
    return EXIT_EMPTY if missing else EXIT_OK


def _row(module: str, found: bool = True, reason: str = "", **fields: object) -> dict[str, object]:
    row: dict[str, object] = {
        "module": module,
        "found": found,
        "file": None,
        "distribution": None,
        "counted": False,
        "reason": reason,
        "evidence": None,
    }
    row.update(fields)
    return row


def find_spec(name: str) -> Any:
    """The module's spec without importing anything (not even its parent packages).

    The top level goes through sys.meta_path (editable finders answer there), the
    rest through the path finder, as the exit report looks up unloaded modules.
    """
    if not all(part.isidentifier() for part in name.split(".")):
        raise LookupError("not a module name")
    try:
        specs = specs_along(name, importlib.util.find_spec)
    except (ImportError, ValueError) as exc:
        raise LookupError(f"cannot be looked up ({exc})") from None
    if len(specs) == name.count(".") + 1:
        return specs[-1]
    raise LookupError("no such module on this Python's path")


def explain(name: str, attributor: Attributor, config: Config | None) -> dict[str, object]:
    """Where the module is, whom it is credited to, and whether this shell would count it."""
    spec = find_spec(name)
    origin = spec.origin if spec.has_location and isinstance(spec.origin, str) else None
    if origin is None:
        locations = [str(p) for p in spec.submodule_search_locations or ()]
        if locations:
            owners = attributor.namespace_owners(locations)
            return _row(
                name,
                file=", ".join(locations),
                reason="namespace package: nothing to count itself; each submodule is "
                "credited to the distribution that installed it",
                evidence="submodules installed by " + ", ".join(sorted(owners)) if owners else None,
            )
        how = "frozen into" if spec.origin == "frozen" else "built into"
        return _row(name, reason=f"standard library ({how} the interpreter): never counted")
    owner, where = attributor.credit(origin)
    site_dir = attributor.site_dir_of(origin)
    if owner == OWN_DISTRIBUTION:
        return _row(name, file=origin, reason="popcon-site itself: never counted")
    if owner is None:
        if where == IN_STDLIB:
            reason = "standard library: never counted"
        elif where == IN_SITE_DIR and site_dir is not None:
            relative = os.path.relpath(origin, site_dir).replace(os.sep, "/")
            claimed = claimants(site_dir, relative)
            if len(claimed) > 1:
                reason = (
                    f"listed by several distributions ({', '.join(claimed)}): it counts for "
                    "none of them by itself; each one's own submodules count for it"
                )
            else:
                reason = (
                    f"in site directory {site_dir}, but no installed distribution lists it: "
                    "never counted"
                )
        else:
            reason = (
                "outside every site directory and editable install (a script directory, "
                "PYTHONPATH or pip --target): never counted"
            )
        return _row(name, file=origin, reason=reason)
    if not is_safe_name(owner):
        return _row(
            name,
            file=origin,
            distribution=owner,
            reason="the distribution's name is not a safe metric name: never sent",
        )
    if config is not None and not config.allows(owner):
        return _row(
            name,
            file=origin,
            distribution=owner,
            reason=f"installed by {owner}, but {ENV_INCLUDE}/{ENV_EXCLUDE} "
            "in this shell leave it out: not counted",
        )
    if where == IN_EDITABLE_ROOT or site_dir is None:
        return _row(
            name,
            file=origin,
            distribution=owner,
            counted=True,
            reason=f"in the source tree of an editable install of {owner}",
        )
    relative = os.path.relpath(origin, site_dir).replace(os.sep, "/")
    return _row(
        name,
        file=origin,
        distribution=owner,
        counted=True,
        reason=f"installed file of {owner} in {site_dir}",
        evidence=record_evidence(site_dir, relative, owner, attributor),
    )
