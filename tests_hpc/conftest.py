"""Fixtures of the HPC suite (``nox -s hpc``): one real Slurm cluster per session.

Reuses the main suite's helpers (the built wheel, real venvs made with uv, the UDP
sink) from ``tests/conftest.py``, loaded under another module name so that both
directories keep a ``conftest.py`` (as tests_reliability/ does).
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
TESTS = HERE.parent / "tests"
sys.path.insert(0, str(HERE))

_spec = importlib.util.spec_from_file_location("popcon_tests_conftest", TESTS / "conftest.py")
assert _spec is not None and _spec.loader is not None
base = importlib.util.module_from_spec(_spec)
sys.modules["popcon_tests_conftest"] = base
_spec.loader.exec_module(base)

wheel = base.wheel
sink = base.sink
home = base.home

from slurm_cluster import Cluster  # noqa: E402

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
def python_module(tmp_path_factory: pytest.TempPathFactory, wheel: Path) -> base.Env:
    """The cluster's Python: a real venv with the wheel and PyYAML from PyPI."""
    env = base.make_env(tmp_path_factory.mktemp("python-module") / "venv")
    env.install(str(wheel), "pyyaml")
    return env
