"""``popcon-site unused``: installed distributions no process imported in the window."""

from __future__ import annotations

import argparse
import sys

from popcon_site._attribution import OWN_DISTRIBUTION
from popcon_site._installed import environment_site_dirs, installed_distributions
from popcon_site.cli._dbquery import add_store_arguments, store_query
from popcon_site.cli._output import EXIT_OK, print_json, size, table
from popcon_site.cli._prometheus import LIBRARY_METRIC, Query, add_query_arguments, warn

HELP = "installed distributions no process imported in the window, largest first"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_query_arguments(parser)
    add_store_arguments(parser)  # --db: the store of `popcon-site serve`


def run(args: argparse.Namespace) -> int:
    query = store_query(args) or Query(args)
    reports = query.reports()
    if reports <= 0:
        query.no_reports()
    used = query.libraries()
    # Err on the side of "used": a series on an exporter (re)started in the window was
    # incremented in it, even where the store cannot count that increment.
    for name in query.restarted_exporters_libraries():
        used[name] = max(used.get(name, 0.0), 1.0)
    store = query.store()
    warnings = query.warnings(store)
    if not used:
        print(
            f"popcon-site: warning: processes reported, but {LIBRARY_METRIC} has no series "
            f"{query.describe()}: check the statsd_exporter mapping (README)",
            file=sys.stderr,
        )
    site_dirs = environment_site_dirs()
    installed = installed_distributions(site_dirs)
    unused = [
        item
        for name, item in installed.items()
        if used.get(name, 0.0) <= 0 and name != OWN_DISTRIBUTION
    ]
    unused.sort(key=lambda item: (-(item.size or 0), item.name))
    rows = []
    notes: dict[str, str] = {}
    for item in unused:
        said = []
        if item.required_by:
            said.append("required by " + ", ".join(sorted(item.required_by)))
        if not item.has_modules:
            said.append("no importable modules: imports cannot show its use")
        notes[item.name] = "; ".join(said)
        rows.append(
            {
                "distribution": item.name,
                "name": item.display,
                "version": item.version,
                "size_bytes": item.size,
                "required_by": sorted(item.required_by),
                "safe_to_remove": not item.required_by,
                "has_modules": item.has_modules,
                "site_dir": item.site_dir,
                "notes": said,
            }
        )
    total = sum(item.size or 0 for item in unused)
    if args.json:
        print_json(
            {
                **query.as_json(),
                "store": store.name,
                "warnings": warnings,
                "reports": round(reports),
                "installed": len(installed),
                "site_dirs": site_dirs,
                "unused": rows,
                "unused_bytes": total,
            }
        )
        warn(warnings)
        return EXIT_OK
    warn(warnings)
    print(
        f"{len(unused)} of {len(installed)} installed distributions were imported by no "
        f"process {query.describe()} ({round(reports):,} processes reported)"
    )
    if rows:
        cells = [["SIZE", "DISTRIBUTION", "VERSION", "NOTE"]]
        cells += [[size(item.size), item.name, item.version, notes[item.name]] for item in unused]
        print(table(cells, right={0}))
        required = sum(1 for item in unused if item.required_by)
        print(
            f"Total {size(total)}. {required} of them are required by other installed "
            "distributions: removing those alone is not safe."
        )
    print(f"Scanned: {', '.join(site_dirs)} (popcon-site itself never reports, so it is left out)")
    return EXIT_OK
