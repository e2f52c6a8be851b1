"""The store of ``serve``: exact counts per UTC day, namespace and library, in SQLite.

Needs SQLite 3.24 or later (upserts; Python's own builds have had it since 2018).
One file, written by one ``serve`` process and read by any number of others
(``top --db``, ``unused --db``, the page): WAL mode, so readers never wait for the
writer and never see half a commit.  Days are whole UTC days, stored as the number
of days since 1970-01-01.  A namespace is the prefix's label as
deploy/statsd-exporter/mapping.yml gives it (``hub_namespace``); the default prefix
is the namespace ``""``.

Schema changes: bump ``SCHEMA_VERSION`` and add ``MIGRATIONS[old] = function`` that
turns a store of version ``old`` into one of ``old + 1`` (run in one transaction).
A store newer than this code is refused, never touched.
"""

from __future__ import annotations

import datetime
import sqlite3
import time
from collections.abc import Callable, Iterable
from pathlib import Path

SCHEMA_VERSION = 3
WRITER_BUSY_MS = 100  # how long a commit waits for another writer's lock

_SCHEMA_V1 = """
CREATE TABLE names (
    id INTEGER PRIMARY KEY,
    kind TEXT NOT NULL CHECK (kind IN ('library', 'namespace')),
    name TEXT NOT NULL,
    first_day INTEGER NOT NULL,
    UNIQUE (kind, name)
);
CREATE TABLE library_used (
    day INTEGER NOT NULL,
    namespace INTEGER NOT NULL REFERENCES names (id),
    library INTEGER NOT NULL REFERENCES names (id),
    processes INTEGER NOT NULL,
    PRIMARY KEY (day, namespace, library)
) WITHOUT ROWID;
CREATE TABLE reports (
    day INTEGER NOT NULL,
    namespace INTEGER NOT NULL REFERENCES names (id),
    processes INTEGER NOT NULL,
    PRIMARY KEY (day, namespace)
) WITHOUT ROWID;
CREATE TABLE refused (
    day INTEGER NOT NULL,
    reason TEXT NOT NULL,
    items INTEGER NOT NULL,
    PRIMARY KEY (day, reason)
) WITHOUT ROWID;
"""


def _add_installed(connection: sqlite3.Connection) -> None:
    # Version 2: what deploy/inventory's gauges say is installed, per namespace, and
    # the last day they said so (the page lists what is installed and never imported).
    connection.execute(
        "CREATE TABLE installed ("
        " namespace INTEGER NOT NULL REFERENCES names (id),"
        " library INTEGER NOT NULL REFERENCES names (id),"
        " last_day INTEGER NOT NULL,"
        " PRIMARY KEY (namespace, library)) WITHOUT ROWID"
    )


def _add_users(connection: sqlite3.Connection) -> None:
    # Version 3 (issue 23): distinct users, +1 per user, month and library (library_users)
    # and per user and month (users), counted per day as the reports are.
    connection.execute(
        "CREATE TABLE library_users ("
        " day INTEGER NOT NULL,"
        " namespace INTEGER NOT NULL REFERENCES names (id),"
        " library INTEGER NOT NULL REFERENCES names (id),"
        " users INTEGER NOT NULL,"
        " PRIMARY KEY (day, namespace, library)) WITHOUT ROWID"
    )
    connection.execute(
        "CREATE TABLE users ("
        " day INTEGER NOT NULL,"
        " namespace INTEGER NOT NULL REFERENCES names (id),"
        " users INTEGER NOT NULL,"
        " PRIMARY KEY (day, namespace)) WITHOUT ROWID"
    )


# MIGRATIONS[v](connection) turns a version-v store into version v + 1; a new store
# is made at version 1 and goes through them all, as an old one does.
MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {1: _add_installed, 2: _add_users}
# How long an inventory stays true without being sent again (statsd_exporter's ttl).
INSTALLED_TTL_DAYS = 8


class StoreError(Exception):
    """A file that is not a store of ours, or one this version cannot read."""


def today(now: float | None = None) -> int:
    return int((time.time() if now is None else now) // 86400)


def day_text(day: int) -> str:
    return (datetime.date(1970, 1, 1) + datetime.timedelta(days=day)).isoformat()


def connect(path: str | Path, *, write: bool) -> sqlite3.Connection:
    """A connection to the store; ``write`` creates or migrates it, a reader only reads."""
    path = Path(path)
    if not write and not path.exists():
        raise StoreError(f"no store at {path} (start `popcon-site serve --db {path}` first)")
    if not write:
        uri = f"file:{path}?mode=ro"
        connection = sqlite3.connect(uri, uri=True, timeout=10, isolation_level=None)
    else:
        connection = sqlite3.connect(str(path), timeout=10, isolation_level=None)
    try:
        if write:
            _refuse_newer(schema_version(connection))  # before anything writes to it
            connection.execute("PRAGMA journal_mode=WAL")
            # A commit is on disk once the WAL is: a SIGKILL of serve loses nothing
            # committed (a power cut may lose the last commits, not the file).
            connection.execute("PRAGMA synchronous=NORMAL")
            _migrate(connection)
            # From now on serve's loop commits: waiting for another writer (someone's
            # sqlite3 shell) must not stop it reading the sockets; it retries instead.
            connection.execute(f"PRAGMA busy_timeout={WRITER_BUSY_MS}")
        else:
            version = schema_version(connection)
            if version != SCHEMA_VERSION:
                raise StoreError(
                    f"{path} is a store of schema version {version}, this popcon-site reads "
                    f"{SCHEMA_VERSION}: run this version's `serve` on it once to migrate it"
                )
    except sqlite3.DatabaseError as exc:
        connection.close()
        raise StoreError(f"{path} is not a popcon-site store: {exc}") from None
    except StoreError:
        connection.close()
        raise
    return connection


def schema_version(connection: sqlite3.Connection) -> int:
    """The store's version; 0 for an empty file. Raises StoreError for another database."""
    tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master")}
    if not tables:
        return 0
    if "schema_version" not in tables:
        raise StoreError("a SQLite database, but not a popcon-site store (no schema_version)")
    row = connection.execute("SELECT version FROM schema_version").fetchone()
    if row is None or not isinstance(row[0], int):
        raise StoreError("a popcon-site store without a schema version")
    return int(row[0])


def _refuse_newer(version: int) -> None:
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"the store has schema version {version}, newer than this popcon-site's "
            f"{SCHEMA_VERSION}: use a newer popcon-site"
        )


def _migrate(connection: sqlite3.Connection) -> None:
    version = schema_version(connection)
    _refuse_newer(version)
    if version == 0:  # a new file: version 1 in one transaction, then the migrations
        connection.executescript(
            "BEGIN IMMEDIATE;"
            + _SCHEMA_V1
            + "CREATE TABLE schema_version (version INTEGER NOT NULL);"
            + "INSERT INTO schema_version VALUES (1);"
            + "COMMIT;"
        )
        version = 1
    while version < SCHEMA_VERSION:
        connection.execute("BEGIN IMMEDIATE")
        try:
            MIGRATIONS[version](connection)
            version += 1
            connection.execute("UPDATE schema_version SET version = ?", (version,))
            connection.execute("COMMIT")
        except BaseException:
            connection.execute("ROLLBACK")
            raise


class Writer:
    """What ``serve`` adds, kept in memory and committed in one transaction by flush()."""

    def __init__(self, connection: sqlite3.Connection) -> None:
        self.db = connection
        self.ids: dict[tuple[str, str], int] = {}
        for id_, kind, name in connection.execute("SELECT id, kind, name FROM names"):
            self.ids[(kind, name)] = id_
        self.next_id = max(self.ids.values(), default=0) + 1
        self.used: dict[tuple[int, int, int], int] = {}
        self.reports: dict[tuple[int, int], int] = {}
        self.refused: dict[tuple[int, str], int] = {}
        self.installed: dict[tuple[int, int], int] = {}
        self.library_users: dict[tuple[int, int, int], int] = {}
        self.users: dict[tuple[int, int], int] = {}
        self.new_names: list[tuple[int, str, str, int]] = []

    def new_names_on(self, day: int) -> int:
        """Names first seen on ``day``: committed ones and those waiting for a flush."""
        row = self.db.execute("SELECT count(*) FROM names WHERE first_day = ?", (day,)).fetchone()
        return int(row[0]) + sum(1 for item in self.new_names if item[3] == day)

    def name_id(self, kind: str, name: str, day: int) -> int:
        key = (kind, name)
        found = self.ids.get(key)
        if found is None:
            found = self.next_id
            self.next_id += 1
            self.ids[key] = found
            self.new_names.append((found, kind, name, day))
        return found

    def known(self, kind: str, name: str) -> bool:
        return (kind, name) in self.ids

    def add_used(self, day: int, namespace: int, library: int) -> None:
        key = (day, namespace, library)
        self.used[key] = self.used.get(key, 0) + 1

    def add_report(self, day: int, namespace: int) -> None:
        key = (day, namespace)
        self.reports[key] = self.reports.get(key, 0) + 1

    def add_library_user(self, day: int, namespace: int, library: int) -> None:
        key = (day, namespace, library)
        self.library_users[key] = self.library_users.get(key, 0) + 1

    def add_user(self, day: int, namespace: int) -> None:
        key = (day, namespace)
        self.users[key] = self.users.get(key, 0) + 1

    def add_installed(self, day: int, namespace: int, library: int) -> None:
        key = (namespace, library)
        self.installed[key] = max(day, self.installed.get(key, day))

    def add_refused(self, day: int, reason: str, items: int = 1) -> None:
        key = (day, reason)
        self.refused[key] = self.refused.get(key, 0) + items

    def pending(self) -> bool:
        return bool(
            self.used
            or self.reports
            or self.refused
            or self.new_names
            or self.installed
            or self.library_users
            or self.users
        )

    def flush(self) -> None:
        """Commit everything added since the last flush, in one transaction."""
        if not self.pending():
            return
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany("INSERT INTO names VALUES (?, ?, ?, ?)", self.new_names)
            db.executemany(
                "INSERT INTO library_used VALUES (?, ?, ?, ?) "
                "ON CONFLICT (day, namespace, library) DO UPDATE "
                "SET processes = processes + excluded.processes",
                [(*key, n) for key, n in self.used.items()],
            )
            db.executemany(
                "INSERT INTO reports VALUES (?, ?, ?) ON CONFLICT (day, namespace) DO UPDATE "
                "SET processes = processes + excluded.processes",
                [(*key, n) for key, n in self.reports.items()],
            )
            db.executemany(
                "INSERT INTO refused VALUES (?, ?, ?) ON CONFLICT (day, reason) DO UPDATE "
                "SET items = items + excluded.items",
                [(*key, n) for key, n in self.refused.items()],
            )
            db.executemany(
                "INSERT INTO installed VALUES (?, ?, ?) ON CONFLICT (namespace, library) "
                "DO UPDATE SET last_day = max(last_day, excluded.last_day)",
                [(*key, day) for key, day in self.installed.items()],
            )
            db.executemany(
                "INSERT INTO library_users VALUES (?, ?, ?, ?) "
                "ON CONFLICT (day, namespace, library) DO UPDATE "
                "SET users = users + excluded.users",
                [(*key, n) for key, n in self.library_users.items()],
            )
            db.executemany(
                "INSERT INTO users VALUES (?, ?, ?) ON CONFLICT (day, namespace) DO UPDATE "
                "SET users = users + excluded.users",
                [(*key, n) for key, n in self.users.items()],
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self.library_users.clear()
        self.users.clear()
        self.installed.clear()
        self.new_names.clear()
        self.used.clear()
        self.reports.clear()
        self.refused.clear()


class Reader:
    """Questions about the store, all answered from committed data."""

    def __init__(self, connection: sqlite3.Connection) -> None:
        self.db = connection

    def namespaces(self) -> list[str]:
        rows = self.db.execute("SELECT name FROM names WHERE kind = 'namespace' ORDER BY name")
        return [str(row[0]) for row in rows]

    def _where(
        self, first: int, last: int, namespace: str | None, table: str
    ) -> tuple[str, list[object]]:
        clause = f"{table}.day BETWEEN ? AND ?"
        params: list[object] = [first, last]
        if namespace is not None:
            clause += (
                f" AND {table}.namespace = "
                "(SELECT id FROM names WHERE kind = 'namespace' AND name = ?)"
            )
            params.append(namespace)
        return clause, params

    def reports(self, first: int, last: int, namespace: str | None = None) -> int:
        where, params = self._where(first, last, namespace, "reports")
        row = self.db.execute(f"SELECT sum(processes) FROM reports WHERE {where}", params)
        return int(row.fetchone()[0] or 0)

    def users(self, first: int, last: int, namespace: str | None = None) -> int:
        """Distinct users (per month: user-months over a longer window) who reported."""
        where, params = self._where(first, last, namespace, "users")
        row = self.db.execute(f"SELECT sum(users) FROM users WHERE {where}", params)
        return int(row.fetchone()[0] or 0)

    def library_users(self, first: int, last: int, namespace: str | None = None) -> dict[str, int]:
        where, params = self._where(first, last, namespace, "library_users")
        rows = self.db.execute(
            "SELECT names.name, sum(users) FROM library_users JOIN names "
            f"ON names.id = library_users.library WHERE {where} GROUP BY names.name",
            params,
        )
        return {str(name): int(n) for name, n in rows}

    def installed(self, last: int, namespace: str | None = None) -> list[tuple[str, str, int]]:
        """(namespace, library, last inventory day) of inventories not expired on ``last``."""
        clause = "installed.last_day BETWEEN ? AND ?"
        params: list[object] = [last - INSTALLED_TTL_DAYS + 1, last]
        if namespace is not None:
            clause += " AND ns.name = ?"
            params.append(namespace)
        rows = self.db.execute(
            "SELECT ns.name, lib.name, last_day FROM installed "
            "JOIN names AS ns ON ns.id = installed.namespace "
            "JOIN names AS lib ON lib.id = installed.library "
            f"WHERE {clause} ORDER BY ns.name, lib.name",
            params,
        )
        return [(str(ns), str(lib), int(day)) for ns, lib, day in rows]

    def report_days(self, first: int, last: int, namespace: str | None = None) -> set[int]:
        """The days with at least one report."""
        where, params = self._where(first, last, namespace, "reports")
        rows = self.db.execute(f"SELECT DISTINCT day FROM reports WHERE {where}", params)
        return {int(row[0]) for row in rows}

    def libraries(self, first: int, last: int, namespace: str | None = None) -> dict[str, int]:
        where, params = self._where(first, last, namespace, "library_used")
        rows = self.db.execute(
            "SELECT names.name, sum(processes) FROM library_used JOIN names "
            f"ON names.id = library_used.library WHERE {where} GROUP BY names.name",
            params,
        )
        return {str(name): int(n) for name, n in rows}

    def last_imported(self, namespace: str | None = None) -> dict[str, int]:
        """Library -> the last day a process imported it."""
        where, params = self._where(-(2**40), 2**40, namespace, "library_used")
        rows = self.db.execute(
            "SELECT names.name, max(day) FROM library_used JOIN names "
            f"ON names.id = library_used.library WHERE {where} GROUP BY names.name",
            params,
        )
        return {str(name): int(day) for name, day in rows}

    def daily(
        self, first: int, last: int, namespace: str | None = None
    ) -> Iterable[tuple[int, str, str, int]]:
        """(day, namespace, library, processes) rows, by day then namespace then library."""
        where, params = self._where(first, last, namespace, "library_used")
        rows = self.db.execute(
            "SELECT day, ns.name, lib.name, processes FROM library_used "
            "JOIN names AS ns ON ns.id = library_used.namespace "
            "JOIN names AS lib ON lib.id = library_used.library "
            f"WHERE {where} ORDER BY day, ns.name, lib.name",
            params,
        )
        return [(int(d), str(ns), str(lib), int(n)) for d, ns, lib, n in rows]

    def refused(self, first: int | None = None, last: int | None = None) -> dict[str, int]:
        """Reason -> items refused (all days by default)."""
        lo = -(2**40) if first is None else first
        hi = 2**40 if last is None else last
        rows = self.db.execute(
            "SELECT reason, sum(items) FROM refused WHERE day BETWEEN ? AND ? GROUP BY reason",
            (lo, hi),
        )
        return {str(reason): int(n) for reason, n in rows}

    def totals(self) -> dict[str, list[tuple[str, str, int, int]]]:
        """All-time counters for /metrics: (namespace or reason, library, total, first day)."""
        used = self.db.execute(
            "SELECT ns.name, lib.name, sum(processes), min(day) FROM library_used "
            "JOIN names AS ns ON ns.id = library_used.namespace "
            "JOIN names AS lib ON lib.id = library_used.library "
            "GROUP BY ns.name, lib.name ORDER BY ns.name, lib.name"
        )
        reports = self.db.execute(
            "SELECT ns.name, sum(processes), min(day) FROM reports "
            "JOIN names AS ns ON ns.id = reports.namespace GROUP BY ns.name ORDER BY ns.name"
        )
        refused = self.db.execute(
            "SELECT reason, sum(items), min(day) FROM refused GROUP BY reason ORDER BY reason"
        )
        return {
            "library_used": [(str(a), str(b), int(n), int(d)) for a, b, n, d in used],
            "reports": [(str(a), "", int(n), int(d)) for a, n, d in reports],
            "refused": [(str(a), "", int(n), int(d)) for a, n, d in refused],
        }
