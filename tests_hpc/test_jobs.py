"""Real jobs on a real Slurm cluster and Open MPI: how many counts each launch sends.

Every rank is a real Python process of the cluster's Python (a venv with the wheel and
PyYAML) that imports ``yaml`` and reports over UDP to a sink on 127.0.0.1.  With
``PYTHON_POPCONTEST_RANK0_ONLY=1`` a job must count once (an array once per task);
without it, once per rank.
"""

from __future__ import annotations

import json
import shlex
import subprocess
from collections import Counter
from pathlib import Path
from typing import NamedTuple

import pytest
from slurm_cluster import LAUNCHER_PREFIXES, Cluster, without_launchers

from popcon_site import _select
from support.envs import Env, base_environ, enabled
from support.sinks import UdpSink

MPIRUN = ["mpirun", "--allow-run-as-root", "--oversubscribe"]
RANKS = 4  # more tasks than the machine's CPUs: srun and sbatch need -O (overcommit)
ARRAY_TASKS, RANKS_PER_TASK = 3, 2


class Launch(NamedTuple):
    jobs: int
    ranks: int  # per job
    variables: set[str]  # the rank variables every rank gets (the README's table)


LAUNCHES = {
    "srun": Launch(1, RANKS, {"SLURM_PROCID"}),
    "srun --mpi=pmix": Launch(1, RANKS, {"PMIX_RANK", "SLURM_PROCID"}),
    "srun --mpi=pmi2": Launch(1, RANKS, {"PMI_RANK", "SLURM_PROCID"}),
    "sbatch + mpirun": Launch(1, RANKS, {"OMPI_COMM_WORLD_RANK", "PMIX_RANK", "SLURM_PROCID"}),
    "mpirun": Launch(1, RANKS, {"OMPI_COMM_WORLD_RANK", "PMIX_RANK"}),
    "sbatch --array + srun": Launch(ARRAY_TASKS, RANKS_PER_TASK, {"SLURM_PROCID"}),
}


def launch(how: str, cluster: Cluster, command: list[str], env: dict[str, str], out: Path) -> None:
    """Run ``command`` as every rank of one job launched ``how``; job output goes to ``out``."""
    if how == "mpirun":  # outside Slurm: no SLURM_* at all
        proc = subprocess.run(
            [*MPIRUN, "-n", str(RANKS), *command],
            capture_output=True,
            text=True,
            env=without_launchers(env),
            timeout=120,
        )
        assert (proc.returncode, proc.stderr) == (0, ""), proc.stderr
        return
    if how.startswith("srun"):
        cluster.run("srun", *how.split()[1:], "-O", "-n", str(RANKS), *command, env=env)
        return
    if how == "sbatch + mpirun":
        options = ["-O", "-n", str(RANKS)]
        script = shlex.join([*MPIRUN, "-n", str(RANKS), *command])
    else:
        options = [f"--array=0-{ARRAY_TASKS - 1}", "-O", "-n", str(RANKS_PER_TASK)]
        script = shlex.join(["srun", *command])
    job = cluster.submit(*options, "-o", str(out / "job-%A_%a.out"), script=script, env=env)
    states = cluster.wait(job)
    assert sorted(states.values()) == ["COMPLETED"] * LAUNCHES[how].jobs, cluster.logs()


@pytest.mark.parametrize("how", LAUNCHES)
def test_every_rank_finds_its_own_rank(how: str, cluster: Cluster, tmp_path: Path) -> None:
    """What each launcher really sets, and that _select.rank() reads each rank's own."""
    # One file per rank: lines the launcher forwards from several ranks can interleave.
    dump = (
        "import json, os; env = {k: v for k, v in os.environ.items()"
        f" if k.startswith({LAUNCHER_PREFIXES!r})}}; "
        f"open(f'{tmp_path}/env-{{os.getpid()}}.json', 'w').write(json.dumps(env))"
    )
    launch(how, cluster, ["python3", "-c", dump], base_environ(), tmp_path)
    envs = [json.loads(path.read_text()) for path in tmp_path.glob("env-*.json")]
    jobs, ranks, variables = LAUNCHES[how]
    assert sorted(_select.rank(env) for env in envs) == sorted(list(range(ranks)) * jobs)
    assert {name for env in envs for name in _select.RANK_VARIABLES if name in env} == variables
    if how == "sbatch + mpirun":  # the batch step's rank, inherited by every MPI rank
        assert {env["SLURM_PROCID"] for env in envs} == {"0"}


@pytest.mark.parametrize("rank0_only", [True, False], ids=["rank0-only", "every-rank"])
@pytest.mark.parametrize("how", LAUNCHES)
def test_counts_per_job(
    how: str,
    rank0_only: bool,
    cluster: Cluster,
    python_module: Env,
    sink: UdpSink,
    home: Path,
    tmp_path: Path,
) -> None:
    extra = {"PYTHON_POPCONTEST_RANK0_ONLY": "1"} if rank0_only else {}
    env = enabled(sink, home, **extra)
    launch(how, cluster, [str(python_module.python), "-c", "import yaml"], env, tmp_path)
    jobs, ranks, _ = LAUNCHES[how]
    expected = jobs if rank0_only else jobs * ranks
    assert Counter(sink.lines()) == {
        "python_popcon.library_used.pyyaml:1|c": expected,
        "python_popcon.reports:1|c": expected,
    }
