"""Exact counts as an admin reads them: `top` and `unused` over a plain window, now.

Real processes report to two real statsd_exporters (the shipped mapping; the second
one with a 3 s ttl on library_used, as a site that sets one has); a Prometheus
scrapes both every second with the shipped arguments (deploy/vm/prometheus.default)
and the shipped recording rules.  Three stores: Debian 12's Prometheus 2.42,
Debian sid's Prometheus 3 (created-timestamp-zero-ingestion, from the shipped
arguments), and VictoriaMetrics 1.145 fed by that Prometheus over remote_write (the
shipped deploy/scale/prometheus.yml).

What happens, in order: a fresh exporter and one process; a process on the second
exporter; the first exporter restarted and the same library imported again there (its
series goes 1 -> 1); a library on the ttl exporter, its series expired, imported again
(1 -> gone -> 1).  After each step, `top --window 5m` must say exactly how many
processes imported each library.  Prometheus 2.42 cannot see the first increment of
a series that comes back at the value it had: it is exactly one short there, says so
on stderr, and `unused` still calls the library used.
"""

from __future__ import annotations

import calendar
import json
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import promserver
import pytest
import yaml
from servers import DEPLOY, Prometheus, StatsdExporter, VictoriaMetrics, sid_binary, wait_for

from support.e2e import reporting_environ, run_processes
from support.envs import Env, base_environ

MAPPING = DEPLOY / "statsd-exporter" / "mapping.yml"
RULES = DEPLOY / "prometheus" / "popcon-site.rules.yml"
STORES = ["prometheus-2.42", "prometheus-3", "victoriametrics"]
TTL = 3  # seconds, on the second exporter's library_used series


def ttl_mapping(workdir: Path) -> Path:
    """The shipped mapping with a ttl on the default prefix's library_used rule."""
    mapping = yaml.safe_load(MAPPING.read_text())
    (rule,) = [m for m in mapping["mappings"] if m["match"] == "python_popcon.library_used.*"]
    rule["ttl"] = f"{TTL}s"
    path = workdir / "mapping-ttl.yml"
    path.write_text(yaml.safe_dump(mapping, sort_keys=False))
    return path


class Site:
    """Two exporters, one Prometheus, and the store `top` asks (Prometheus or VM)."""

    def __init__(self, store: str, workdir: Path, env: Env) -> None:
        self.env = env
        self.home = workdir / "home"
        self.home.mkdir()
        self.exporters = [
            StatsdExporter(workdir, MAPPING, name="exporter-0"),
            StatsdExporter(workdir, ttl_mapping(workdir), name="exporter-1"),
        ]
        self.servers: list[Any] = []
        binary = "" if store == "prometheus-2.42" else sid_binary("prometheus")
        config = yaml.safe_load((DEPLOY / "scale" / "prometheus.yml").read_text())
        config["global"].update(scrape_interval="1s", evaluation_interval="1s")
        config["rule_files"] = [str(RULES)]
        (job,) = config["scrape_configs"]
        job["static_configs"] = [{"targets": [f"127.0.0.1:{e.http_port}" for e in self.exporters]}]
        self.vm: VictoriaMetrics | None = None
        self.last_settle: tuple[object, object] = ({}, {})
        if store == "victoriametrics":
            self.vm = VictoriaMetrics(workdir, binary=sid_binary("victoria-metrics"))
            (remote,) = config["remote_write"]
            remote["url"] = f"{self.vm.url}/api/v1/write"
            remote["queue_config"] = {"batch_send_deadline": "1s"}
        else:
            del config["remote_write"]
        self.prometheus = Prometheus(workdir, config, binary=binary)
        self.url = self.vm.url if self.vm else self.prometheus.url

    def start(self) -> None:
        for server in [*self.exporters, *([self.vm] if self.vm else []), self.prometheus]:
            server.start()
            self.servers.append(server)
        wait_for(
            lambda: self.prometheus.values('sum(up{job="popcon-site"})') == {(): 2.0},
            "Prometheus to scrape both exporters",
            30,
            self.prometheus,
        )

    def stop(self) -> None:
        for server in reversed(self.servers):
            server.stop()

    def run(self, exporter: int, *snippets: str) -> None:
        """Processes report to one exporter; returns once the store holds what the
        exporters hold (so a check that expects a count to be missed cannot pass early)."""
        environ = reporting_environ(self.home, self.exporters[exporter].statsd_port)
        run_processes(self.env, snippets, environ)
        try:
            wait_for(self.settled, "the store to hold the exporters' counters", 30)
        except BaseException as exc:
            raise AssertionError(f"exporters, store: {self.last_settle}") from exc

    def settled(self) -> bool:
        # process_start_time_seconds too: a restarted exporter's counters can equal
        # the old ones (1 -> 1), and the store must have scraped the new process.
        names = {
            "python_popcon_library_used",
            "python_popcon_reports",
            "process_start_time_seconds",
        }
        held: dict[tuple[str, str, str], float] = {}
        for exporter in self.exporters:
            for (name, labels), value in exporter.samples().items():
                if name in names:
                    library = dict(labels).get("library", "")
                    held[(name, f"127.0.0.1:{exporter.http_port}", library)] = value
        store = self.vm or self.prometheus
        seen: dict[tuple[str, ...], float] = {}
        for expr in (
            '{__name__=~"python_popcon_library_used|python_popcon_reports"}',
            'process_start_time_seconds{job="popcon-site"}',
        ):
            seen.update(store.values(expr, "__name__", "instance", "library"))
        self.last_settle = (held, seen)
        return seen == held

    def cli(self, command: str, *more: str) -> subprocess.CompletedProcess[str]:
        argv = [str(self.env.root / "bin" / "popcon-site"), command, "--json"]
        argv += ["--prometheus", self.url, "--window", "5m", *more]
        return subprocess.run(argv, capture_output=True, text=True, env=base_environ())

    def top(self) -> tuple[dict[str, int], int, list[str]]:
        proc = self.cli("top", "--limit", "100")
        if proc.returncode != 0:
            return {}, 0, [proc.stderr]
        answer = json.loads(proc.stdout)
        counts = {row["library"]: row["processes"] for row in answer["top"]}
        return counts, answer["reports"], answer["warnings"]

    def until_top(self, libraries: dict[str, int], reports: int) -> list[str]:
        """Poll `top` (scrapes and remote writes take a second or two) until it says
        exactly this; on time-out the assertion shows what it said last."""
        last: list[Any] = []

        def matches() -> bool:
            counts, got_reports, warnings = self.top()
            last[:] = [counts, got_reports, warnings]
            return counts == libraries and got_reports == reports

        try:
            wait_for(matches, f"top to say {libraries}, {reports} reports", 30, self.prometheus)
        except AssertionError as exc:
            raise AssertionError(f"top said {last}") from exc
        return list(last[2])

    def unused(self, *more: str) -> set[str]:
        proc = self.cli("unused", *more)
        assert proc.returncode == 0, proc.stderr
        return {row["distribution"] for row in json.loads(proc.stdout)["unused"]}


@pytest.fixture(params=STORES)
def site(request: Any, e2e_env: Env, tmp_path: Path) -> Iterator[Site]:
    site = Site(request.param, tmp_path, e2e_env)
    try:
        site.start()
        yield site
    finally:
        site.stop()


def test_counts_are_exact_at_start_after_a_restart_and_a_ttl_expiry(
    site: Site, request: Any
) -> None:
    store = request.node.callspec.params["site"]
    blind = store == "prometheus-2.42"  # no created timestamps: misses 1 -> 1

    # Day one: a fresh exporter, one process.
    site.run(0, "import yaml")
    warnings = site.until_top({"pyyaml": 1}, 1)
    assert "pyyaml" not in site.unused()
    # What docs/deploying.md says of increase(), the query these commands no longer send:
    # 0 where the first increment is invisible, extrapolated past 1 on Prometheus 3.
    increase = 'sum(increase(python_popcon_library_used{library="pyyaml"}[5m]))'
    time.sleep(2)  # two more scrapes: increase() needs two samples to answer at all
    (inc,) = site.prometheus.values(increase).values()
    if blind:
        assert inc == 0.0
    elif store == "prometheus-3":
        assert inc > 1.0
    assert any("created timestamps" in w for w in warnings) == blind, warnings

    # A second exporter: its series are new too.
    site.run(1, "import msgpack", "import yaml")
    site.until_top({"pyyaml": 2, "msgpack": 1}, 3)

    # The first exporter restarts; pyyaml comes back there at 1, as it was.
    exporter = site.exporters[0]
    time.sleep(2)  # the earlier samples stay out of the window that starts here
    exporter.stop()
    # The window below starts between the old process's last scrape and the new one's
    # start, as statsd_exporter reports it (from /proc: up to a second early).
    restarting = time.time() + 1
    time.sleep(2.5)
    exporter.start()
    site.run(0, "import yaml")
    site.until_top({"pyyaml": 3 - blind, "msgpack": 1}, 4 - blind)
    assert {"pyyaml", "msgpack"}.isdisjoint(site.unused())
    # A window that starts at the restart holds that one import only: counted where
    # the store sees it, and never listed as unused where it does not.
    time.sleep(3)  # a few scrapes inside that window
    at = time.time()
    since = ["--window", f"{int((at - restarting) * 1000)}ms", "--at", f"{at:.3f}"]
    proc = site.cli("top", *since)
    assert proc.returncode == 0, proc.stderr
    answer = json.loads(proc.stdout)
    assert {row["library"]: row["processes"] for row in answer["top"]} == (
        {} if blind else {"pyyaml": 1}
    )
    assert answer["reports"] == 1
    assert "pyyaml" not in site.unused(*since)

    # On the ttl exporter, msgpack's series expires, then msgpack is imported again.
    def expired() -> bool:
        return not exporter_has(site.exporters[1], "msgpack")

    wait_for(expired, "msgpack's series to expire", 30, site.exporters[1])
    time.sleep(2)  # two scrapes without it: the store sees the series end
    site.run(1, "import msgpack")
    site.until_top({"pyyaml": 3 - blind, "msgpack": 2 - blind}, 5 - blind)
    assert {"pyyaml", "msgpack"}.isdisjoint(site.unused())


def exporter_has(exporter: StatsdExporter, library: str) -> bool:
    samples = exporter.samples("python_popcon_library_used")
    return any(("library", library) in labels for _, labels in samples)


# -- silences: a collection that stops is noticed ------------------------------------------

HOUR = 3600.0
END = (time.time() // HOUR - 1) * HOUR  # the last sample; `--at` here


def hourly_reports(hub: str, per_hour: Callable[[int], int], hours: range) -> Any:
    """A reports counter sampled hourly over the last 30 days, for ``hours`` only."""
    samples, value = [], 0.0
    for hour in range(30 * 24 + 1):
        value += per_hour(hour)
        if hour in hours:
            samples.append((END - (30 * 24 - hour) * HOUR, value))
    return ("python_popcon_reports", {"hub_namespace": hub, "instance": "a:9102"}, samples)


@pytest.fixture(scope="module")
def silent_history(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    every = range(30 * 24 + 1)
    history = [
        # Reports every working hour, none at night or at weekends: no silence to report.
        hourly_reports("steady", lambda h: int(8 <= h % 24 < 18 and h // 24 % 7 < 5), every),
        # The hub's processes stopped reporting on day 10 and came back on day 20: its
        # exporter kept running, so the counter is flat for ten days.
        hourly_reports("flat", lambda h: int(not 240 <= h < 480), every),
        # The exporter went away on day 22 and nothing reported since.
        hourly_reports("stopped", lambda h: 1, range(22 * 24)),
    ]
    with promserver.prometheus(tmp_path_factory.mktemp("silences"), history) as url:
        yield url


@pytest.mark.parametrize(
    ("hub", "silences"),
    [("steady", []), ("flat", [(10, 20)]), ("stopped", [(22, 30)])],
)
def test_top_warns_of_a_silence_in_its_window(
    silent_history: str, e2e_env: Env, hub: str, silences: list[tuple[int, int]]
) -> None:
    argv = [str(e2e_env.root / "bin" / "popcon-site"), "top", "--json"]
    argv += ["--prometheus", silent_history, "--at", f"{END:.0f}"]
    argv += ["--selector", f'hub_namespace="{hub}"']
    proc = subprocess.run(argv, capture_output=True, text=True, env=base_environ())
    assert proc.returncode == 0, proc.stderr
    warnings = json.loads(proc.stdout)["warnings"]
    said = [w for w in warnings if w.startswith("no process reported from")]
    start = END - 30 * 86400

    def day(text: str) -> float:
        when = calendar.timegm(time.strptime(text, "%Y-%m-%d %H:%M:%S UTC"))
        return round((when - start) / 86400, 1)

    found = []
    for line in said:
        first, last = re.findall(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", line)
        found.append((day(first), day(last)))
    # The window is read in 24 slices of 1.25 days: a silence is reported to the slice.
    assert len(found) == len(silences), said
    for (first, last), (begin, end) in zip(found, silences):
        assert begin <= first <= begin + 1.25 and end - 1.25 <= last <= end, said
    # The stderr of the text output says the same, one line each.
    text = subprocess.run(argv[:2] + argv[3:], capture_output=True, text=True, env=base_environ())
    assert [line for line in text.stderr.splitlines() if "no process reported" in line] == [
        f"popcon-site: warning: {line}" for line in said
    ]
