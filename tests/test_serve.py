"""``popcon-site serve``: the collector, its store, ``top``/``unused --db`` and the page.

Real processes of a real venv with the wheel report to a real ``serve`` over UDP and
TCP; hostile input goes over real sockets; the page is rendered by a real headless
chromium (once, on Python 3.11).  The parser's rules and the store's schema are also
pinned in this process, as unit tests.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import struct
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from html.parser import HTMLParser
from pathlib import Path

import promserver
import pytest

from popcon_site._report import counter_lines, datagrams
from popcon_site.cli import _store
from popcon_site.cli._collector import (
    BAD_NAME,
    BAD_NAMESPACE,
    MAX_LINE,
    NAME_CAP,
    NOT_ASCII,
    NOT_ONE_COUNT,
    TOO_LARGE,
    UNKNOWN_METRIC,
    Collector,
    classify,
)
from popcon_site.cli._store import Reader, StoreError, Writer, connect, day_text, today
from support.distinfo import write_dist_info
from support.envs import ROOT, Env, base_environ, make_env, reporting_to
from support.ports import free_port

SERVE_PACKAGES = ("requests", "six", "attrs", "pyyaml")
REQUESTS_CLOSURE = {"requests", "urllib3", "idna", "certifi", "charset-normalizer"}


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, wheel: Path) -> Env:
    env = make_env(tmp_path_factory.mktemp("serve") / "venv")
    env.install(str(wheel), *SERVE_PACKAGES)
    return env


class Serve:
    """A running ``popcon-site serve`` of ``env`` on free ports."""

    def __init__(self, env: Env, db: Path, *more: str, http: int = 0) -> None:
        self.env, self.db = env, db
        self.port = free_port(socket.SOCK_DGRAM)
        self.http = http or free_port()
        self.proc = subprocess.Popen(
            [
                *(str(env.root / "bin/popcon-site"), "serve", "--db", str(db)),
                *("--statsd", f"127.0.0.1:{self.port}", "--http", f"127.0.0.1:{self.http}"),
                *more,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=base_environ(),
        )
        assert self.proc.stdout is not None
        self.banner = self.proc.stdout.readline()  # printed once both servers listen
        assert self.banner.startswith("popcon-site serve: store"), self.stop()
        self.url = f"http://127.0.0.1:{self.http}/"

    def get(self, path: str) -> bytes:
        with urllib.request.urlopen(self.url + path, timeout=30) as response:
            return bytes(response.read())

    def data(self, query: str = "") -> dict[str, object]:
        found = json.loads(self.get(f"data.json{query}"))
        assert isinstance(found, dict)
        return found

    def stop(self, sig: int = signal.SIGTERM) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        _, err = self.proc.communicate(timeout=30)
        return err


@contextmanager
def serving(env: Env, db: Path, *more: str) -> Iterator[Serve]:
    server = Serve(env, db, *more)
    try:
        yield server
    finally:
        server.stop()


def committed_reports(db: Path, namespace: str | None = None) -> int:
    if not db.exists():
        return 0
    connection = connect(db, write=False)
    try:
        return Reader(connection).reports(today() - 1, today(), namespace)
    finally:
        connection.close()


def wait_for_reports(db: Path, expected: int) -> None:
    """Until the store holds ``expected`` reports (it commits at least once a second)."""
    deadline = time.monotonic() + 60
    while (found := committed_reports(db)) != expected:
        assert found < expected, f"{found} reports, expected {expected}"
        assert time.monotonic() < deadline, f"{found} of {expected} reports after 60 s"
        time.sleep(0.1)


def installed_names(site: Path) -> set[str]:
    """Normalized names of the distributions in a site directory, read from METADATA."""
    names = set()
    for metadata in site.glob("*.dist-info/METADATA"):
        for line in metadata.read_text(encoding="utf-8").splitlines():
            if line.startswith("Name:"):
                names.add(re.sub(r"[-_.]+", "-", line[5:].strip()).lower())
                break
    return names


def popcon(env: Env, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(env.root / "bin/popcon-site"), *args],
        capture_output=True,
        text=True,
        env=base_environ(PYTHONIOENCODING="utf-8"),
        timeout=120,
    )


def as_json(proc: subprocess.CompletedProcess[str]) -> dict[str, object]:
    assert proc.returncode == 0, proc.stderr
    found = json.loads(proc.stdout)
    assert isinstance(found, dict)
    return found


def send_udp(port: int, *payloads: bytes) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for payload in payloads:
            sock.sendto(payload, ("127.0.0.1", port))


def send_tcp(port: int, data: bytes) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)


# -- the rules, in this process ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("python_popcon.library_used.numpy:1|c", ("used", "", "numpy")),
        ("python_popcon.reports:1|c", ("reports", "", "")),
        (
            "python_popcon.namespace.hub-1.library_used.ruamel-yaml:1|c",
            ("used", "hub-1", "ruamel-yaml"),
        ),
        ("python_popcon.namespace.hub_1.reports:1|c", ("reports", "hub_1", "")),
        ("python_popcon.library_used.numpy:1000|c", ("refused", NOT_ONE_COUNT, "")),
        ("python_popcon.library_used.numpy:01|c", ("refused", NOT_ONE_COUNT, "")),
        ("python_popcon.library_used.numpy:1|g", ("refused", NOT_ONE_COUNT, "")),
        ("python_popcon.library_used.numpy:1|c|@0.001", ("refused", NOT_ONE_COUNT, "")),
        ("python_popcon.library_used.numpy:-1|c", ("refused", NOT_ONE_COUNT, "")),
        ("python_popcon.library_used.numpy:1|c ", ("refused", NOT_ONE_COUNT, "")),
        ("python_popcon.library_used.Numpy:1|c", ("refused", BAD_NAME, "")),
        ("python_popcon.library_used.ruamel.yaml:1|c", ("refused", BAD_NAME, "")),
        ("python_popcon.library_used.-x:1|c", ("refused", BAD_NAME, "")),
        ("python_popcon.library_used.:1|c", ("refused", BAD_NAME, "")),
        ("python_popcon.library_used.a b:1|c", ("refused", BAD_NAME, "")),
        ("python_popcon.namespace.h*b.library_used.six:1|c", ("refused", BAD_NAMESPACE, "")),
        ("python_popcon.namespace..library_used.six:1|c", ("refused", BAD_NAMESPACE, "")),
        ("python_popcon.library_installed.six:1|c", ("refused", UNKNOWN_METRIC, "")),
        ("other.library_used.six:1|c", ("refused", UNKNOWN_METRIC, "")),
        ("python_popcon.reports.extra:1|c", ("refused", UNKNOWN_METRIC, "")),
        ("python_popcon:1|c", ("refused", UNKNOWN_METRIC, "")),
        ("python_popcon.library_installed.six:1|g", ("installed", "", "six")),
        ("python_popcon.namespace.hub.library_installed.a-b:1|g", ("installed", "hub", "a-b")),
        ("python_popcon.library_installed.Six:1|g", ("refused", BAD_NAME, "")),
        ("python_popcon.library_installed.six:2|g", ("refused", NOT_ONE_COUNT, "")),
        ("python_popcon.reports:1|g", ("refused", NOT_ONE_COUNT, "")),
        ("python_popcon.library_used.six:1|g", ("refused", NOT_ONE_COUNT, "")),
        (":1|c", ("refused", UNKNOWN_METRIC, "")),
        # Distinct users (issue 23): the two new shapes, and nothing else of theirs.
        ("python_popcon.library_users.numpy:1|c", ("library_users", "", "numpy")),
        ("python_popcon.users:1|c", ("users", "", "")),
        ("python_popcon.namespace.hub.library_users.a-b:1|c", ("library_users", "hub", "a-b")),
        ("python_popcon.namespace.hub.users:1|c", ("users", "hub", "")),
        ("python_popcon.library_users.Numpy:1|c", ("refused", BAD_NAME, "")),
        ("python_popcon.library_users.-user:1|c", ("refused", BAD_NAME, "")),
        ("python_popcon.library_users.numpy:2|c", ("refused", NOT_ONE_COUNT, "")),
        ("python_popcon.library_users.numpy:1|g", ("refused", NOT_ONE_COUNT, "")),
        ("python_popcon.users:1|g", ("refused", NOT_ONE_COUNT, "")),
        ("python_popcon.users.extra:1|c", ("refused", UNKNOWN_METRIC, "")),
        ("python_popcon.library_users:1|c", ("refused", UNKNOWN_METRIC, "")),
        ("python_popcon.namespace.h*b.users:1|c", ("refused", BAD_NAMESPACE, "")),
    ],
)
def test_only_our_counter_lines_count(line: str, expected: tuple[str, str, str]) -> None:
    assert classify(line) == expected


def test_the_collector_counts_what_the_client_writes_and_refuses_the_rest(tmp_path: Path) -> None:
    db = tmp_path / "store.db"
    writer = Writer(connect(db, write=True))
    collector = Collector(writer)
    day = today()
    names = ["requests", "urllib3", "idna", "certifi", "charset-normalizer", "six"]
    prefix, reports_name = "python_popcon.library_used", "python_popcon.reports"
    for payload in datagrams(counter_lines(prefix, reports_name, names)):
        collector.datagram(payload, day)
    hub = "python_popcon.namespace.hub.library_used"
    for payload in datagrams(counter_lines(hub, "python_popcon.namespace.hub.reports", ["six"])):
        collector.datagram(payload, day)
    collector.datagram(b"x" * 60_000, day)  # one oversized datagram: one item
    collector.datagram(b"python_popcon.library_used.six:1|c\n\xff\xfe\x00junk\n", day)
    collector.datagram(b"python_popcon.library_used.six:1000|c\npython_popcon.reports:1|g", day)
    collector.datagram(b"python_popcon.library_used." + b"a" * MAX_LINE + b":1|c", day)
    collector.datagram(b"\n\n", day)  # empty lines: nothing at all
    writer.flush()
    reader = Reader(writer.db)
    assert reader.reports(day, day) == 2
    assert reader.reports(day, day, "hub") == 1
    assert reader.reports(day, day, "") == 1
    assert reader.libraries(day, day) == {**dict.fromkeys(names[:5], 1), "six": 3}
    assert reader.libraries(day, day, "hub") == {"six": 1}
    assert reader.refused() == {TOO_LARGE: 2, NOT_ASCII: 1, NOT_ONE_COUNT: 2}
    assert collector.refused == reader.refused()
    assert collector.accepted == 10  # 6 + 1 reports, 2 in hub, 1 before the junk


# The tests' own statement of a line that may count (independent of the code's rules).
COUNTED = re.compile(
    r"python_popcon\.(?:namespace\.[A-Za-z0-9_-]{1,100}\.)?"
    r"(?:(?:reports|users|library_use(?:d|rs)\.[a-z0-9](?:[a-z0-9-]{0,198}[a-z0-9])?):1\|c"
    r"|library_installed\.[a-z0-9](?:[a-z0-9-]{0,198}[a-z0-9])?:1\|g)"
)


def test_random_and_mutated_input_never_raises_and_only_valid_lines_count(tmp_path: Path) -> None:
    import random

    rng = random.Random(21)
    writer = Writer(connect(tmp_path / "store.db", write=True))
    collector = Collector(writer)
    good = [
        *counter_lines("python_popcon.library_used", "python_popcon.reports", ["six", "a-b"]),
        "python_popcon.namespace.hub.library_used.numpy:1|c",
        "python_popcon.library_users.six:1|c",
        "python_popcon.namespace.hub.users:1|c",
    ]
    alphabet = b"python_popcon.library_used.namespace:|c@01-_\n\r\x00\xff .g"
    expected_accepted = expected_items = 0
    for _ in range(3000):
        choice = rng.random()
        if choice < 0.3:  # a valid line with one byte changed, added or removed
            line = bytearray(rng.choice(good).encode())
            at = rng.randrange(len(line))
            how = rng.randrange(3)
            if how == 0:
                line[at] = rng.choice(alphabet)
            elif how == 1:
                line.insert(at, rng.choice(alphabet))
            else:
                del line[at]
            data = bytes(line)
        elif choice < 0.6:
            data = bytes(rng.choice(alphabet) for _ in range(rng.randrange(1, 80)))
        elif choice < 0.9:
            data = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 600)))
        else:
            data = "\n".join(rng.choice(good) for _ in range(rng.randrange(1, 20))).encode()
        lines = [line for line in data.split(b"\n") if line]
        expected_items += len(lines)
        expected_accepted += sum(1 for line in lines if COUNTED.fullmatch(line.decode("latin-1")))
        collector.datagram(data, today())
    writer.flush()
    assert collector.accepted == expected_accepted > 2000
    assert len(collector.refused) >= 4  # several reasons were reached
    assert collector.accepted + sum(collector.refused.values()) == expected_items
    assert NAME_CAP not in collector.refused


def test_a_cap_on_new_names_per_day(tmp_path: Path) -> None:
    writer = Writer(connect(tmp_path / "store.db", write=True))
    collector = Collector(writer, max_new_names=4)
    day = today()
    lines = [f"python_popcon.library_used.lib{i}:1|c" for i in range(6)]
    collector.datagram("\n".join(lines).encode(), day)  # "" (namespace) and lib0-lib2 fit
    collector.datagram(b"python_popcon.library_used.lib1:1|c", day)  # known: counts
    collector.datagram(b"python_popcon.namespace.new.reports:1|c", day)  # a new namespace
    collector.datagram(b"python_popcon.library_used.lib5:1|c", day + 1)  # a new day, room again
    writer.flush()
    reader = Reader(writer.db)
    assert reader.libraries(day, day) == {"lib0": 1, "lib1": 2, "lib2": 1}
    assert reader.libraries(day + 1, day + 1) == {"lib5": 1}
    assert reader.refused() == {NAME_CAP: 4}
    # A restarted serve knows the names it committed, and today's count of new ones.
    again = Collector(Writer(connect(tmp_path / "store.db", write=True)), max_new_names=4)
    again.datagram(b"python_popcon.library_used.lib9:1|c\npython_popcon.reports:1|c", day)
    again.writer.flush()
    assert reader.libraries(day, day) == {"lib0": 1, "lib1": 2, "lib2": 1}
    assert reader.reports(day, day) == 1
    assert reader.refused() == {NAME_CAP: 5}


def stored_version(db: Path) -> int:
    connection = sqlite3.connect(db)
    try:
        ((version,),) = connection.execute("SELECT version FROM schema_version").fetchall()
        return int(version)
    finally:
        connection.close()


def test_the_store_has_a_schema_version_and_migrates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A store of version 1 (before the inventory table), as an earlier serve wrote it.
    db = tmp_path / "store.db"
    old = sqlite3.connect(db, isolation_level=None)
    old.executescript(
        _store._SCHEMA_V1
        + "CREATE TABLE schema_version (version INTEGER NOT NULL);"
        + "INSERT INTO schema_version VALUES (1);"
        + f"INSERT INTO names VALUES (1, 'namespace', '', {today()});"
        + f"INSERT INTO names VALUES (2, 'library', 'six', {today()});"
        + f"INSERT INTO reports VALUES ({today()}, 1, 5);"
        + f"INSERT INTO library_used VALUES ({today()}, 1, 2, 4);"
    )
    old.close()
    with pytest.raises(StoreError, match="schema version 1, this popcon-site reads 3"):
        connect(db, write=False)  # a reader never migrates
    writer = Writer(connect(db, write=True))  # serve migrates: version 3, data kept
    writer.add_installed(today(), writer.name_id("namespace", "", today()), 2)
    writer.flush()
    reader = Reader(writer.db)
    assert (reader.reports(today(), today()), reader.libraries(today(), today())) == (5, {"six": 4})
    assert reader.installed(today()) == [("", "six", today())]
    assert (reader.users(today(), today()), reader.library_users(today(), today())) == (0, {})
    writer.db.close()
    assert stored_version(db) == 3

    # The hook: a migration added later runs once, in its own transaction.
    def add_note(connection: sqlite3.Connection) -> None:
        connection.execute("CREATE TABLE note (text TEXT)")

    monkeypatch.setattr(_store, "SCHEMA_VERSION", 4)
    monkeypatch.setitem(_store.MIGRATIONS, 3, add_note)
    connect(db, write=True).close()
    connect(db, write=True).close()
    check = sqlite3.connect(db)
    assert check.execute("SELECT version FROM schema_version").fetchall() == [(4,)]
    assert check.execute("SELECT count(*) FROM note").fetchall() == [(0,)]
    assert check.execute("SELECT sum(processes) FROM reports").fetchall() == [(5,)]
    check.close()

    monkeypatch.setattr(_store, "SCHEMA_VERSION", 3)
    rollback = sqlite3.connect(db)  # as a store from elsewhere may be: not in WAL mode
    assert rollback.execute("PRAGMA journal_mode=DELETE").fetchall() == [("delete",)]
    rollback.close()
    before = db.read_bytes()
    with pytest.raises(StoreError, match="newer than this popcon-site's 3"):
        connect(db, write=True)
    assert db.read_bytes() == before  # a newer store is never touched

    new = tmp_path / "new.db"
    connect(new, write=True).close()  # a new store goes through every migration
    assert stored_version(new) == 3

    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.commit()
    with pytest.raises(StoreError, match="not a popcon-site store"):
        connect(other, write=True)
    (tmp_path / "text.db").write_text("not a database at all, " * 100)
    with pytest.raises(StoreError, match="not a popcon-site store"):
        connect(tmp_path / "text.db", write=True)


# -- a real serve, real processes ----------------------------------------------------------------


def test_real_processes_over_udp_and_tcp_and_top_unused_from_the_store(
    env: Env, tmp_path: Path
) -> None:
    db = tmp_path / "store.db"
    home = tmp_path / "home"
    home.mkdir()
    with serving(env, db) as server:
        runs = [
            ({}, "import requests"),
            ({}, "import requests"),
            ({}, "import requests, six"),
            ({"PYTHON_POPCONTEST_STATSD_PROTOCOL": "tcp"}, "import six"),
            ({"PYTHON_POPCONTEST_STATSD_PROTOCOL": "tcp"}, "import yaml"),
            (
                {"PYTHON_POPCONTEST_STATSD_PREFIX": "python_popcon.namespace.hub.library_used"},
                "import six",
            ),
            ({}, "pass"),
        ]
        for extra, code in runs:
            proc = env.run("-c", code, env=reporting_to(server.port, home, **extra))
            assert proc.returncode == 0, proc.stderr
        wait_for_reports(db, 7)
        # Read while serve runs (WAL): the same shape as with --prometheus.
        top = as_json(popcon(env, "top", "--json", "--db", str(db)))
        assert (top["reports"], top["libraries"], top["window"], top["selector"]) == (
            7,
            7,
            "30d",
            "",
        )
        three = ["certifi", "charset-normalizer", "idna", "requests", "six", "urllib3"]
        assert [(r["library"], r["processes"], r["share"]) for r in top["top"]] == [  # type: ignore[attr-defined]
            *((name, 3, 0.428571) for name in three),
            ("pyyaml", 1, 0.142857),
        ]
        hub = as_json(
            popcon(env, "top", "--json", "--db", str(db), "--selector", 'hub_namespace="hub"')
        )
        assert (hub["reports"], hub["top"]) == (
            1,
            [{"rank": 1, "library": "six", "processes": 1, "share": 1.0}],
        )
        text = popcon(env, "top", "--db", str(db), "--limit", "2")
        assert text.returncode == 0, text.stderr
        lines = text.stdout.splitlines()
        first = day_text(today() - 29)
        assert lines[0] == (
            f"Libraries by processes that imported them on the 30 UTC days {first} to "
            f"{day_text(today())} (7 processes reported)"
        )
        assert lines[2].split() == ["1", "certifi", "3", "42.9%", "█" * 30]
        assert lines[-1] == (
            "7 libraries imported; share = processes / all reporting processes; "
            "5 more not shown (--limit)"
        )
        unused = as_json(popcon(env, "unused", "--json", "--db", str(db)))
        rows = {row["distribution"] for row in unused["unused"]}  # type: ignore[attr-defined]
        assert unused["reports"] == 7
        used = REQUESTS_CLOSURE | {"six", "pyyaml"}
        assert rows == installed_names(env.site_packages) - used - {"popcon-site"}
        assert {"attrs", "statsd", "importlib-metadata"} <= rows
        # The page's JSON agrees with the command line.
        page = server.data()
        assert page["reports"] == 7
        assert [row["distribution"] for row in page["unused_installed"]] == [  # type: ignore[attr-defined]
            row["distribution"]
            for row in unused["unused"]  # type: ignore[attr-defined]
        ]
    assert committed_reports(db) == 7


def test_distinct_users_reach_the_store_and_top_users(env: Env, tmp_path: Path) -> None:
    """Issue 23: three users (a user is a cache directory), several processes each;
    serve stores library_users and users, and ``top --users --db`` ranks by people."""
    db = tmp_path / "store.db"
    plan = {"a": ["import six", "import six", "import yaml, six"], "b": ["import six"] * 2}
    plan |= {"c": ["pass", "import yaml"], "d": ["import six"]}
    with serving(env, db) as server:
        for user, codes in plan.items():
            home = tmp_path / f"home-{user}"
            home.mkdir()
            for code in codes:
                environ = reporting_to(server.port, home, PYTHON_POPCONTEST_USERS="1")
                proc = env.run("-c", code, env=environ)
                assert proc.returncode == 0, proc.stderr
        wait_for_reports(db, 8)
        deadline = time.monotonic() + 60
        while True:  # the users lines came in the same datagrams: committed together
            top = as_json(popcon(env, "top", "--json", "--users", "--db", str(db)))
            if top["users"] == 4 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        page = server.data()  # the page's JSON: the same users
        assert (page["reports"], page["users"]) == (8, 4)
        rows = {row["library"]: (row["processes"], row["users"]) for row in page["libraries"]}  # type: ignore[attr-defined]
        assert rows == {"six": (6, 3), "pyyaml": (2, 2)}
        assert "8 processes (4 users) reported from" in server.get("").decode()
    assert (top["reports"], top["users"], top["libraries"]) == (8, 4, 2)
    assert top["top"] == [
        {"rank": 1, "library": "six", "users": 3, "user_share": 0.75, "processes": 6},
        {"rank": 2, "library": "pyyaml", "users": 2, "user_share": 0.5, "processes": 2},
    ]
    text = popcon(env, "top", "--users", "--db", str(db))
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert lines[0].endswith("(4 users, 8 processes reported)"), lines[0]
    assert lines[2].split() == ["1", "six", "3", "75.0%", "6", "█" * 30]
    assert lines[3].split()[:5] == ["2", "pyyaml", "2", "50.0%", "2"]


def test_top_from_the_store_of_a_past_window(env: Env, tmp_path: Path) -> None:
    """--at and --window in days or weeks pick whole UTC days; no serve needs to run."""
    db = tmp_path / "store.db"
    seed_history(db)
    at = today() - 200
    iso = day_text(at) + "T12:00:00Z"
    week = as_json(popcon(env, "top", "--json", "--db", str(db), "--window", "1w", "--at", iso))
    pandas_days = [back for back in range(200, 207) if back % 7 == 0]  # weekly, lab only
    assert (week["first_day"], week["last_day"]) == (day_text(at - 6), day_text(at))
    assert week["reports"] == seeded_numpy(200, 206) + len(pandas_days)
    assert [(r["library"], r["processes"]) for r in week["top"]] == [  # type: ignore[attr-defined]
        ("numpy", seeded_numpy(200, 206)),
        ("pandas", 1),
    ]
    lab = popcon(
        env,
        "top",
        "--db",
        str(db),
        "--window",
        "7d",
        "--at",
        iso,
        "--selector",
        'hub_namespace="lab"',
    )
    assert lab.returncode == 0, lab.stderr
    assert lab.stdout.splitlines()[0] == (
        f"Libraries by processes that imported them on the 7 UTC days {day_text(at - 6)} to "
        f'{day_text(at)} where hub_namespace="lab" (1 processes reported)'
    )
    empty = popcon(env, "unused", "--db", str(db), "--at", "2000-01-01T00:00:00Z")
    assert empty.returncode == 1
    assert empty.stderr.startswith("popcon-site: no process reported on the 30 UTC days ")


def test_the_store_query_warns_of_a_silence_not_of_a_late_start(tmp_path: Path) -> None:
    from popcon_site.cli._dbquery import StoreQuery

    def query(days: list[int]) -> StoreQuery:
        db = tmp_path / f"{len(days)}.db"
        writer = Writer(connect(db, write=True))
        for back in days:
            writer.add_report(today() - back, writer.name_id("namespace", "", today()))
        writer.flush()
        writer.db.close()
        args = argparse.Namespace(db=str(db), window="4w", selector="", at=None, prometheus=None)
        return StoreQuery(args)

    gap = query([*range(20, 28), *range(0, 4)])  # nothing from 19 to 4 days ago: 16 days
    assert gap.warnings(gap.store()) == [
        f"no process reported from {day_text(today() - 19)} to {day_text(today() - 4)}: "
        "was serve or the hubs' reporting down?"
    ]
    assert query(list(range(0, 5))).warnings(gap.store()) == []  # started 5 days ago
    short = query([*range(10, 27), *range(0, 4)])  # 6 days: under a quarter of 28
    assert short.warnings(short.store()) == []
    assert gap.store().name.startswith("popcon-site serve store ")
    assert gap.restarted_exporters_libraries() == set()


def test_top_and_unused_need_one_store(env: Env, tmp_path: Path) -> None:
    for args, words in [
        (["top"], "one of --prometheus URL or --db PATH"),
        (["unused", "--db", "x", "--prometheus", "http://p:9090"], "give one"),
        (["top", "--db", str(tmp_path / "none.db")], "no store at"),
        (["top", "--db", str(tmp_path / "none.db"), "--window", "12h"], "whole days or weeks"),
        (["top", "--db", "x", "--selector", 'job="a"'], 'only hub_namespace="NAME"'),
    ]:
        proc = popcon(env, *args)
        assert proc.returncode == 2, (args, proc.stderr)
        assert words in proc.stderr and len(proc.stderr.splitlines()) == 1, proc.stderr


HOSTILE_UDP = [
    b"python_popcon.library_used.six:1000|c",  # another value
    b"python_popcon.library_used.six:1|g",  # another type
    b"python_popcon.library_used.six:1|c|@0.001",  # a sample rate
    b"python_popcon.library_used.Six:1|c",  # not normalized
    b"python_popcon.library_used.six\xff:1|c",  # not ASCII
    b"\x00\x01\x02\xff" * 100,  # junk bytes (one line)
    b"python_popcon.library_used.six:1|c\n" * 1700,  # ~60 KB: refused whole
    b"x" * 65_000,
    b"deploy.secret:1|c\npython_popcon.namespace.a.b.library_used.six:1|c",  # 2 unknown
]


def test_hostile_input_counts_nothing_and_serve_keeps_running(env: Env, tmp_path: Path) -> None:
    db = tmp_path / "store.db"
    with serving(env, db) as server:
        send_udp(server.port, *HOSTILE_UDP)
        # Over TCP: a 100 KB line, junk, a value and a good line; then a silent connection.
        send_tcp(server.port, b"a" * 100_000 + b"\n\xff\xfe\npython_popcon.reports:7|c\n")
        idle = socket.create_connection(("127.0.0.1", server.port))
        send_tcp(server.port, b"python_popcon.library_used.six:1|c\npython_popcon.reports:1|c")
        send_udp(server.port, b"python_popcon.library_used.six:1|c\npython_popcon.reports:1|c")
        wait_for_reports(db, 2)
        refused = wait_for_refused(server, 13)
        idle.close()
        assert refused == {
            "total": 13,
            "today": 13,
            "by_reason": {
                NOT_ONE_COUNT: 4,  # :1000|c, :1|g, |@0.001, TCP :7|c
                BAD_NAME: 1,
                NOT_ASCII: 3,  # a byte in a name, UDP junk, TCP junk
                TOO_LARGE: 3,  # ~60 KB and 65 KB datagrams, the 100 KB TCP line
                UNKNOWN_METRIC: 2,
            },
        }
        top = as_json(popcon(env, "top", "--json", "--db", str(db)))
        assert [(r["library"], r["processes"]) for r in top["top"]] == [("six", 2)]  # type: ignore[attr-defined]
        assert 'id="refused">refused input: 13 (13 today)' in server.get("").decode()
        assert server.proc.poll() is None
    log = server.stop()
    assert "refused" in log and log.splitlines()[-1].endswith(
        "stopped: 4 lines counted, 13 refused"
    )
    assert "Traceback" not in log


def test_a_flood_of_tcp_connections_is_capped_and_serve_keeps_counting(
    env: Env, tmp_path: Path
) -> None:
    db = tmp_path / "store.db"
    held: list[socket.socket] = []
    with serving(env, db) as server:
        try:
            for _ in range(256):  # MAX_CONNECTIONS, all silent
                held.append(socket.create_connection(("127.0.0.1", server.port), timeout=10))
            report(server.port, "six")  # over UDP, while serve holds them all
            wait_for_reports(db, 1)
            extra = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            assert extra.recv(1) == b""  # the 257th is closed at once
            extra.close()
            held.pop().close()  # one slot free again: a real client gets through
            time.sleep(0.5)  # serve sees that close before the client connects
            home = tmp_path / "home"
            home.mkdir()
            tcp = reporting_to(server.port, home, PYTHON_POPCONTEST_STATSD_PROTOCOL="tcp")
            proc = env.run("-c", "import six", env=tcp)
            assert proc.returncode == 0, proc.stderr
            wait_for_reports(db, 2)
        finally:
            for sock in held:
                sock.close()
        assert server.proc.poll() is None


def wait_for_refused(server: Serve, expected: int) -> object:
    deadline = time.monotonic() + 60
    while True:
        refused = server.data()["refused"]
        assert isinstance(refused, dict)
        if refused["total"] >= expected:
            return refused
        assert time.monotonic() < deadline, refused
        time.sleep(0.1)


def report(port: int, *names: str, namespace: str = "") -> None:
    """One process's report, written by the client's own functions, sent over UDP."""
    parent = f"python_popcon.namespace.{namespace}" if namespace else "python_popcon"
    lines = counter_lines(f"{parent}.library_used", f"{parent}.reports", names)
    send_udp(port, *datagrams(lines))


def test_a_store_locked_by_another_writer_delays_commits_and_loses_nothing(
    env: Env, tmp_path: Path
) -> None:
    db = tmp_path / "store.db"
    with serving(env, db) as server:
        report(server.port, "six")
        wait_for_reports(db, 1)
        other = sqlite3.connect(db, isolation_level=None)
        other.execute("BEGIN EXCLUSIVE")  # e.g. an admin's sqlite3 shell, mid-transaction
        for _ in range(20):
            report(server.port, "six")
        assert server.proc.stderr is not None
        failed = server.proc.stderr.readline()  # serve's next log line
        assert "cannot commit to the store, will retry twice a second" in failed, failed
        assert "database is locked" in failed
        other.execute("ROLLBACK")
        other.close()
        wait_for_reports(db, 21)
        top = as_json(popcon(env, "top", "--json", "--db", str(db)))
        assert [(r["library"], r["processes"]) for r in top["top"]] == [("six", 21)]  # type: ignore[attr-defined]
    log = server.stop()
    assert log.startswith("20") and "committing again" in log.splitlines()[0], log


def test_ipv6_and_a_tcp_line_split_across_packets(env: Env, tmp_path: Path) -> None:
    """serve on [::1]; a TCP client whose line arrives in two pieces still counts once."""
    db = tmp_path / "store.db"
    statsd, http = free_port(socket.SOCK_DGRAM, "::1"), free_port(host="::1")
    proc = subprocess.Popen(
        [
            *(str(env.root / "bin/popcon-site"), "serve", "--db", str(db)),
            *("--statsd", f"[::1]:{statsd}", "--http", f"[::1]:{http}"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=base_environ(),
    )
    try:
        assert proc.stdout is not None
        banner = proc.stdout.readline()
        assert banner.rstrip().endswith(f"on ::1:{statsd}; page http://[::1]:{http}/"), banner
        with socket.create_connection(("::1", statsd), timeout=10) as sock:
            sock.sendall(b"python_popcon.library_used.si")
            time.sleep(0.2)  # two segments, most likely two reads: either way one line
            sock.sendall(b"x:1|c\npython_popcon.rep")
            time.sleep(0.2)
            sock.sendall(b"orts:1|c\n")
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as udp:
            udp.sendto(b"python_popcon.reports:1|c", ("::1", statsd))
        wait_for_reports(db, 2)
        with urllib.request.urlopen(f"http://[::1]:{http}/data.json", timeout=30) as answer:
            data = json.loads(answer.read())
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
    assert [(row["library"], row["processes"]) for row in data["libraries"]] == [("six", 1)]
    assert data["refused"]["total"] == 0


def test_a_sigkill_loses_nothing_committed_and_a_restart_continues(
    env: Env, tmp_path: Path
) -> None:
    db = tmp_path / "store.db"
    server = Serve(env, db)
    for _ in range(5):
        report(server.port, "six", "attrs")
    wait_for_reports(db, 5)  # committed while serve runs: no stop, no flush on exit
    server.stop(signal.SIGKILL)
    assert server.proc.returncode == -signal.SIGKILL
    assert committed_reports(db) == 5
    with serving(env, db) as again:
        for _ in range(3):
            report(again.port, "six", "numpy")
        wait_for_reports(db, 8)
        top = as_json(popcon(env, "top", "--json", "--db", str(db)))
    assert [(r["library"], r["processes"]) for r in top["top"]] == [  # type: ignore[attr-defined]
        ("six", 8),
        ("attrs", 5),
        ("numpy", 3),
    ]
    assert stored_version(db) == 3


def test_the_json_banner_and_a_larger_receive_buffer(env: Env, tmp_path: Path) -> None:
    statsd, http = free_port(socket.SOCK_DGRAM), free_port()
    proc = subprocess.Popen(
        [
            *(str(env.root / "bin/popcon-site"), "serve", "--json", "--db", str(tmp_path / "s.db")),
            *("--statsd", f"127.0.0.1:{statsd}", "--http", f"127.0.0.1:{http}"),
            *("--rcvbuf", "1048576", "--max-new-names", "7"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=base_environ(),
    )
    try:
        assert proc.stdout is not None
        banner = json.loads(proc.stdout.readline())
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert banner == {
        "db": str(tmp_path / "s.db"),
        "schema_version": 3,
        "statsd": f"127.0.0.1:{statsd}",
        "protocols": ["udp", "tcp"],
        "http": f"http://127.0.0.1:{http}/",
        "public": None,
        "k": 10,
        "max_new_names": 7,
        # Linux doubles what it is asked (its bookkeeping), up to net.core.rmem_max.
        "udp_rcvbuf": 2 * min(1048576, int(Path("/proc/sys/net/core/rmem_max").read_text())),
    }


def test_the_public_view_shows_only_libraries_at_or_above_k(env: Env, tmp_path: Path) -> None:
    db = tmp_path / "store.db"
    seed_history(db)  # 30 days: numpy 364+ processes, scipy 10 (lab), pandas none
    home = tmp_path / "home"
    home.mkdir()
    public = free_port()
    with serving(env, db, "--public", f"127.0.0.1:{public}", "--k", "10") as server:
        assert server.banner.rstrip().endswith(f"; public view http://127.0.0.1:{public}/")
        for _ in range(2):
            proc = env.run("-c", "import requests", env=reporting_to(server.port, home))
            assert proc.returncode == 0, proc.stderr
        wait_for_reports(db, seeded_numpy(0, 1) + 1 + 2)

        def get(port: int, path: str) -> tuple[int, str]:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as r:
                    return r.status, r.read().decode()
            except urllib.error.HTTPError as exc:
                return exc.code, ""

        status, text = get(public, "/data.json")
        assert status == 200
        data = json.loads(text)
        numpy, reports = seeded_numpy(0, 29), seeded_numpy(0, 29) + 10 + 2
        assert (data["k"], data["reports"], data["below_k"]) == (10, reports, 5)
        assert data["libraries"] == [
            {"rank": 1, "library": "numpy", "processes": numpy, "share": round(numpy / reports, 6)},
            {"rank": 2, "library": "scipy", "processes": 10, "share": round(10 / reports, 6)},
        ]
        status, page = get(public, "/")
        assert status == 200 and "requests" not in page and "pandas" not in page
        assert "Only libraries imported by at least 10 processes are shown; 5 others" in page
        assert get(public, "/libraries.csv")[1].splitlines()[1:] == [
            f"1,numpy,{numpy},{round(numpy / reports, 6)}",
            f"2,scipy,10,{round(10 / reports, 6)}",
        ]
        # Nothing else is there: not the admin's page, exports, rows or metrics.
        for path in ("/daily.csv", "/metrics", "/public/", "/x"):
            assert get(public, path)[0] == 404, path
        assert json.loads(get(server.http, "/public/data.json?namespace=lab")[1])["libraries"] == [
            {"rank": 1, "library": "scipy", "processes": 10, "share": 1.0},
        ]


def test_the_page_lists_unused_distributions_of_the_site_dirs_it_is_told(
    env: Env, tmp_path: Path
) -> None:
    site = tmp_path / "other-env-site-packages"
    site.mkdir()
    write_dist_info(site, "numpy-1.0.dist-info", "numpy", {"numpy/__init__.py": "n" * 100})
    write_dist_info(site, "Big_Data-1.0.dist-info", "Big_Data", {"big_data/x.py": "b" * 5000})
    write_dist_info(site, "tiny-1.0.dist-info", "tiny", {"tiny.py": "t"})
    db = tmp_path / "store.db"
    with serving(env, db, "--site-dir", str(site)) as server:
        report(server.port, "numpy")
        wait_for_reports(db, 1)
        data = server.data()
    record = (site / "Big_Data-1.0.dist-info" / "RECORD").stat().st_size
    tiny_record = (site / "tiny-1.0.dist-info" / "RECORD").stat().st_size
    assert data["site_dirs"] == [str(site)]
    assert data["unused_installed"] == [
        {
            "distribution": "big-data",
            "version": "1.0",
            "size_bytes": 5000 + record,
            "required_by": [],
            "has_modules": True,
        },
        {
            "distribution": "tiny",
            "version": "1.0",
            "size_bytes": 1 + tiny_record,
            "required_by": [],
            "has_modules": True,
        },
    ]


def test_the_inventory_script_tells_serve_what_is_installed(env: Env, tmp_path: Path) -> None:
    """deploy/inventory's gauges, per namespace: installed there and never imported there."""
    script = ROOT / "deploy/inventory/popcon-site-inventory.py"
    db = tmp_path / "store.db"
    home = tmp_path / "home"
    home.mkdir()
    hub = {"PYTHON_POPCONTEST_STATSD_PREFIX": "python_popcon.namespace.hub.library_used"}
    with serving(env, db) as server:
        for extra in ({}, hub):
            environ = reporting_to(server.port, home, PYTHON_POPCONTEST_ENABLE="0", **extra)
            sent = env.run(str(script), env=environ)
            assert sent.returncode == 0 and sent.stdout.startswith("popcon-site-inventory: sent")
        quiet = reporting_to(server.port, home, PYTHON_POPCONTEST_ENABLE="0")
        printed = env.run(str(script), "--print", env=quiet)
        installed = sorted(
            line[len("python_popcon.library_installed.") : -4] for line in printed.stdout.split()
        )
        for extra, code in (({}, "import six"), (hub, "import yaml")):
            proc = env.run("-c", code, env=reporting_to(server.port, home, **extra))
            assert proc.returncode == 0, proc.stderr
        wait_for_reports(db, 2)
        data = server.data()
        hub_only = server.data("?namespace=hub")
    assert {"six", "pyyaml", "requests"} <= set(installed) and "popcon-site" not in installed
    unused = [(row["hub_namespace"], row["library"]) for row in data["unused_inventory"]]  # type: ignore[union-attr]
    assert unused == [("", name) for name in installed if name != "six"] + [
        ("hub", name) for name in installed if name != "pyyaml"
    ]
    assert {row["inventory_day"] for row in data["unused_inventory"]} == {day_text(today())}  # type: ignore[union-attr]
    assert [row["library"] for row in hub_only["unused_inventory"]] == [  # type: ignore[union-attr]
        name for name in installed if name != "pyyaml"
    ]
    assert data["refused"]["total"] == 0  # type: ignore[index]


def test_usage_errors(env: Env, tmp_path: Path) -> None:
    taken = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    taken.bind(("127.0.0.1", 0))
    port = taken.getsockname()[1]
    try:
        for args, words in [
            (["--statsd", f"127.0.0.1:{port}"], "cannot listen on --statsd"),
            (["--statsd", "nowhere"], "must be HOST:PORT"),
            (["--http", "127.0.0.1:99999"], "must be HOST:PORT"),
            (["--max-new-names", "-1"], "must be 0 or more"),
            (["--rcvbuf", "-1"], "must be 0 (the system's) or more"),
            (["--k", "0"], "--k must be at least 1"),
            (["--public", "x"], "--public 'x' must be HOST:PORT"),
            (["--site-dir", str(tmp_path / "none")], "is not a directory"),
        ]:
            proc = popcon(env, "serve", "--db", str(tmp_path / "s.db"), *args)
            assert proc.returncode == 2, proc.stderr
            assert words in proc.stderr and len(proc.stderr.splitlines()) == 1, proc.stderr
    finally:
        taken.close()
    with serving(env, tmp_path / "busy.db") as server:  # one serve per store
        proc = popcon(env, "serve", "--db", str(server.db), "--statsd", "127.0.0.1:1")
        assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1, proc.stderr
        assert f"another popcon-site serve is writing {server.db}" in proc.stderr
    (tmp_path / "text.db").write_text("no database " * 1000)
    proc = popcon(env, "serve", "--db", str(tmp_path / "text.db"))
    assert proc.returncode == 2 and "not a popcon-site store" in proc.stderr, proc.stderr


# -- the page, in a real browser -----------------------------------------------------------------


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.fail("chromium is needed (nox installs Debian's: _ensure_debs in noxfile.py)")
    return found


CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",  # the tests may run as root
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


def browse(url: str, profile: Path, *how: str) -> subprocess.CompletedProcess[str]:
    """Debian's chromium, headless, offline apart from ``url``."""
    return subprocess.run(
        [chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *how, url],
        capture_output=True,
        text=True,
        timeout=120,
        env=base_environ(HOME=str(profile)),
    )


def png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", head
    width, height = struct.unpack(">II", head[16:24])
    return int(width), int(height)


def seed_history(db: Path) -> None:
    """A year of history, written by the store's own Writer: weekly trends to draw."""
    writer = Writer(connect(db, write=True))
    now = today()
    default = writer.name_id("namespace", "", now - 400)
    lab = writer.name_id("namespace", "lab", now - 400)
    numpy, pandas, scipy = (
        writer.name_id("library", n, now - 400) for n in ("numpy", "pandas", "scipy")
    )
    for back in range(364):
        day = now - back
        for _ in range(1 + (363 - back) // 30):  # numpy grows over the year
            writer.add_report(day, default)
            writer.add_used(day, default, numpy)
        if back >= 100 and back % 7 == 0:  # pandas: weekly, until 100 days ago
            writer.add_report(day, lab)
            writer.add_used(day, lab, pandas)
        if back < 30 and back % 3 == 0:
            writer.add_used(day, lab, scipy)
            writer.add_report(day, lab)
    writer.flush()
    writer.db.close()


class Tables(HTMLParser):
    """The page's tables as rows of cell texts, and the heights of each row's SVG bars."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self.rects: list[list[list[int]]] = []
        self.cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "table":
            self.tables.append([])
            self.rects.append([])
        elif tag == "tr":
            self.tables[-1].append([])
            self.rects[-1].append([])
        elif tag in ("td", "th"):
            self.cell = []
        elif tag == "rect":
            self.rects[-1][-1].append(int(dict(attrs)["height"] or 0))

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self.cell is not None:
            self.tables[-1][-1].append(" ".join("".join(self.cell).split()))
            self.cell = None

    def handle_data(self, data: str) -> None:
        if self.cell is not None:
            self.cell.append(data)


def seeded_numpy(first_back: int, last_back: int) -> int:
    return sum(1 + (363 - back) // 30 for back in range(first_back, last_back + 1))


@pytest.mark.once  # the browser runs once, on 3.11
def test_the_page_in_a_real_browser(env: Env, tmp_path: Path) -> None:
    db = tmp_path / "store.db"
    seed_history(db)
    home = tmp_path / "home"
    home.mkdir()
    profile = tmp_path / "chromium"
    with serving(env, db) as server:
        for code in ("import requests", "import requests", "pass"):
            proc = env.run("-c", code, env=reporting_to(server.port, home))
            assert proc.returncode == 0, proc.stderr
        send_udp(server.port, b"python_popcon.library_used.six:1000|c")
        numpy = seeded_numpy(0, 29)
        reports = numpy + 10 + 3  # numpy's processes, scipy's, the three real ones
        wait_for_reports(db, seeded_numpy(0, 1) + 1 + 3)  # yesterday and today
        assert wait_for_refused(server, 1) == {
            "total": 1,
            "today": 1,
            "by_reason": {NOT_ONE_COUNT: 1},
        }
        dom = browse(server.url, profile, "--dump-dom")
        assert dom.returncode == 0, dom.stderr
        shots = {}
        for name, size in (("serve.png", "1280,900"), ("serve-phone.png", "390,844")):
            shots[name] = tmp_path / name
            how = (f"--screenshot={shots[name]}", f"--window-size={size}")
            assert browse(server.url, profile, *how).returncode == 0
        data = server.data()
        csv_text = server.get("libraries.csv").decode()
        daily = server.get("daily.csv?window=1d&namespace=lab").decode()
        unused = as_json(popcon(env, "unused", "--json", "--db", str(db)))
    page = dom.stdout
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in page
    assert "<script" not in page  # rendered here; nothing to fetch, from a CDN or else
    assert (
        re.findall(
            r'(?:src|href)="(?!\?|data\.json\?|libraries\.csv\?|daily\.csv\?|public/\?)', page
        )
        == []
    )
    parsed = Tables()
    parsed.feed(page)
    top, since, installed = parsed.tables
    last_day = day_text(today())
    closure = sorted(REQUESTS_CLOSURE)
    assert top[0] == ["#", "library", "processes", "share", "", "last imported", "weekly, 1 year"]
    assert [row[:4] + row[5:6] for row in top[1:]] == [
        ["1", "numpy", str(numpy), f"{numpy / reports * 100:.1f}%", last_day],
        ["2", "scipy", "10", f"{10 / reports * 100:.1f}%", last_day],
        *(
            [str(i), name, "2", f"{2 / reports * 100:.1f}%", last_day]
            for i, name in enumerate(closure, 3)
        ),
    ]
    heights = parsed.rects[0][1]  # numpy: a year of weeks, growing, each row to its own peak
    assert (
        len(heights) == 52 and heights == sorted(heights) and (heights[0], heights[-1]) == (1, 18)
    )
    assert all(len(row) == 52 for row in parsed.rects[0][1:])
    assert since == [["library", "last imported"], ["pandas", day_text(today() - 105)]]
    assert [row[2] for row in installed[1:]] == [
        row["distribution"]
        for row in unused["unused"]  # type: ignore[attr-defined]
    ]
    assert "attrs" in [row[2] for row in installed[1:]]
    # The exports say the same, exactly.
    assert data["reports"] == reports
    libraries = data["libraries"]
    assert isinstance(libraries, list)
    assert libraries[0]["weekly"][-1] == seeded_numpy(0, 6) and libraries[0]["weekly"][0] == 7
    assert csv_text.splitlines() == [
        "rank,library,processes,share,last_imported",
        f"1,numpy,{numpy},{round(numpy / reports, 6)},{last_day}",
        f"2,scipy,10,{round(10 / reports, 6)},{last_day}",
        *(f"{i},{name},2,{round(2 / reports, 6)},{last_day}" for i, name in enumerate(closure, 3)),
    ]
    assert daily.splitlines() == ["day,hub_namespace,library,processes", f"{last_day},lab,scipy,1"]
    assert png_size(shots["serve.png"]) == (1280, 900)
    assert png_size(shots["serve-phone.png"]) == (390, 844)
    keep = os.environ.get("POPCON_SERVE_SCREENSHOTS")  # docs/images: see README, serve
    if keep:
        for name, path in shots.items():
            shutil.copy(path, Path(keep) / name)


@pytest.mark.once  # once: it builds a venv of python3
def test_the_quickstart_demo(tmp_path: Path) -> None:
    """scripts/demo, as README's Quickstart runs it first: serve, processes, top, unused."""
    proc = subprocess.run(
        [str(ROOT / "scripts/demo")],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=600,
        env=base_environ(POPCON_DEMO_VENV=str(tmp_path / "venv"), TMPDIR=str(tmp_path)),
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    (store,) = tmp_path.glob("popcon-demo-store.*/store.db")
    top = lines.index(f"$ popcon-site top --db {store}")
    assert [line.split()[:3] for line in lines[top + 3 : top + 8]] == [
        ["1", "idna", "3"],
        ["2", "certifi", "2"],
        ["3", "charset-normalizer", "2"],
        ["4", "requests", "2"],
        ["5", "urllib3", "2"],
    ]
    assert lines[top + 1].endswith("(5 processes reported)")
    unused = lines.index(f"$ popcon-site unused --db {store}")
    assert lines[unused + 1].endswith("(5 processes reported)")
    assert any(line.split()[2:3] == ["statsd"] for line in lines[unused + 2 :])
    assert re.fullmatch(r"The page: http://127\.0\.0\.1:[0-9]+/ \(serve, PID [0-9]+\)", lines[-2])
    assert lines[-1].startswith("serve stopped")


def prometheus_value(url: str, expr: str) -> float | None:
    """The one value of an instant query, None while it has no result."""
    query = urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(f"{url}/api/v1/query?{query}", timeout=10) as answer:
        data = json.loads(answer.read())
    result = data["data"]["result"]
    assert len(result) <= 1, result
    return float(result[0]["value"][1]) if result else None


def wait_for_value(url: str, expr: str, expected: float) -> None:
    deadline = time.monotonic() + 60
    while (found := prometheus_value(url, expr)) != expected:
        assert time.monotonic() < deadline, f"{expr} = {found}, expected {expected}"
        time.sleep(0.2)


@pytest.mark.once  # once: a real Prometheus scrapes
def test_prometheus_scrapes_metrics_and_the_counters_survive_a_restart(
    env: Env, tmp_path: Path
) -> None:
    server_bin, _ = promserver.binaries()
    db = tmp_path / "store.db"
    home = tmp_path / "home"
    home.mkdir()
    hub = {"PYTHON_POPCONTEST_STATSD_PREFIX": "python_popcon.namespace.hub.library_used"}
    server = Serve(env, db)
    for extra, code in [({}, "import six"), ({}, "import six"), (hub, "import idna")]:
        proc = env.run("-c", code, env=reporting_to(server.port, home, **extra))
        assert proc.returncode == 0, proc.stderr
    wait_for_reports(db, 3)
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: popcon\n"
        f"    static_configs:\n      - targets: ['127.0.0.1:{server.http}']\n"
    )
    port = free_port()
    log_path = tmp_path / "prometheus.log"
    with log_path.open("wb") as log:
        prom = subprocess.Popen(
            [
                server_bin,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        assert promserver._wait_ready(prom, url, log_path)
        six = 'python_popcon_library_used{library="six"}'
        wait_for_value(url, six, 2)
        assert prometheus_value(url, "sum(python_popcon_reports)") == 3
        idna = 'python_popcon_library_used{hub_namespace="hub",library="idna"}'
        assert prometheus_value(url, idna) == 1
        assert prometheus_value(url, 'python_popcon_library_used_created{library="six"}') == (
            today() * 86400
        )
        # A restart: the counter goes on from the store, it never resets.
        server.stop()
        server = Serve(env, db, http=server.http)
        proc = env.run("-c", "import six", env=reporting_to(server.port, home))
        assert proc.returncode == 0, proc.stderr
        wait_for_value(url, six, 3)
        assert prometheus_value(url, f"resets({six}[10m])") == 0
    finally:
        server.stop()
        prom.terminate()
        prom.wait(timeout=30)
