"""Loss-free rate of real report datagrams into `popcon-site serve` and statsd_exporter.

Not a test: it prints a table and writes benchmarks/results/serve-scale.txt.  Run it
with an interpreter where popcon-site is installed (e.g. .nox/tests-3-11/bin/python):

    python benchmarks/serve_scale.py [--exporter PATH] [--seconds 2]

Each "process" is the datagram a real process that imported requests sends
(counter_lines and datagrams, the client's own functions: 5 libraries and reports,
one 229-byte datagram).  For each server and UDP receive buffer, in one run, the
rate climbs a ladder; each step sends rate x seconds reports, paced in 1 ms slices,
then waits until the server's count stops moving and compares it with what was
sent.  The loss-free rate is the highest step with nothing lost.  The sender, the
server and anything else on the machine share its cores: the figures are a floor.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from popcon_site._report import counter_lines, datagrams

ROOT = Path(__file__).resolve().parents[1]
MAPPING = ROOT / "deploy" / "statsd-exporter" / "mapping.yml"
RATES = [1_000, 2_000, 5_000, 10_000, 20_000, 40_000, 80_000]
LARGE_BUFFER = 4 * 1024 * 1024  # net.core.rmem_max here: the most SO_RCVBUF gets unprivileged
REQUESTS = ["certifi", "charset-normalizer", "idna", "requests", "urllib3"]


def free_port() -> int:
    while True:
        with socket.socket() as tcp:
            tcp.bind(("127.0.0.1", 0))
            port = int(tcp.getsockname()[1])
        try:
            with socket.socket(type=socket.SOCK_DGRAM) as udp:
                udp.bind(("127.0.0.1", port))
        except OSError:
            continue
        return port


def wait_http(url: str) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


class Server:
    def __init__(self, kind: str, buffer: int, work: Path, exporter: str) -> None:
        self.kind, self.buffer = kind, buffer
        self.port, self.http = free_port(), free_port()
        where = f"127.0.0.1:{self.port}"
        if kind == "serve":
            self.db = work / f"serve-{buffer}.db"
            argv = [sys.executable, "-m", "popcon_site", "serve", "--db", str(self.db)]
            argv += ["--statsd", where, "--http", f"127.0.0.1:{self.http}"]
            argv += [f"--rcvbuf={buffer}"] if buffer else []
        else:
            argv = [exporter, f"--statsd.mapping-config={MAPPING}"]
            argv += [f"--statsd.listen-udp={where}", f"--statsd.listen-tcp={where}"]
            argv += [f"--web.listen-address=127.0.0.1:{self.http}"]
            argv += [f"--statsd.read-buffer={buffer}"] if buffer else []
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_http(f"http://127.0.0.1:{self.http}/metrics")

    def count(self) -> int:
        """Reports counted so far (committed, for serve)."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http}/metrics", timeout=10) as r:
            text = r.read().decode()
        for line in text.splitlines():
            if line.startswith("python_popcon_reports "):
                return int(float(line.split()[1]))
        return 0

    def settle(self) -> int:
        """The count once it has not moved for 1.5 s (serve commits every 0.5 s)."""
        last, since = self.count(), time.monotonic()
        while time.monotonic() - since < 1.5:
            time.sleep(0.25)
            now = self.count()
            if now != last:
                last, since = now, time.monotonic()
        return last

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def blast(port: int, payload: bytes, rate: int, seconds: float) -> tuple[int, float]:
    """Send rate x seconds datagrams, paced per millisecond; (sent, achieved rate)."""
    total = int(rate * seconds)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    target = ("127.0.0.1", port)
    start = time.perf_counter()
    sent = 0
    while sent < total:
        due = min(total, int((time.perf_counter() - start) * rate) + 1)
        while sent < due:
            try:
                sock.sendto(payload, target)
            except BlockingIOError:
                continue
            sent += 1
        ahead = sent / rate - (time.perf_counter() - start)
        if ahead > 0:
            time.sleep(ahead)
    elapsed = time.perf_counter() - start
    sock.close()
    return sent, sent / elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--exporter",
        default=os.environ.get("POPCON_STATSD_EXPORTER")
        or shutil.which("statsd_exporter")
        or "/work/shared/statsd_exporter/bin/statsd_exporter",
    )
    parser.add_argument("--seconds", type=float, default=2.0)
    args = parser.parse_args()
    lines = counter_lines("python_popcon.library_used", "python_popcon.reports", REQUESTS)
    (payload,) = datagrams(lines)
    rows = [
        f"Report datagram: {len(payload)} bytes, {len(lines)} lines; {args.seconds:g} s per step; "
        f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at start",
        f"{'server':<16} {'SO_RCVBUF':>10} {'rate/s':>8} {'sent/s':>8} {'sent':>8} "
        f"{'counted':>8} {'lost':>7}",
    ]
    print("\n".join(rows), flush=True)
    best: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ("serve", "statsd_exporter"):
            for buffer in (0, LARGE_BUFFER):
                server = Server(kind, buffer, Path(tmp), args.exporter)
                label = f"{kind} {'default' if not buffer else f'{buffer >> 20} MiB'}"
                try:
                    counted_before = 0
                    for rate in RATES:
                        sent, achieved = blast(server.port, payload, rate, args.seconds)
                        counted = server.settle() - counted_before
                        counted_before += counted
                        row = (
                            f"{kind:<16} {buffer or 'default':>10} {rate:>8} "
                            f"{achieved:>8.0f} {sent:>8} {counted:>8} {sent - counted:>7}"
                        )
                        rows.append(row)
                        print(row, flush=True)
                        if counted != sent:
                            break
                        best[label] = rate
                finally:
                    server.stop()
    rows.append("")
    rows += [f"loss-free up to: {label}: {rate:,} reports/s" for label, rate in best.items()]
    print("\n".join(rows[-len(best) - 1 :]))
    out = ROOT / "benchmarks" / "results" / "serve-scale.txt"
    out.write_text("\n".join(rows) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
