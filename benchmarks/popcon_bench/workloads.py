"""The benchmarked programs, and the benchmark-only sitecustomize.

Every program writes one byte to file descriptor 3 as its first statement
(``s``) and one as its last (``e``).  The harness timestamps their arrival,
which splits each run into start-up (spawn to ``s``), body (``s`` to ``e``)
and exit (``e`` to the child's end, seen by ``wait4``) without putting any
clock or import into the measured process.  ``os`` is already loaded by
``site``, so ``import os`` is a ``sys.modules`` hit: no import machinery runs.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path

WATCH_MODULES = 1000


@dataclass(frozen=True)
class Workload:
    name: str
    description: str
    argv: tuple[str, ...]  # arguments after the interpreter; {scripts} is replaced


PASS_CODE = "import os; os.write(3, b's'); pass; os.write(3, b'e')"

_STDLIB = """\
import os
os.write(3, b"s")
import argparse, base64, collections, csv, dataclasses, datetime, hashlib, json, logging
import pathlib, subprocess, tempfile, textwrap, typing, urllib.parse
os.write(3, b"e")
"""

_RICH = """\
import os
os.write(3, b"s")
import requests, yaml, numpy
os.write(3, b"e")
"""

_IMPORTS = f"""\
import os
os.write(3, b"s")
import benchmods
for i in range({WATCH_MODULES}):
    __import__(f"benchmods.m{{i:04d}}")
os.write(3, b"e")
"""

# A child that exits normally (runs atexit), after the parent imported requests.
_FORK = """\
import os
os.write(3, b"s")
import requests
pid = os.fork()
if pid == 0:
    import json
    raise SystemExit(0)
os.waitpid(pid, 0)
os.write(3, b"e")
"""

# multiprocessing's spawn start method: a new interpreter for the child, plus the
# resource tracker, which is stopped before the end mark so its exit is inside the body.
_SPAWN = """\
import os
import multiprocessing


def work():
    import json


if __name__ == "__main__":
    os.write(3, b"s")
    process = multiprocessing.get_context("spawn").Process(target=work)
    process.start()
    process.join()
    from multiprocessing import resource_tracker
    resource_tracker._resource_tracker._stop()
    os.write(3, b"e")
"""

WORKLOADS = {
    "pass": Workload("pass", "python -c pass", ("-c", PASS_CODE)),
    "stdlib": Workload("stdlib", "imports 15 stdlib modules", ("{scripts}/stdlib.py",)),
    "rich": Workload("rich", "imports requests, yaml, numpy", ("{scripts}/rich.py",)),
    "imports": Workload(
        "imports", f"imports {WATCH_MODULES} small modules", ("{scripts}/watch/imports.py",)
    ),
    "fork": Workload("fork", "os.fork child imports json, exits", ("{scripts}/fork.py",)),
    "spawn": Workload("spawn", "multiprocessing spawn child", ("{scripts}/spawn.py",)),
}


# Benchmark-only: on PYTHONPATH for the variants that need it, never installed.
SITECUSTOMIZE = '''\
"""popcon-site benchmark probe (benchmarks/popcon_bench/workloads.py); never installed."""
import os

_mode = os.environ.get("POPCON_BENCH_HOOK", "")
_popcon = __import__("sys").modules.get("popcon_site")
if _mode and _popcon is not None and _popcon.current() is not None:
    import atexit

    atexit.unregister(_popcon._at_exit)
    if _mode == "time":
        # The exit hook's own duration, in-process, sent after the end mark.
        import time

        def _timed_exit():
            started = time.perf_counter_ns()
            _popcon._at_exit()
            elapsed = time.perf_counter_ns() - started
            try:
                os.write(3, b"h%d;" % elapsed)
            except OSError:
                pass

        atexit.register(_timed_exit)
    elif _mode == "profile":
        # cProfile of the exit hook; a mark on stderr separates -X importtime lines.
        import cProfile

        def _profiled_exit():
            os.write(2, b"--- popcon-bench: exit hook starts ---\\n")
            profile = cProfile.Profile()
            profile.enable()
            _popcon._at_exit()
            profile.disable()
            profile.dump_stats(os.environ["POPCON_BENCH_PROFILE_OUT"])

        atexit.register(_profiled_exit)
    # "none": the exit hook is removed (start-up cost alone, for instruction counts).
'''


def write_scripts(scripts: Path) -> Path:
    """Write the programs, 1,000 compiled modules and the sitecustomize; returns the probe dir."""
    scripts.mkdir(parents=True, exist_ok=True)
    (scripts / "stdlib.py").write_text(_STDLIB)
    (scripts / "rich.py").write_text(_RICH)
    (scripts / "fork.py").write_text(_FORK)
    (scripts / "spawn.py").write_text(_SPAWN)
    watch = scripts / "watch"
    mods = watch / "benchmods"
    if not (mods / f"m{WATCH_MODULES - 1:04d}.py").exists():
        mods.mkdir(parents=True, exist_ok=True)
        (mods / "__init__.py").write_text("")
        for i in range(WATCH_MODULES):
            (mods / f"m{i:04d}.py").write_text(f"VALUE = {i}\n")
    (watch / "imports.py").write_text(_IMPORTS)
    probe = scripts / "probe"
    probe.mkdir(exist_ok=True)
    (probe / "sitecustomize.py").write_text(textwrap.dedent(SITECUSTOMIZE))
    return probe
