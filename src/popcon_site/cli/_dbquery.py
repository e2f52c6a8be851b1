"""``top --db`` and ``unused --db``: the same questions as ``Query``, asked of serve's store.

The window is whole UTC days ending with the day of ``--at`` (default: today):
``--window 30d`` is that day and the 29 before it.  Counts are exact integers.
"""

from __future__ import annotations

import argparse
import re
import time
from typing import Any, NoReturn

from popcon_site.cli._output import CommandError, NothingToShow
from popcon_site.cli._store import Reader, StoreError, connect, day_text, today

NAMESPACE_LABEL = "hub_namespace"  # deploy/statsd-exporter/mapping.yml
_WINDOW = re.compile(r"^([0-9]{1,5})([dw])$")
_SELECTOR = re.compile(r'^\s*hub_namespace\s*=\s*"([A-Za-z0-9_-]*)"\s*$')


def add_store_arguments(parser: argparse.ArgumentParser) -> None:
    """``--db PATH``; ``--prometheus`` becomes optional (one of the two is needed)."""
    parser.add_argument(
        "--db",
        metavar="PATH",
        help="ask the store of `popcon-site serve` instead of Prometheus "
        "(--window in days or weeks, --selector 'hub_namespace=\"X\"')",
    )
    for action in parser._actions:
        if action.dest == "prometheus":
            action.required = False


def store_query(args: argparse.Namespace) -> StoreQuery | None:
    """A StoreQuery when ``--db`` is given; None for Prometheus (which needs its URL)."""
    if args.db is None:
        if args.prometheus is None:
            raise CommandError("one of --prometheus URL or --db PATH is needed")
        return None
    if args.prometheus is not None:
        raise CommandError("--prometheus and --db ask different stores: give one")
    return StoreQuery(args)


class StoreInfo:
    """What answered (as ``_prometheus.Store``): serve's store sees every count."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.sees_first_increment = True


class StoreQuery:
    """The interface of ``Query`` (reports, libraries, describe, no_reports, as_json)."""

    def __init__(self, args: argparse.Namespace) -> None:
        from popcon_site.cli._prometheus import parse_time

        match = _WINDOW.match(args.window)
        if not match or int(match.group(1)) < 1:
            raise CommandError(
                f"--window {args.window!r}: with --db, whole days or weeks (e.g. 30d, 12w)"
            )
        self.window = args.window
        self.days = int(match.group(1)) * (7 if match.group(2) == "w" else 1)
        selector = args.selector.strip()
        if selector.startswith("{") and selector.endswith("}"):
            selector = selector[1:-1].strip()
        self.selector = selector
        self.namespace: str | None = None
        if selector:
            found = _SELECTOR.match(selector)
            if not found:
                raise CommandError(
                    f'--selector {selector!r}: with --db, only {NAMESPACE_LABEL}="NAME" '
                    '(hub_namespace="" is the default prefix)'
                )
            self.namespace = found.group(1)
        self.at = time.time() if args.at is None else parse_time(args.at)
        self.last = today(self.at)
        self.first = self.last - self.days + 1
        self.path = args.db
        try:
            self.reader = Reader(connect(args.db, write=False))
        except StoreError as exc:
            raise CommandError(str(exc)) from None

    def reports(self) -> float:
        return self.reader.reports(self.first, self.last, self.namespace)  # exact: an int

    def libraries(self) -> dict[str, float]:
        result: dict[str, float] = {}
        result.update(self.reader.libraries(self.first, self.last, self.namespace))  # ints
        return result

    def users(self) -> float:
        return self.reader.users(self.first, self.last, self.namespace)

    def library_users(self) -> dict[str, float]:
        result: dict[str, float] = {}
        result.update(self.reader.library_users(self.first, self.last, self.namespace))
        return result

    # The rest of Query's interface on main (exact counting through Prometheus), so that
    # top/unused call the same methods whichever store answers.
    def restarted_exporters_libraries(self) -> set[str]:
        """None: the store counted every increment, a restart of serve loses none."""
        return set()

    def store(self) -> Any:  # Any: top/unused pass it back to whichever query made it
        return StoreInfo(f"popcon-site serve store {self.path}")

    def warnings(self, store: object) -> list[str]:
        """A run of days without reports of a quarter of the window or more, after the
        first day with reports (a collection that started in the window is no gap)."""
        days = self.reader.report_days(self.first, self.last, self.namespace)
        said, run, seen = [], 0, False
        for day in range(self.first, self.last + 2):
            if day in days or day == self.last + 1:
                if seen and run and run >= max(1, self.days // 4):
                    said.append(
                        f"no process reported from {day_text(day - run)} to "
                        f"{day_text(day - 1)}: was serve or the hubs' reporting down?"
                    )
                seen, run = seen or day in days, 0
            elif seen:
                run += 1
        return said

    def describe(self) -> str:
        where = f" where {self.selector}" if self.selector else ""
        return f"on the {self.days} UTC days {day_text(self.first)} to {day_text(self.last)}{where}"

    def no_reports(self) -> NoReturn:
        raise NothingToShow(
            f"no process reported {self.describe()} (the store {self.path} has no reports "
            "there): check --window, --at and --selector, and that serve receives the counters"
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "db": self.path,
            "window": self.window,
            "selector": self.selector,
            "time": self.at,
            "first_day": day_text(self.first),
            "last_day": day_text(self.last),
        }
