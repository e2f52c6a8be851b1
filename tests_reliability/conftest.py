"""Fixtures of the reliability suite (``nox -s reliability``).

The helpers every suite shares (the built wheel, real venvs made with uv, the UDP
sink, the wire reader) come from ``tests/support/``.  Adds: the figures the README
reports (faults tried / survived, processes sent / counted, inputs fuzzed /
injected), the reference statsd daemon, and timing helpers.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from reliability_support import (
    EXIT_TIMER_ENV,
    StatsdDaemon,
    exit_times,
    install_exit_timer,
    install_statsd,
    netns_available,
)

from popcon_site._report import NETWORK_BUDGET
from support.envs import Env, make_env

pytest_plugins = ["support.fixtures"]  # wheel, sink, home

try:  # hypothesis: examples are never stored in the work tree
    from hypothesis import HealthCheck, settings

    settings.register_profile(
        "reliability",
        database=None,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    settings.load_profile("reliability")
except ImportError:  # the hostile-input module skips itself
    pass

FIGURES: Counter[str] = Counter()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "fault: one row of the fault matrix (README figures)")
    config.addinivalue_line("markers", "netns: needs root to create network namespaces")


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if "fault" not in report.keywords:
        return
    if report.when == "call":
        FIGURES["faults tried"] += 1
        if report.passed:
            FIGURES["faults survived"] += 1
    elif report.when == "setup" and report.failed:
        FIGURES["faults tried"] += 1


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not FIGURES:
        return
    rows = [
        ("faults tried / survived", "faults tried", "faults survived"),
        ("processes sent / counted", "processes sent", "processes counted"),
        ("inputs fuzzed / injected", "inputs fuzzed", "lines injected"),
    ]
    terminalreporter.section("popcon-site reliability figures")
    for label, first, second in rows:
        terminalreporter.write_line(f"{label}: {FIGURES[first]:,} / {FIGURES[second]:,}")
    for key in sorted(FIGURES):
        if key not in {r[1] for r in rows} | {r[2] for r in rows}:
            terminalreporter.write_line(f"  {key}: {FIGURES[key]:,}")
    out = os.environ.get("POPCON_RELIABILITY_FIGURES")
    if out:
        Path(out).write_text(json.dumps(dict(FIGURES), indent=2, sort_keys=True) + "\n")


@pytest.fixture(scope="session")
def figures() -> Counter[str]:
    """Counts the README table reports; tests add to it."""
    return FIGURES


@pytest.fixture(scope="session")
def netns() -> None:
    reason = netns_available()
    if reason is not None:
        pytest.skip(reason)


@pytest.fixture(scope="session")
def statsd_js(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """npm ``statsd@0.9.0``, installed once (kept under POPCON_STATSD_DIR when set)."""
    directory = os.environ.get("POPCON_STATSD_DIR")
    target = Path(directory) if directory else tmp_path_factory.mktemp("statsd-npm")
    try:
        return install_statsd(target)
    except (RuntimeError, OSError) as exc:
        pytest.fail(f"reference statsd daemon unavailable: {exc}")


@pytest.fixture
def statsd(statsd_js: Path, tmp_path: Path) -> Iterator[StatsdDaemon]:
    daemon = StatsdDaemon(statsd_js, tmp_path)
    yield daemon
    daemon.stop()


@pytest.fixture(scope="session")
def relenv(tmp_path_factory: pytest.TempPathFactory, wheel: Path) -> Env:
    """A shared environment: the wheel plus a few small real PyPI packages.  Never modified."""
    env = make_env(tmp_path_factory.mktemp("relenv") / "venv")
    env.install(str(wheel), "six", "attrs", "idna", "typing_extensions")
    install_exit_timer(env.site_packages)
    return env


@pytest.fixture(scope="session")
def world_env(wheel: Path) -> Iterator[Env]:
    """An environment every user can run (for faults that need a second, unprivileged user)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to act as a second user")
    root = Path(tempfile.mkdtemp(prefix="popcon-reliability-"))
    root.chmod(0o755)
    try:
        env = make_env(root / "venv")
        env.install(str(wheel), "six")
        install_exit_timer(env.site_packages)
        subprocess.run(["chmod", "-R", "a+rX", str(root)], check=True)
        yield env
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def world_tmp() -> Iterator[Path]:
    """A scratch directory that every user can traverse (0755), removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="popcon-reliability-tmp-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def run_ok(
    env: Env, code: str, variables: Mapping[str, str], status: int = 0, **kwargs: object
) -> None:
    proc = env.run("-c", code, env=variables, **kwargs)  # type: ignore[arg-type]
    assert (proc.returncode, proc.stdout, proc.stderr) == (status, "", ""), proc


def exit_delay(
    env: Env,
    code: str,
    on: Mapping[str, str],
    timer: Path,
    status: int = 0,
    runs: int = 5,
    prefix: list[str] | None = None,
) -> float:
    """Median time popcon-site's exit hook took over ``runs`` processes (see install_exit_timer).

    Measured inside each process, so a loaded machine's start-up noise does not
    count.  Every run must end with ``status``, print nothing, and end within
    2 s of wall time.
    """
    timer.write_text("")
    timer.chmod(0o666)  # processes of another user append to it too
    variables = dict(on, **{EXIT_TIMER_ENV: str(timer)})
    for _ in range(runs):
        start = time.perf_counter()
        proc = subprocess.run(
            [*(prefix or []), str(env.python), "-c", code],
            env=variables,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert time.perf_counter() - start < 2 + WALL_SLACK, proc
        assert (proc.returncode, proc.stdout, proc.stderr) == (status, "", ""), proc
    times = exit_times(timer)
    assert len(times) == runs, times
    return statistics.median(times)


# Exit-delay bounds of the fault matrix (see the README of the suite in the report).
# A resolver that never answers: the host waits NETWORK_BUDGET for the lookup, plus slack.
NETWORK_BOUND = NETWORK_BUDGET + 0.1
FEW_MS_BOUND = 0.03  # everything else, index warm: "a few ms" plus process-timing noise
TCP_BOUND = 0.15  # TCP: importing the statsd client at exit alone is ~15-35 ms here
NO_CACHE_BOUND = 0.25  # no usable cache: the index is rebuilt in memory by every process
WALL_SLACK = 1.0  # wall-clock sanity checks only: other work shares these 2 cores
