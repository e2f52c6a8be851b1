"""Past one server: sharded statsd_exporters, and VictoriaMetrics for long retention.

Live: two real statsd_exporters each receive part of the processes; Prometheus, with
the shipped deploy/scale/prometheus.yml, scrapes both and remote-writes into
VictoriaMetrics.  The site totals (``sum by``) must be exact in both stores, and the
k = 10 privacy threshold must apply to the site's total, not one exporter's share.

History: 40 days of hourly samples from two exporters (a restart included) are
backfilled into Prometheus (``promtool tsdb create-blocks-from openmetrics``) and
imported into VictoriaMetrics; ``popcon-site top`` and ``unused`` must give the same
answers from both, and the answers computed here from the samples.  Where the two
stores differ by design (a series born inside the window) is tested too.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import promserver
import pytest
import yaml
from servers import (
    DEPLOY,
    Prometheus,
    StatsdExporter,
    VictoriaMetrics,
    wait_for,
)

from support.e2e import (
    NAMESPACE,
    NS_PREFIX,
    expected_counts,
    installed_distributions,
    reporting_environ,
    run_processes,
    snippets,
)
from support.envs import Env, base_environ

MAPPING = DEPLOY / "statsd-exporter" / "mapping.yml"
RULES = DEPLOY / "prometheus" / "popcon-site.rules.yml"
K = 10

# {shard: (wave 1, wave 2)} of default-prefix processes; wave 1 creates the series.
SHARDS = {
    0: (
        {"import yaml, ruamel.yaml, zope.interface, charset_normalizer, typing_extensions": 1},
        {"import yaml": 5, "import ruamel.yaml": 1, "pass": 1},
    ),
    1: ({"import typing_extensions, msgpack, yaml": 1}, {"import yaml": 5, "import msgpack": 2}),
}
NS_SHARD = 1  # the namespace's processes report to exporter 1 only
NS_WAVES = ({"import msgpack": 1}, {"import msgpack": 2})


def site_totals() -> dict[tuple[str, str], int]:
    totals: dict[tuple[str, str], int] = {}
    for plans in SHARDS.values():
        for plan in plans:
            for library, n in expected_counts(plan).items():
                totals[("", library)] = totals.get(("", library), 0) + n
    for plan in NS_WAVES:
        for library, n in expected_counts(plan).items():
            totals[(NAMESPACE, library)] = totals.get((NAMESPACE, library), 0) + n
    return totals


@dataclass
class Site:
    exporters: list[StatsdExporter]
    prometheus: Prometheus
    vm: VictoriaMetrics


def scale_config(exporters: list[StatsdExporter], vm: VictoriaMetrics) -> dict[str, Any]:
    """The shipped deploy/scale/prometheus.yml, at the test's exporters and VictoriaMetrics."""
    config = yaml.safe_load((DEPLOY / "scale" / "prometheus.yml").read_text())
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    assert config["rule_files"] == ["/etc/prometheus/popcon-site.rules.yml"]
    config["rule_files"] = [str(RULES)]
    (job,) = config["scrape_configs"]
    assert len(job["static_configs"][0]["targets"]) == 2
    job["static_configs"] = [{"targets": [f"127.0.0.1:{e.http_port}" for e in exporters]}]
    (remote,) = config["remote_write"]
    assert remote["url"].endswith(":8428/api/v1/write")
    remote["url"] = f"{vm.url}/api/v1/write"
    # Send within a second instead of the default 5 s, so the test need not wait.
    remote["queue_config"] = {"batch_send_deadline": "1s"}
    return config


@pytest.fixture(scope="module")
def site(e2e_env: Env, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    workdir = tmp_path_factory.mktemp("scale")
    started: list[Any] = []
    try:
        exporters = []
        for shard in SHARDS:
            exporter = StatsdExporter(workdir, MAPPING, name=f"statsd_exporter-{shard}")
            exporter.start()
            started.append(exporter)
            exporters.append(exporter)
        vm = VictoriaMetrics(workdir)
        vm.start()
        started.append(vm)
        prometheus = Prometheus(workdir, scale_config(exporters, vm))
        prometheus.start()
        started.append(prometheus)
        report(e2e_env, workdir, exporters, prometheus)
        yield Site(exporters, prometheus, vm)
    finally:
        for server in reversed(started):
            server.stop()


def report(env: Env, workdir: Path, exporters: list[StatsdExporter], prom: Prometheus) -> None:
    home = workdir / "home"
    home.mkdir()
    users = workdir / "users"  # each process a user of its own (issue 23): k users = k processes
    wait_for(
        lambda: prom.values('sum(up{job="popcon-site"})') == {(): 2.0},
        "Prometheus to scrape both exporters",
        30,
        prom,
    )
    for wave in (0, 1):
        for shard, plans in SHARDS.items():
            environ = reporting_environ(home, exporters[shard].statsd_port)
            run_processes(env, snippets(plans[wave]), environ, users)
        environ = reporting_environ(
            home, exporters[NS_SHARD].statsd_port, PYTHON_POPCONTEST_STATSD_PREFIX=NS_PREFIX
        )
        run_processes(env, snippets(NS_WAVES[wave]), environ, users)
        if wave == 0:  # every series scraped once before wave 2: the windows' base
            wait_for(
                lambda: len(prom.query("python_popcon_library_used")) == series_count(),
                "the first wave's series",
                30,
                prom,
            )


def series_count() -> int:
    """One series per exporter and (namespace, library) that exporter received."""
    count = 0
    for shard, plans in SHARDS.items():
        count += len(set().union(*(expected_counts(plan) for plan in plans)))
        if shard == NS_SHARD:
            count += len(set().union(*(expected_counts(plan) for plan in NS_WAVES)))
    return count


def site_sums(store: Any) -> dict[tuple[str, str], float]:
    found = store.values(
        "sum by (hub_namespace, library) (python_popcon_library_used)", "hub_namespace", "library"
    )
    return {(ns, lib): value for (ns, lib), value in found.items()}


def test_site_totals_are_exact_across_exporters(site: Site) -> None:
    expected = {key: float(n) for key, n in site_totals().items()}
    wait_for(lambda: site_sums(site.prometheus) == expected, "the site totals", 30, site.prometheus)
    per_exporter = site.prometheus.values(
        'sum by (instance) (python_popcon_library_used{library="pyyaml"})', "instance"
    )
    assert sorted(per_exporter.values()) == [6.0, 6.0]  # each exporter holds part of it
    for exporter in site.exporters:
        assert exporter.problems() == []


def test_series_count_is_exporters_times_libraries_each_saw(site: Site) -> None:
    """The series-count formula of deploy/README.md: one series per exporter and pair."""
    assert len(site.prometheus.query("python_popcon_library_used")) == series_count() == 9
    assert len(site_totals()) == 7  # two pairs are on both exporters


def test_privacy_threshold_applies_to_the_site_total(site: Site) -> None:
    prometheus = site.prometheus

    def shareable() -> set[tuple[str, str]]:
        found = prometheus.values(
            "hub_namespace_library:python_popcon_library_used:increase30d_min10",
            "hub_namespace",
            "library",
        )
        return set(found)

    wait_for(lambda: shareable() == {("", "pyyaml")}, "pyyaml over k", 30, prometheus)
    # No single exporter ever counted k processes importing it.
    per_exporter = prometheus.values(
        'python_popcon_library_used{library="pyyaml", hub_namespace=""}', "instance"
    )
    assert len(per_exporter) == 2 and all(v < K for v in per_exporter.values()), per_exporter


def test_dashboard_sums_over_the_exporters(site: Site) -> None:
    """Every panel shows one series per library (or one number), never one per exporter."""
    board = json.loads((DEPLOY / "grafana" / "popcon-site-dashboard.json").read_text())
    libraries = {lib for (ns, lib), n in site_totals().items()}
    installed_series = site.prometheus.query("python_popcon_library_installed")
    assert installed_series == []  # no inventory here: panel 5 is empty
    expected = {1: {()}, 2: {()}, 3: libraries, 4: libraries, 5: set(), 6: {("", "pyyaml")}}
    expected[7] = libraries  # distinct users per library, summed over the exporters
    for panel in board["panels"]:
        (target,) = panel["targets"]
        expr = target["expr"].replace("$hub_namespace", ".*").replace("$__range", "1h")
        result = site.prometheus.query(expr)
        if panel["id"] == 6:
            got = {(r["metric"].get("hub_namespace", ""), r["metric"]["library"]) for r in result}
        elif panel["id"] in (3, 4, 5, 7):
            got = {r["metric"]["library"] for r in result}
            assert all("instance" not in r["metric"] for r in result)
        else:
            got = {tuple(r["metric"].items()) for r in result}
        assert got == expected[panel["id"]], (panel["title"], result)
    (total,) = site.prometheus.query(
        'sum by (library) (python_popcon_library_used{library="pyyaml"})'
    )
    assert float(total["value"][1]) == site_totals()[("", "pyyaml")]


def test_remote_write_gives_victoria_metrics_the_same_totals(site: Site) -> None:
    expected = {key: float(n) for key, n in site_totals().items()}
    wait_for(lambda: site_sums(site.vm) == expected, "VictoriaMetrics to hold the totals", 30)
    reports = site.vm.values("sum by (hub_namespace) (python_popcon_reports)", "hub_namespace")
    assert reports == site.prometheus.values(
        "sum by (hub_namespace) (python_popcon_reports)", "hub_namespace"
    )


# -- 40 days of history, Prometheus and VictoriaMetrics ----------------------------------

HOUR = 3600
DAYS = 40
END = (int(time.time()) // HOUR - 2) * HOUR  # an hour boundary, so a sample is at --at
# (hub_namespace, library): processes per hour from each of two exporters, by day range.
USE = {
    ("", "pyyaml"): [(0, 40, (3, 2))],
    ("", "ruamel-yaml"): [(0, 40, (1, 0))],
    ("", "msgpack"): [(0, 20, (0, 1)), (25, 40, (1, 1))],
    ("", "zope-interface"): [(0, 9, (1, 1))],  # not imported in the last 30 days
    (NAMESPACE, "pyyaml"): [(0, 40, (0, 1))],
    (NAMESPACE, "typing-extensions"): [(0, 40, (0, 2))],
}
REPORTS_PER_HOUR = {"": (5, 3), NAMESPACE: (0, 2)}
RESTART = END - 15 * 24 * HOUR  # exporter 1 restarts: its counters start again from 0
BORN_LATE = "jhub-new"  # a hub whose series start 5 days before END


def hourly(per_hour: list[int], shard: int) -> list[tuple[float, float]]:
    """Cumulative counter samples, one an hour; exporter 1 restarts at RESTART."""
    samples, value = [], 0.0
    start = END - DAYS * 24 * HOUR
    for hour, increment in enumerate(per_hour):
        at = start + hour * HOUR
        if shard == 1 and at == RESTART:
            value = 0.0
        value += increment
        samples.append((float(at), value))
    return samples


def history() -> list[promserver.Series]:
    hours = DAYS * 24 + 1
    series: list[promserver.Series] = []
    for shard in (0, 1):
        instance = {"job": "popcon-site", "instance": f"exporter-{shard}:9102"}
        for (namespace, library), spans in USE.items():
            rate = [0] * hours
            for first, last, per_shard in spans:
                for hour in range(first * 24, last * 24):
                    rate[hour] = per_shard[shard]
            labels = {**instance, "library": library}
            if namespace:
                labels["hub_namespace"] = namespace
            if any(rate):
                series.append(("python_popcon_library_used", labels, hourly(rate, shard)))
        for namespace, per_shard in REPORTS_PER_HOUR.items():
            if per_shard[shard]:
                labels = {**instance, **({"hub_namespace": namespace} if namespace else {})}
                samples = hourly([per_shard[shard]] * hours, shard)
                series.append(("python_popcon_reports", labels, samples))
    late = END - 5 * 24 * HOUR
    labels = {"job": "popcon-site", "instance": "exporter-0:9102", "hub_namespace": BORN_LATE}
    grow = [(float(at), 4.0 + (at - late) / HOUR) for at in range(late, END + 1, HOUR)]
    series.append(("python_popcon_library_used", {**labels, "library": "msgpack"}, grow))
    series.append(("python_popcon_reports", labels, grow))
    return series


def increase(samples: list[tuple[float, float]], start: float) -> float:
    """Counter increase over samples in [start, END], resets counted from 0 (both stores)."""
    inside = [value for at, value in samples if start <= at <= END]
    return sum(b - a if b >= a else b for a, b in zip(inside, inside[1:]))


def expected_top(namespace: str) -> tuple[float, dict[str, float]]:
    start = END - 30 * 24 * HOUR
    reports, used = 0.0, {}
    for metric, labels, samples in history():
        if labels.get("hub_namespace", "") != namespace:
            continue
        if metric == "python_popcon_reports":
            reports += increase(samples, start)
        else:
            used[labels["library"]] = used.get(labels["library"], 0.0) + increase(samples, start)
    return reports, used


def exposition(series: list[promserver.Series]) -> str:
    """The history as Prometheus text with millisecond timestamps, for VictoriaMetrics."""
    lines = []
    for metric, labels, samples in series:
        text = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        lines += [f"{metric}{{{text}}} {value:g} {int(at * 1000)}" for at, value in samples]
    return "\n".join(lines) + "\n"


@dataclass
class Stores:
    prometheus: str
    vm: str


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stores]:
    workdir = tmp_path_factory.mktemp("history")
    (workdir / "prometheus").mkdir()
    series = history()
    vm = VictoriaMetrics(workdir)
    vm.start()
    try:
        vm.import_text(exposition(series))
        with promserver.prometheus(workdir / "prometheus", series) as url:
            total = sum(len(samples) for _, _, samples in series)
            count = f"sum(count_over_time({{__name__=~'python_popcon_.+'}}[{DAYS + 1}d]))"

            def imported() -> bool:
                (sample,) = vm.query(count, time=str(END)) or [{"value": [0, "0"]}]
                return float(sample["value"][1]) == total

            wait_for(imported, "VictoriaMetrics to hold every imported sample", 30, vm)
            yield Stores(url, vm.url)
    finally:
        vm.stop()


def cli(env: Env, command: str, url: str, namespace: str | None) -> dict[str, Any]:
    args = [str(env.root / "bin" / "popcon-site"), command, "--json", "--prometheus", url]
    args += ["--at", str(END)]
    if command == "top":
        args += ["--limit", "100"]
    if namespace is not None:
        args += ["--selector", f'hub_namespace="{namespace}"']
    proc = subprocess.run(args, capture_output=True, text=True, env=base_environ(), timeout=60)
    assert proc.returncode == 0, proc.stderr
    answer = dict(json.loads(proc.stdout))
    assert answer.pop("prometheus") == url
    return answer


@pytest.mark.parametrize("namespace", ["", NAMESPACE], ids=["default", NAMESPACE])
def test_top_and_unused_answer_the_same_from_both_stores(
    stores: Stores, e2e_env: Env, namespace: str
) -> None:
    for command in ("top", "unused"):
        from_prometheus = cli(e2e_env, command, stores.prometheus, namespace)
        from_vm = cli(e2e_env, command, stores.vm, namespace)
        # What differs: the store's name, and that Debian 12's Prometheus says it cannot
        # see a restarted series' first count (VictoriaMetrics counts it).
        assert from_prometheus.pop("store").startswith("Prometheus 2.")
        assert from_vm.pop("store") == "VictoriaMetrics"
        (note,) = from_prometheus.pop("warnings")
        assert "does not ingest created timestamps" in note
        assert from_vm.pop("warnings") == []
        assert from_vm == from_prometheus, command
        if command == "top":
            reports, used = expected_top(namespace)
            assert from_prometheus["reports"] == reports
            assert {r["library"]: r["processes"] for r in from_prometheus["top"]} == {
                lib: n for lib, n in used.items() if n
            }
        else:
            used = {lib for lib, n in expected_top(namespace)[1].items() if n}
            unused = {row["distribution"] for row in from_prometheus["unused"]}
            assert unused == installed_distributions(e2e_env) - used
            if namespace == "":
                assert "zope-interface" in unused  # imported, but not in the last 30 days


def test_a_series_born_inside_the_window_counts_the_same_in_both_stores(
    stores: Stores, e2e_env: Env
) -> None:
    """A new series' first value counts in full in both stores (increase() in Prometheus
    extrapolated towards it: between 116 and 124 here, for 124 processes)."""
    from_prometheus = cli(e2e_env, "top", stores.prometheus, BORN_LATE)["top"]
    from_vm = cli(e2e_env, "top", stores.vm, BORN_LATE)["top"]
    last = 4 + 5 * 24
    assert [row["processes"] for row in from_vm] == [last]  # the whole counter
    assert [row["processes"] for row in from_prometheus] == [last]
