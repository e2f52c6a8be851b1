"""Real servers for the end-to-end tests, on 127.0.0.1 only, started and stopped by PID.

Each server is a child process of the test run: started with its own log file,
polled until it is really ready (not slept on), and stopped with SIGTERM (then
SIGKILL) to its PID when the fixture that started it ends.  A server that is
missing or cannot start fails the test with its log.  The one exception is
statsd_exporter, which no package manager here ships: without
$POPCON_STATSD_EXPORTER its tests are skipped, and under CI=true they fail.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from support.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"


def need(binary: str) -> str:
    """The path of a server binary; fails (never skips) when it is not installed."""
    found = shutil.which(binary) or next(
        (p for p in (f"/usr/sbin/{binary}", f"/usr/bin/{binary}") if os.access(p, os.X_OK)), None
    )
    if not found:
        pytest.fail(f"{binary} is not installed: run `nox -s e2e`, which installs it")
    return found


def bound(proto: str, port: int) -> bool:
    """True when something listens on 127.0.0.1:port (proto "tcp" or "udp"), per /proc/net."""
    wanted = f"0100007F:{port:04X}"
    try:
        lines = Path(f"/proc/net/{proto}").read_text().splitlines()[1:]
    except OSError:
        return False
    for line in lines:
        fields = line.split()
        if fields[1] == wanted and (proto == "udp" or fields[3] == "0A"):
            return True
    return False


def wait_for(
    predicate: Callable[[], Any], what: str, timeout: float, server: Server | None = None
) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail with the server log if not."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        if server is not None and server.proc is not None and server.proc.poll() is not None:
            pytest.fail(
                f"{server.name} exited with {server.proc.returncode} while waiting for {what}:\n"
                + server.log_tail()
            )
        try:
            result = predicate()
        except Exception as exc:
            last_error, result = exc, None
        if result:
            return result
        if time.monotonic() > deadline:
            log = server.log_tail() if server is not None else ""
            pytest.fail(f"timed out after {timeout} s waiting for {what} ({last_error!r})\n{log}")
        time.sleep(0.1)


class Server:
    """One server process: started by the test, stopped by PID."""

    def __init__(self, name: str, argv: list[str], workdir: Path) -> None:
        self.name = name
        self.argv = argv
        self.workdir = workdir
        self.log_path = workdir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        text = "\n".join(self.log_text().splitlines()[-lines:])
        return f"--- last lines of {self.log_path} ---\n{text}"

    def stop(self) -> None:
        """SIGTERM to the PID, then SIGKILL if it is still there after 10 s."""
        if self.proc is None or self.proc.poll() is not None:
            return
        os.kill(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)


# -- the reference statsd daemon (npm `statsd`, the original Etsy daemon) -----------------


def statsd_daemon_script() -> Path:
    """stats.js of the npm package, installed by `nox -s e2e` (POPCON_E2E_NODE_PREFIX)."""
    prefix = os.environ.get("POPCON_E2E_NODE_PREFIX", str(ROOT / ".nox" / "e2e-node"))
    script = Path(prefix) / "node_modules" / "statsd" / "stats.js"
    if not script.is_file():
        pytest.fail(f"{script} not found: run `nox -s e2e`, which installs statsd@0.9.0 from npm")
    return script


class StatsdDaemon(Server):
    """The Etsy statsd daemon with a UDP and a TCP server and its management interface.

    The flush interval is an hour, so its counters keep every count of a test.
    """

    def __init__(self, workdir: Path) -> None:
        self.udp_port = free_port(socket.SOCK_DGRAM)
        self.tcp_port = free_port()
        self.mgmt_port = free_port()
        config = workdir / "statsd-config.js"
        config.write_text(
            "{\n"
            "  servers: [\n"
            f'    {{ server: "./servers/udp", address: "127.0.0.1", port: {self.udp_port} }},\n'
            f'    {{ server: "./servers/tcp", address: "127.0.0.1", port: {self.tcp_port} }}\n'
            "  ],\n"
            f'  mgmt_address: "127.0.0.1", mgmt_port: {self.mgmt_port},\n'
            '  flushInterval: 3600000, backends: ["./backends/console"]\n'
            "}\n"
        )
        script = statsd_daemon_script()
        super().__init__("statsd", [need("node"), str(script), str(config)], workdir)
        # stats.js loads its servers and backends relative to its own directory.
        self.workdir = workdir

    def start(self) -> None:
        super().start()
        wait_for(lambda: self.mgmt("health").strip() == "health: up", "statsd health", 20, self)
        wait_for(lambda: bound("udp", self.udp_port), "statsd UDP server", 10, self)
        wait_for(lambda: bound("tcp", self.tcp_port), "statsd TCP server", 10, self)

    def mgmt(self, command: str) -> str:
        """One command on the management interface; returns the full answer."""
        with socket.create_connection(("127.0.0.1", self.mgmt_port), timeout=5) as conn:
            conn.sendall(command.encode("ascii") + b"\n")
            answer = b""
            while True:
                if command == "health" and answer.endswith(b"\n"):
                    break
                if answer.endswith(b"END\n\n"):
                    break
                chunk = conn.recv(65536)
                if not chunk:
                    break
                answer += chunk
        return answer.decode("ascii")

    def counters(self) -> dict[str, int]:
        return parse_inspect(self.mgmt("counters"))

    def gauges(self) -> dict[str, int]:
        return parse_inspect(self.mgmt("gauges"))


def parse_inspect(text: str) -> dict[str, int]:
    """The daemon prints its counters with Node's util.inspect: ``{ 'a.b': 1, c: 2 }``."""
    body = text.rsplit("END", 1)[0]
    return {
        key or bare: int(value)
        for key, bare, value in re.findall(r"(?:'([^']+)'|([A-Za-z_$][\w$]*)): (-?\d+)", body)
    }


# -- statsd_exporter (the Prometheus project's; not packaged by Debian, PyPI or npm) ------

EXPORTER_VARIABLE = "POPCON_STATSD_EXPORTER"


def statsd_exporter_binary() -> str:
    """$POPCON_STATSD_EXPORTER; unset: the test is skipped, except under CI=true (fails)."""
    path = os.environ.get(EXPORTER_VARIABLE, "")
    if not path:
        reason = (
            f"{EXPORTER_VARIABLE} is not set: point it at a statsd_exporter 0.30.0 binary "
            "(a release from github.com/prometheus/statsd_exporter, or build one from its "
            "source tarball with ../shared/statsd_exporter/build.sh, see its README)"
        )
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    if not os.access(path, os.X_OK):
        pytest.fail(f"{EXPORTER_VARIABLE}={path} is not an executable file")
    return path


class StatsdExporter(Server):
    """statsd_exporter with a mapping file, UDP and TCP on one loopback port, as shipped."""

    def __init__(
        self, workdir: Path, mapping: Path, extra_args: tuple[str, ...] = (), name: str = ""
    ) -> None:
        self.statsd_port = free_port(socket.SOCK_DGRAM)
        self.http_port = free_port()
        argv = [
            statsd_exporter_binary(),
            f"--statsd.mapping-config={mapping}",
            f"--statsd.listen-udp=127.0.0.1:{self.statsd_port}",
            f"--statsd.listen-tcp=127.0.0.1:{self.statsd_port}",
            f"--web.listen-address=127.0.0.1:{self.http_port}",
            *extra_args,
        ]
        super().__init__(name or "statsd_exporter", argv, workdir)

    def start(self) -> None:
        super().start()
        ready = 'msg="Accepting StatsD Traffic"'
        wait_for(lambda: ready in self.log_text(), "statsd_exporter to listen", 20, self)
        wait_for(lambda: bound("udp", self.statsd_port), "statsd_exporter's UDP socket", 10, self)
        wait_for(lambda: http_get(self.metrics_url) is not None, "statsd_exporter /metrics", 20)

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/metrics"

    def problems(self) -> list[str]:
        """Every warning or error it logged (logfmt ``level=WARN`` / ``level=ERROR``)."""
        return [
            line
            for line in self.log_text().splitlines()
            if re.search(r"\blevel=(WARN|ERROR)\b", line, re.I)
        ]

    def samples(self, prefix: str = "") -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        """{(metric, labels): value} of what /metrics exposes now, for names with ``prefix``."""
        return parse_exposition(http_get(self.metrics_url, fail=True) or "", prefix)


def parse_exposition(
    text: str, prefix: str = ""
) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Samples of the Prometheus text format (label values here never hold quotes or commas)."""
    found = {}
    for match in re.finditer(r"^([a-zA-Z_:][\w:]*)(?:\{([^}]*)\})? (\S+)$", text, re.M):
        name, labels, value = match.groups()
        if name.startswith(prefix):
            pairs = re.findall(r'(\w+)="([^"]*)"', labels or "")
            found[(name, frozenset(pairs))] = float(value)
    return found


# -- collectd (statsd plugin -> write_prometheus) ------------------------------------------


class Collectd(Server):
    """collectd with the shipped deploy/vm/collectd.conf, its ports moved to free ones."""

    def __init__(self, workdir: Path) -> None:
        self.statsd_port = free_port(socket.SOCK_DGRAM)
        self.http_port = free_port()
        shipped = (DEPLOY / "vm" / "collectd.conf").read_text()
        text = substitute(
            shipped,
            {
                'Port "9125"': f'Port "{self.statsd_port}"',
                'Port "9103"': f'Port "{self.http_port}"',
                "Interval 10": "Interval 1",
            },
        )
        # Paths the Debian defaults put under /var; the test keeps everything in workdir.
        text = f'BaseDir "{workdir}"\nPIDFile "{workdir}/collectd.pid"\n' + text
        self.config = workdir / "collectd.conf"
        self.config.write_text(text)
        super().__init__("collectd", [need("collectd"), "-f", "-C", str(self.config)], workdir)

    def start(self) -> None:
        super().start()
        listening = f"statsd plugin: Listening on [127.0.0.1]:{self.statsd_port}."
        wait_for(lambda: listening in self.log_text(), "collectd's statsd socket", 20, self)
        wait_for(lambda: bound("tcp", self.http_port), "collectd's write_prometheus", 20, self)
        wait_for(lambda: http_get(self.metrics_url) is not None, "collectd /metrics", 20, self)

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/metrics"

    def statsd_series(self) -> list[tuple[str, str, float]]:
        """(type, statsd name, value) of every statsd series collectd exposes now."""
        text = http_get(self.metrics_url) or ""
        found = []
        for match in re.finditer(
            r'^collectd_statsd_(derive_total|gauge)\{statsd="([^"]*)"[^}]*\} (\S+)', text, re.M
        ):
            kind = "counter" if match.group(1) == "derive_total" else "gauge"
            found.append((kind, match.group(2), float(match.group(3))))
        return found


def substitute(text: str, replacements: dict[str, str]) -> str:
    """Replace each key exactly once: a shipped file that changed shape fails loudly."""
    for old, new in replacements.items():
        count = text.count(old)
        assert count == 1, f"expected {old!r} once in the shipped file, found it {count} times"
        text = text.replace(old, new)
    return text


# -- Debian sid's servers (Prometheus 3, VictoriaMetrics 1.145), from the chroot ----------

SID_ROOT = Path(os.environ.get("POPCON_SID_ROOT", "/var/tmp/popcon-sid"))


def sid_binary(name: str) -> str:
    """A server binary of the sid chroot (`nox -s tests_sid` or `e2e` makes it); these
    Go binaries need only the host's libc, so they run outside the chroot.  Missing:
    the test is skipped, except under CI=true (fails)."""
    path = SID_ROOT / "usr" / "bin" / name
    if not os.access(path, os.X_OK):
        reason = f"{path} is missing: nox -s e2e installs it in the Debian sid chroot"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return str(path)


# -- Prometheus ----------------------------------------------------------------------------


def default_args() -> list[str]:
    """ARGS of the shipped /etc/default/prometheus, minus the listen address the test sets."""
    text = (DEPLOY / "vm" / "prometheus.default").read_text()
    (line,) = [line for line in text.splitlines() if line.startswith("ARGS=")]
    # The unit runs `prometheus $ARGS`: systemd splits the value on whitespace.
    (value,) = shlex.split(line[len("ARGS=") :])
    args = value.split()
    assert "--web.listen-address=127.0.0.1:9090" in args  # loopback only
    args.remove("--web.listen-address=127.0.0.1:9090")
    assert any(a.startswith("--storage.tsdb.retention.time=") for a in args), args
    return args


class QueryAPI:
    """The Prometheus HTTP query API, which VictoriaMetrics answers too."""

    url: str

    def api(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params)
        text = http_get(f"{self.url}/api/v1/{path}?{query}", fail=True)
        answer = json.loads(text or "{}")
        assert answer.get("status") == "success", answer
        return answer["data"]

    def query(self, expr: str, **params: str) -> list[dict[str, Any]]:
        data = self.api("query", query=expr, **params)
        assert data["resultType"] == "vector", data
        return list(data["result"])

    def values(self, expr: str, *labels: str) -> dict[tuple[str, ...], float]:
        """Instant vector as {(label values...): value}."""
        return {
            tuple(item["metric"].get(label, "") for label in labels): float(item["value"][1])
            for item in self.query(expr)
        }


class Prometheus(QueryAPI, Server):
    """Prometheus from Debian with the given configuration and the shipped arguments
    (default_args), on a free loopback port; the configuration must pass promtool."""

    def __init__(
        self, workdir: Path, config: dict[str, Any], binary: str = "", name: str = "prometheus"
    ) -> None:
        import yaml

        self.port = free_port()
        self.config = workdir / f"{name}.yml"
        self.config.write_text(yaml.safe_dump(config, sort_keys=False))
        argv = [
            binary or need("prometheus"),
            f"--config.file={self.config}",
            f"--storage.tsdb.path={workdir / (name + '-data')}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            *default_args(),
        ]
        super().__init__(name, argv, workdir)

    def start(self) -> None:
        check = subprocess.run(
            [need("promtool"), "check", "config", str(self.config)], capture_output=True, text=True
        )
        assert check.returncode == 0, check.stdout + check.stderr
        super().start()
        wait_for(lambda: http_get(f"{self.url}/-/ready") is not None, "/-/ready", 30, self)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def query_range(self, expr: str, seconds: float, step: str = "1s") -> list[dict[str, Any]]:
        end = time.time()
        data = self.api(
            "query_range", query=expr, start=str(end - seconds), end=str(end), step=step
        )
        assert data["resultType"] == "matrix", data
        return list(data["result"])


class VictoriaMetrics(QueryAPI, Server):
    """VictoriaMetrics from Debian: samples visible at once, no result cache (for tests)."""

    def __init__(self, workdir: Path, binary: str = "") -> None:
        self.port = free_port()
        argv = [
            binary or need("victoria-metrics"),
            f"-storageDataPath={workdir / 'victoria-metrics'}",
            f"-httpListenAddr=127.0.0.1:{self.port}",
            "-retentionPeriod=100y",
            "-search.latencyOffset=0s",
            "-search.disableCache",
        ]
        super().__init__("victoria-metrics", argv, workdir)

    def start(self) -> None:
        super().start()
        wait_for(lambda: http_get(f"{self.url}/health") == "OK", "/health", 30, self)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def import_text(self, text: str) -> None:
        """Prometheus exposition lines with millisecond timestamps (/api/v1/import/prometheus)."""
        request = urllib.request.Request(
            f"{self.url}/api/v1/import/prometheus", data=text.encode(), method="POST"
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            assert response.status == 204, response.status


def http_get(url: str, fail: bool = False) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return str(response.read().decode())
    except OSError as exc:
        if fail:
            raise AssertionError(f"GET {url}: {exc}") from exc
        return None
