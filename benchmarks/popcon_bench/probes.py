"""Supporting measurements made inside the benchmarked interpreter, and instruction counts.

Wall-clock differences of whole processes are the headline figures; these
probes cross-check them where the difference is far below the machine's noise:
a clock read around exactly the code in question, repeated in fresh processes,
or callgrind's instruction counts, which do not depend on load at all.
"""

from __future__ import annotations

import pstats
import re
import shutil
import statistics
import subprocess
from pathlib import Path

from popcon_bench.stats import Summary, summarize

_PTH_LINE = """\
import os, sys, time
site = [p for p in sys.path if p.endswith("site-packages")][0]
line = [l for l in open(os.path.join(site, "popcon_site.pth")) if l.startswith("import")][0]
assert "PYTHON_POPCONTEST_ENABLE" not in os.environ
times = []
for _ in range(300):
    t = time.perf_counter_ns()
    exec(line)  # exactly what site.addpackage() does with an import line
    times.append(time.perf_counter_ns() - t)
times.sort()
print(times[len(times) // 2])
"""

_ACTIVATE = """\
import time
t = time.perf_counter_ns()
import popcon_site
popcon_site.activate()
print(time.perf_counter_ns() - t)
"""

_FINDER = """\
import sys, time
import importlib._bootstrap as bootstrap

watcher = sys.meta_path[0]
assert "ImportWatcher" in [c.__name__ for c in type(watcher).__mro__], sys.meta_path


class Null:
    @staticmethod
    def find_spec(name, path=None, target=None):
        return None


saved = list(sys.meta_path)
N = 20000


def timed(meta, tag):
    # As an import runs the finders: with the name's module lock held, which is what
    # makes the watcher note it (a find_spec() lookup holds none and is not noted).
    names = [f"popcon_bench_{tag}_{i}" for i in range(N)]
    sys.meta_path[:] = meta
    lock = bootstrap._ModuleLockManager
    t = time.perf_counter_ns()
    for name in names:
        with lock(name):
            bootstrap._find_spec(name, None)
    elapsed = time.perf_counter_ns() - t
    sys.meta_path[:] = saved
    return elapsed


diffs, floor = [], []
for rep in range(7):
    without = timed([Null], f"a{rep}")
    with_watcher = timed([watcher, Null], f"b{rep}")
    with_null = timed([Null, Null], f"c{rep}")
    diffs.append((with_watcher - without) / N)
    floor.append((with_null - without) / N)
diffs.sort()
floor.sort()
print(diffs[len(diffs) // 2], floor[len(floor) // 2])
"""


_CHECKPOINT = """\
import sys, time, timeit
import popcon_site
session = popcon_site.current()
t = time.perf_counter_ns(); popcon_site._checkpoint_due("gc"); first = time.perf_counter_ns() - t
later = []
for _ in range(101):
    session.due = 0.0
    t = time.perf_counter_ns(); popcon_site._checkpoint_due("gc"); later.append(time.perf_counter_ns() - t)
later.sort()
session.due = float("inf")
hook = popcon_site._collection_hooks[0]  # what gc calls: getattr(phases, phase, info)
n = 100000
trigger = min(timeit.repeat("hook('stop', {})", globals={"hook": hook}, number=n, repeat=5)) / n * 1e9
print(first, later[50], trigger)
"""


def checkpoint_ns(python: str, env: dict[str, str], runs: int) -> tuple[Summary, Summary, Summary]:
    """One checkpoint in a fresh process: the first (loads its modules, reads the index,
    sends reports), one that finds nothing new, and the collection trigger's check when
    no checkpoint is due (a call of the gc callback)."""
    rows = _repeat_rows(python, _CHECKPOINT, env, runs)
    return tuple(summarize([r[i] for r in rows]) for i in range(3))  # type: ignore[return-value]


def _with_fd3(cmd: list[str]) -> list[str]:
    """The workloads write their marks to fd 3; outside the harness it goes to /dev/null."""
    return ["sh", "-c", 'exec "$@" 3>/dev/null', "sh", *cmd]


def _repeat(python: str, code: str, env: dict[str, str], runs: int) -> list[float]:
    return [row[0] for row in _repeat_rows(python, code, env, runs)]


def _repeat_rows(python: str, code: str, env: dict[str, str], runs: int) -> list[list[float]]:
    """Run ``code`` in ``runs`` fresh processes; each prints one line of numbers."""
    out = []
    for _ in range(runs):
        done = subprocess.run(
            [python, "-c", code], env=env, capture_output=True, text=True, check=True
        )
        out.append([float(x) for x in done.stdout.split()])
    return out


def pth_line_ns(python: str, env: dict[str, str], runs: int) -> Summary:
    """What the .pth line costs a process when reporting is off (median of 300 execs)."""
    return summarize(_repeat(python, _PTH_LINE, env, runs))


def activation_ns(python: str, env: dict[str, str], runs: int) -> Summary:
    """Import of popcon_site plus activate(), timed in fresh processes."""
    return summarize(_repeat(python, _ACTIVATE, env, runs))


def finder_ns(python: str, env: dict[str, str], runs: int) -> tuple[Summary, Summary]:
    """Added cost of one import lookup with the watcher at the front of sys.meta_path.

    Second: the same for a finder whose find_spec only returns None, the floor
    of any Python-level meta_path finder.
    """
    rows = _repeat_rows(python, _FINDER, env, runs)
    return summarize([r[0] for r in rows]), summarize([r[1] for r in rows])


_IMPORT_ONE = """import sys, time
t = time.perf_counter_ns()
__import__(sys.argv[1])
if sys.argv[2:] == ["activate"]:
    sys.modules[sys.argv[1]].activate()
print(time.perf_counter_ns() - t)
"""


def import_ns(python: str, module: str, env: dict[str, str], runs: int, activate: bool) -> Summary:
    """First import of one module (and activate()) in fresh processes, from an empty cwd."""
    out = []
    for _ in range(runs):
        argv = [python, "-c", _IMPORT_ONE, module] + (["activate"] if activate else [])
        done = subprocess.run(argv, env=env, capture_output=True, text=True, check=True)
        out.append(float(done.stdout.strip()))
    return summarize(out)


def instructions(python: str, argv: list[str], env: dict[str, str], out_dir: Path) -> int | None:
    """Instructions executed by a whole process under callgrind (deterministic)."""
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        return None
    out_dir.mkdir(parents=True, exist_ok=True)
    cmd = [valgrind, "--tool=callgrind", f"--callgrind-out-file={out_dir}/callgrind.out.%p"]
    done = subprocess.run(
        _with_fd3([*cmd, python, *argv]), env=env, capture_output=True, text=True, check=False
    )
    found = re.search(r"Collected : (\d+)", done.stderr)
    if done.returncode != 0 or found is None:
        raise RuntimeError(f"callgrind failed: {done.stderr[-1500:]}")
    return int(found.group(1))


def profile_exit(python: str, argv: list[str], env: dict[str, str], out_file: Path) -> str:
    """cProfile of the exit hook and -X importtime of what it imports, as one text report."""
    stats_file = out_file.with_suffix(".pstats")
    env = dict(env, POPCON_BENCH_HOOK="profile", POPCON_BENCH_PROFILE_OUT=str(stats_file))
    done = subprocess.run(
        _with_fd3([python, "-X", "importtime", *argv]),
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    _, mark, after = done.stderr.partition("--- popcon-bench: exit hook starts ---\n")
    imports = [line for line in after.splitlines() if line.startswith("import time:")]
    lines = [f"$ {' '.join(argv)}", "", "imports made by the exit hook (-X importtime, us):"]
    lines += imports if mark else ["(no exit hook ran)"]
    lines += ["", "cProfile of popcon_site._at_exit (top 30 by cumulative time):", ""]
    if stats_file.exists():
        from io import StringIO

        buffer = StringIO()
        stats = pstats.Stats(str(stats_file), stream=buffer)
        stats.sort_stats("cumulative").print_stats(30)
        lines.append(buffer.getvalue())
        stats_file.unlink()
    text = "\n".join(lines)
    out_file.write_text(text)
    return text


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


# Coupled to popcon_site._report's internal steps on purpose: it says where exit time
# goes.  If the internals change, the probe reports the error instead of numbers.
_BREAKDOWN = """\
import atexit, os, sys, time


def _breakdown():
    import popcon_site
    session = popcon_site.current()
    atexit.unregister(popcon_site._at_exit)
    clock = time.perf_counter_ns
    out = {}
    import gc; gc.disable()  # as popcon_site._at_exit does
    t = clock(); names = session.imported_names(); out["snapshot imported names"] = clock() - t
    t = clock(); r = popcon_site._exit_module(); out["load popcon_site._report"] = clock() - t
    t = clock(); config = r.config_from_environ(); out["read configuration"] = clock() - t
    loaded = [n for n in names if n in sys.modules]
    gone = [n for n in names if n not in sys.modules]
    t = clock(); files = r.module_files(loaded); out[f"module files: {len(loaded)} loaded"] = clock() - t
    t = clock(); r.module_files(gone, session.watcher.seen); out[f"module files: {len(gone)} never loaded (failed imports)"] = clock() - t
    t = clock(); used = r.used_distributions(files, frozenset()); out["attribute (loads _attribution and the index when needed)"] = clock() - t
    t = clock(); payloads = r.datagrams(r.counter_lines(config.prefix, config.reports_name, used)); out["format lines"] = clock() - t
    t = clock(); address = r.literal_address(config.host, config.port); out["address (imports _socket)"] = clock() - t
    t = clock(); r.send_udp(address, payloads); out["send (socket, sendto, close)"] = clock() - t
    out["total"] = sum(out.values())
    print(repr({k: v / 1000 for k, v in out.items()}), file=sys.stderr)
    print("GONE " + " ".join(sorted(gone)), file=sys.stderr)


atexit.register(_breakdown)
exec(compile(open(sys.argv[1]).read(), sys.argv[1], "exec"))
"""


def exit_breakdown(python: str, script: str, env: dict[str, str], runs: int) -> str:
    """Where the exit report's time goes, step by step (us, medians of fresh processes)."""
    import ast

    rows: dict[str, list[float]] = {}
    gone = ""
    for _ in range(runs):
        done = subprocess.run(
            _with_fd3([python, "-c", _BREAKDOWN, script]), env=env, capture_output=True, text=True
        )
        lines = done.stderr.strip().splitlines()
        try:
            values = ast.literal_eval(lines[-2])
            gone = lines[-1]
        except (IndexError, ValueError, SyntaxError):
            return f"breakdown failed: {done.stderr[-800:]}"
        for key, value in values.items():
            rows.setdefault(key, []).append(value)
    text = [f"{key:55} {median(v):8.0f} us" for key, v in rows.items()]
    return "\n".join([*text, f"names never loaded: {gone[5:]}"])


# What popcon-site adds to sys.modules: at start-up (enabled vs off), and in its exit
# hook for three kinds of process.  Module counts are exact, unlike times: CONTRIBUTING.md
# asks every change to the start-up or exit path to keep them the same or lower.
_LIST_MODULES = "import sys; print(' '.join(sorted(sys.modules)))"
_EXIT_MODULES = """\
import atexit, sys, popcon_site
{body}
atexit.unregister(popcon_site._at_exit)
before = set(sys.modules)
popcon_site._at_exit()
print(' '.join(sorted(set(sys.modules) - before)))
"""


def modules_loaded(python: str, env: dict[str, str], cold_cache: Path) -> dict[str, list[str]]:
    """Module names popcon-site loads: start-up, exit stdlib-only, cold index, warm index."""

    def names(code: str, extra: dict[str, str]) -> set[str]:
        done = subprocess.run(
            [python, "-c", code], env=dict(env, **extra), capture_output=True, text=True, check=True
        )
        return set(done.stdout.split())

    on = {"PYTHON_POPCONTEST_ENABLE": "1"}
    found = {
        "start-up": sorted(
            names(_LIST_MODULES, on) - names(_LIST_MODULES, {"PYTHON_POPCONTEST_ENABLE": "0"})
        )
    }
    shutil.rmtree(cold_cache, ignore_errors=True)
    cold = dict(on, PYTHON_POPCONTEST_CACHE_DIR=str(cold_cache))
    for label, body, extra in (
        ("exit, stdlib only", "import json", on),
        ("exit, cold index", "import yaml", cold),
        ("exit, warm index", "import yaml", cold),
    ):
        found[label] = sorted(names(_EXIT_MODULES.format(body=body), extra))
    return found
