"""A job cancelled with scancel while its Python runs: the checkpoints keep its counts.

scancel sends SIGCONT+SIGTERM, then SIGKILL after KillWait (5 s here), as a time limit
does; an exit report alone would be lost.  The job's Python keeps building objects (a
loop that accumulates), so the collector's trigger reaches the default 10 s checkpoint.
The index is built first, as an admin does after installing (`popcon-site index`): a
checkpoint never builds a cold one inside the program's work, so without it only
`reports` would survive the kill.
"""

from __future__ import annotations

import shlex
import subprocess
import time
from collections import Counter
from pathlib import Path

from slurm_cluster import Cluster

from support.envs import Env, enabled
from support.sinks import UdpSink

WORK = (
    "import sys, time, yaml\n"
    "open(sys.argv[1], 'w').close()\n"
    "kept = []\n"
    "while True:\n"
    "    kept.append([object() for _ in range(100)])\n"
    "    time.sleep(0.001)\n"
)


def test_a_job_cancelled_20_s_into_its_python_work_is_counted_once(
    cluster: Cluster, python_module: Env, sink: UdpSink, home: Path, tmp_path: Path
) -> None:
    subprocess.run(
        [str(python_module.root / "bin" / "popcon-site"), "index"],
        check=True,
        capture_output=True,
        env=enabled(sink, home),
    )
    started = tmp_path / "python-started"
    script = f"{shlex.quote(str(python_module.python))} -c {shlex.quote(WORK)} {started}"
    job = cluster.submit(
        "-n", "1", "-o", str(tmp_path / "job.out"), script=script, env=enabled(sink, home)
    )
    deadline = time.monotonic() + 60
    while not started.exists():
        assert time.monotonic() < deadline, (tmp_path / "job.out").read_text()
        time.sleep(0.1)
    time.sleep(20)
    cluster.run("scancel", job, env=enabled(sink, home))
    assert cluster.wait(job) == {job: "CANCELLED"}
    assert Counter(sink.lines(wait=1.0)) == {
        "python_popcon.library_used.pyyaml:1|c": 1,
        "python_popcon.reports:1|c": 1,
    }
