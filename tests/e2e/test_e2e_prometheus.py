"""Real processes -> collectd (statsd plugin -> write_prometheus) -> Prometheus.

collectd runs with the shipped deploy/vm/collectd.conf and Prometheus with the
shipped deploy/vm/prometheus.yml (its relabelling turns statsd names into the
series statsd_exporter's mapping gives), the shipped recording rules and the
shipped /etc/default/prometheus arguments; only ports, paths and intervals are
changed for the test.  Every PromQL expression of the shipped Grafana dashboard
is run against this Prometheus.

Processes report in two waves: the first creates every series and is scraped
before the second starts.  The windowed counts (the recording rules, the dashboard,
`top`) must count both waves exactly: a series' first sample is counted from 0
(increase() never saw it).  Values of the windowed expressions on synthetic data
are checked with promtool in test_e2e_deploy.py.
"""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import statsd_mapping
import yaml
from servers import DEPLOY, Collectd, Prometheus, StatsdExporter, wait_for

from support.e2e import (
    NAMESPACE,
    NS_PREFIX,
    expected_counts,
    installed_distributions,
    reporting_environ,
    run_processes,
    snippets,
)
from support.envs import Env

# The first wave imports every library its namespace's second wave imports.
DEFAULT_WAVE1 = {
    "import yaml, ruamel.yaml, zope.interface, charset_normalizer, typing_extensions": 1
}
DEFAULT_WAVE2 = {
    "import yaml": 12,
    "import ruamel.yaml": 2,
    "import zope.interface, charset_normalizer": 2,
    "import typing_extensions": 1,
    "pass": 2,
}
NS_WAVE1 = {"import typing_extensions, msgpack, yaml": 1}
NS_WAVE2 = {"import yaml": 2, "import msgpack": 1, "import typing_extensions": 1, "pass": 1}
K = 10  # the privacy threshold of the shipped recording rules
RANGE = "1h"  # what Grafana substitutes for $__range in these checks

# An unnormalized name, as popularity-contest 0.4.1 sent it: no mapping may accept it.
UNNORMALIZED = "python_popcon.library_used.ruamel.yaml"


@dataclass
class Pipeline:
    collectd: Collectd
    prometheus: Prometheus
    installed: set[str]


def counts(*plans: dict[str, int]) -> dict[str, int]:
    total: dict[str, int] = {}
    for plan in plans:
        for library, n in expected_counts(plan).items():
            total[library] = total.get(library, 0) + n
    return total


def processes(*plans: dict[str, int]) -> int:
    return sum(sum(plan.values()) for plan in plans)


def prometheus_config(collectd: Collectd) -> dict[str, Any]:
    """The shipped deploy/vm/prometheus.yml, pointed at the test's collectd and rules."""
    config = yaml.safe_load((DEPLOY / "vm" / "prometheus.yml").read_text())
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    assert config["rule_files"] == ["/etc/prometheus/popcon-site.rules.yml"]
    config["rule_files"] = [str(DEPLOY / "prometheus" / "popcon-site.rules.yml")]
    (job,) = config["scrape_configs"]
    assert job["static_configs"] == [{"targets": ["127.0.0.1:9103"]}]
    job["static_configs"] = [{"targets": [f"127.0.0.1:{collectd.http_port}"]}]
    return config


@pytest.fixture(scope="module")
def pipeline(e2e_env: Env, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    workdir = tmp_path_factory.mktemp("pipeline")
    home = workdir / "home"
    home.mkdir()
    collectd = Collectd(workdir)
    collectd.start()
    try:
        config = prometheus_config(collectd)
        prometheus = Prometheus(workdir, config)
        prometheus.start()
        try:
            yield run_waves(e2e_env, home, collectd, prometheus)
        finally:
            prometheus.stop()
    finally:
        collectd.stop()


def run_waves(env: Env, home: Path, collectd: Collectd, prometheus: Prometheus) -> Pipeline:
    wait_for(
        lambda: prometheus.values('up{job="popcon-site"}') == {(): 1.0},
        "Prometheus to scrape collectd",
        30,
        prometheus,
    )
    default = reporting_environ(home, collectd.statsd_port)
    namespaced = reporting_environ(
        home, collectd.statsd_port, PYTHON_POPCONTEST_STATSD_PREFIX=NS_PREFIX
    )
    users = home.parent / "users"  # each process a user of its own (issue 23)
    run_processes(env, snippets(DEFAULT_WAVE1), default, users)
    run_processes(env, snippets(NS_WAVE1), namespaced, users)
    inventory = DEPLOY / "inventory" / "popcon-site-inventory.py"
    for environ in (default, namespaced):
        # As the shipped units run it: not itself a reporting process.
        proc = env.run(str(inventory), env={**environ, "PYTHON_POPCONTEST_ENABLE": "0"})
        assert proc.returncode == 0, proc.stderr
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.sendto(f"{UNNORMALIZED}:1|c".encode(), ("127.0.0.1", collectd.statsd_port))

    installed = installed_distributions(env)
    wave1 = used_by_namespace(DEFAULT_WAVE1, NS_WAVE1)
    wait_for(
        lambda: (
            used_now(prometheus) == wave1
            and reports_now(prometheus) == {"": 1, NAMESPACE: 1}
            and len(prometheus.query("python_popcon_library_installed")) == 2 * len(installed)
        ),
        "Prometheus to scrape the first wave",
        30,
        prometheus,
    )

    run_processes(env, snippets(DEFAULT_WAVE2), default, users)
    run_processes(env, snippets(NS_WAVE2), namespaced, users)
    both = {("", lib): n for lib, n in counts(DEFAULT_WAVE1, DEFAULT_WAVE2).items()} | {
        (NAMESPACE, lib): n for lib, n in counts(NS_WAVE1, NS_WAVE2).items()
    }
    wait_for(
        lambda: used_now(prometheus) == both, "Prometheus to scrape the second wave", 30, prometheus
    )
    # The recording rules run every second; wait for one evaluation after the last scrape.
    wait_for(
        lambda: recorded_increase(prometheus) == both,
        "the recording rules to evaluate the second wave",
        30,
        prometheus,
    )
    return Pipeline(collectd, prometheus, installed)


def recorded_increase(prometheus: Prometheus) -> dict[tuple[str, str], float]:
    return prometheus.values(
        "hub_namespace_library:python_popcon_library_used:increase30d", "hub_namespace", "library"
    )


def used_by_namespace(
    default_plan: dict[str, int], ns_plan: dict[str, int]
) -> dict[tuple[str, str], int]:
    return {("", lib): n for lib, n in counts(default_plan).items()} | {
        (NAMESPACE, lib): n for lib, n in counts(ns_plan).items()
    }


def reports_now(prometheus: Prometheus) -> dict[str, float]:
    found = prometheus.values("sum by (hub_namespace) (python_popcon_reports)", "hub_namespace")
    return {namespace: value for (namespace,), value in found.items()}


def used_now(prometheus: Prometheus) -> dict[tuple[str, str], float]:
    return prometheus.values(
        "sum by (hub_namespace, library) (python_popcon_library_used)", "hub_namespace", "library"
    )


# -- raw counters -------------------------------------------------------------------------


def test_library_counts_equal_the_processes_that_imported_them(pipeline: Pipeline) -> None:
    prometheus = pipeline.prometheus
    default_total = counts(DEFAULT_WAVE1, DEFAULT_WAVE2)
    assert default_total == {
        "pyyaml": 13,
        "ruamel-yaml": 3,
        "zope-interface": 3,
        "charset-normalizer": 3,
        "typing-extensions": 2,
    }
    # The shape of the statsd_exporter README query, over the HTTP API.
    assert prometheus.values(
        'sum by (library) (python_popcon_library_used{hub_namespace=""})', "library"
    ) == {(lib,): float(n) for lib, n in default_total.items()}
    assert prometheus.values('sum(python_popcon_reports{hub_namespace=""})') == {
        (): float(processes(DEFAULT_WAVE1, DEFAULT_WAVE2))
    }


def test_namespace_prefix_becomes_a_hub_namespace_label(pipeline: Pipeline) -> None:
    prometheus = pipeline.prometheus
    assert prometheus.values(
        f'sum by (library) (python_popcon_library_used{{hub_namespace="{NAMESPACE}"}})', "library"
    ) == {("pyyaml",): 3.0, ("msgpack",): 2.0, ("typing-extensions",): 2.0}
    assert prometheus.values("sum by (hub_namespace) (python_popcon_reports)", "hub_namespace") == {
        ("",): float(processes(DEFAULT_WAVE1, DEFAULT_WAVE2)),
        (NAMESPACE,): float(processes(NS_WAVE1, NS_WAVE2)),
    }


def test_inventory_gauges_arrive_per_namespace(pipeline: Pipeline) -> None:
    found = pipeline.prometheus.values(
        "python_popcon_library_installed", "hub_namespace", "library"
    )
    assert found == {(ns, lib): 1.0 for ns in ("", NAMESPACE) for lib in pipeline.installed}


def test_relabelling_gives_what_the_statsd_exporter_mapping_gives(pipeline: Pipeline) -> None:
    """collectd's raw series through deploy/statsd-exporter/mapping.yml == Prometheus's series."""
    rules = statsd_mapping.load(DEPLOY / "statsd-exporter" / "mapping.yml")
    raw = pipeline.collectd.statsd_series()
    assert ("counter", UNNORMALIZED, 1.0) in raw
    expected: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for kind, name, value in raw:
        mapped = statsd_mapping.apply(rules, name, kind)
        if name == UNNORMALIZED:
            assert mapped is None  # why popcon-site normalizes names
        if mapped is not None:
            expected[(mapped[0], frozenset(mapped[1].items()))] = value
    assert len(expected) == len(raw) - 1

    got = scraped_series(pipeline.prometheus)
    assert got == expected
    libraries = {dict(labels).get("library") for _, labels in got}
    assert "ruamel" not in libraries and "ruamel.yaml" not in libraries


def scraped_series(prometheus: Prometheus) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    got = {}
    for item in prometheus.query('{job="popcon-site", __name__=~"python_popcon_.+"}'):
        labels = dict(item["metric"])
        name = labels.pop("__name__")
        assert labels.pop("job") == "popcon-site"
        labels.pop("instance")
        got[(name, frozenset(labels.items()))] = float(item["value"][1])
    return got


def test_relabelling_gives_what_the_real_statsd_exporter_gives(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    """Every statsd series collectd holds, sent to statsd_exporter with the shipped mapping."""
    exporter = StatsdExporter(tmp_path, DEPLOY / "statsd-exporter" / "mapping.yml")
    exporter.start()
    try:
        raw = pipeline.collectd.statsd_series()
        lines = [
            f"{name}:{value:g}|{'c' if kind == 'counter' else 'g'}" for kind, name, value in raw
        ]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            for line in lines:
                sock.sendto(line.encode(), ("127.0.0.1", exporter.statsd_port))
        mapped = {
            "python_popcon_library_used",
            "python_popcon_reports",
            "python_popcon_library_installed",
            "python_popcon_library_users",
            "python_popcon_users",
        }
        # The exporter exports what no rule maps under an escaped name: not in any query.
        wait_for(
            lambda: len(exporter.samples("python_popcon_")) == len(raw),
            "statsd_exporter to count every line",
            10,
            exporter,
        )
        exposed = {
            key: value
            for key, value in exporter.samples("python_popcon_").items()
            if key[0] in mapped
        }
        assert exposed == scraped_series(pipeline.prometheus)
        assert exporter.problems() == []
    finally:
        exporter.stop()


# -- recording rules ----------------------------------------------------------------------


def test_recording_rules_load_and_evaluate(pipeline: Pipeline) -> None:
    prometheus = pipeline.prometheus
    group, alerts = prometheus.api("rules")["groups"]
    assert (group["name"], alerts["name"]) == ("popcon-site", "popcon-site-alerts")
    assert [rule["health"] for rule in group["rules"]] == ["ok"] * 8, group["rules"]
    assert [(r["name"], r["health"], r["state"]) for r in alerts["rules"]] == [
        ("PopconSiteReportsStopped", "ok", "inactive")
    ]

    # Both waves, exactly: the first wave's imports created the series.
    both = used_by_namespace(DEFAULT_WAVE1, NS_WAVE1)
    for key, n in used_by_namespace(DEFAULT_WAVE2, NS_WAVE2).items():
        both[key] = both.get(key, 0) + n
    assert recorded_increase(prometheus) == both
    wave2 = both

    privacy = prometheus.values(
        "hub_namespace_library:python_popcon_library_used:increase30d_min10",
        "hub_namespace",
        "library",
    )
    assert set(privacy) == {key for key, n in wave2.items() if n >= K} == {("", "pyyaml")}
    shares = prometheus.values(
        "hub_namespace_library:python_popcon_library_share:ratio30d_min10",
        "hub_namespace",
        "library",
    )
    assert set(shares) == {("", "pyyaml")}
    assert 0 < shares[("", "pyyaml")] <= 1
    # Distinct users through collectd's relabelling: one per process here.
    people = prometheus.values(
        "hub_namespace_library:python_popcon_library_users:increase30d", "hub_namespace", "library"
    )
    assert people == {key: float(n) for key, n in both.items()}
    users = prometheus.values("hub_namespace:python_popcon_users:increase30d", "hub_namespace")
    reports = prometheus.values("hub_namespace:python_popcon_reports:increase30d", "hub_namespace")
    assert users == reports and sum(users.values()) == processes(
        DEFAULT_WAVE1, DEFAULT_WAVE2, NS_WAVE1, NS_WAVE2
    )


# -- the Grafana dashboard ----------------------------------------------------------------


def dashboard() -> dict[str, Any]:
    return dict(json.loads((DEPLOY / "grafana" / "popcon-site-dashboard.json").read_text()))


def dashboard_targets() -> list[tuple[int, str, dict[str, Any]]]:
    return [
        (panel["id"], panel["title"], target)
        for panel in dashboard()["panels"]
        for target in panel["targets"]
    ]


def expand(expr: str, namespace: str) -> str:
    """What Grafana sends: $hub_namespace as chosen ("All" is the variable's allValue)."""
    text = expr.replace("$hub_namespace", namespace).replace("$__range", RANGE)
    assert "$" not in text, text
    return text


def live_expectations(pipeline: Pipeline, namespace: str) -> dict[int, set[tuple[str, ...]]]:
    """Label sets (library) each panel must show, for "All" (.*) or one namespace."""
    wave2 = used_by_namespace(DEFAULT_WAVE2, NS_WAVE2)
    in_scope = {k: n for k, n in wave2.items() if namespace == ".*" or k[0] == namespace}
    used = {(lib,) for (_, lib) in in_scope}
    return {
        1: {()},
        2: {()},
        3: used,
        4: used,
        5: {(lib,) for lib in pipeline.installed} - used,
        6: {(ns, lib) for (ns, lib), n in in_scope.items() if n >= K},
        7: used,  # distinct users: every process is a user of its own here
    }


LABELS = {1: (), 2: (), 3: ("library",), 4: ("library",), 5: ("library",), 7: ("library",)}


@pytest.mark.parametrize("namespace", [".*", NAMESPACE], ids=["all", NAMESPACE])
def test_every_dashboard_expression_returns_the_expected_series(
    pipeline: Pipeline, namespace: str
) -> None:
    prometheus = pipeline.prometheus
    expected = live_expectations(pipeline, namespace)
    targets = dashboard_targets()
    assert sorted(panel for panel, _, _ in targets) == sorted(expected), "untested panel"
    for panel, title, target in targets:
        expr = expand(target["expr"], namespace)
        labels = LABELS.get(panel, ("hub_namespace", "library"))
        if target.get("range"):
            result = prometheus.query_range(expr, seconds=300, step="15s")
            got = {tuple(item["metric"].get(label, "") for label in labels) for item in result}
            assert all(float(v) >= 0 for item in result for _, v in item["values"])
        else:
            values = prometheus.values(expr, *labels)
            got = set(values)
            assert all(v > 0 for v in values.values()), (title, values)
            if panel in (3, 4):  # sort_desc: the most imported library first
                order = [item["metric"]["library"] for item in prometheus.query(expr)]
                assert order[0] == "pyyaml", (title, order)
        assert got == expected[panel], (title, expr)


def test_dashboard_variable_lists_the_hub_namespaces(pipeline: Pipeline) -> None:
    (variable,) = [v for v in dashboard()["templating"]["list"] if v["name"] == "hub_namespace"]
    match = re.fullmatch(r"label_values\((\w+), (\w+)\)", variable["definition"])
    assert match, variable["definition"]
    metric, label = match.groups()
    found = pipeline.prometheus.api(f"label/{label}/values", **{"match[]": metric})
    assert found == [NAMESPACE]


def test_reports_are_counted_once_per_process(pipeline: Pipeline) -> None:
    """Panel 1's live value: every reporting process of both waves, exactly."""
    (expr,) = [target["expr"] for panel, _, target in dashboard_targets() if panel == 1]
    value = pipeline.prometheus.values(expand(expr, ".*"))[()]
    assert value == processes(DEFAULT_WAVE1, DEFAULT_WAVE2, NS_WAVE1, NS_WAVE2)
