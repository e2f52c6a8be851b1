"""Fault matrix, network half: every case runs in a network namespace made for it.

Each namespace has only its own loopback interface, a fake DNS server and
sinks on 127.0.0.1:8125 / [::1]:8125 (see ``netns_driver.py``): nothing can
reach another address.  For every case: the exit status is the program's,
nothing is printed outside debug mode, the exit delay is within bounds, and
when the server is reachable exactly the right counters arrive.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import pytest
from reliability_support import EXIT_TIMER_ENV, encode_env, exit_times, run_in_netns

from conftest import FEW_MS_BOUND, NETWORK_BOUND, TCP_BOUND, WALL_SLACK
from support.envs import Env, base_environ
from support.wire import check_wire

pytestmark = [pytest.mark.fault, pytest.mark.netns, pytest.mark.usefixtures("netns")]

CODE = "import six, sys; sys.exit(3)"
SIX = ["python_popcon.library_used.six:1|c", "python_popcon.reports:1|c"]
RUNS = 5


def run_case(
    env: Env,
    home: Path,
    tmp_path: Path,
    *,
    host: str,
    protocol: str = "udp",
    port: int = 8125,
    dns: dict[str, Any] | None = None,
    tcp: dict[str, Any] | None = None,
    ipv4: bool = True,
) -> dict[str, Any]:
    on = base_environ(
        HOME=str(home),
        XDG_CACHE_HOME=str(home / ".cache"),
        PYTHON_POPCONTEST_ENABLE="1",
        PYTHON_POPCONTEST_STATSD_HOST=host,
        PYTHON_POPCONTEST_STATSD_PORT=str(port),
        PYTHON_POPCONTEST_STATSD_PROTOCOL=protocol,
    )
    off = {k: v for k, v in on.items() if k != "PYTHON_POPCONTEST_ENABLE"}
    argv = [str(env.python), "-c", CODE]
    timer = tmp_path / "exit-times"
    timed = dict(on, **{EXIT_TIMER_ENV: str(timer)})
    jobs = [
        {"name": "warm", "argv": argv, "env": encode_env(on)},  # builds the index once
        {"name": "off", "argv": argv, "env": encode_env(off), "repeat": RUNS},
        {"name": "on", "argv": argv, "env": encode_env(timed), "repeat": RUNS},
        {"name": "debug", "argv": argv, "env": encode_env(dict(on, PYTHON_POPCONTEST_DEBUG="1"))},
    ]
    result = run_in_netns({"ipv4": ipv4, "dns": dns, "tcp": tcp, "jobs": jobs}, tmp_path)
    for name in ("warm", "off", "on"):
        for run in result["jobs"][name]:
            assert (run["rc"], run["stdout"], run["stderr"]) == (3, "", ""), (name, run)
    (debug,) = result["jobs"]["debug"]
    assert debug["rc"] == 3 and debug["stdout"] == "", debug
    assert debug["stderr"].startswith("popcon-site: ") and debug["stderr"].count("\n") == 1, debug
    assert all(run["seconds"] < 2 + WALL_SLACK for run in result["jobs"]["on"]), result
    hook_times = exit_times(timer)
    assert len(hook_times) == RUNS, hook_times
    result["delay"] = statistics.median(hook_times)
    result["times"] = hook_times
    result["reason"] = debug["stderr"].strip()
    return result


def bound(protocol: str) -> float:
    return TCP_BOUND if protocol == "tcp" else FEW_MS_BOUND


def received(result: dict[str, Any], job: str, sink: str) -> list[list[str]]:
    """Per run of ``job``: the wire-checked lines that reached ``sink`` (or its TCP server)."""
    out = []
    for run in result["jobs"][job]:
        if sink == "tcp":
            streams = [bytes.fromhex(data) for data in run["tcp"]]
            packets = [stream.rstrip(b"\n") for stream in streams]
        else:
            packets = [bytes.fromhex(p) for p in run["packets"].get(sink, [])]
        out.append(check_wire(packets))
    return out


def assert_nothing_sent(result: dict[str, Any]) -> None:
    for job in ("off", "on"):
        for run in result["jobs"][job]:
            assert all(not packets for packets in run["packets"].values()), run
            assert not run.get("tcp"), run


@pytest.mark.parametrize(
    ("case", "dns", "reason"),
    [
        ("never-answers", {"mode": "blackhole"}, "cannot resolve 'statsd.test'"),
        ("nxdomain", {"mode": "nxdomain"}, "cannot resolve 'statsd.test'"),
        ("no-name-server", None, "cannot resolve 'statsd.test'"),
    ],
)
def test_resolver_failures(
    relenv: Env, home: Path, tmp_path: Path, case: str, dns: dict[str, Any] | None, reason: str
) -> None:
    result = run_case(relenv, home, tmp_path, host="statsd.test", dns=dns)
    assert_nothing_sent(result)
    assert reason in result["reason"]
    bound = NETWORK_BOUND if case == "never-answers" else FEW_MS_BOUND
    assert result["delay"] <= bound, (case, result["delay"])
    if dns is not None:
        assert result["dns_queries"] > 0, "the fake name server was really asked"


@pytest.mark.parametrize(
    ("case", "records", "sink"),
    [
        ("a-record", {"A": ["127.0.0.1"]}, "v4"),
        ("a-and-aaaa-prefers-ipv4", {"A": ["127.0.0.1"], "AAAA": ["::1"]}, "v4"),
        ("aaaa-only", {"AAAA": ["::1"]}, "v6"),
    ],
)
def test_resolver_answers_and_counts_arrive(
    relenv: Env, home: Path, tmp_path: Path, case: str, records: dict[str, list[str]], sink: str
) -> None:
    dns = {"mode": "answer", "records": {"statsd.test": records}}
    result = run_case(relenv, home, tmp_path, host="statsd.test", dns=dns)
    assert received(result, "on", sink) == [SIX] * RUNS
    assert result["delay"] <= FEW_MS_BOUND, result["delay"]


def test_slow_resolver_within_budget_still_counts(relenv: Env, home: Path, tmp_path: Path) -> None:
    """Answers after 100 ms: the first process, with nothing cached, waits for its lookup
    child (at most the budget) and counts; the later ones use the cached answer."""
    dns = {"mode": "answer", "delay": 0.1, "records": {"statsd.test": {"A": ["127.0.0.1"]}}}
    result = run_case(relenv, home, tmp_path, host="statsd.test", dns=dns)
    assert received(result, "warm", "v4") == [SIX]
    assert received(result, "on", "v4") == [SIX] * RUNS
    assert result["delay"] <= NETWORK_BOUND, result["delay"]


@pytest.mark.parametrize(
    ("host", "protocol"),
    [("192.0.2.1", "udp"), ("192.0.2.1", "tcp"), ("2001:db8::1", "udp"), ("2001:db8::1", "tcp")],
)
def test_no_route(relenv: Env, home: Path, tmp_path: Path, host: str, protocol: str) -> None:
    """Documentation addresses in a namespace without routes: the send fails at once."""
    result = run_case(relenv, home, tmp_path, host=host, protocol=protocol)
    assert_nothing_sent(result)
    assert (
        result["reason"].startswith("popcon-site: not sent (six)")
        or "sent 0 of 1" in result["reason"]
    ), result["reason"]
    assert result["delay"] <= bound(protocol), result["times"]


@pytest.mark.parametrize("protocol", ["udp", "tcp"])
def test_closed_port(relenv: Env, home: Path, tmp_path: Path, protocol: str) -> None:
    result = run_case(relenv, home, tmp_path, host="127.0.0.1", port=8127, protocol=protocol)
    assert_nothing_sent(result)
    assert result["delay"] <= bound(protocol), result["times"]


@pytest.mark.parametrize("mode", ["noread", "backlog-full"])
def test_tcp_server_that_never_reads_or_accepts(
    relenv: Env, home: Path, tmp_path: Path, mode: str
) -> None:
    result = run_case(
        relenv, home, tmp_path, host="127.0.0.1", port=8126, protocol="tcp", tcp={"mode": mode}
    )
    limit = NETWORK_BOUND if mode == "backlog-full" else TCP_BOUND
    assert result["delay"] <= limit, (mode, result["times"])


@pytest.mark.parametrize(
    ("host", "ipv4"), [("127.0.0.1", True), ("::1", True), ("statsd.test", False)]
)
def test_tcp_counts_arrive(relenv: Env, home: Path, tmp_path: Path, host: str, ipv4: bool) -> None:
    dns = {"mode": "answer", "listen": "::1", "records": {"statsd.test": {"AAAA": ["::1"]}}}
    result = run_case(
        relenv,
        home,
        tmp_path,
        host=host,
        protocol="tcp",
        port=8126,
        ipv4=ipv4,
        dns=None if ipv4 else dns,
        tcp={"mode": "read", "host": "127.0.0.1" if host == "127.0.0.1" else "::1"},
    )
    assert received(result, "on", "tcp") == [SIX] * RUNS
    assert result["delay"] <= TCP_BOUND, result["times"]


def test_ipv6_only_host_by_name(relenv: Env, home: Path, tmp_path: Path) -> None:
    """No 127.0.0.1 at all; the name server and statsd are on ::1; the name has only AAAA."""
    dns = {"mode": "answer", "listen": "::1", "records": {"statsd.test": {"AAAA": ["::1"]}}}
    result = run_case(relenv, home, tmp_path, host="statsd.test", dns=dns, ipv4=False)
    assert received(result, "warm", "v6") == [SIX]  # looked up by the child, nothing cached
    assert received(result, "on", "v6") == [SIX] * RUNS
    assert result["delay"] <= FEW_MS_BOUND, result["delay"]


def test_ipv6_only_host_with_default_localhost(relenv: Env, home: Path, tmp_path: Path) -> None:
    """``localhost`` means 127.0.0.1 (README); on a host without IPv4 that send fails silently."""
    result = run_case(relenv, home, tmp_path, host="localhost", ipv4=False)
    assert_nothing_sent(result)
    assert "sent 0 of 1" in result["reason"], result["reason"]
    assert result["delay"] <= FEW_MS_BOUND, result["delay"]
