"""One real ``--time=1`` job, submitted before the session's first test, checked by its last.

Slurm kills a job at its limit 61-82 s after it starts (minute granularity, a check
about every 30 s): waiting for it alone would add that to the session, so it runs
beside every other test.  conftest.py submits it and puts its test
(test_time_limit.py) last.  It takes one of the node's two CPUs; the other jobs overcommit
(``-O``) and need one.

Three Pythons run in the job, each reporting to a sink of its own, all killed together:

- ``indexed``: a loop that keeps what it builds (as in test_kills.py), in an environment
  whose admin ran ``popcon-site index --system``: its checkpoint sends pyyaml and reports;
- ``cold``: the same loop in the cluster's Python, with no index anywhere: a checkpoint
  never builds one inside the program's work, so only reports survives the kill;
- ``handler``: a SIGTERM handler that calls ``sys.exit()``; it imports six after its
  first checkpoint and then only sleeps, so six can come only from its exit report.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from slurm_cluster import Cluster

from support.envs import Env, enabled, make_env
from support.sinks import UdpSink

# At most this long, whatever happens: a job Slurm never kills must still end.
LIFETIME = 300

# Keeps one small list per millisecond: a collection every ~0.7 s (700 containers), so
# checkpoints come, for ~64 KB/s of memory.
LOOP = (
    "kept = []\n"
    "while time.monotonic() < end:\n"
    "    kept.append([len(kept)])\n"
    "    time.sleep(0.001)\n"
)
KILLED = (
    "import sys, time, yaml\n"
    f"end = time.monotonic() + {LIFETIME}\n"
    "open(sys.argv[1], 'w').close()\n" + LOOP
)
# Its first checkpoint (10 s) has sent pyyaml and reports when it imports six at 15 s;
# then it only sleeps, and no checkpoint comes again.
HANDLER = (
    "import signal, sys, time, yaml\n"
    "def stop(signum, frame):\n"
    "    open(sys.argv[2], 'w').write(signal.Signals(signum).name)\n"
    "    sys.exit(0)\n"
    "signal.signal(signal.SIGTERM, stop)\n"
    "open(sys.argv[1], 'w').close()\n"
    "end = time.monotonic() + 15\n" + LOOP + "import six\n"
    f"end = time.monotonic() + {LIFETIME}\n"
    "while time.monotonic() < end:\n"
    "    time.sleep(0.1)\n"
)


@dataclass
class TimeLimitedJob:
    id: str
    root: Path
    sinks: dict[str, UdpSink]
    cold_status: str  # `popcon-site status` of the cold Python, as the job sees it
    submitted: float = field(default_factory=time.monotonic)

    def started(self, name: str) -> Path:
        return self.root / f"{name}.started"

    @property
    def handled(self) -> Path:
        return self.root / "handler.signal"

    @property
    def out(self) -> Path:
        return self.root / "job.out"

    def close(self, cluster: Cluster) -> None:
        """Cancel the job if it still runs (a test run cut short), close the sinks."""
        try:
            cluster.wait(self.id, timeout=0.5)
        except AssertionError:
            cluster.run("scancel", self.id, env=os.environ)
            cluster.wait(self.id, timeout=30)
        finally:
            for sink in self.sinks.values():
                sink.close()


def indexed_env(root: Path, wheel: Path) -> Env:
    """An environment whose admin ran ``popcon-site index --system`` after installing."""
    env = make_env(root)
    env.install(str(wheel), "pyyaml", "six")
    subprocess.run(
        [str(env.root / "bin" / "popcon-site"), "index", "--system"],
        check=True,
        capture_output=True,
    )
    return env


def submit(cluster: Cluster, indexed: Env, cold: Env, root: Path) -> TimeLimitedJob:
    home = root / "home"  # an empty cache: the system index is the only one
    home.mkdir()
    sinks = {name: UdpSink() for name in ("indexed", "cold", "handler")}
    environ = enabled(sinks["indexed"], home)
    status = subprocess.run(
        [str(cold.root / "bin" / "popcon-site"), "status"],
        check=True,
        capture_output=True,
        text=True,
        env=environ,
    ).stdout
    job = TimeLimitedJob("", root, sinks, status)
    runs = [
        (indexed, KILLED, [job.started("indexed")]),
        (cold, KILLED, [job.started("cold")]),
        (indexed, HANDLER, [job.started("handler"), job.handled]),
    ]
    # All in the batch step's process group: Slurm signals them together.
    script = "".join(
        f"PYTHON_POPCONTEST_STATSD_PORT={sinks[name].port} "
        + shlex.join([str(env.python), "-c", program, *map(str, args)])
        + " &\n"
        for name, (env, program, args) in zip(sinks, runs)
    )
    script += "wait\n"
    job.id = cluster.submit("--time=1", "-n", "1", "-o", str(job.out), script=script, env=environ)
    return job
