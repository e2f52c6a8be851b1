"""``popcon-site top``: libraries by the number of processes that imported them, or
(``--users``) by the number of distinct users who did (issue 23)."""

from __future__ import annotations

import argparse
from typing import Any

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
    parser.add_argument(
        "--users",
        action="store_true",
        help="rank by distinct users (one per user, library and UTC month: over more than "
        "a month, user-months) instead of processes",
    )


def run(args: argparse.Namespace) -> int:
    if args.limit < 1:
        raise CommandError("--limit must be at least 1")
    query = store_query(args) or Query(args)
    reports = query.reports()
    if reports <= 0:
        query.no_reports()
    used = query.libraries()
    if args.users:
        return _run_users(args, query, reports, used)
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


def _run_users(args: argparse.Namespace, query: Any, reports: float, used: dict[str, float]) -> int:
    """``top --users``: libraries by distinct users, with their processes beside them."""
    users = query.users()
    people = query.library_users()
    store = query.store()
    warnings = query.warnings(store)
    ranked = sorted(
        ((name, n) for name, n in people.items() if n > 0), key=lambda item: (-item[1], item[0])
    )
    shown = ranked[: args.limit]
    rows = [
        {
            "rank": i,
            "library": name,
            "users": round(n),
            "user_share": round(n / users, 6) if users else 0.0,
            "processes": round(used.get(name, 0.0)),
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
                "users": round(users),
                "libraries": len(ranked),
                "top": rows,
            }
        )
        warn(warnings)
        return EXIT_OK
    warn(warnings)
    print(
        f"Libraries by distinct users who imported them {query.describe()} "
        f"({round(users):,} users, {round(reports):,} processes reported)"
    )
    if rows:
        peak = float(str(rows[0]["users"]))
        blocks = can_draw_blocks()
        cells = [["#", "LIBRARY", "USERS", "SHARE", "PROCESSES", ""]]
        cells += [
            [
                str(row["rank"]),
                str(row["library"]),
                f"{round(float(str(row['users']))):,}",
                f"{float(str(row['user_share'])) * 100:.1f}%",
                f"{round(float(str(row['processes']))):,}",
                bar(float(str(row["users"])) / peak if peak else 0.0, blocks=blocks),
            ]
            for row in rows
        ]
        print(table(cells, right={0, 2, 3, 4}))
    more = len(ranked) - len(shown)
    print(
        f"{len(ranked)} libraries; a user counts once per library and UTC month (over a "
        "longer window: user-months); share = users / all reporting users"
        + (f"; {more} more not shown (--limit)" if more else "")
    )
    return EXIT_OK
