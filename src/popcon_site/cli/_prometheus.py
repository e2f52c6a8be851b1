"""The Prometheus HTTP API, as ``unused`` and ``top`` ask it (stdlib ``urllib`` only).

The metric names are the ones deploy/statsd-exporter/mapping.yml (and the Helm
values, which a test keeps equal to it) gives the statsd counters; change both
together.
"""

from __future__ import annotations

import json
import re
import socket
import time
from typing import Any, NoReturn

from popcon_site import __version__, normalize_name
from popcon_site.cli._output import CommandError, NothingToShow

LIBRARY_METRIC = "python_popcon_library_used"
REPORTS_METRIC = "python_popcon_reports"
LIBRARY_USERS_METRIC = "python_popcon_library_users"  # issue 23: distinct users
USERS_METRIC = "python_popcon_users"

_DURATION = re.compile(r"^(?:[0-9]+(?:ms|s|m|h|d|w|y))+$")
_FORBIDDEN_LABEL = re.compile(r"(?:^|[,{\s])(library|__name__)\s*(?:=|!=|=~|!~)")
_MAX_RESPONSE = 64 * 1024 * 1024
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}

# Prometheus' default lookback: the last sample up to 5 minutes before the window's
# start is a series' value there (its baseline).
LOOKBACK_SECONDS = 300
GAP_BUCKETS = 24  # `top`/`unused` look for silences in 24ths of the window
CT_FEATURE = "created-timestamp-zero-ingestion"


def duration_seconds(text: str) -> float:
    """A PromQL duration (already matched by _DURATION) in seconds."""
    return sum(
        int(number) * _UNIT_SECONDS[unit]
        for number, unit in re.findall(r"([0-9]+)(ms|s|m|h|d|w|y)", text)
    )


def count_expr(metric: str, matchers: str, seconds: float, by: str = "") -> str:
    """PromQL for the processes a counter counted in the window: exact integers.

    ``increase()`` is not used where it can be avoided: it extrapolates to the window's
    edges (one import reads more than 1 on Prometheus 3) and takes a series' first
    sample as its starting point (the first import after an exporter start read 0 on
    Prometheus 2.42).  Per series, without a counter reset in the window (and the
    lookback before it): the last value minus the value at the window's start, or
    minus 0 for a series born inside the window, which every statsd_exporter series
    is, from 0, at its first increment.  With a reset (an exporter restart), the
    rounded ``increase()``: exact where the store ingests the zero sample at the
    series' created timestamp (Prometheus 3 with created-timestamp-zero-ingestion,
    VictoriaMetrics fed by it), short by a restarted series' first count otherwise.
    """
    return count_in(f"{metric}{matchers}", f"{round(seconds * 1000)}ms", by)


def count_in(series: str, window: str, by: str = "") -> str:
    """count_expr for a selector and a PromQL window (``30d``, Grafana's ``$__range``);
    deploy/prometheus/popcon-site.rules.yml and the Grafana dashboard spell it out."""
    base = f"last_over_time({series}[{LOOKBACK_SECONDS // 60}m] offset {window})"
    last = f"max_over_time({series}[{window}])"
    reset = f"resets({series}[{window}]) > 0 or min_over_time({series}[{window}]) < {base}"
    per_series = (
        f"({last} - ({base} or {last} * 0) unless ({reset})) or round(increase({series}[{window}]))"
    )
    return f"sum by ({by}) ({per_series})" if by else f"sum({per_series})"


class Store:
    """What answers the queries: Prometheus (its version, whether it ingests created
    timestamps) or another server of the same API (VictoriaMetrics)."""

    def __init__(self, name: str, sees_first_increment: bool) -> None:
        self.name = name
        self.sees_first_increment = sees_first_increment

    def first_increment_note(self) -> str:
        return (
            f"{self.name} does not ingest created timestamps: after an exporter restart, a "
            f"library's first import can be missing from the counts (start Prometheus 3 with "
            f"--enable-feature={CT_FEATURE}; README, Collecting); unused counts as used "
            "every library seen on an exporter restarted in the window"
        )


def detect_store(url: str, timeout: float, authorization: str | None) -> Store:
    """Prometheus answers /api/v1/status/flags with its flags; VictoriaMetrics does not."""
    try:
        flags = _http_json(f"{url}/api/v1/status/flags", timeout, url, authorization)
    except CommandError:
        flags = {}
    data = flags.get("data")
    if flags.get("status") != "success" or not isinstance(data, dict):
        return Store("VictoriaMetrics", sees_first_increment=True)
    features = [f.strip() for f in str(data.get("enable-feature", "")).split(",")]
    try:
        info = _http_json(f"{url}/api/v1/status/buildinfo", timeout, url, authorization)
        version = str(info.get("data", {}).get("version", "")).split("+")[0]
    except (CommandError, AttributeError):
        version = ""
    name = f"Prometheus {version}".strip()
    # 2.42 accepts the flag with a warning ("Unknown option") and lists it: only 2.50
    # and later act on it.
    numbers = re.match(r"(\d+)\.(\d+)", version)
    knows_it = numbers is not None and (int(numbers[1]), int(numbers[2])) >= (2, 50)
    return Store(name, sees_first_increment=knows_it and CT_FEATURE in features)


def add_query_arguments(parser: Any) -> None:
    """The options ``unused`` and ``top`` share."""
    parser.add_argument(
        "--prometheus",
        required=True,
        metavar="URL",
        help="Prometheus base URL, e.g. http://prometheus:9090",
    )
    parser.add_argument(
        "--window", default="30d", help="PromQL duration to look back (default: 30d)"
    )
    parser.add_argument(
        "--selector",
        default="",
        metavar="MATCHERS",
        help="label matchers added to both metrics, e.g. 'namespace=\"x\"'",
    )
    parser.add_argument(
        "--at",
        metavar="TIME",
        help="evaluate at this time (Unix seconds or RFC 3339) instead of now",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="HTTP timeout per query (default: 10)",
    )


class Query:
    """The window, selector and evaluation time shared by unused and top."""

    def __init__(self, args: Any) -> None:
        self.url, self.authorization = base_url(args.prometheus)
        if not _DURATION.match(args.window):
            raise CommandError(
                f"--window {args.window!r} is not a Prometheus duration (e.g. 30d, 12h, 1w)"
            )
        self.window = args.window
        self.seconds = duration_seconds(args.window)
        if self.seconds <= 0:
            raise CommandError(f"--window {args.window!r} is empty")
        selector = args.selector.strip()
        if selector.startswith("{") and selector.endswith("}"):
            selector = selector[1:-1].strip()
        if _FORBIDDEN_LABEL.search(selector):
            raise CommandError(
                "--selector must not match on library or __name__: "
                "it is added to the reports metric too"
            )
        self.selector = selector
        self.at = time.time() if args.at is None else parse_time(args.at)
        if not args.timeout > 0:
            raise CommandError("--timeout must be positive")
        self.timeout = args.timeout

    def matchers(self) -> str:
        return f"{{{self.selector}}}" if self.selector else ""

    def libraries(self) -> dict[str, float]:
        """Processes that imported each library in the window (normalized names)."""
        return self._per_library(LIBRARY_METRIC)

    def library_users(self) -> dict[str, float]:
        """Distinct users who imported each library in the window (user-months)."""
        return self._per_library(LIBRARY_USERS_METRIC)

    def _per_library(self, metric: str) -> dict[str, float]:
        expr = count_expr(metric, self.matchers(), self.seconds, by="library")
        result: dict[str, float] = {}
        for sample in self.vector(expr):
            name = normalize_name(str(sample["metric"].get("library", "")))
            if name:
                result[name] = result.get(name, 0.0) + _value(sample)
        return result

    def users(self) -> float:
        expr = count_expr(USERS_METRIC, self.matchers(), self.seconds)
        return sum(_value(sample) for sample in self.vector(expr))

    def reports(self) -> float:
        expr = count_expr(REPORTS_METRIC, self.matchers(), self.seconds)
        counted = sum(_value(sample) for sample in self.vector(expr))
        # At least one process reported to each exporter (re)started in the window
        # that has a reports series: the same reasoning as for libraries below.
        restarted = (
            f"count({REPORTS_METRIC}{self.matchers()} and on (job, instance) ({self._started()}))"
        )
        return max(counted, sum(_value(sample) for sample in self.vector(restarted)))

    def _started(self) -> str:
        return f"process_start_time_seconds > {self.at - self.seconds:.3f}"

    def restarted_exporters_libraries(self) -> set[str]:
        """Libraries with a series on an exporter that (re)started inside the window.

        statsd_exporter creates a series only when it receives an increment, so every
        series such an exporter still has was incremented inside the window.  A store
        that cannot see a series' first increment (Prometheus without created-timestamp
        ingestion, measured on 2.42) counts 0 for a library imported once again after a
        restart (1 before, 1 after): ``unused`` must still call it used.
        """
        expr = (
            f"count by (library) ({LIBRARY_METRIC}{self.matchers()} "
            f"and on (job, instance) ({self._started()}))"
        )
        return {
            normalize_name(str(sample["metric"].get("library", ""))) for sample in self.vector(expr)
        } - {""}

    def store(self) -> Store:
        """What answers the queries, and whether it sees a series' first increment."""
        return detect_store(self.url, self.timeout, self.authorization)

    def silences(self, buckets: int = GAP_BUCKETS) -> list[tuple[float, float]]:
        """Stretches of at least a quarter of the window in which no process reported.

        The window is cut into ``buckets``; runs of empty buckets after the first one
        that holds reports (a collection that started inside the window is not a gap)
        and lasting ``buckets // 4`` or more are returned as (start, end) times.
        """
        step = self.seconds / buckets
        expr = count_expr(REPORTS_METRIC, self.matchers(), step)
        ends = [self.at - self.seconds + step * (i + 1) for i in range(buckets)]
        totals = dict.fromkeys(range(buckets), 0.0)
        for series in self.matrix(expr, ends[0], ends[-1], step):
            for point in series.get("values", []):
                try:
                    when, value = float(point[0]), float(point[1])
                except (IndexError, TypeError, ValueError):
                    continue
                index = min(range(buckets), key=lambda i: abs(ends[i] - when))
                totals[index] += value if value == value else 0.0
        gaps: list[tuple[float, float]] = []
        run_start: int | None = None
        seen_reports = False
        for i in range(buckets + 1):
            empty = i < buckets and totals[i] <= 0
            if i < buckets and not empty:
                seen_reports = True
            if empty and seen_reports and run_start is None:
                run_start = i
            if not empty and run_start is not None:
                if i - run_start >= max(1, buckets // 4):
                    gaps.append((ends[run_start] - step, ends[i - 1]))
                run_start = None
        return gaps

    def vector(self, expr: str) -> list[dict[str, Any]]:
        from urllib.parse import urlencode

        data = _http_json(
            f"{self.url}/api/v1/query?{urlencode({'query': expr, 'time': f'{self.at:.3f}'})}",
            self.timeout,
            self.url,
            self.authorization,
        )
        if data.get("status") != "success":
            raise CommandError(
                f"Prometheus rejected the query {expr!r}: "
                f"{data.get('errorType', 'error')}: {data.get('error', 'no reason given')}"
            )
        result = data.get("data", {})
        if not isinstance(result, dict) or result.get("resultType") != "vector":
            raise CommandError(f"unexpected answer from Prometheus to {expr!r}")
        samples = result.get("result", [])
        return [s for s in samples if isinstance(s, dict) and isinstance(s.get("metric"), dict)]

    def matrix(self, expr: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
        from urllib.parse import urlencode

        params = {
            "query": expr,
            "start": f"{start:.3f}",
            "end": f"{end:.3f}",
            "step": f"{step:.3f}",
        }
        data = _http_json(
            f"{self.url}/api/v1/query_range?{urlencode(params)}",
            self.timeout,
            self.url,
            self.authorization,
        )
        result = data.get("data", {})
        if data.get("status") != "success" or not isinstance(result, dict):
            raise CommandError(f"Prometheus rejected the range query {expr!r}")
        series = result.get("result", [])
        return [s for s in series if isinstance(s, dict)]

    def warnings(self, store: Store) -> list[str]:
        """One line each: what the store cannot see, and silences in the window."""
        said = [] if store.sees_first_increment else [store.first_increment_note()]
        for start, end in self.silences():
            said.append(
                f"no process reported from {_utc(start)} to {_utc(end)}: "
                "was the collection down (statsd server, scrapes, hub settings)?"
            )
        return said

    def describe(self) -> str:
        when = _utc(self.at)
        where = f" where {self.selector}" if self.selector else ""
        return f"in the {self.window} before {when}{where}"

    def no_reports(self) -> NoReturn:
        raise NothingToShow(
            f"no process reported {self.describe()} ({REPORTS_METRIC} has no increase there): "
            "check --window, --at and --selector, and that Prometheus scrapes the exporter"
        )

    def as_json(self) -> dict[str, object]:
        return {
            "prometheus": self.url,
            "window": self.window,
            "selector": self.selector,
            "time": self.at,
        }


def base_url(raw: str) -> tuple[str, str | None]:
    """(URL without credentials, Authorization header): ``user:password@`` becomes Basic auth."""
    import base64
    from urllib.parse import unquote, urlsplit, urlunsplit

    url = raw.strip().rstrip("/")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises on a bad port)
    except ValueError as exc:
        raise CommandError(f"--prometheus is not a URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise CommandError("--prometheus must be an http:// or https:// URL")
    if parts.query or parts.fragment:
        raise CommandError("--prometheus must be a base URL, without ? or #")
    authorization = None
    if parts.username is not None:
        pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        authorization = "Basic " + base64.b64encode(pair.encode()).decode("ascii")
        netloc = parts.netloc.rpartition("@")[2]
        url = urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    return url, authorization


def parse_time(raw: str) -> float:
    text = raw.strip()
    try:
        return float(text)
    except ValueError:
        pass
    from datetime import datetime, timezone

    try:
        parsed = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)
    except ValueError:
        raise CommandError(
            f"--at {raw!r} is neither Unix seconds nor an RFC 3339 time (e.g. 2024-05-01T00:00:00Z)"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.timestamp()


def _utc(when: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(when))


def warn(lines: list[str]) -> None:
    import sys

    for line in lines:
        print(f"popcon-site: warning: {line}", file=sys.stderr)


def _value(sample: dict[str, Any]) -> float:
    try:
        value = float(sample["value"][1])
    except (KeyError, IndexError, TypeError, ValueError):
        return 0.0
    return value if value == value and value not in (float("inf"), float("-inf")) else 0.0


def _http_json(url: str, timeout: float, base: str, authorization: str | None) -> dict[str, Any]:
    """GET a Prometheus API URL; its JSON, also from an error status (400/422/503)."""
    from urllib.error import HTTPError, URLError
    from urllib.request import Request, urlopen

    headers = {"Accept": "application/json", "User-Agent": f"popcon-site/{__version__}"}
    if authorization:
        headers["Authorization"] = authorization
    request = Request(url, headers=headers)
    status = 200
    try:
        with urlopen(request, timeout=timeout) as response:
            body = response.read(_MAX_RESPONSE)
    except HTTPError as exc:
        status = exc.code
        try:
            body = exc.read(_MAX_RESPONSE)
        except OSError:
            body = b""
        finally:
            exc.close()
    except URLError as exc:
        reason = exc.reason
        text = reason.strerror if isinstance(reason, OSError) and reason.strerror else reason
        raise CommandError(f"cannot reach Prometheus at {base}: {text}") from None
    except (OSError, ValueError) as exc:  # timeouts, resets, bad URLs
        text = "timed out" if isinstance(exc, socket.timeout) else (str(exc) or type(exc).__name__)
        raise CommandError(f"cannot reach Prometheus at {base}: {text}") from None
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if status in (401, 403):
        raise CommandError(f"Prometheus at {base} refused access (HTTP {status})")
    if not isinstance(data, dict) or "status" not in data:
        raise CommandError(
            f"{base} did not answer like the Prometheus HTTP API (HTTP {status}): "
            "is this the Prometheus base URL?"
        )
    return data
