"""Helpers of the reliability suite: exit timing, the statsd daemon, network namespaces.

Everything stays on this machine: servers listen on 127.0.0.1 / ::1, and every
simulated network (a resolver that never answers, NXDOMAIN, no route, an
IPv6-only host) lives in a network namespace that the test creates and that
has nothing but its own loopback interface.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from support.ports import free_port

HERE = Path(__file__).resolve().parent
DRIVER = HERE / "netns_driver.py"

# -- exit-delay instrumentation --------------------------------------------------------

EXIT_TIMER_ENV = "POPCON_TEST_EXIT_TIMER"
_EXIT_TIMER_MODULE = """\
\"\"\"Test instrumentation: how long the exit hooks registered at start-up take.

``00-...pth`` (before popcon_site.pth) registers ``done`` first, so it runs
last at exit; ``zz-...pth`` (after it) registers ``mark``, which runs before
popcon-site's hook.  The difference is popcon-site's exit time, free of the
start-up noise of a loaded machine.  Does nothing unless the variable is set.
\"\"\"
import atexit, os, time

_path = os.environ.get("POPCON_TEST_EXIT_TIMER")
_marks = []


def _mark():
    _marks.append(time.perf_counter())


def _peak_kib():
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return -1


def _done():
    if _marks:
        took = time.perf_counter() - _marks[0]
        with open(_path, "a") as stream:
            stream.write("%d %.6f %d\\n" % (os.getpid(), took, _peak_kib()))


_armed = set()


def first():  # site may process the same directory twice (lib64 -> lib): register once
    if _path and "first" not in _armed:
        _armed.add("first")
        atexit.register(_done)


def last():
    if _path and "last" not in _armed:
        _armed.add("last")
        atexit.register(_mark)
"""


def install_exit_timer(site_packages: Path) -> None:
    """Measure popcon-site's exit hook in every process of this environment (see above)."""
    (site_packages / "popcon_exit_timer.py").write_text(_EXIT_TIMER_MODULE)
    (site_packages / "00-popcon-exit-timer.pth").write_text(
        "import popcon_exit_timer; popcon_exit_timer.first()\n"
    )
    (site_packages / "zz-popcon-exit-timer.pth").write_text(
        "import popcon_exit_timer; popcon_exit_timer.last()\n"
    )


def exit_times(path: Path) -> list[float]:
    """Seconds spent in exit hooks per process, in the order the processes ended."""
    if not path.exists():
        return []
    return [float(line.split()[1]) for line in path.read_text().splitlines() if line.strip()]


def exit_peaks(path: Path) -> list[int]:
    """Peak resident memory (VmHWM, KiB) of each process, read after the exit hooks ran."""
    if not path.exists():
        return []
    return [int(line.split()[2]) for line in path.read_text().splitlines() if line.strip()]


# -- the reference statsd daemon (npm statsd@0.9.0) --------------------------------------

STATSD_VERSION = "0.9.0"
_COUNTER = re.compile(r"^\s*(?:'((?:[^'\\]|\\.)*)'|([A-Za-z_$][\w$]*)): (\d+),?$")


def install_statsd(directory: Path) -> Path:
    """``npm install statsd@0.9.0`` into ``directory`` once; returns its stats.js."""
    stats_js = directory / "node_modules" / "statsd" / "stats.js"
    if stats_js.exists():
        return stats_js
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        raise RuntimeError("node and npm are needed for the reference statsd daemon")
    directory.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [npm, "install", "--no-audit", "--no-fund", "--omit=optional", f"statsd@{STATSD_VERSION}"],
        cwd=directory,
        check=True,
        capture_output=True,
        timeout=300,
    )
    return stats_js


class StatsdDaemon:
    """The reference statsd daemon on 127.0.0.1, flushing never (counters accumulate)."""

    def __init__(self, stats_js: Path, workdir: Path) -> None:
        self.port = free_port(socket.SOCK_DGRAM)
        self.mgmt_port = free_port(socket.SOCK_STREAM)
        config = workdir / "statsd-config.js"
        config.write_text(
            f"{{ address: '127.0.0.1', port: {self.port}, mgmt_address: '127.0.0.1',"
            f" mgmt_port: {self.mgmt_port}, flushInterval: 3600000,"
            " backends: ['./backends/console'] }\n"
        )
        self.log = workdir / "statsd.log"
        self._log_file = self.log.open("wb")
        self.process = subprocess.Popen(
            ["node", str(stats_js), str(config)],
            cwd=stats_js.parent,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 20
        while True:
            with contextlib.suppress(OSError):
                if self.command("health").strip() == "health: up":
                    break
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"statsd did not start: {self.log.read_text()[-2000:]}")
            time.sleep(0.05)

    def command(self, name: str, timeout: float = 5) -> str:
        with socket.create_connection(("127.0.0.1", self.mgmt_port), timeout=timeout) as conn:
            conn.sendall(name.encode() + b"\n")
            data = b""
            while True:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                data += chunk
                if name == "health" and data.endswith(b"\n"):
                    break
                if data.endswith(b"END\n\n"):
                    break
        return data.decode()

    def counters(self) -> dict[str, int]:
        found = {}
        for line in self.command("counters").splitlines():
            match = _COUNTER.match(line)
            if match:
                key = match.group(1) if match.group(1) is not None else match.group(2)
                found[key.replace("\\'", "'")] = int(match.group(3))
        return found

    def wait_for(self, key: str, value: int, timeout: float = 10) -> dict[str, int]:
        """Counters once ``key`` reaches ``value`` (or the timeout passes): UDP is async."""
        deadline = time.monotonic() + timeout
        while True:
            counters = self.counters()
            if counters.get(key, 0) >= value or time.monotonic() > deadline:
                return counters
            time.sleep(0.05)

    def settled(self, quiet: float = 0.5, timeout: float = 20) -> dict[str, int]:
        """Counters once ``statsd.packets_received`` stops moving for ``quiet`` seconds."""
        deadline = time.monotonic() + timeout
        last = self.counters()
        stable_since = time.monotonic()
        while time.monotonic() < deadline:
            time.sleep(0.1)
            now = self.counters()
            if now.get("statsd.packets_received") != last.get("statsd.packets_received"):
                last, stable_since = now, time.monotonic()
            elif time.monotonic() - stable_since >= quiet:
                return now
        return last

    def udp_drops(self) -> int | None:
        """The kernel's drop count for the daemon's UDP socket (receive buffer overflow)."""
        return udp_socket_drops(self.port)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log_file.close()


def udp_socket_drops(port: int) -> int | None:
    try:
        lines = Path("/proc/net/udp").read_text().splitlines()[1:]
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if len(fields) >= 13 and int(fields[1].rpartition(":")[2], 16) == port:
            return int(fields[12])
    return None


# -- network namespaces --------------------------------------------------------------


def netns_available() -> str | None:
    """None when ``unshare --net --mount`` works here, else why not."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return "unshare and ip are needed"
    probe = subprocess.run(
        [
            "unshare",
            "--net",
            "--mount",
            "--propagation",
            "private",
            "ip",
            "link",
            "set",
            "lo",
            "up",
        ],
        capture_output=True,
        text=True,
    )
    if probe.returncode != 0:
        return f"unshare --net --mount failed: {probe.stderr.strip()}"
    return None


def encode_env(environ: Mapping[str, str | bytes]) -> dict[str, str]:
    """Environment for the driver; bytes survive JSON as hex (values need not be UTF-8)."""
    out = {}
    for key, value in environ.items():
        raw = value if isinstance(value, bytes) else os.fsencode(value)
        out[key] = raw.hex()
    return out


def run_in_netns(spec: dict, workdir: Path, timeout: float = 300) -> dict:
    """Run ``netns_driver.py`` in a new network + mount namespace (loopback only).

    The driver brings ``lo`` up, optionally removes its IPv4 address, points
    ``/etc/resolv.conf`` at its own fake DNS server and runs the jobs; see the
    driver for the spec.  Returns the driver's JSON result.
    """
    spec_file = workdir / f"netns-spec-{time.monotonic_ns()}.json"
    result_file = spec_file.with_suffix(".result.json")
    spec = dict(spec, workdir=str(workdir), result=str(result_file))
    spec_file.write_text(json.dumps(spec))
    proc = subprocess.run(
        [
            "unshare",
            "--net",
            "--mount",
            "--propagation",
            "private",
            sys.executable,
            str(DRIVER),
            str(spec_file),
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, f"netns driver failed:\n{proc.stdout}\n{proc.stderr}"
    return json.loads(result_file.read_text())
