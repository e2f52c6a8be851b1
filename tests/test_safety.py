"""Never harm the host process: bounded exit, silence, read-only and odd homes."""

from __future__ import annotations

import os
import shlex
import socket
import statistics
import subprocess
import time
from pathlib import Path

import pytest

from support.envs import Env, base_environ, enabled, make_env
from support.ports import free_port
from support.sinks import TcpCollector, UdpSink
from support.wire import libraries


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, wheel: Path) -> Env:
    env = make_env(tmp_path_factory.mktemp("safety") / "venv")
    env.install(str(wheel), "six")
    return env


def medians(env: Env, variants: list[dict[str, str]], code: str, runs: int = 7) -> list[float]:
    """Median wall time of each variant, runs interleaved so machine load hits all alike."""
    times: list[list[float]] = [[] for _ in variants]
    for _ in range(runs):
        for variables, samples in zip(variants, times):
            start = time.perf_counter()
            proc = env.run("-c", code, env=variables)
            samples.append(time.perf_counter() - start)
            assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "")
    return [statistics.median(samples) for samples in times]


def test_resolver_that_never_answers_costs_at_most_a_quarter_second(
    hanging_resolver_env: Env, sink: UdpSink, home: Path
) -> None:
    on = enabled(sink, home, PYTHON_POPCONTEST_STATSD_HOST="statsd.example.internal")
    off = dict(on)
    del off["PYTHON_POPCONTEST_ENABLE"]
    without, with_hang = medians(hanging_resolver_env, [off, on], "import six")
    assert with_hang - without <= 0.25, (with_hang, without)
    assert sink.drain() == []
    debug = dict(on, PYTHON_POPCONTEST_DEBUG="1")
    proc = hanging_resolver_env.run("-c", "import six", env=debug)
    # This process's own lookup child, or the one an earlier process started.
    assert proc.stderr.startswith(
        "popcon-site: not sent (six): cannot resolve 'statsd.example.internal': "
    ), proc.stderr
    assert proc.stderr.endswith(" did not answer within 0.15 s\n"), proc.stderr


def test_tcp_transport_sends_statsd_stream_bytes(env: Env, home: Path, sink: UdpSink) -> None:
    collector = TcpCollector()
    try:
        variables = enabled(
            sink,
            home,
            PYTHON_POPCONTEST_STATSD_PORT=str(collector.port),
            PYTHON_POPCONTEST_STATSD_PROTOCOL="tcp",
        )
        proc = env.run("-c", "import six", env=variables)
        assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "")
        assert collector.wait_for(1) == [
            b"python_popcon.library_used.six:1|c\npython_popcon.reports:1|c\n"
        ]
    finally:
        collector.close()


def test_tcp_server_that_never_reads(env: Env, home: Path, sink: UdpSink) -> None:
    collector = TcpCollector(read=False)
    try:
        variables = enabled(
            sink,
            home,
            PYTHON_POPCONTEST_STATSD_PORT=str(collector.port),
            PYTHON_POPCONTEST_STATSD_PROTOCOL="tcp",
        )
        start = time.perf_counter()
        proc = env.run("-c", "import six", env=variables)
        assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "")
        assert time.perf_counter() - start < 5
    finally:
        collector.close()


def test_tcp_does_not_count_the_reporters_statsd_import(
    env: Env, home: Path, sink: UdpSink
) -> None:
    collector = TcpCollector()
    try:
        variables = enabled(
            sink,
            home,
            PYTHON_POPCONTEST_STATSD_PORT=str(collector.port),
            PYTHON_POPCONTEST_STATSD_PROTOCOL="tcp",
        )
        assert env.run("-c", "pass", env=variables).returncode == 0
        assert collector.wait_for(1) == [b"python_popcon.reports:1|c\n"]
    finally:
        collector.close()


def run_with_read_only(env: Env, read_only: list[Path], variables: dict[str, str], code: str):  # type: ignore[no-untyped-def]
    """Run with some directories mounted read-only (a private mount namespace)."""
    mounts = " && ".join(
        f"mount --bind {shlex.quote(str(p))} {shlex.quote(str(p))} && "
        f"mount -o remount,ro,bind {shlex.quote(str(p))}"
        for p in read_only
    )
    script = f"{mounts} && exec {shlex.quote(str(env.python))} -c {shlex.quote(code)}"
    if os.geteuid() != 0:
        pytest.fail("read-only mounts need root (the CI runs as root)")
    return subprocess.run(
        # "unchanged": a chroot (the 3.14/3.15 runs) cannot make its root private.
        ["unshare", "-m", "--propagation", "unchanged", "sh", "-c", script],
        capture_output=True,
        text=True,
        env=variables,
    )


def test_read_only_site_packages_and_home(env: Env, sink: UdpSink, home: Path) -> None:
    variables = enabled(sink, home)
    proc = run_with_read_only(env, [env.site_packages, home], variables, "import six")
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "")
    assert libraries(sink.lines()) == {"six"}
    assert not (home / ".cache").exists()


@pytest.mark.parametrize("case", ["unset", "missing", "relative-xdg"])
def test_odd_home(env: Env, sink: UdpSink, tmp_path: Path, case: str) -> None:
    variables = enabled(sink, tmp_path)
    del variables["XDG_CACHE_HOME"]
    if case == "unset":
        del variables["HOME"]
    elif case == "missing":
        variables["HOME"] = str(tmp_path / "does-not-exist")
    else:
        variables["XDG_CACHE_HOME"] = "relative/cache"
    proc = env.run("-c", "import six", env=variables, cwd=tmp_path)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "")
    assert libraries(sink.lines()) == {"six"}
    assert not (tmp_path / "does-not-exist").exists(), "a missing home is never created"
    assert not (tmp_path / "relative").exists()


@pytest.mark.parametrize("protocol", ["udp", "tcp"])
def test_closed_port_costs_no_more_than_an_open_one(env: Env, home: Path, protocol: str) -> None:
    """A closed port adds at most a few ms over a reachable server with the same transport.

    (Compared with a reachable server, not with reporting off: TCP's fixed cost, importing
    the statsd client, is not a cost of the closed port.)
    """
    closed_port = free_port(socket.SOCK_DGRAM if protocol == "udp" else socket.SOCK_STREAM)
    server: TcpCollector | UdpSink = TcpCollector() if protocol == "tcp" else UdpSink()

    def variables(port: int) -> dict[str, str]:
        return base_environ(
            HOME=str(home),
            PYTHON_POPCONTEST_ENABLE="1",
            PYTHON_POPCONTEST_STATSD_HOST="127.0.0.1",
            PYTHON_POPCONTEST_STATSD_PORT=str(port),
            PYTHON_POPCONTEST_STATSD_PROTOCOL=protocol,
        )

    try:
        env.run("-c", "import six", env=variables(closed_port))  # warm the index
        closed, reachable = medians(
            env, [variables(closed_port), variables(server.port)], "import six"
        )
    finally:
        server.close()
    assert closed - reachable < 0.05, (closed, reachable)
