"""Load: 2,000 processes into the reference statsd daemon, 500 distributions in one
process, and the index of 2,000 installed distributions (time, memory, concurrent writers).

Sizes can be changed for a quick run: POPCON_LOAD_PROCESSES (2000), POPCON_LOAD_CONCURRENCY (4).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from reliability_support import (
    EXIT_TIMER_ENV,
    StatsdDaemon,
    exit_peaks,
    exit_times,
    install_exit_timer,
)

from support.distinfo import build_wheel
from support.envs import Env, base_environ, enabled, make_env
from support.sinks import UdpSink
from support.wire import PREFIX, check_wire

PROCESSES = int(os.environ.get("POPCON_LOAD_PROCESSES", "2000"))
CONCURRENCY = int(os.environ.get("POPCON_LOAD_CONCURRENCY", "4"))

# Process i imports a different mix, so that every counter has its own exact total.
MIX = {"six": 2, "attrs": 3, "idna": 5, "typing-extensions": 7}
MODULE = {"six": "six", "attrs": "attr", "idna": "idna", "typing-extensions": "typing_extensions"}
LOAD_CODE = (
    "import sys\n"
    "i = int(sys.argv[1])\n"
    + "".join(f"if i % {n} == 0: import {MODULE[name]}\n" for name, n in MIX.items())
    + "sys.exit(3)\n"
)


def expected_totals(processes: int) -> dict[str, int]:
    totals = {
        f"{PREFIX}{name}": sum(1 for i in range(processes) if i % n == 0) for name, n in MIX.items()
    }
    totals["python_popcon.reports"] = processes
    return totals


def udp_receive_errors() -> int | None:
    """Udp RcvbufErrors from /proc/net/snmp (datagrams dropped for a full receive buffer)."""
    try:
        lines = Path("/proc/net/snmp").read_text().splitlines()
    except OSError:
        return None
    rows = [line.split() for line in lines if line.startswith("Udp:")]
    if len(rows) < 2 or "RcvbufErrors" not in rows[0]:
        return None
    return int(rows[1][rows[0].index("RcvbufErrors")])


def test_processes_into_the_reference_daemon(
    relenv: Env, statsd: StatsdDaemon, home: Path, figures: Counter[str]
) -> None:
    """2,000 processes, 4 at a time: exactly 2,000 `reports` and every library total."""
    variables = base_environ(
        HOME=str(home),
        PYTHON_POPCONTEST_ENABLE="1",
        PYTHON_POPCONTEST_STATSD_HOST="127.0.0.1",
        PYTHON_POPCONTEST_STATSD_PORT=str(statsd.port),
    )
    off = {k: v for k, v in variables.items() if k != "PYTHON_POPCONTEST_ENABLE"}
    relenv.run("-c", "pass", env=off)
    subprocess.run(  # builds the index once, reports nothing (reporting off would build nothing)
        [
            str(relenv.python),
            "-c",
            "import popcon_site, six; popcon_site.stop_reporting()",
        ],
        env=variables,
        check=True,
    )
    errors_before = udp_receive_errors()
    failures: list[subprocess.CompletedProcess[str]] = []

    def one(i: int) -> None:
        proc = subprocess.run(
            [str(relenv.python), "-c", LOAD_CODE, str(i)],
            env=variables,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if (proc.returncode, proc.stdout, proc.stderr) != (3, "", ""):
            failures.append(proc)

    start = time.perf_counter()
    with ThreadPoolExecutor(CONCURRENCY) as pool:
        list(pool.map(one, range(PROCESSES)))
    elapsed = time.perf_counter() - start
    counters = statsd.settled()
    figures["processes sent"] += PROCESSES
    figures["processes counted"] += counters.get("python_popcon.reports", 0)
    figures[f"load: seconds for {PROCESSES} processes at {CONCURRENCY} at a time"] += round(elapsed)
    assert failures == [], failures[:3]
    drops = statsd.udp_drops()
    errors_after = udp_receive_errors()
    diagnosis = (
        f"daemon socket drops={drops}, Udp RcvbufErrors {errors_before}->{errors_after}, "
        f"packets_received={counters.get('statsd.packets_received')}"
    )
    got = {key: counters.get(key, 0) for key in expected_totals(PROCESSES)}
    assert got == expected_totals(PROCESSES), diagnosis
    assert counters.get("statsd.bad_lines_seen") == 0
    assert counters.get("statsd.packets_received") == PROCESSES, diagnosis
    assert drops in (0, None), diagnosis


# -- 500 distributions in one process ------------------------------------------------------


def synthetic_names(count: int) -> list[str]:
    """Distribution names from 1 to 200 characters (the longest popcon-site sends)."""
    lengths = [1, 2, 7, 30, 64, 100, 150, 199, 200]
    names = []
    for i in range(count):
        stem = f"d{i:03d}"
        length = max(lengths[i % len(lengths)], len(stem))
        names.append((stem + "-" + "x" * 200)[:length].rstrip("-"))
    return names


@pytest.fixture(scope="module")
def env500(tmp_path_factory: pytest.TempPathFactory, wheel: Path) -> tuple[Env, list[str]]:
    base = tmp_path_factory.mktemp("env500")
    wheels = base / "wheels"
    wheels.mkdir()
    names = synthetic_names(500)
    paths = [
        str(build_wheel(wheels, name, {f"m{i:03d}.py": "X = 1\n"})) for i, name in enumerate(names)
    ]
    env = make_env(base / "venv")
    env.install(str(wheel), *paths)
    install_exit_timer(env.site_packages)
    return env, names


ALL_500 = "import sys\n" + "".join(f"import m{i:03d}\n" for i in range(500)) + "sys.exit(3)\n"


@pytest.mark.parametrize("prefix", ["python_popcon.library_used", "p" * 150 + ".library_used"])
def test_500_distributions_in_one_process(
    env500: tuple[Env, list[str]], sink: UdpSink, home: Path, prefix: str, figures: Counter[str]
) -> None:
    env, names = env500
    proc = env.run("-c", ALL_500, env=enabled(sink, home, PYTHON_POPCONTEST_STATSD_PREFIX=prefix))
    assert (proc.returncode, proc.stdout, proc.stderr) == (3, "", "")
    packets = sink.drain()
    lines = check_wire(packets, prefix=prefix.encode() + b".")
    reports = prefix.rpartition(".")[0] + ".reports:1|c"
    assert lines == [*sorted(f"{prefix}.{name}:1|c" for name in names), reports]
    for first, second in zip(packets, packets[1:]):  # greedy: the next line did not fit
        assert len(first) + 1 + len(second.split(b"\n")[0]) >= 512
    figures[f"500 distributions, prefix of {len(prefix)} chars: datagrams"] = len(packets)


def test_500_distributions_into_the_reference_daemon(
    env500: tuple[Env, list[str]], statsd: StatsdDaemon, home: Path
) -> None:
    env, names = env500
    variables = base_environ(
        HOME=str(home),
        PYTHON_POPCONTEST_ENABLE="1",
        PYTHON_POPCONTEST_STATSD_HOST="127.0.0.1",
        PYTHON_POPCONTEST_STATSD_PORT=str(statsd.port),
    )
    for _ in range(3):
        proc = env.run("-c", ALL_500, env=variables)
        assert (proc.returncode, proc.stdout, proc.stderr) == (3, "", "")
    counters = statsd.wait_for("python_popcon.reports", 3)
    counters = statsd.settled()
    assert counters.get("statsd.bad_lines_seen") == 0
    assert counters.get("python_popcon.reports") == 3
    assert {name: counters.get(PREFIX + name) for name in names} == {name: 3 for name in names}


# -- the index of 2,000 installed distributions ---------------------------------------------


@pytest.fixture(scope="module")
def env2000(tmp_path_factory: pytest.TempPathFactory, wheel: Path) -> Env:
    base = tmp_path_factory.mktemp("env2000")
    wheels = base / "wheels"
    wheels.mkdir()
    paths = [
        str(
            build_wheel(
                wheels,
                f"synth-{i:04d}",
                {f"synth_{i:04d}/__init__.py": "X = 1\n", f"synth_{i:04d}/core.py": "Y = 2\n"},
            )
        )
        for i in range(2000)
    ]
    env = make_env(base / "venv")
    env.install(str(wheel), *paths)
    install_exit_timer(env.site_packages)
    return env


def test_index_build_on_2000_distributions(
    env2000: Env, sink: UdpSink, home: Path, tmp_path: Path, figures: Counter[str]
) -> None:
    """Bounded: the one process that builds it spends < 5 s and < 64 MiB more than a warm one."""
    timer = tmp_path / "times"
    variables = enabled(sink, home, **{EXIT_TIMER_ENV: str(timer)})
    code = "import synth_1234.core, sys; sys.exit(3)"
    for _ in range(6):  # the first builds the index, the others read it
        proc = env2000.run("-c", code, env=variables)
        assert (proc.returncode, proc.stdout, proc.stderr) == (3, "", "")
    times, peaks = exit_times(timer), exit_peaks(timer)
    build_seconds, warm_seconds = times[0], statistics.median(times[1:])
    (index,) = (home / ".cache" / "popcon-site").glob("*.idx")
    extra_kib = peaks[0] - statistics.median(peaks[1:])
    figures["index build, 2000 distributions: ms"] = round(build_seconds * 1000)
    figures["index build, 2000 distributions: extra peak RSS KiB"] = extra_kib
    figures["index of 2000 distributions: bytes"] = index.stat().st_size
    figures["exit hook with that index warm: ms (median)"] = round(warm_seconds * 1000)
    assert build_seconds < 5, times
    assert 0 <= extra_kib < 64 * 1024, peaks
    assert warm_seconds < 0.05, times
    packets = sink.drain()
    assert [check_wire([p]) for p in packets] == [
        ["python_popcon.library_used.synth-1234:1|c", "python_popcon.reports:1|c"]
    ] * 6


def read_index_continuously(path: Path, stop: threading.Event, seen: Counter[str]) -> None:
    """Every read sees no file, or a whole index: never a torn one."""
    while not stop.is_set():
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            seen["absent"] += 1
            continue
        text = data.decode("utf-8", "surrogateescape")
        lines = text.split("\n")
        whole = (
            text.startswith("popcon-site-index 1\n")
            and text.endswith("\n")
            and len(lines) >= 5
            and lines[3].isdigit()
            and (len(lines) - 1 - 4) % 2 == 0
        )
        seen["whole" if whole else "torn"] += 1


def test_concurrent_builders_never_corrupt_the_index(
    env2000: Env, sink: UdpSink, home: Path, tmp_path: Path, figures: Counter[str]
) -> None:
    """4 rounds of 4 processes building the same stale index at once, one round racing an
    install, while a reader checks every version of the file."""
    variables = enabled(sink, home)
    env2000.run("-c", "import synth_0001", env=variables)
    sink.drain()
    (index,) = (home / ".cache" / "popcon-site").glob("*.idx")
    extra = tmp_path / "extra-wheel"
    extra.mkdir()
    extra_wheel = build_wheel(extra, "late-arrival", {"late_arrival.py": "X = 1\n"})
    stop, seen = threading.Event(), Counter()
    reader = threading.Thread(target=read_index_continuously, args=(index, stop, seen))
    reader.start()
    processes = 0
    try:
        for round_number in range(4):
            os.utime(env2000.site_packages)  # every install does this: the index is now stale
            procs = [
                subprocess.Popen(
                    [str(env2000.python), "-c", "import synth_0002, sys; sys.exit(3)"],
                    env=variables,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                )
                for _ in range(4)
            ]
            if round_number == 2:
                env2000.install(str(extra_wheel))
            for proc in procs:
                stdout, stderr = proc.communicate(timeout=120)
                assert (proc.returncode, stdout, stderr) == (3, b"", b"")
            processes += len(procs)
    finally:
        stop.set()
        reader.join()
    assert seen["torn"] == 0 and seen["whole"] > 0, seen
    assert not [p for p in index.parent.iterdir() if p.suffix == ".tmp"]
    packets = sink.drain()
    assert [check_wire([p]) for p in packets] == [
        ["python_popcon.library_used.synth-0002:1|c", "python_popcon.reports:1|c"]
    ] * processes
    # The file left is a whole index of this directory; fresh or stale, never wrong.
    check = env2000.run(
        "-c",
        "import sys; from popcon_site import _index\n"
        f"site = {str(env2000.site_packages)!r}\n"
        f"text = open({str(index)!r}).read()\n"
        "parsed = _index.parse(text, site, text.split('\\n')[2])\n"
        "assert parsed is not None\n"
        "fresh = _index.parse(text, site, _index.stamp_of(site)) is not None\n"
        "assert parsed.owner_of(['synth_0002', 'x.py']) == 'synth-0002'\n"
        "print(fresh, parsed.owner_of(['late_arrival.py']))\n",
        env=base_environ(),
    )
    assert check.returncode == 0, check
    assert check.stdout.split() in (["True", "late-arrival"], ["False", "None"]), check.stdout
    figures["concurrent index reads checked (none torn)"] += seen["whole"] + seen["absent"]
