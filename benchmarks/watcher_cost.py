"""The import watcher's cost per new module, two versions of popcon_site side by side.

    python benchmarks/watcher_cost.py BEFORE_SRC AFTER_SRC [ROUNDS]

BEFORE_SRC and AFTER_SRC are directories holding a `popcon_site` package (a checkout's
`src/`, or `git archive REV src | tar -x -C DIR`). Standard library only; it measures
the interpreter that runs it. Each of ROUNDS fresh processes loads both versions'
`popcon_site/__init__.py` under names of their own, makes each one's steady watcher
(as after start-up; no checkpoint due) and times importlib's own `_find_spec` on 20,000
names nothing can find, with a watcher first in `sys.meta_path` and without one, the two
versions in alternating blocks:

- import: the lookup as an import does it, with the name's module lock held
  (`_ModuleLockManager`, as `_find_and_load` takes it), so the watcher notes the name;
- lookup: the lookup as `importlib.util.find_spec()` does it, with no lock, which the
  watcher since issue 25 does not note.

Issue 22 (records) adds, where AFTER has `_record.py`, two rows of the import case:

- new top-level: every name is a new top-level name outside the standard library, each
  one written into the process's record (mmap), the worst case (a real program writes
  one per distribution, e.g. `numpy`, not one per module);
- submodule: every name is a submodule (`pkg.mod`), which the record never writes.

Figures: over processes, the median of each process's median difference, in ns per
name, and the median of the per-process change (after - before).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys

PROBE = r"""
import importlib.util, sys, time, types
import importlib._bootstrap as bootstrap

import os, tempfile

watchers, records = {}, {}
for label, path in zip(("before", "after"), sys.argv[1:3]):
    # Each version's module under a name of its own, side by side in this process.
    spec = importlib.util.spec_from_file_location(f"popcon_{label}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    # No checkpoint while timing; steady state, as after start-up.
    session = types.SimpleNamespace(due=float("inf"), starting=False, finished=False)
    session.imported_names = set
    watcher = module._SteadyWatcher.__new__(module._SteadyWatcher)
    module.ImportWatcher.__init__(watcher, session)
    session.watcher = watcher
    if os.path.exists(os.path.join(os.path.dirname(path), "_record.py")):
        # This process's record, as the first new top-level name creates it.
        os.environ["XDG_RUNTIME_DIR"] = tempfile.mkdtemp(dir="/dev/shm")  # tmpfs, as /run/user
        record_module = module._sibling("_record")
        record_module._STDLIB = record_module._stdlib_names()
        records[label] = record_module.create(session)
        watcher.note = records[label].add
    watchers[label] = watcher


class Null:
    @staticmethod
    def find_spec(name, path=None, target=None):
        return None


N = 20000
find, lock = bootstrap._find_spec, bootstrap._ModuleLockManager
saved = list(sys.meta_path)


def timed(meta, tag, locked, dotted=False):
    names = [f"popcon_bench_{tag}_{i}" for i in range(N)]
    if dotted:
        names = [f"popcon_bench_{tag}.m{i}" for i in range(N)]
    for record in records.values():
        record.pos = 0  # a fresh record for each block (the same file, mapped)
        record.written.clear()
    sys.meta_path[:] = meta
    t = time.perf_counter_ns()
    if locked:
        for name in names:
            with lock(name):
                find(name, None)
    else:
        for name in names:
            find(name, None)
    elapsed = time.perf_counter_ns() - t
    sys.meta_path[:] = saved
    return elapsed


cases = (True, False, "dotted")
diffs = {(label, case): [] for label in watchers for case in cases}
for rep in range(9):
    for case in cases:
        locked, dotted = case is not False, case == "dotted"
        for label in ("before", "after") if rep % 2 else ("after", "before"):
            tag = f"{label}{case}{rep}"
            without = timed([Null], tag + "a", locked, dotted)
            with_watcher = timed([watchers[label], Null], tag + "b", locked, dotted)
            diffs[label, case].append((with_watcher - without) / N)
            watchers[label].seen.clear()
print(*(sorted(diffs[key])[4] for key in diffs))
for record in records.values():  # the records' temporary runtime directories
    import shutil
    shutil.rmtree(os.path.dirname(os.path.dirname(record.path)), ignore_errors=True)
"""


def run(before: str, after: str) -> list[float]:
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONHASHSEED": "0"}
    env["PYTHONPATH"] = os.path.dirname(os.path.dirname(after))  # _record's popcon_site
    done = subprocess.run(
        [sys.executable, "-s", "-c", PROBE, before, after],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return [float(x) for x in done.stdout.split()]


def main() -> None:
    before, after = (os.path.join(src, "popcon_site", "__init__.py") for src in sys.argv[1:3])
    rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 31
    rows = [run(before, after) for _ in range(rounds)]
    version = sys.version.split()[0]
    print(f"watcher cost per name, Python {version}, {rounds} processes (ns, median [p25..p75])")
    whats = ("import, new top-level", "lookup (find_spec, no lock)", "import, submodule")
    for i, what in enumerate(whats):
        cells = []
        for j, label in enumerate(("before", "after")):
            values = sorted(row[3 * j + i] for row in rows)
            q = statistics.quantiles(values, n=4)
            cells.append(f"{label} {statistics.median(values):4.0f} [{q[0]:.0f}..{q[2]:.0f}]")
        diffs = sorted(row[3 + i] - row[i] for row in rows)
        q = statistics.quantiles(diffs, n=4)
        change = f"after - before {statistics.median(diffs):+4.0f} [{q[0]:+.0f}..{q[2]:+.0f}]"
        print(f"  {what:<28} " + "   ".join(cells) + "   " + change)


if __name__ == "__main__":
    main()
