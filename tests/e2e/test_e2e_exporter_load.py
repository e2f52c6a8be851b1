"""Capacity of one real statsd_exporter: popcon-site datagrams at rising rates, on 127.0.0.1.

Each simulated process sends what popcon-site sends for a process that imported 12
distributions (``_report.counter_lines`` and ``_report.datagrams``: one 494-byte
datagram).  The rate doubles each step (2 s each) until a step loses datagrams, then
one step between the last clean rate and the first lossy one refines the answer.
This runs with the kernel's default receive buffer and with
``--statsd.read-buffer`` at the documented 4 MiB (deploy/README.md).

Every datagram is accounted for: sent = read by the exporter
(``statsd_exporter_udp_packets_total``) + dropped by the kernel (the socket's
``drops`` in /proc/net/udp), and the exporter's counters grow by exactly 12
libraries and one report per datagram it read and did not drop from its own
queue (``statsd_exporter_udp_packet_drops_total``): loss is always of whole
datagrams, never a partial or misparsed one.  The table it prints is the source
of the numbers in deploy/README.md; the machine is shared, so they vary.
"""

from __future__ import annotations

import os
import random
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from servers import DEPLOY, StatsdExporter, need, wait_for

import popcon_site
from popcon_site import _report
from support.e2e import reporting_environ, run_processes
from support.envs import Env

LIBRARIES_PER_PROCESS = 12
POOL = [f"lib-{i:03d}" for i in range(200)]  # distinct libraries of the site
FIRST_RATE = 1000  # processes per second
STEP_SECONDS = 2.0
MAX_STEPS = 8
LARGE_BUFFER = 4 * 1024 * 1024  # the documented --statsd.read-buffer


def process_datagrams(count: int) -> list[bytes]:
    """What ``count`` processes send, each importing 12 of the site's 200 libraries."""
    rng = random.Random(11)
    prefix = popcon_site.DEFAULT_PREFIX
    found = []
    for _ in range(count):
        lines = _report.counter_lines(
            prefix, _report.reports_name_for(prefix), rng.sample(POOL, LIBRARIES_PER_PROCESS)
        )
        (payload,) = _report.datagrams(lines)  # one datagram per process
        found.append(payload)
    return found


DATAGRAMS = process_datagrams(4000)


def kernel_drops(port: int) -> int:
    """Datagrams the kernel dropped for the UDP socket bound to 127.0.0.1:port."""
    wanted = f"0100007F:{port:04X}"
    for line in Path("/proc/net/udp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == wanted:
            return int(fields[-1])
    raise AssertionError(f"no UDP socket on 127.0.0.1:{port}")


def receive_buffer(port: int) -> int:
    """The socket's receive buffer in bytes, as the kernel set it (``ss -m``: rb)."""
    out = subprocess.run(
        [need("ss"), "-u", "-l", "-n", "-m", "-H", f"sport = :{port}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    (size,) = [int(part[2:]) for part in out.replace(",", " ").split() if part.startswith("rb")]
    return size


@dataclass
class Counts:
    read: int  # statsd_exporter_udp_packets_total
    queue_drops: int  # statsd_exporter_udp_packet_drops_total
    kernel_drops: int
    reports: float
    libraries: float

    def __sub__(self, other: Counts) -> Counts:
        return Counts(
            self.read - other.read,
            self.queue_drops - other.queue_drops,
            self.kernel_drops - other.kernel_drops,
            self.reports - other.reports,
            self.libraries - other.libraries,
        )


def counts(exporter: StatsdExporter) -> Counts:
    samples = exporter.samples()

    def total(name: str) -> float:
        return sum(value for (metric, _), value in samples.items() if metric == name)

    return Counts(
        int(total("statsd_exporter_udp_packets_total")),
        int(total("statsd_exporter_udp_packet_drops_total")),
        kernel_drops(exporter.statsd_port),
        total("python_popcon_reports"),
        total("python_popcon_library_used"),
    )


def send(port: int, rate: float | None, seconds: float) -> tuple[int, float]:
    """Send at ``rate`` datagrams/s (paced per ms; None: as fast as it can) for ``seconds``.

    Returns (datagrams sent, achieved rate).
    """
    total = int(rate * seconds) if rate else None
    address = ("127.0.0.1", port)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        start = time.perf_counter()
        sent = 0
        while True:
            elapsed = time.perf_counter() - start
            if (sent >= total) if total is not None else (elapsed >= seconds):
                break
            due = sent + 1000 if total is None else min(total, int(elapsed * rate) + 1)
            while sent < due:
                sock.sendto(DATAGRAMS[sent % len(DATAGRAMS)], address)
                sent += 1
            if total is not None:
                time.sleep(0.0005)
        elapsed = time.perf_counter() - start
    return sent, sent / elapsed


@dataclass
class Step:
    rate: int
    achieved: float
    sent: int
    delta: Counts

    @property
    def lost(self) -> int:
        return self.sent - (self.delta.read - self.delta.queue_drops)


def run_step(exporter: StatsdExporter, rate: int) -> Step:
    before = counts(exporter)
    sent, achieved = send(exporter.statsd_port, rate, STEP_SECONDS)

    def settled() -> Counts | None:
        delta = counts(exporter) - before
        accounted = delta.read + delta.kernel_drops == sent
        processed = delta.reports == delta.read - delta.queue_drops
        return delta if accounted and processed else None

    delta = wait_for(settled, f"every datagram of the {rate}/s step accounted for", 20, exporter)
    # Whole datagrams only: 12 libraries per report counted, nothing else.
    assert delta.libraries == LIBRARIES_PER_PROCESS * delta.reports
    return Step(rate, achieved, sent, delta)


def sweep(exporter: StatsdExporter) -> list[Step]:
    """Doubling rates until one loses datagrams, then one step between the last two."""
    steps: list[Step] = []
    rate = FIRST_RATE
    while len(steps) < MAX_STEPS - 1:
        step = run_step(exporter, rate)
        steps.append(step)
        if step.lost or step.achieved < 0.95 * rate:  # lossy, or the sender's limit
            break
        rate *= 2
    clean = [s.rate for s in steps if not s.lost]
    if steps[-1].lost and clean:
        steps.append(run_step(exporter, round((clean[-1] * steps[-1].rate) ** 0.5)))
    return steps


@pytest.fixture
def exporter(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StatsdExporter]:
    buffer = int(request.param)
    extra = (f"--statsd.read-buffer={buffer}",) if buffer else ()
    server = StatsdExporter(tmp_path, DEPLOY / "statsd-exporter" / "mapping.yml", extra)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def rmem_max() -> int:
    return int(Path("/proc/sys/net/core/rmem_max").read_text())


def table(rows: list[tuple[str, str, str, str]]) -> str:
    lines = ["| receive buffer (rb) | processes/s sent | lost | loss-free |", "|---|---|---|---|"]
    return "\n".join(lines + [f"| {' | '.join(row)} |" for row in rows])


@pytest.mark.parametrize(
    "exporter",
    [0, min(LARGE_BUFFER, rmem_max())],
    ids=["default-buffer", "read-buffer"],
    indirect=True,
)
def test_capacity_of_one_exporter(
    exporter: StatsdExporter, capsys: pytest.CaptureFixture[str]
) -> None:
    buffer = receive_buffer(exporter.statsd_port)
    steps = sweep(exporter)
    assert not steps[0].lost, steps[0]  # 1,000 processes/s: 50 times what this node makes
    best = max(s.rate for s in steps if not s.lost)
    rows = [
        (
            f"{buffer:,} B",
            f"{s.rate:,} (achieved {s.achieved:,.0f})",
            f"{s.lost:,} of {s.sent:,} (kernel {s.delta.kernel_drops:,}, "
            f"queue {s.delta.queue_drops:,})",
            "yes" if not s.lost else "no",
        )
        for s in steps
    ]
    with capsys.disabled():
        print(f"\nstatsd_exporter capacity, highest loss-free rate {best:,} processes/s")
        print(table(rows))
    assert exporter.problems() == []


def test_what_the_client_side_generates(
    e2e_env: Env, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Real reporting processes per second on this machine, and one Python sender's limit."""
    server = StatsdExporter(tmp_path, DEPLOY / "statsd-exporter" / "mapping.yml")
    server.start()
    try:
        processes = 40
        start = time.perf_counter()
        environ = reporting_environ(tmp_path, server.statsd_port)
        run_processes(e2e_env, ["import yaml, msgpack"] * processes, environ)
        real_rate = processes / (time.perf_counter() - start)
        wait_for(lambda: counts(server).reports == processes, "every process counted", 10, server)
        assert counts(server).libraries == 2 * processes
    finally:
        server.stop()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sink:
        sink.bind(("127.0.0.1", 0))  # bound, never read: the kernel drops what overflows
        _, rate = send(sink.getsockname()[1], None, 1.0)
    with capsys.disabled():
        print(
            f"\nclient side: {real_rate:,.0f} real reporting processes/s "
            f"(4 at a time, {os.cpu_count()} cores); one Python sender: {rate:,.0f} datagrams/s"
        )
