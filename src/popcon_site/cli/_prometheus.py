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

_DURATION = re.compile(r"^(?:[0-9]+(?:ms|s|m|h|d|w|y))+$")
_FORBIDDEN_LABEL = re.compile(r"(?:^|[,{\s])(library|__name__)\s*(?:=|!=|=~|!~)")
_MAX_RESPONSE = 64 * 1024 * 1024


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
        expr = f"sum by (library) (increase({LIBRARY_METRIC}{self.matchers()}[{self.window}]))"
        result: dict[str, float] = {}
        for sample in self.vector(expr):
            name = normalize_name(str(sample["metric"].get("library", "")))
            if name:
                result[name] = result.get(name, 0.0) + _value(sample)
        return result

    def reports(self) -> float:
        expr = f"sum(increase({REPORTS_METRIC}{self.matchers()}[{self.window}]))"
        return sum(_value(sample) for sample in self.vector(expr))

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

    def describe(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.at))
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
