"""Distinct users (issue 23) through the real statsd_exporter and Prometheus.

One person runs twelve processes that import msgpack; ten people (a user is a cache
directory: ten homes) run two processes each that import yaml, one of them with both
processes side by side (two nodes sharing a home).  With the shipped mapping and recording
rules, the k = 10 privacy rules publish pyyaml (20 processes, 10 users) and withhold
msgpack (12 processes, 1 user), which counting processes alone would have published;
``popcon-site top --users`` ranks by people, exactly.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml
from servers import DEPLOY, Prometheus, StatsdExporter, wait_for

from support.e2e import reporting_environ
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


def run(env: Env, home: Path, port: int, code: str) -> str:
    environ = reporting_environ(home, port, PYTHON_POPCONTEST_USERS="1")
    proc = env.run("-c", code, env=environ)
    assert proc.returncode == 0, proc.stderr
    return proc.stderr


@pytest.fixture(scope="module")
def pipeline(
    e2e_env: Env, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[StatsdExporter, Prometheus]]:
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
            solo = workdir / "solo"
            solo.mkdir()
            people = [workdir / f"person-{n}" for n in range(PEOPLE)]
            for home in people:
                home.mkdir()
            with ThreadPoolExecutor(max_workers=4) as pool:
                jobs = [(solo, "import msgpack")] * SOLO_PROCESSES
                jobs += [(home, "import yaml") for home in people[1:] for _ in range(2)]
                # Side by side in the pool (tests/test_users.py releases them together).
                jobs += [(people[0], "import yaml")] * 2
                said = list(pool.map(lambda job: run(e2e_env, job[0], port, job[1]), jobs))
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
    pipeline: tuple[StatsdExporter, Prometheus], e2e_env: Env
) -> None:
    _, prometheus = pipeline
    people = cli(e2e_env, prometheus, "top", "--users")
    assert (people["users"], people["reports"], people["libraries"]) == (11, 32, 2)
    assert people["top"] == [
        {"rank": 1, "library": "pyyaml", "users": 10, "user_share": 0.909091, "processes": 20},
        {"rank": 2, "library": "msgpack", "users": 1, "user_share": 0.090909, "processes": 12},
    ]
    processes = cli(e2e_env, prometheus, "top")
    assert [(row["library"], row["processes"]) for row in processes["top"]] == [
        ("pyyaml", 20),
        ("msgpack", 12),
    ]
