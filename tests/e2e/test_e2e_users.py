"""Distinct users (issue 23) through the real statsd_exporter and Prometheus.

Real Unix users (useradd, runuser), each with a home of their own, and Debian's
/usr/bin/python3 (pyenv's interpreters are under /root, which they cannot read): one
person runs twelve processes that import msgpack; ten people run two processes each
that import yaml, one of them with both processes side by side (two nodes sharing a
home).  With the shipped mapping and recording
rules, the k = 10 privacy rules publish pyyaml (20 processes, 10 users) and withhold
msgpack (12 processes, 1 user), which counting processes alone would have published;
``popcon-site top --users`` ranks by people, exactly.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml
from servers import DEPLOY, Prometheus, StatsdExporter, wait_for

from support.e2e import PACKAGES
from support.envs import Env, base_environ

MAPPING = DEPLOY / "statsd-exporter" / "mapping.yml"
RULES = DEPLOY / "prometheus" / "popcon-site.rules.yml"

SOLO_PROCESSES = 12  # one person, msgpack
PEOPLE = 10  # yaml, two processes each


def prometheus_config(exporter: StatsdExporter) -> dict[str, Any]:
    config = yaml.safe_load((DEPLOY / "vm" / "prometheus-statsd-exporter.yml").read_text())
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    config["rule_files"] = [str(RULES)]
    (job,) = config["scrape_configs"]
    job["static_configs"] = [{"targets": [f"127.0.0.1:{exporter.http_port}"]}]
    return config


def run(env: Env, user: str, port: int, code: str) -> str:
    """``code`` as ``user``, with user counters at their default (on), in debug mode."""
    environ = base_environ(
        PYTHON_POPCONTEST_ENABLE="1",
        PYTHON_POPCONTEST_DEBUG="1",
        PYTHON_POPCONTEST_STATSD_HOST="127.0.0.1",
        PYTHON_POPCONTEST_STATSD_PORT=str(port),
    )
    for variable in ("HOME", "XDG_CACHE_HOME", "PYTHON_POPCONTEST_USERS"):
        environ.pop(variable, None)  # runuser sets HOME from the password database
    proc = subprocess.run(
        ["runuser", "-u", user, "--", str(env.python), "-c", code],
        capture_output=True,
        text=True,
        env=environ,
        cwd="/",
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stderr


@pytest.fixture(scope="module")
def public(wheel: Path) -> Iterator[tuple[Env, list[str]]]:
    """A venv of Debian's python3 with the wheel, pyyaml and msgpack, and eleven real
    users with homes of their own; all removed afterwards."""
    if os.geteuid() != 0:
        pytest.fail("this test creates Unix users: run it as root")
    root = Path(tempfile.mkdtemp(prefix="popcon-e2e-users-", dir="/var/tmp"))
    root.chmod(0o755)
    tag = uuid.uuid4().hex[:6]
    users: list[str] = []
    try:
        made = subprocess.run(
            ["/usr/bin/python3", "-m", "venv", "--without-pip", str(root / "venv")],
            capture_output=True,
            env=base_environ(),
        )
        assert made.returncode == 0, made.stderr
        env = Env(root / "venv")
        env.install(str(wheel), *(p for p in PACKAGES if p.startswith(("pyyaml", "msgpack"))))
        for number in range(1 + PEOPLE):
            name = f"pce{tag}{number}"
            subprocess.run(
                ["useradd", "-m", "-d", str(root / name), "-s", "/bin/sh", name],
                check=True,
                capture_output=True,
            )
            users.append(name)
        yield env, users
    finally:
        for name in users:
            subprocess.run(["userdel", "-r", name], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def pipeline(
    public: tuple[Env, list[str]], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[StatsdExporter, Prometheus]]:
    env, (solo, *people) = public
    workdir = tmp_path_factory.mktemp("users")
    exporter = StatsdExporter(workdir, MAPPING)
    exporter.start()
    try:
        prometheus = Prometheus(workdir, prometheus_config(exporter))
        prometheus.start()
        try:
            wait_for(
                lambda: prometheus.values('up{job="popcon-site"}') == {(): 1.0},
                "Prometheus to scrape statsd_exporter",
                30,
                prometheus,
            )
            port = exporter.statsd_port
            with ThreadPoolExecutor(max_workers=4) as pool:
                jobs = [(solo, "import msgpack")] * SOLO_PROCESSES
                jobs += [(user, "import yaml") for user in people[1:] for _ in range(2)]
                # Side by side in the pool (tests/test_users.py releases them together).
                jobs += [(people[0], "import yaml")] * 2
                said = list(pool.map(lambda job: run(env, job[0], port, job[1]), jobs))
            assert all(text.startswith("popcon-site: sent") for text in said), said
            wait_for(
                lambda: (
                    prometheus.values("sum(hub_namespace:python_popcon_users:increase30d)")
                    == {(): float(PEOPLE + 1)}
                    and prometheus.values("sum(hub_namespace:python_popcon_reports:increase30d)")
                    == {(): float(SOLO_PROCESSES + 2 * PEOPLE)}
                ),
                "the recording rules to count every process and user",
                60,
                prometheus,
            )
            yield exporter, prometheus
        finally:
            prometheus.stop()
    finally:
        exporter.stop()


def test_the_exporter_holds_exact_user_counts(
    pipeline: tuple[StatsdExporter, Prometheus],
) -> None:
    exporter, _ = pipeline
    lib = "library"
    assert exporter.samples("python_popcon_") == {
        ("python_popcon_library_used", frozenset({(lib, "msgpack")})): 12.0,
        ("python_popcon_library_used", frozenset({(lib, "pyyaml")})): 20.0,
        ("python_popcon_reports", frozenset()): 32.0,
        ("python_popcon_library_users", frozenset({(lib, "msgpack")})): 1.0,
        ("python_popcon_library_users", frozenset({(lib, "pyyaml")})): 10.0,
        ("python_popcon_users", frozenset()): 11.0,
    }
    assert exporter.problems() == []


def test_k_needs_k_users_as_well_as_k_processes(
    pipeline: tuple[StatsdExporter, Prometheus],
) -> None:
    _, prometheus = pipeline
    by = ("hub_namespace", "library")
    used = prometheus.values("hub_namespace_library:python_popcon_library_used:increase30d", *by)
    assert used == {("", "msgpack"): 12.0, ("", "pyyaml"): 20.0}  # both over 10 processes
    people = prometheus.values("hub_namespace_library:python_popcon_library_users:increase30d", *by)
    assert people == {("", "msgpack"): 1.0, ("", "pyyaml"): 10.0}
    published = prometheus.values(
        "hub_namespace_library:python_popcon_library_used:increase30d_min10", *by
    )
    assert published == {("", "pyyaml"): 20.0}  # msgpack: one person, withheld
    shares = prometheus.values(
        "hub_namespace_library:python_popcon_library_share:ratio30d_min10", *by
    )
    assert shares == {("", "pyyaml"): 20 / 32}


def cli(env: Env, prometheus: Prometheus, *args: str) -> dict[str, Any]:
    command = [str(env.root / "bin" / "popcon-site"), *args, "--json"]
    command += ["--prometheus", prometheus.url]
    proc = subprocess.run(command, capture_output=True, text=True, env=base_environ(), timeout=60)
    assert proc.returncode == 0, proc.stderr
    return dict(json.loads(proc.stdout))


def test_top_users_and_top_through_prometheus(
    pipeline: tuple[StatsdExporter, Prometheus], public: tuple[Env, list[str]]
) -> None:
    _, prometheus = pipeline
    env = public[0]
    people = cli(env, prometheus, "top", "--users")
    assert (people["users"], people["reports"], people["libraries"]) == (11, 32, 2)
    assert people["top"] == [
        {"rank": 1, "library": "pyyaml", "users": 10, "user_share": 0.909091, "processes": 20},
        {"rank": 2, "library": "msgpack", "users": 1, "user_share": 0.090909, "processes": 12},
    ]
    processes = cli(env, prometheus, "top")
    assert [(row["library"], row["processes"]) for row in processes["top"]] == [
        ("pyyaml", 20),
        ("msgpack", 12),
    ]
