"""The public view of ``serve``: only libraries at least *k* processes imported.

The same threshold as the ``*_min10`` recording rules (README, Privacy): a library
that one or two people use can identify them, and its days show when they work.
So the public view has no per-library dates, no weekly trend, no daily rows and no
list of refusals: the window's totals of the libraries at or above *k*, and how many were
left out.  ``serve --public HOST:PORT`` serves only this; the admin's page shows it
at ``/public``.
"""

from __future__ import annotations

import csv
import html
import io
import time
from typing import Any

from popcon_site.cli._store import Reader, connect, day_text, today

DEFAULT_K = 10


def public_snapshot(
    db_path: str, days: int, window: str, namespace: str | None, k: int
) -> dict[str, Any]:
    last = today()
    first = last - days + 1
    connection = connect(db_path, write=False)
    try:
        reader = Reader(connection)
        connection.execute("BEGIN")
        reports = reader.reports(first, last, namespace)
        used = reader.libraries(first, last, namespace)
        connection.execute("COMMIT")
    finally:
        connection.close()
    shown = sorted(
        ((name, n) for name, n in used.items() if n >= k), key=lambda item: (-item[1], item[0])
    )
    return {
        "window": window,
        "first_day": day_text(first),
        "last_day": day_text(last),
        "namespace": namespace,
        "k": k,
        "reports": reports,
        "libraries": [
            {"rank": i, "library": name, "processes": n, "share": round(n / reports, 6)}
            for i, (name, n) in enumerate(shown, 1)
        ],
        "below_k": len(used) - len(shown),
        "generated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def public_csv(data: dict[str, Any]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["rank", "library", "processes", "share"])
    for row in data["libraries"]:
        writer.writerow([row["rank"], row["library"], row["processes"], row["share"]])
    return out.getvalue()


def render_public(data: dict[str, Any], css: str, base: str, query: str) -> str:
    """``base``: where the public view is (``/`` or ``/public/``); ``query`` is kept."""
    e = html.escape
    rows = data["libraries"]
    peak = rows[0]["processes"] if rows else 1
    where = "" if data["namespace"] is None else f", hub_namespace “{e(data['namespace'])}”"
    parts = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>popcon-site: public view</title><style>{css}</style></head><body>",
        "<h1>Which installed libraries do processes import?</h1>",
        f'<p class="meta">{data["reports"]:,} processes reported from {e(data["first_day"])} '
        f"to {e(data['last_day'])} (UTC){where}. Only libraries imported by at least "
        f"{data['k']} processes are shown; {data['below_k']:,} others are not.</p>",
        f'<nav>export <a href="{e(base)}data.json{e(query)}">JSON</a> '
        f'<a href="{e(base)}libraries.csv{e(query)}">CSV</a></nav>',
        '<div class="scroll"><table><tr><th class="wide">#</th><th>library</th>'
        '<th class=n>processes</th><th class="n wide">share</th><th></th></tr>',
    ]
    for row in rows:
        parts.append(
            f"<tr><td class='n wide'>{row['rank']}</td><td>{e(row['library'])}</td>"
            f"<td class=n>{row['processes']:,}</td>"
            f"<td class='n wide'>{row['share'] * 100:.1f}%</td><td class=bar>"
            f'<div style="width:{100 * row["processes"] / peak:.1f}%"></div></td></tr>'
        )
    parts.append("</table></div></body></html>")
    return "\n".join(parts)
