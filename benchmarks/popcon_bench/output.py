"""The plain-text tables, the JSON file and the PNG chart under benchmarks/results/."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

Json = dict[str, Any]


def _num(value: float, digits: int, sign: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def spread(summary: Json | None, digits: int, sign: bool = False) -> str:
    """``median [p25..p75]``."""
    if not summary or not summary.get("n"):
        return "-"
    med = _num(summary["median"], digits, sign)
    low = _num(summary["p25"], digits, sign)
    high = _num(summary["p75"], digits, sign)
    return f"{med} [{low}..{high}]"


def fraction(value: float | None) -> str:
    """A ratio that may be tiny: 0.0031 -> '1/320'."""
    if value is None or math.isnan(value):
        return "-"
    if value <= 0:
        return f"{value:.2g}"
    if value < 0.5:
        return f"1/{1 / value:.0f}"
    return f"{value:.2f}x"


def table(header: list[str], rows: list[list[str]], right: set[int] | None = None) -> list[str]:
    right = right if right is not None else set(range(3, len(header)))
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        out = []
        for i, cell in enumerate(cells):
            out.append(cell.rjust(widths[i]) if i in right else cell.ljust(widths[i]))
        return "  ".join(out).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return [line(header), rule, *(line(r) for r in rows)]


def render(results: Json) -> str:
    meta = results["meta"]
    out = [
        "popcon-site benchmarks (nox -s bench): side by side, interleaved, medians [25th..75th pct]",
        f"machine: {meta['machine']}",
        f"python: {meta['python']}   mode: {meta['mode']}   date: {meta['date']}   "
        f"wall time: {meta.get('elapsed_s', 0):.0f} s   popcon-site: {meta.get('commit', '?')}",
        "variants: bare = no popcon-site; off = installed, PYTHON_POPCONTEST_ENABLE unset; "
        "on = enabled, index warm;",
        "          cold = enabled, first run after an install (no index yet); "
        "earlier = popularity-contest 0.4.1, setup_reporter() from a .pth;",
        "          hook = on, plus a probe sitecustomize that times the exit hook in-process "
        "(its start-up is not comparable)",
        "phases: start = spawn to first statement; exit = last statement to process end "
        "(wait4); body = in between",
        "",
    ]
    env_rows = [
        [name, info["label"], *(str(info["flavors"][f]) for f in ("bare", "popcon", "earlier"))]
        for name, info in results["environments"].items()
    ]
    out += ["Environments (installed distributions per flavor)"]
    out += table(["env", "contents", "bare", "popcon", "earlier"], env_rows, right={2, 3, 4})
    out.append("")

    ratio_rows = []
    added_rows = []
    for block in results["blocks"]:
        for name, v in block["variants"].items():
            if name == "bare":
                continue
            vs = v["vs_bare"]
            key = [block["env"], block["workload"], name, str(v["n"])]
            ratio_rows.append(
                [
                    *key,
                    spread(vs.get("total_ratio"), 3),
                    spread(vs.get("start_ratio"), 3),
                    spread(vs.get("exit_ratio"), 3),
                    spread(vs.get("rss_ratio"), 3),
                    spread(vs.get("cpu_ratio"), 3),
                ]
            )
            vs_e = v.get("vs_earlier", {})
            added_rows.append(
                [
                    *key,
                    spread(vs.get("start_added_ms"), 2, True),
                    spread(vs.get("exit_added_ms"), 2, True),
                    spread(vs.get("body_added_ms"), 2, True),
                    spread(vs.get("rss_added_mb"), 1, True),
                    spread(vs.get("cpu_added_ms"), 2, True),
                    fraction(vs_e.get("start")),
                    fraction(vs_e.get("exit")),
                    fraction(vs_e.get("rss")),
                ]
            )
    out += ["Ratios to bare (per-round paired ratios)"]
    out += table(
        ["env", "workload", "variant", "n", "total", "start-up", "exit", "peak RSS", "CPU time"],
        ratio_rows,
    )
    out.append("")
    out += [
        "Added over bare (per-round paired differences; ms, RSS in MB) "
        "and as a ratio to what the earlier package adds"
    ]
    out += table(
        [
            "env",
            "workload",
            "variant",
            "n",
            "start-up +ms",
            "exit +ms",
            "body +ms",
            "RSS +MB",
            "CPU +ms",
            "start/earlier",
            "exit/earlier",
            "RSS/earlier",
        ],
        added_rows,
    )
    out.append("")

    growth = results["growth"]
    out += ["Exit cost as installed distributions grow (rich workload; exit +ms over bare)"]
    g_rows = [
        [
            row["env"],
            str(row["distributions"]),
            spread(row["on"], 2, True),
            spread(row["hook"], 2),
            spread(row["cold"], 1, True),
            spread(row["earlier"], 1, True),
            fraction(row["on_over_earlier"]),
        ]
        for row in growth["rows"]
    ]
    out += table(
        [
            "env",
            "dists",
            "on exit +ms",
            "on hook ms",
            "cold exit +ms",
            "earlier exit +ms",
            "on/earlier",
        ],
        g_rows,
        right={1, 2, 3, 4, 5, 6},
    )
    out.append(
        f"growth 2000 vs 100 synthetic: on exit +ms {fraction(growth['on_ratio'])}, "
        f"in-process hook {fraction(growth['hook_ratio'])}, earlier {fraction(growth['earlier_ratio'])}"
    )
    out.append("")

    probes = results["probes"]
    out += ["In-process probes (fresh processes; median [25th..75th pct] of per-process medians)"]
    p_rows = [
        [name, spread(value, 3), unit, note] for name, (value, unit, note) in probes["rows"].items()
    ]
    out += table(["probe", "value", "unit", "what"], p_rows, right={1})
    if probes.get("modules_loaded"):
        out.append("")
        out += ["Modules loaded by popcon-site (real130, new entries of sys.modules; exact)"]
        m_rows = [
            [
                when,
                str(len(names)),
                " ".join(n for n in names if n.startswith("popcon_site")) or "-",
            ]
            for when, names in probes["modules_loaded"].items()
        ]
        out += table(["when", "modules", "of popcon-site"], m_rows, right={1})
    if probes.get("callgrind"):
        out.append("")
        out += [
            "Instruction counts (callgrind, PYTHONHASHSEED=0; small env with the probe "
            "sitecustomize in all variants; .pth lines in an empty venv, which CPython reads "
            "twice, and in the base interpreter's user site, read once: that interpreter's own "
            "start-up is heavier, compare what each line adds)"
        ]
        c_rows = []
        for w, by_variant in probes["callgrind"].items():
            first = next(iter(by_variant.values()), 0)
            for v, n in by_variant.items():
                c_rows.append([w, v, f"{n:,}", f"{n - first:+,}", _num(n / first, 4)])
        out += table(
            ["workload", "variant", "instructions", "vs first row", "ratio"],
            c_rows,
            right={2, 3, 4},
        )
    out.append("")

    if results.get("floors"):
        out += [
            "Wall-clock floors: python -c pass in tiny venvs, one kind of hook each, "
            "popcon-site itself last (per-round paired, vs no .pth)"
        ]
        f_rows = [
            [
                name,
                spread(f["total_ratio"], 3),
                spread(f["start_added_ms"], 2, True),
                spread(f.get("exit_added_ms"), 2, True),
                str(f["total_ratio"]["n"]),
            ]
            for name, f in results["floors"].items()
        ]
        out += table(
            ["hook", "total / no .pth", "start-up +ms", "exit +ms", "n"], f_rows, right={1, 2, 3, 4}
        )
        out.append("")

    out += ["Targets (medians, side by side)"]
    out.append(
        f"(scaled: a ms target times {results['scale']['factor']:.2f} = this machine's bare "
        f"`python -c pass` {results['scale']['pass_ms']:.1f} ms / the 10 ms of the machine "
        "the targets were set on)"
    )
    out += users_table(results)
    t_rows = [
        [t["name"], t["target"], t.get("scaled", ""), t["measured"], t["verdict"]]
        for t in results["targets"]
    ]
    out += table(["target", "goal", "scaled goal", "measured", "verdict"], t_rows, right=set())
    return "\n".join(out) + "\n"


def users_table(results: Json) -> list[str]:
    """Distinct-user counters (issue 23) on, off and on a month's first process."""
    rows = []
    for block in results["blocks"]:
        v = block["variants"]
        if "nousers" not in v:
            continue
        row = [f"{block['env']}/{block['workload']}"]
        for name in ("nousers", "on", "newusers"):
            row.append(spread(v[name]["vs_bare"]["exit_added_ms"], 2, True))
        for name in ("nousers", "on", "newusers"):
            row.append(f"{v[name]['datagrams_per_run']['median']:.0f}")
        for name in ("hooknousers", "hook"):
            row.append(spread(v[name].get("hook_ms"), 3))
        rows.append(row)
    if not rows:
        return []
    out = [
        "User counters (issue 23): exit time added vs bare, ms; nousers = "
        "PYTHON_POPCONTEST_USERS=0 (as before);",
        "  on = the default, this month's markers present (one lstat + listdir of the month "
        "directory, no write); newusers = no markers yet (creates one file per name);",
        "  hook ms = the exit hook timed in-process (the probe sitecustomize), users off / on "
        "(markers present)",
    ]
    out += table(
        ["block", "nousers", "on", "newusers", "dgrams off", "on", "new", "hook off", "hook on"],
        rows,
        right={1, 2, 3, 4, 5, 6, 7, 8},
    )
    out.append("")
    syscalls = results.get("users_syscalls")
    if syscalls:
        out.append(
            "File-system calls at exit (strace -f, small/stdlib, python -c of 15 stdlib "
            "imports; all calls on the user cache's users/ tree):"
        )
        out += table(
            ["variant", "calls", "what"],
            [[name, str(len(calls)), "; ".join(calls)] for name, calls in syscalls.items()],
            right={1},
        )
        out.append("")
    return out


def write_json(results: Json, path: Path) -> None:
    path.write_text(json.dumps(results, indent=1, sort_keys=False) + "\n")


def write_chart(results: Json, path: Path) -> bool:
    """Exit cost against installed distributions, popcon-site vs the earlier package."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    rows = results["growth"]["rows"]
    synthetic = [r for r in rows if r["env"].startswith("synth")]
    real = [r for r in rows if not r["env"].startswith("synth")]
    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=110)
    series = [
        ("earlier", "popularity-contest 0.4.1", "tab:red", "o"),
        ("cold", "popcon-site, first run after an install", "tab:orange", "s"),
        ("on", "popcon-site, index warm (wall clock)", "tab:blue", "D"),
        ("hook", "popcon-site, index warm (exit hook, in-process)", "tab:cyan", "v"),
    ]
    for key, label, color, marker in series:
        points = [(r["distributions"], r[key]) for r in synthetic if r.get(key) and r[key]["n"]]
        if points:
            xs = [p[0] for p in points]
            ys = [max(p[1]["median"], 0.01) for p in points]
            low = [max(y - max(p[1]["p25"], 0.01), 0) for y, p in zip(ys, points)]
            high = [max(p[1]["p75"] - y, 0) for y, p in zip(ys, points)]
            ax.errorbar(
                xs, ys, yerr=[low, high], color=color, marker=marker, label=label, capsize=3
            )
        for r in real:
            if r.get(key) and r[key]["n"]:
                ax.scatter(
                    [r["distributions"]],
                    [max(r[key]["median"], 0.01)],
                    color=color,
                    marker=marker,
                    facecolors="none",
                    s=80,
                )
                ax.annotate(
                    r["env"],
                    (r["distributions"], max(r[key]["median"], 0.01)),
                    textcoords="offset points",
                    xytext=(6, -10),
                    fontsize=7,
                    color=color,
                )
    ax.axhline(3.0, color="gray", linestyle=":", linewidth=1)
    ax.text(12, 3.3, "target: +3 ms (rich script, 130 real dists)", fontsize=7, color="gray")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("installed distributions in the environment")
    ax.set_ylabel("time added at exit (ms, median, bars: 25th-75th pct)")
    meta = results["meta"]
    ax.set_title(
        "Exit cost vs installed distributions (import requests, yaml, numpy)\n"
        f"{meta['python']} on {meta['machine_short']}",
        fontsize=9,
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    fig.text(
        0.99, 0.01, "filled: synthetic dists; hollow: real environments", ha="right", fontsize=7
    )
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True
