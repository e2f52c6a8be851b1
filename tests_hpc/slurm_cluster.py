"""A real one-node Slurm cluster on 127.0.0.1: munged, slurmctld and slurmd from Debian.

Everything lives in one directory: the munge key and socket, slurm.conf, state, spool
and logs.  The three daemons are child processes in the foreground (``-F`` / ``-D``),
found and stopped by PID.  ``SLURM_CONF`` in ``Cluster.environ`` points the client
commands (``sinfo``, ``srun``, ``sbatch``, ``scancel``...) at this cluster.

Jobs that are killed need nothing more: ``wait`` returns every terminal state
(``CANCELLED`` after ``scancel``, ``TIMEOUT`` at ``--time``), and ``KillWait=5`` with
``proctrack/pgid`` makes SIGTERM -> SIGKILL take 5 s and reach the job's Python.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path

# Variables a launcher sets; none may leak from the test runner into a job.
LAUNCHER_PREFIXES = ("SLURM_", "OMPI_", "PMIX_", "PMI_", "MV2_", "PRTE_", "OPAL_")

# Job states of a job that has not ended yet (squeue(1), JOB STATE CODES).
ACTIVE = frozenset(
    ["PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED", "RESIZING"]
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    # A test run killed hard must not leave daemons behind: PR_SET_PDEATHSIG (1), SIGTERM.
    ctypes.CDLL(None).prctl(1, signal.SIGTERM)


def without_launchers(env: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if not k.startswith(LAUNCHER_PREFIXES)}


class Cluster:
    """munged + slurmctld + slurmd in ``root``; ``start()`` waits for the node to be idle."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.host = socket.gethostname().split(".")[0]  # slurmctld must find itself by name
        self.conf = root / "slurm.conf"
        self.munge_socket = root / "munge" / "munge.socket"
        self.daemons: dict[str, subprocess.Popen[bytes]] = {}

    @property
    def environ(self) -> dict[str, str]:
        """What a client command needs besides the caller's environment."""
        return {"SLURM_CONF": str(self.conf)}

    def start(self, timeout: float = 60) -> None:
        self._write_munge()
        self._write_conf()
        # -f: munged refuses a socket directory that not every user can enter, as
        # under pytest's private tmp; only root's jobs use this one.
        self._spawn("munged", [
            "munged", "-F", "-f",
            f"--socket={self.munge_socket}",
            f"--key-file={self.root / 'munge' / 'munge.key'}",
            f"--pid-file={self.root / 'munge' / 'munged.pid'}",
            f"--seed-file={self.root / 'munge' / 'munged.seed'}",
            f"--log-file={self.root / 'munge' / 'munged.log'}",
        ])  # fmt: skip
        self._wait(lambda: self.munge_socket.is_socket(), "munged's socket", timeout)
        self._spawn("slurmctld", ["slurmctld", "-D", "-i", "-f", str(self.conf)])
        self._spawn("slurmd", ["slurmd", "-D", "-N", self.host, "-f", str(self.conf)])
        self._wait(self._idle, "the node to be idle (sinfo)", timeout)

    def stop(self) -> None:
        """SIGTERM every daemon still running, SIGKILL after 10 s; never raises."""
        for name in ("slurmd", "slurmctld", "munged"):
            proc = self.daemons.pop(name, None)
            if proc is None or proc.poll() is not None:
                continue
            try:
                os.kill(proc.pid, signal.SIGTERM)
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
            except ProcessLookupError:
                pass

    def run(self, *argv: str, env: Mapping[str, str], timeout: float = 120) -> str:
        """A client command against this cluster; its stdout, or a failure with the logs."""
        proc = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            env={**without_launchers(env), **self.environ},
            cwd=self.root,
            timeout=timeout,
        )
        if proc.returncode != 0:
            raise AssertionError(
                f"{argv} exited {proc.returncode}\nstdout: {proc.stdout}\n"
                f"stderr: {proc.stderr}\n{self.logs()}"
            )
        return proc.stdout

    def submit(self, *options: str, script: str, env: Mapping[str, str]) -> str:
        """``sbatch`` a job (or an array); its id.  ``--wait`` would poll only every 10 s."""
        return self.run("sbatch", "--parsable", *options, "--wrap", script, env=env).strip()

    def wait(self, job: str, timeout: float = 120) -> dict[str, str]:
        """Poll until every task of ``job`` has ended; its state per job id (array tasks)."""
        states: dict[str, str] = {}

        def ended() -> bool:
            out = self.run("scontrol", "-o", "show", "job", job, env=os.environ)
            states.clear()
            for line in out.splitlines():
                fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
                states[fields["JobId"]] = fields["JobState"]
            return all(state not in ACTIVE for state in states.values())

        self._wait(ended, f"job {job} to end", timeout)
        return states

    def logs(self) -> str:
        parts = []
        for log in ("slurmctld.log", "slurmd.log"):
            path = self.root / log
            if path.exists():
                parts.append(f"--- {log} (tail)\n" + "\n".join(path.read_text().splitlines()[-30:]))
        return "\n".join(parts)

    def _write_munge(self) -> None:
        directory = self.root / "munge"
        directory.mkdir(mode=0o700)
        key = directory / "munge.key"
        subprocess.run(["mungekey", "--create", f"--keyfile={key}"], check=True)

    def _write_conf(self) -> None:
        for sub in ("state", "spool"):
            (self.root / sub).mkdir()
        # The node must declare the machine's real topology (more CPUs drains it).
        node = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, check=True)
        topology = node.stdout.splitlines()[0].split(" ", 1)[1]
        self.conf.write_text(
            f"""\
ClusterName=popcon
SlurmctldHost={self.host}(127.0.0.1)
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
CommunicationParameters=NoInAddrAny,NoCtldInAddrAny
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={self.munge_socket}
CredType=cred/munge
StateSaveLocation={self.root / "state"}
SlurmdSpoolDir={self.root / "spool"}
SlurmctldPidFile={self.root / "slurmctld.pid"}
SlurmdPidFile={self.root / "slurmd.pid"}
SlurmctldLogFile={self.root / "slurmctld.log"}
SlurmdLogFile={self.root / "slurmd.log"}
ProctrackType=proctrack/pgid
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
KillWait=5
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
NodeName={self.host} NodeAddr=127.0.0.1 {topology} State=UNKNOWN
PartitionName=debug Nodes={self.host} Default=YES MaxTime=INFINITE State=UP
"""
        )

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = open(self.root / f"{name}.out", "wb")  # noqa: SIM115 - the child keeps it
        self.daemons[name] = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**without_launchers(os.environ), **self.environ},
            cwd=self.root,
            preexec_fn=_die_with_parent,
        )
        log.close()

    def _idle(self) -> bool:
        state = subprocess.run(
            ["sinfo", "-h", "-o", "%T"],
            capture_output=True,
            text=True,
            env={**without_launchers(os.environ), **self.environ},
        )
        return state.stdout.strip() == "idle"

    def _wait(self, ready: Callable[[], bool], what: str, timeout: float) -> None:
        """Poll ``ready`` every 0.1 s; fail at once when a daemon has exited."""
        deadline = time.monotonic() + timeout
        while not ready():
            for name, proc in self.daemons.items():
                if proc.poll() is not None:
                    out = (self.root / f"{name}.out").read_text(errors="replace")
                    raise AssertionError(f"{name} exited {proc.returncode}: {out}\n{self.logs()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout} s waiting for {what}")
            time.sleep(0.1)
