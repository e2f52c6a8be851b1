"""``/metrics`` of ``serve``: the store's all-time totals in the Prometheus text format.

The names and labels are statsd_exporter's with deploy/statsd-exporter/mapping.yml
(``python_popcon_library_used{library, hub_namespace}``, ``python_popcon_reports``),
so the shipped recording rules and dashboard work on a Prometheus that scrapes
``serve`` instead of the exporter, without touching a client.  The totals come from
the store, so they never reset when ``serve`` restarts.  Each counter has a
``<name>_created`` sample (as the Python client writes them in this format): the
start of the first UTC day it counted, before which it was 0.
"""

from __future__ import annotations

from popcon_site.cli._store import Reader, connect

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_FAMILIES = (
    (
        "library_used",
        "python_popcon_library_used",
        "Processes that imported the library (exact, popcon-site serve).",
    ),
    ("reports", "python_popcon_reports", "Processes that reported (exact, popcon-site serve)."),
    (
        "refused",
        "python_popcon_serve_refused",
        "Lines or datagrams popcon-site serve refused, by reason.",
    ),
)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(kind: str, first: str, second: str) -> str:
    pairs = []
    if kind == "refused":
        pairs.append(("reason", first))
    else:
        if first:  # the default prefix has no hub_namespace, as with statsd_exporter
            pairs.append(("hub_namespace", first))
        if second:
            pairs.append(("library", second))
    if not pairs:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in pairs) + "}"


def exposition(db_path: str) -> str:
    connection = connect(db_path, write=False)
    try:
        totals = Reader(connection).totals()
    finally:
        connection.close()
    out: list[str] = []
    for kind, name, help_text in _FAMILIES:
        rows = totals[kind]
        out += [f"# HELP {name} {help_text}", f"# TYPE {name} counter"]
        out += [f"{name}{_labels(kind, a, b)} {n}" for a, b, n, _ in rows]
        out += [
            f"# HELP {name}_created Start of the first UTC day the counter counted.",
            f"# TYPE {name}_created gauge",
        ]
        out += [f"{name}_created{_labels(kind, a, b)} {day * 86400}" for a, b, _, day in rows]
    return "\n".join(out) + "\n"
