"""Real processes -> the reference statsd daemon (npm `statsd` 0.9.0, the Etsy daemon).

The daemon's own management interface (``counters``) must show exactly one count
per process for each library it imported, and one ``reports`` per process, over
UDP and TCP, with the default prefix and the namespace prefix.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from servers import StatsdDaemon

from support.e2e import (
    expected_counts,
    installed_distributions,
    reporting_environ,
    run_processes,
    snippets,
)
from support.envs import Env

PLAN = {
    "import yaml": 3,
    "import ruamel.yaml": 2,
    "import zope.interface, charset_normalizer": 2,
    "import typing_extensions, msgpack, yaml": 1,
    "pass": 2,
}
PROCESSES = sum(PLAN.values())


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[StatsdDaemon]:
    server = StatsdDaemon(tmp_path)
    server.start()
    yield server
    server.stop()


def popcon_counters(daemon: StatsdDaemon) -> dict[str, int]:
    return {k: v for k, v in daemon.counters().items() if k.startswith("python_popcon.")}


def test_udp_counts_every_process_and_library_exactly(
    e2e_env: Env, daemon: StatsdDaemon, home: Path
) -> None:
    run_processes(e2e_env, snippets(PLAN), reporting_environ(home, daemon.udp_port))

    expected = {f"python_popcon.library_used.{k}": v for k, v in expected_counts(PLAN).items()}
    expected["python_popcon.reports"] = PROCESSES
    assert expected == {
        "python_popcon.library_used.pyyaml": 4,
        "python_popcon.library_used.ruamel-yaml": 2,
        "python_popcon.library_used.zope-interface": 2,
        "python_popcon.library_used.charset-normalizer": 2,
        "python_popcon.library_used.typing-extensions": 1,
        "python_popcon.library_used.msgpack": 1,
        "python_popcon.reports": 10,
    }
    # UDP gives no delivery guarantee: wait until every process's datagram was counted.
    counters = daemon_settles(daemon, expected)
    assert counters["statsd.bad_lines_seen"] == 0
    # One datagram per process: everything a process sends fits one 512-byte payload.
    assert counters["statsd.packets_received"] == PROCESSES
    assert counters["statsd.metrics_received"] == sum(expected.values())


def test_tcp_counts_every_process_and_library_exactly(
    e2e_env: Env, daemon: StatsdDaemon, home: Path
) -> None:
    environ = reporting_environ(home, daemon.tcp_port, PYTHON_POPCONTEST_STATSD_PROTOCOL="tcp")
    run_processes(e2e_env, snippets(PLAN), environ)

    expected = {f"python_popcon.library_used.{k}": v for k, v in expected_counts(PLAN).items()}
    expected["python_popcon.reports"] = PROCESSES
    counters = daemon_settles(daemon, expected)
    assert counters["statsd.bad_lines_seen"] == 0
    assert counters["statsd.metrics_received"] == sum(expected.values())


def test_namespace_prefix_from_the_readme(e2e_env: Env, daemon: StatsdDaemon, home: Path) -> None:
    plan = {"import yaml": 2, "import msgpack": 1, "pass": 1}
    prefix = "python_popcon.namespace.jhub-prod.library_used"
    environ = reporting_environ(home, daemon.udp_port, PYTHON_POPCONTEST_STATSD_PREFIX=prefix)
    run_processes(e2e_env, snippets(plan), environ)

    daemon_settles(
        daemon,
        {
            "python_popcon.namespace.jhub-prod.library_used.pyyaml": 2,
            "python_popcon.namespace.jhub-prod.library_used.msgpack": 1,
            "python_popcon.namespace.jhub-prod.reports": 4,
        },
    )


def test_inventory_script_sends_installed_distributions_as_gauges(
    e2e_env: Env, daemon: StatsdDaemon, home: Path
) -> None:
    script = Path(__file__).resolve().parents[2] / "deploy/inventory/popcon-site-inventory.py"
    environ = reporting_environ(home, daemon.udp_port)
    environ["PYTHON_POPCONTEST_ENABLE"] = "0"  # running the inventory is the opt-in
    proc = e2e_env.run(str(script), env=environ)
    assert proc.returncode == 0, proc.stderr
    installed = installed_distributions(e2e_env)
    assert {"pyyaml", "ruamel-yaml", "zope-interface", "msgpack", "statsd"} <= installed
    assert "popcon-site" not in installed
    expected = {f"python_popcon.library_installed.{name}": 1 for name in installed}

    def gauges() -> dict[str, int]:
        return {k: v for k, v in daemon.gauges().items() if k.startswith("python_popcon.")}

    deadline = time.monotonic() + 10
    while gauges() != expected and time.monotonic() < deadline:
        time.sleep(0.1)
    assert gauges() == expected
    assert daemon.counters()["statsd.bad_lines_seen"] == 0


def daemon_settles(daemon: StatsdDaemon, expected: dict[str, int]) -> dict[str, int]:
    """All counters, once the popcon ones equal ``expected`` (fails after 10 s otherwise)."""
    deadline = time.monotonic() + 10
    while popcon_counters(daemon) != expected and time.monotonic() < deadline:
        time.sleep(0.1)
    assert popcon_counters(daemon) == expected
    return daemon.counters()
