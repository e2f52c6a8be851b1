"""Fixtures of the HPC suite (``nox -s hpc``): one real Slurm cluster per session.

The helpers every suite shares (the built wheel, real venvs made with uv, the UDP
sink) come from ``tests/support/``.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

import time_limited  # noqa: E402
from slurm_cluster import Cluster  # noqa: E402
from time_limited import TimeLimitedJob  # noqa: E402

from support.envs import Env, make_env  # noqa: E402

pytest_plugins = ["support.fixtures"]  # wheel, sink, home

TOOLS = ("munged", "mungekey", "slurmctld", "slurmd", "srun", "sbatch", "sinfo", "mpirun")


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """munged, slurmctld and slurmd on 127.0.0.1, stopped by PID whatever happens."""
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"not installed: {missing} (nox -s hpc installs them from Debian)")
    running = Cluster(tmp_path_factory.mktemp("cluster"))
    try:
        running.start()
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="session")
def python_module(tmp_path_factory: pytest.TempPathFactory, wheel: Path) -> Env:
    """The cluster's Python: a real venv with the wheel and PyYAML from PyPI."""
    env = make_env(tmp_path_factory.mktemp("python-module") / "venv")
    env.install(str(wheel), "pyyaml")
    return env


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "time_limited: checks the --time=1 job; runs last")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # The time-limited job runs beside every other test: its check comes last.
    items.sort(key=lambda item: item.get_closest_marker("time_limited") is not None)


@pytest.fixture(scope="session", autouse=True)
def time_limited_job(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    wheel: Path,
) -> Iterator[TimeLimitedJob | None]:
    """The --time=1 job (time_limited.py), submitted before the first test when selected."""
    if not any(item.get_closest_marker("time_limited") for item in request.session.items):
        yield None
        return
    cluster: Cluster = request.getfixturevalue("cluster")
    cold: Env = request.getfixturevalue("python_module")
    indexed = time_limited.indexed_env(tmp_path_factory.mktemp("indexed") / "venv", wheel)
    job = time_limited.submit(cluster, indexed, cold, tmp_path_factory.mktemp("time-limited"))
    try:
        yield job
    finally:
        job.close(cluster)
