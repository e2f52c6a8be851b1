"""The page of ``serve``: HTML rendered here (no script at all), CSV and JSON exports.

Routes: ``/`` the page, ``/data.json`` everything on it, ``/libraries.csv`` one row
per library, ``/daily.csv`` the store's exact rows, ``/metrics`` for Prometheus
(cli/_metrics.py).  Query parameters: ``window`` (``30d``, ``12w``), ``namespace``
(a ``hub_namespace``; empty: the default prefix) and ``limit`` (rows of the top
table).  Every request reads the store through a connection of its own: the page
shows what was committed, never half a second.
"""

from __future__ import annotations

import csv
import html
import io
import json
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

from popcon_site import __version__
from popcon_site.cli._output import size
from popcon_site.cli._store import Reader, connect, day_text, today

WEEKS = 52
INSTALLED_TTL = 300.0  # seconds the scan of installed distributions is reused
_WINDOW = re.compile(r"^([0-9]{1,4})([dw])$")
_NAMESPACE = re.compile(r"^[A-Za-z0-9_-]{0,100}$")


class BadRequest(ValueError):
    pass


class Installed:
    """Installed distributions, scanned at most every INSTALLED_TTL seconds.

    ``site_dirs``: the directories to scan (``serve --site-dir``); by default the site
    directories of the environment serve runs in, as ``unused`` scans.
    """

    def __init__(self, site_dirs: list[str] | None = None) -> None:
        self.chosen = site_dirs
        self.lock = threading.Lock()
        self.when = -INSTALLED_TTL
        self.rows: list[dict[str, Any]] = []
        self.site_dirs: list[str] = []

    def get(self) -> tuple[list[dict[str, Any]], list[str]]:
        with self.lock:
            if time.monotonic() - self.when >= INSTALLED_TTL:
                from popcon_site._attribution import OWN_DISTRIBUTION
                from popcon_site._installed import environment_site_dirs, installed_distributions

                self.site_dirs = self.chosen or environment_site_dirs()
                found = installed_distributions(self.site_dirs)
                self.rows = [
                    {
                        "distribution": item.name,
                        "version": item.version,
                        "size_bytes": item.size,
                        "required_by": sorted(item.required_by),
                        "has_modules": item.has_modules,
                    }
                    for item in found.values()
                    if item.name != OWN_DISTRIBUTION
                ]
                self.when = time.monotonic()
            return self.rows, self.site_dirs


def parse_view(query: str) -> tuple[int, str, str | None, int]:
    """(days, window text, namespace or None for all, limit) from a query string."""
    params = {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}
    window = params.get("window", "30d")
    match = _WINDOW.match(window)
    if not match or not 1 <= int(match.group(1)) * (7 if match.group(2) == "w" else 1) <= 3660:
        raise BadRequest("window must be days or weeks, e.g. 30d or 12w (at most 10 years)")
    days = int(match.group(1)) * (7 if match.group(2) == "w" else 1)
    namespace = params.get("namespace")
    if namespace is not None and not _NAMESPACE.match(namespace):
        raise BadRequest("namespace must be one prefix segment")
    limit_text = params.get("limit", "50")
    if not limit_text.isdigit() or not 1 <= int(limit_text) <= 10000:
        raise BadRequest("limit must be 1 to 10000")
    return days, window, namespace, int(limit_text)


def snapshot(
    db_path: str,
    days: int,
    window: str,
    namespace: str | None,
    installed: Installed | None,
    now: float | None = None,
) -> dict[str, Any]:
    """Everything the page shows, as the JSON export gives it."""
    last = today(now)
    first = last - days + 1
    year_first = last - WEEKS * 7 + 1
    connection = connect(db_path, write=False)
    try:
        reader = Reader(connection)
        connection.execute("BEGIN")  # one consistent view for all the queries below
        reports = reader.reports(first, last, namespace)
        used = reader.libraries(first, last, namespace)
        users = reader.users(first, last, namespace)  # distinct users (issue 23)
        people = reader.library_users(first, last, namespace)
        lastday = reader.last_imported(namespace)
        weekly: dict[str, list[int]] = {}
        for day, _ns, library, n in reader.daily(year_first, last, namespace):
            weekly.setdefault(library, [0] * WEEKS)[(day - year_first) // 7] += n
        refused = reader.refused()
        refused_today = sum(reader.refused(last, last).values())
        namespaces = reader.namespaces()
        inventory = reader.installed(last, namespace)
        used_in = {ns: reader.libraries(first, last, ns) for ns in {r[0] for r in inventory}}
        connection.execute("COMMIT")
    finally:
        connection.close()
    ranked = sorted(used.items(), key=lambda item: (-item[1], item[0]))
    libraries = [
        {
            "rank": i,
            "library": name,
            "processes": n,
            "share": round(n / reports, 6) if reports else None,
            "users": people.get(name, 0),
            "last_imported": day_text(lastday[name]),
            "weekly": weekly.get(name, [0] * WEEKS),
        }
        for i, (name, n) in enumerate(ranked, 1)
    ]
    not_in_window = sorted(
        (
            {"library": name, "last_imported": day_text(day)}
            for name, day in lastday.items()
            if name not in used
        ),
        key=lambda row: (row["last_imported"], row["library"]),
    )
    data: dict[str, Any] = {
        "popcon_site": __version__,
        "db": db_path,
        "generated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
        "window": window,
        "first_day": day_text(first),
        "last_day": day_text(last),
        "namespace": namespace,
        "namespaces": namespaces,
        "reports": reports,
        "users": users,
        "weeks": [day_text(year_first + 7 * w) for w in range(WEEKS)],
        "libraries": libraries,
        "not_imported_in_window": not_in_window,
        "refused": {"total": sum(refused.values()), "today": refused_today, "by_reason": refused},
        # deploy/inventory's gauges: installed in that namespace, not imported there.
        "unused_inventory": [
            {"hub_namespace": ns, "library": library, "inventory_day": day_text(day)}
            for ns, library, day in inventory
            if library not in used_in[ns]
        ],
    }
    if installed is not None:
        rows, site_dirs = installed.get()
        unused = [row for row in rows if row["distribution"] not in used]
        unused.sort(key=lambda row: (-(row["size_bytes"] or 0), row["distribution"]))
        data["unused_installed"] = unused
        data["unused_bytes"] = sum(row["size_bytes"] or 0 for row in unused)
        data["site_dirs"] = site_dirs
    return data


def libraries_csv(data: dict[str, Any]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["rank", "library", "processes", "share", "last_imported"])
    for row in data["libraries"]:
        writer.writerow(
            [row["rank"], row["library"], row["processes"], row["share"], row["last_imported"]]
        )
    return out.getvalue()


def daily_csv(db_path: str, days: int, namespace: str | None, now: float | None = None) -> str:
    last = today(now)
    connection = connect(db_path, write=False)
    try:
        rows = Reader(connection).daily(last - days + 1, last, namespace)
    finally:
        connection.close()
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["day", "hub_namespace", "library", "processes"])
    for day, ns, library, n in rows:
        writer.writerow([day_text(day), ns, library, n])
    return out.getvalue()


_CSS = """
*{box-sizing:border-box}
body{font:16px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;
max-width:64rem;padding:.75rem;color:#1b1b1b;background:#fff}
h1{font-size:1.4rem;margin:.2rem 0}h2{font-size:1.15rem;margin:1.4rem 0 .4rem}
.meta{color:#555;font-size:.9rem}.scroll{overflow-x:auto}
table{border-collapse:collapse;width:100%}th,td{padding:.25rem .4rem;text-align:left;
border-bottom:1px solid #e3e3e3;white-space:nowrap}th{font-size:.85rem;color:#444}
td.n{text-align:right;font-variant-numeric:tabular-nums}
.bar{background:#e8eef7;min-width:6rem;width:40%}.bar div{background:#2f6db5;height:.9rem}
.bar.size div{background:#b5632f}
svg.trend{display:block}svg.trend rect{fill:#2f6db5}
.pill{display:inline-block;padding:.1rem .5rem;border-radius:1rem;background:#eee;
margin:.1rem .2rem .1rem 0;font-size:.9rem}.pill.warn{background:#fde2d4}
a{color:#1d5499}nav a{margin-right:.6rem}
@media (max-width:40rem){body{font-size:14px;padding:.5rem}.wide{display:none}
.bar{min-width:2.5rem}th,td{padding:.25rem .25rem}th{white-space:normal}}
"""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _trend(weekly: list[int], label: str) -> str:
    peak = max(weekly) or 1
    bars = "".join(
        f'<rect x="{i * 3}" y="{20 - max(1, round(18 * n / peak)) if n else 20}" '
        f'width="2" height="{max(1, round(18 * n / peak)) if n else 0}"/>'
        for i, n in enumerate(weekly)
    )
    return (
        f'<svg class="trend" width="{WEEKS * 3}" height="20" viewBox="0 0 {WEEKS * 3} 20" '
        f'role="img" aria-label="{_e(label)}"><title>{_e(label)}</title>{bars}</svg>'
    )


def _link(data: dict[str, Any], **change: str | None) -> str:
    params = {"window": data["window"], "namespace": data["namespace"], **change}
    query = "&".join(f"{k}={quote(str(v))}" for k, v in params.items() if v is not None)
    return f"?{query}" if query else "?"


def render(data: dict[str, Any], limit: int) -> str:
    reports = data["reports"]
    where = (
        "all namespaces"
        if data["namespace"] is None
        else f"hub_namespace “{data['namespace']}”"
        if data["namespace"]
        else "the default prefix"
    )
    parts = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>popcon-site: {_e(where)}</title><style>{_CSS}</style></head><body>",
        "<h1>Which installed libraries do processes import?</h1>",
        f'<p class="meta">{reports:,} processes ({data["users"]:,} users) reported from '
        f"{_e(data['first_day'])} to "
        f"{_e(data['last_day'])} (UTC), {_e(where)}. Exact counts from {_e(data['db'])}, "
        f"generated {_e(data['generated'])}.</p>",
        "<nav>",
    ]
    for window in ("7d", "30d", "90d", "52w"):
        parts.append(f'<a href="{_e(_link(data, window=window))}">{window}</a>')
    parts.append(f'<a href="{_e(_link(data, namespace=None))}">all namespaces</a>')
    for ns in data["namespaces"]:
        label = ns or "default prefix"
        parts.append(f'<a href="{_e(_link(data, namespace=ns))}">{_e(label)}</a>')
    export = _link(data)[1:]
    parts.append(
        f'· export <a href="data.json?{_e(export)}">JSON</a> '
        f'<a href="libraries.csv?{_e(export)}">CSV</a> '
        f'<a href="daily.csv?{_e(export)}">daily CSV</a> · '
        f'<a href="public/?{_e(export)}">public view</a></nav>'
    )
    refused = data["refused"]
    warn = " warn" if refused["total"] else ""
    parts.append(
        f'<p><span class="pill{warn}" id="refused">refused input: {refused["total"]:,} '
        f"({refused['today']:,} today)</span>"
        + "".join(
            f'<span class="pill">{_e(reason)}: {n:,}</span>'
            for reason, n in sorted(refused["by_reason"].items())
        )
        + "</p>"
    )
    parts.append(_top_table(data, limit))
    parts.append(_not_in_window(data))
    if "unused_installed" in data:
        parts.append(_unused_table(data))
    if data["unused_inventory"]:
        parts.append(_inventory_table(data["unused_inventory"]))
    parts.append(
        f'<p class="meta">popcon-site {_e(data["popcon_site"])} · trend: processes per week '
        f"over the 52 weeks from {_e(data['weeks'][0])}, each row scaled to its own peak.</p>"
        "</body></html>"
    )
    return "\n".join(parts)


def _top_table(data: dict[str, Any], limit: int) -> str:
    rows = data["libraries"][:limit]
    out = [f'<h2 id="top">Top libraries ({len(data["libraries"]):,} imported)</h2>']
    if not rows:
        return out[0] + "<p>No library was imported in this window.</p>"
    peak = rows[0]["processes"] or 1
    out.append(
        '<div class="scroll"><table><tr><th class="wide">#</th><th>library</th>'
        '<th class=n>processes</th><th class="n wide">share</th><th></th><th>last imported</th>'
        '<th class="wide">weekly, 1 year</th></tr>'
    )
    for row in rows:
        share = "" if row["share"] is None else f"{row['share'] * 100:.1f}%"
        width = 100 * row["processes"] / peak
        trend = _trend(row["weekly"], f"{row['library']}: processes per week")
        out.append(
            f"<tr><td class='n wide'>{row['rank']}</td><td>{_e(row['library'])}</td>"
            f"<td class=n>{row['processes']:,}</td><td class='n wide'>{share}</td>"
            f'<td class="bar"><div style="width:{width:.1f}%"></div></td>'
            f"<td>{_e(row['last_imported'])}</td><td class=wide>{trend}</td></tr>"
        )
    out.append("</table></div>")
    more = len(data["libraries"]) - len(rows)
    if more:
        out.append(f'<p class="meta">{more:,} more in the JSON and CSV exports.</p>')
    return "".join(out)


def _not_in_window(data: dict[str, Any]) -> str:
    rows = data["not_imported_in_window"]
    out = [f'<h2 id="since">Not imported since ({len(rows):,})</h2>']
    if not rows:
        return out[0] + "<p>Every library ever imported was imported in this window.</p>"
    out.append('<div class="scroll"><table><tr><th>library</th><th>last imported</th></tr>')
    out += [f"<tr><td>{_e(r['library'])}</td><td>{_e(r['last_imported'])}</td></tr>" for r in rows]
    out.append("</table></div>")
    return "".join(out)


def _inventory_table(rows: list[dict[str, str]]) -> str:
    out = [
        f'<h2 id="inventory">Reported installed, not imported in this window ({len(rows):,})</h2>'
        '<p class="meta">From the inventory script (deploy/inventory) of each namespace, '
        "sent in the last 8 days.</p>"
        '<div class="scroll"><table><tr><th>hub_namespace</th><th>library</th>'
        "<th>inventory sent</th></tr>"
    ]
    out += [
        f"<tr><td>{_e(r['hub_namespace'] or '(default prefix)')}</td><td>{_e(r['library'])}</td>"
        f"<td>{_e(r['inventory_day'])}</td></tr>"
        for r in rows
    ]
    out.append("</table></div>")
    return "".join(out)


def _unused_table(data: dict[str, Any]) -> str:
    rows = data["unused_installed"]
    out = [
        f'<h2 id="unused">Installed but not imported in this window ({len(rows):,}, '
        f"{_e(size(data['unused_bytes']))})</h2>",
        f'<p class="meta">Scanned: {_e(", ".join(data["site_dirs"]))}</p>',
    ]
    if not rows:
        return "".join(out) + "<p>Every installed distribution was imported.</p>"
    peak = rows[0]["size_bytes"] or 1
    out.append(
        '<div class="scroll"><table><tr><th class=n>size</th><th></th><th>distribution</th>'
        "<th>version</th><th>note</th></tr>"
    )
    for row in rows:
        note = "required by " + ", ".join(row["required_by"]) if row["required_by"] else ""
        if not row["has_modules"]:
            note = "; ".join(filter(None, [note, "no importable modules"]))
        width = 100 * (row["size_bytes"] or 0) / peak
        out.append(
            f'<tr><td class=n>{_e(size(row["size_bytes"]))}</td><td class="bar size">'
            f'<div style="width:{width:.1f}%"></div></td><td>{_e(row["distribution"])}</td>'
            f"<td>{_e(row['version'])}</td><td>{_e(note)}</td></tr>"
        )
    out.append("</table></div>")
    return "".join(out)


def start_http(
    where: tuple[str, int],
    db_path: str,
    k: int,
    public_only: bool = False,
    site_dirs: list[str] | None = None,
) -> ThreadingHTTPServer:
    """The page's server, answering from a daemon thread; raises OSError if it cannot bind.

    ``public_only``: the public view alone (cli/_public.py), at ``/``, ``/data.json``
    and ``/libraries.csv``; everything else is 404 there.
    """
    installed = Installed(site_dirs)

    class Handler(BaseHTTPRequestHandler):
        server_version = f"popcon-site/{__version__}"
        timeout = 30  # seconds a client may stay silent: idle connections hold a thread

        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            try:
                days, window, namespace, limit = parse_view(parts.query)
                path = parts.path
                if public_only or path.startswith("/public"):
                    base = "/" if public_only else "/public/"
                    sub = path if public_only else path[len("/public") :] or "/"
                    query = f"?{parts.query}" if parts.query else ""
                    self._public(sub, base, query, days, window, namespace)
                elif path == "/":
                    data = snapshot(db_path, days, window, namespace, installed)
                    self._send(200, "text/html; charset=utf-8", render(data, limit))
                elif path == "/data.json":
                    data = snapshot(db_path, days, window, namespace, installed)
                    self._send(200, "application/json", json.dumps(data, indent=1))
                elif path == "/libraries.csv":
                    data = snapshot(db_path, days, window, namespace, None)
                    self._send(200, "text/csv; charset=utf-8", libraries_csv(data))
                elif path == "/metrics":
                    from popcon_site.cli._metrics import CONTENT_TYPE, exposition

                    self._send(200, CONTENT_TYPE, exposition(db_path))
                elif path == "/daily.csv":
                    self._send(200, "text/csv; charset=utf-8", daily_csv(db_path, days, namespace))
                else:
                    self._send(404, "text/plain; charset=utf-8", "not found\n")
            except BadRequest as exc:
                self._send(400, "text/plain; charset=utf-8", f"{exc}\n")
            except Exception as exc:  # the page fails, the collector keeps counting
                self._send(500, "text/plain; charset=utf-8", f"error: {type(exc).__name__}\n")

        def _public(
            self,
            path: str,
            base: str,
            query: str,
            days: int,
            window: str,
            namespace: str | None,
        ) -> None:
            from popcon_site.cli._public import public_csv, public_snapshot, render_public

            if path not in ("/", "/data.json", "/libraries.csv"):
                self._send(404, "text/plain; charset=utf-8", "not found\n")
                return
            data = public_snapshot(db_path, days, window, namespace, k)
            if path == "/":
                self._send(200, "text/html; charset=utf-8", render_public(data, _CSS, base, query))
            elif path == "/data.json":
                self._send(200, "application/json", json.dumps(data, indent=1))
            else:
                self._send(200, "text/csv; charset=utf-8", public_csv(data))

        def _send(self, status: int, kind: str, body: str) -> None:
            payload = body.encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(payload)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # requests are not logged: the page is read by admins, not counted

    class Server(ThreadingHTTPServer):
        daemon_threads = True
        address_family = socket.AF_INET6 if ":" in where[0] else socket.AF_INET

    httpd = Server(where, Handler)
    threading.Thread(target=httpd.serve_forever, name="popcon-page", daemon=True).start()
    return httpd
