"""``popcon-site top``: libraries by the number of processes that imported them."""

from __future__ import annotations

import argparse

from popcon_site.cli._dbquery import add_store_arguments, store_query
from popcon_site.cli._output import EXIT_OK, CommandError, bar, can_draw_blocks, print_json, table
from popcon_site.cli._prometheus import Query, add_query_arguments, warn

HELP = "libraries by number of processes that imported them"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_query_arguments(parser)
    add_store_arguments(parser)  # --db: the store of `popcon-site serve`
    parser.add_argument(
        "--limit", type=int, default=20, metavar="N", help="rows to show (default: 20)"
    )


def run(args: argparse.Namespace) -> int:
    if args.limit < 1:
        raise CommandError("--limit must be at least 1")
    query = store_query(args) or Query(args)
    reports = query.reports()
    if reports <= 0:
        query.no_reports()
    used = query.libraries()
    store = query.store()
    warnings = query.warnings(store)
    ranked = sorted(
        ((name, n) for name, n in used.items() if n > 0), key=lambda item: (-item[1], item[0])
    )
    shown = ranked[: args.limit]
    rows = [
        {
            "rank": i,
            "library": name,
            "processes": round(n),
            "share": round(n / reports, 6),
        }
        for i, (name, n) in enumerate(shown, 1)
    ]
    if args.json:
        print_json(
            {
                **query.as_json(),
                "store": store.name,
                "warnings": warnings,
                "reports": round(reports),
                "libraries": len(ranked),
                "top": rows,
            }
        )
        warn(warnings)
        return EXIT_OK
    warn(warnings)
    print(
        f"Libraries by processes that imported them {query.describe()} "
        f"({round(reports):,} processes reported)"
    )
    if rows:
        peak = float(str(rows[0]["processes"]))
        blocks = can_draw_blocks()
        cells = [["#", "LIBRARY", "PROCESSES", "SHARE", ""]]
        cells += [
            [
                str(row["rank"]),
                str(row["library"]),
                f"{round(float(str(row['processes']))):,}",
                f"{float(str(row['share'])) * 100:.1f}%",
                bar(float(str(row["processes"])) / peak if peak else 0.0, blocks=blocks),
            ]
            for row in rows
        ]
        print(table(cells, right={0, 2, 3}))
    more = len(ranked) - len(shown)
    print(
        f"{len(ranked)} libraries imported; share = processes / all reporting processes"
        + (f"; {more} more not shown (--limit)" if more else "")
    )
    return EXIT_OK
