"""What ``serve`` accepts from the wire, and what it refuses.

Only the lines popcon-site itself sends count (see ``counter_lines`` and
``datagrams`` in popcon_site._report, and deploy/statsd-exporter/mapping.yml):

    python_popcon.library_used.<name>:1|c
    python_popcon.reports:1|c
    python_popcon.namespace.<namespace>.library_used.<name>:1|c
    python_popcon.namespace.<namespace>.reports:1|c
    python_popcon[.namespace.<namespace>].library_users.<name>:1|c   (distinct users,
    python_popcon[.namespace.<namespace>].users:1|c                   issue 23)

and the inventory's (deploy/inventory) ``python_popcon[.namespace.<namespace>]
.library_installed.<name>:1|g``, which says a library is installed, never that it was
used.

``<name>`` must be a normalized distribution name (``is_safe_name``), ``<namespace>``
one prefix segment.  Everything else is refused and counted by reason: another
value, type or sample rate (``:1000|c``, ``:1|g``, ``|@0.1``), another metric name,
bytes that are not ASCII, an oversized datagram or line, and a new name beyond the
day's cap.  ``parse_lines`` is not used: it sums any value (``:1000|c`` would count
1000), which is right for reading back our own reports and wrong for hostile input.
"""

from __future__ import annotations

from popcon_site import is_safe_name
from popcon_site.cli._store import Writer, today

PARENT = "python_popcon"
# Largest datagram read whole: popcon-site sends at most 512 bytes, other statsd
# clients up to ~8 KB (jumbo frames).  Anything longer is refused as one item.
MAX_DATAGRAM = 8192
# Longest line: a 200-character prefix, a 200-character name and ":1|c", rounded up.
MAX_LINE = 512
# New names (libraries and namespaces together) accepted per UTC day by default.
DEFAULT_MAX_NEW_NAMES = 1000

_SEGMENT_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")
_MAX_SEGMENT = 100

# Reasons a line (or a whole datagram) is refused, as the page and the logs name them.
NOT_ASCII = "not ASCII"
TOO_LARGE = "datagram or line too large"
NOT_ONE_COUNT = "not :1|c (another value, type or sample rate)"
UNKNOWN_METRIC = "not a popcon-site metric name"
BAD_NAME = "not a normalized distribution name"
BAD_NAMESPACE = "not a namespace segment"
NAME_CAP = "new name over the day's cap"
INTERNAL_ERROR = "error in serve (see its log)"


_COUNTERS = {"library_used": "used", "library_users": "library_users"}


def classify(line: str) -> tuple[str, str, str]:
    """("used", namespace, library), ("reports", namespace, ""), ("library_users",
    namespace, library), ("users", namespace, ""), ("installed", namespace, library) for
    the inventory's gauges, or ("refused", reason, "")."""
    gauge = line.endswith(":1|g")
    if not (gauge or line.endswith(":1|c")):
        return ("refused", NOT_ONE_COUNT, "")
    parts = line[: -len(":1|c")].split(".")
    if not parts or parts[0] != PARENT:
        return ("refused", UNKNOWN_METRIC, "")
    namespace = ""
    rest = parts[1:]
    if len(rest) >= 3 and rest[0] == "namespace":
        namespace = rest[1]
        if not (0 < len(namespace) <= _MAX_SEGMENT and set(namespace) <= _SEGMENT_CHARS):
            return ("refused", BAD_NAMESPACE, "")
        rest = rest[2:]
    if rest in (["reports"], ["users"]) and not gauge:
        return (rest[0], namespace, "")
    kinds = {"library_installed": "installed"} if gauge else _COUNTERS
    if len(rest) >= 2 and rest[0] in kinds:
        # A dot in the name would be more components: refused as not normalized.
        name = ".".join(rest[1:])
        if not is_safe_name(name):
            return ("refused", BAD_NAME, "")
        return (kinds[rest[0]], namespace, name)
    return ("refused", NOT_ONE_COUNT if gauge else UNKNOWN_METRIC, "")


class Collector:
    """Counts accepted lines into a store Writer; refusals by reason, never an exception."""

    def __init__(self, writer: Writer, max_new_names: int = DEFAULT_MAX_NEW_NAMES) -> None:
        self.writer = writer
        self.max_new_names = max_new_names
        self.accepted = 0
        self.refused: dict[str, int] = {}
        self._cap_day = -1
        self._new_today = 0

    def refuse(self, reason: str, items: int = 1, day: int | None = None) -> None:
        self.refused[reason] = self.refused.get(reason, 0) + items
        self.writer.add_refused(today() if day is None else day, reason, items)

    def datagram(self, data: bytes, day: int | None = None) -> None:
        """One UDP datagram: lines separated by ``\\n``, as the client joins them."""
        day = today() if day is None else day
        if len(data) > MAX_DATAGRAM:
            self.refuse(TOO_LARGE, day=day)
            return
        for line in data.split(b"\n"):
            self.line(line, day)

    def line(self, raw: bytes, day: int | None = None) -> None:
        day = today() if day is None else day
        if not raw:
            return  # a trailing newline (TCP clients end every line with one)
        if len(raw) > MAX_LINE:
            self.refuse(TOO_LARGE, day=day)
            return
        try:
            text = raw.decode("ascii")
        except UnicodeDecodeError:
            self.refuse(NOT_ASCII, day=day)
            return
        kind, first, second = classify(text)
        if kind == "refused":
            self.refuse(first, day=day)
            return
        writer = self.writer
        new = [
            key
            for key in (("namespace", first), ("library", second))
            if key[1] or key[0] == "namespace"
            if not writer.known(*key)
        ]
        if new and not self._room_for(len(new), day):
            self.refuse(NAME_CAP, day=day)
            return
        namespace = writer.name_id("namespace", first, day)
        if kind == "reports":
            writer.add_report(day, namespace)
        elif kind == "used":
            writer.add_used(day, namespace, writer.name_id("library", second, day))
        elif kind == "users":
            writer.add_user(day, namespace)
        elif kind == "library_users":
            writer.add_library_user(day, namespace, writer.name_id("library", second, day))
        else:
            writer.add_installed(day, namespace, writer.name_id("library", second, day))
        self.accepted += 1

    def _room_for(self, count: int, day: int) -> bool:
        if day != self._cap_day:
            self._cap_day = day
            self._new_today = self.writer.new_names_on(day)
        if self._new_today + count > self.max_new_names:
            return False
        self._new_today += count
        return True
