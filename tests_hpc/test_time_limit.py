"""A real job killed at its time limit (``--time=1``): what each of its Pythons sent.

The job was submitted before the session's first test (conftest.py, time_limited.py);
this test runs last and waits for what is left of its 61-82 s.  Slurm sends SIGCONT and
SIGTERM at the limit, then SIGKILL after KillWait (5 s): the default SIGTERM action ends
a Python without its exit report, so what arrives is what its checkpoints sent.
"""

from __future__ import annotations

import os
import time
from collections import Counter

import pytest
from slurm_cluster import Cluster
from time_limited import TimeLimitedJob

PYYAML = "python_popcon.library_used.pyyaml:1|c"
SIX = "python_popcon.library_used.six:1|c"
REPORTS = "python_popcon.reports:1|c"


@pytest.mark.time_limited
def test_a_job_killed_at_its_time_limit(
    cluster: Cluster, time_limited_job: TimeLimitedJob | None
) -> None:
    job = time_limited_job
    assert job is not None
    # Before the job ran, status told the admin what the cold Python would lose.
    assert "a process killed before it exits sends only reports" in job.cold_status
    assert cluster.wait(job.id, timeout=150) == {job.id: "TIMEOUT"}, job.out.read_text()
    waited = time.monotonic() - job.submitted
    shown = cluster.run("scontrol", "-o", "show", "job", job.id, env=os.environ)
    fields = dict(field.split("=", 1) for field in shown.split() if "=" in field)
    minutes, seconds = fields["RunTime"].split(":")[-2:]
    assert 60 <= int(minutes) * 60 + int(seconds) <= 100, fields["RunTime"]
    log = (cluster.root / "slurmctld.log").read_text()
    assert f"Time limit exhausted for JobId={job.id}" in log
    assert all(job.started(name).exists() for name in job.sinks), job.out.read_text()
    assert job.handled.read_text() == "SIGTERM"
    counts = {name: Counter(sink.lines(wait=1.0)) for name, sink in job.sinks.items()}
    assert counts == {
        # Past its first checkpoint, with an index: counted once, as if it had exited.
        "indexed": {PYYAML: 1, REPORTS: 1},
        # No index: a checkpoint inside the program's work never builds one: only reports.
        "cold": {REPORTS: 1},
        # Its handler's sys.exit() ran the exit report: six, imported after the last
        # checkpoint, arrived, and nothing came twice.
        "handler": {PYYAML: 1, SIX: 1, REPORTS: 1},
    }, f"waited {waited:.0f} s after submission"
