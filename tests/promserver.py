"""A real Prometheus on 127.0.0.1, on history backfilled with ``promtool``.

Debian's ``prometheus`` package provides both binaries.  When they are
missing and the tests run as root, they are installed with apt; otherwise the
test fails (it never skips): ``unused`` and ``top`` are only tested against a
real server.

Series are written as OpenMetrics and turned into TSDB blocks with
``promtool tsdb create-blocks-from openmetrics``.  statsd_exporter exposes the
popcon counters as ``python_popcon_library_used`` and ``python_popcon_reports``
(no ``_total``).  OpenMetrics demands the ``_total`` suffix on samples of a
family typed ``counter``, and promtool keeps it in the stored name, so the
families are typed ``unknown`` here: the TSDB stores no type, and
``increase()`` treats the series exactly as scraped counters.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import pytest

from support.ports import free_port

Labels = Mapping[str, str]
Series = tuple[str, Labels, list[tuple[float, float]]]  # metric, labels, (time, value)


def binaries() -> tuple[str, str]:
    """``prometheus`` and ``promtool``; installed from Debian when missing (root only)."""
    found = shutil.which("prometheus"), shutil.which("promtool")
    if all(found):
        return found  # type: ignore[return-value]
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.fail("Prometheus is required: apt-get install prometheus (Debian package)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    # No daemon may start on install (the package's service would listen on *:9090).
    policy = Path("/usr/sbin/policy-rc.d")
    added_policy = not policy.exists()
    if added_policy:
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
    try:
        _apt_install(env)
    finally:
        if added_policy:
            policy.unlink()
    found = shutil.which("prometheus"), shutil.which("promtool")
    if not all(found):
        pytest.fail("apt-get installed prometheus, but prometheus/promtool are not on PATH")
    return found  # type: ignore[return-value]


def _apt_install(env: dict[str, str]) -> None:
    install = [
        "apt-get",
        "-o",
        "DPkg::Lock::Timeout=300",
        "install",
        "-y",
        "-qq",
        "--no-install-recommends",
        "prometheus",
    ]
    if subprocess.run(install, env=env, capture_output=True).returncode != 0:
        subprocess.run(
            ["apt-get", "-o", "DPkg::Lock::Timeout=300", "update", "-qq"],
            env=env,
            capture_output=True,
        )
        done = subprocess.run(install, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            pytest.fail(f"apt-get install prometheus failed: {done.stderr.strip()[-500:]}")


def openmetrics(series: list[Series]) -> str:
    """OpenMetrics text: timestamps in seconds, families typed unknown, a final ``# EOF``."""
    families: dict[str, list[str]] = {}
    for metric, labels, samples in series:
        text = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        lines = families.setdefault(metric, [])
        lines += [f"{metric}{{{text}}} {value:g} {at:.3f}" for at, value in samples]
    out = []
    for metric, lines in families.items():
        out.append(f"# TYPE {metric} unknown")
        out += lines
    out.append("# EOF")
    return "\n".join(out) + "\n"


@contextmanager
def prometheus(workdir: Path, series: list[Series]) -> Iterator[str]:
    """A Prometheus serving ``series``; yields its base URL, stops it by PID at the end."""
    server, promtool = binaries()
    source = workdir / "history.om"
    source.write_text(openmetrics(series))
    tsdb = workdir / "tsdb"
    made = subprocess.run(
        [promtool, "tsdb", "create-blocks-from", "openmetrics", "-q", str(source), str(tsdb)],
        capture_output=True,
        text=True,
    )
    if made.returncode != 0:
        pytest.fail(f"promtool could not create blocks: {made.stderr.strip()[-1000:]}")
    config = workdir / "prometheus.yml"
    config.write_text("global:\n  scrape_interval: 1h\nscrape_configs: []\n")
    for _attempt in range(3):  # a free port can be taken before Prometheus binds it
        port = free_port()
        log_path = workdir / f"prometheus-{port}.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                [
                    server,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={tsdb}",
                    "--storage.tsdb.retention.time=100y",
                    f"--web.listen-address=127.0.0.1:{port}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=workdir,
            )
        try:
            url = f"http://127.0.0.1:{port}"
            if _wait_ready(proc, url, log_path):
                yield url
                return
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    pytest.fail(f"prometheus could not listen on a free port:\n{_tail(log_path)}")


def _tail(path: Path) -> str:
    return path.read_text(errors="replace")[-2000:]


def _wait_ready(proc: subprocess.Popen[bytes], url: str, log_path: Path) -> bool:
    """True once ``/-/ready`` answers; False if the port was taken; fails otherwise."""
    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None:
            if "address already in use" in _tail(log_path):
                return False
            pytest.fail(f"prometheus exited with {proc.returncode}:\n{_tail(log_path)}")
        try:
            with urllib.request.urlopen(f"{url}/-/ready", timeout=1) as answer:
                if answer.status == 200:
                    return True
        except OSError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"prometheus did not become ready within 60 s:\n{_tail(log_path)}")
        time.sleep(0.1)
