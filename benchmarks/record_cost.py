"""What records (issue 22) cost in a process, measured in-process on this checkout's src/.

    python benchmarks/record_cost.py [LIVE_RECORDS]

- create: the first new top-level name's work (directory checks, file, lock, header,
  mmap; `import mmap` timed apart, ~0.3 ms once);
- add: one new top-level name written into the record (the watcher's note), median of
  9 blocks of 20,000;
- exit sweep: what an exiting process that recorded pays after its report, with
  LIVE_RECORDS other processes' records in its directory (each one a lock attempt that
  fails), and with none.

Live records belong to child processes started here, which hold their locks.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
import types

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))
os.environ["XDG_RUNTIME_DIR"] = tempfile.mkdtemp(dir="/dev/shm")  # tmpfs, as /run/user is

t = time.perf_counter_ns()
import mmap  # noqa: E402,F401

mmap_ns = time.perf_counter_ns() - t

import popcon_site  # noqa: E402
from popcon_site import _record, _sweep  # noqa: E402


def session() -> types.SimpleNamespace:
    fake = types.SimpleNamespace(imported_names=lambda: {"numpy", "json"}, finished=False)
    fake.watcher = types.SimpleNamespace(note=None)
    return fake


def median_us(values: list[int]) -> float:
    return statistics.median(values) / 1000


_record._STDLIB = _record._stdlib_names()
creates, removes = [], []
for _ in range(50):
    t = time.perf_counter_ns()
    record = _record.create(session())  # type: ignore[arg-type]
    creates.append(time.perf_counter_ns() - t)
    assert record is not None
    os.unlink(record.path)
    os.close(record.fd)

record = _record.create(session())  # type: ignore[arg-type]
assert record is not None
adds = []
for block in range(9):  # median of 9 blocks of 20,000 new names (the first one grows the file)
    names = [f"bench_name_{block}_{i}" for i in range(20000)]
    record.pos = 0
    t = time.perf_counter_ns()
    for name in names:
        record.add(name)
    adds.append(time.perf_counter_ns() - t)
add_ns = statistics.median(adds) / 20000
directory = os.path.dirname(record.path)
os.unlink(record.path)

live = int(sys.argv[1]) if len(sys.argv) > 1 else 32
holder = (
    "import os, sys, time, mmap\n"
    f"sys.path.insert(0, {os.path.join(os.path.dirname(popcon_site.__file__), '..')!r})\n"
    "import types\nfrom popcon_site import _record\n_record._STDLIB = frozenset()\n"
    "s = types.SimpleNamespace(imported_names=lambda: {'numpy'}, finished=False)\n"
    "r = _record.create(s)\nprint('ready', flush=True)\ntime.sleep(60)\n"
)
env = dict(os.environ)
children = [
    subprocess.Popen([sys.executable, "-c", holder], stdout=subprocess.PIPE, env=env)
    for _ in range(live)
]
for child in children:
    assert child.stdout is not None and child.stdout.readline() == b"ready\n"
sweeps_live = []
for _ in range(50):
    t = time.perf_counter_ns()
    said = _sweep.sweep(False, _record.SWEEP_AT_EXIT, _record.LOOK_AT_EXIT, [directory])
    sweeps_live.append(time.perf_counter_ns() - t)
    assert said == [], said
for child in children:
    child.kill()
    child.wait()
for name in os.listdir(directory):
    os.unlink(os.path.join(directory, name))
sweeps_empty = []
for _ in range(50):
    t = time.perf_counter_ns()
    _sweep.sweep(False, _record.SWEEP_AT_EXIT, _record.LOOK_AT_EXIT, [directory])
    sweeps_empty.append(time.perf_counter_ns() - t)

import shutil  # noqa: E402

shutil.rmtree(os.environ["XDG_RUNTIME_DIR"], ignore_errors=True)
print(f"records, Python {sys.version.split()[0]}, directory on {directory}")
print(f"  import mmap (once per recording process)  {mmap_ns / 1000:7.1f} us")
print(f"  create the record (median of 50)           {median_us(creates):7.1f} us")
print(f"  add one new top-level name                 {add_ns / 1000:7.3f} us")
print(
    f"  exit sweep, {live} live records (looks at {min(live, _record.LOOK_AT_EXIT)})"
    f"   {median_us(sweeps_live):7.1f} us"
)
print(f"  exit sweep, empty directory                {median_us(sweeps_empty):7.1f} us")
