"""Real processes -> the real statsd_exporter -> Prometheus: the Kubernetes/Helm pipeline.

statsd_exporter (from $POPCON_STATSD_EXPORTER, see servers.py) runs once with the
shipped deploy/statsd-exporter/mapping.yml and once with the Helm values'
``mappingConfig``; it must log no warning or error about either.  Processes of a
real venv with the built wheel report to it with the default prefix and the
namespace prefix, the shipped inventory script sends its gauges, and Prometheus
scrapes it with the shipped deploy/vm/prometheus-statsd-exporter.yml and rules.

Exact values.  Processes report in two waves, the first creating every series.
Over the window that starts at the scrape ``t1`` after wave 1 and ends at the
scrape ``t2`` after wave 2, the recording rules, every dashboard expression and
``popcon-site top`` must give wave 2 exactly; over the shipped 30-day window, as an
admin asks, ``top`` must give both waves exactly (tests/e2e/test_e2e_exact.py does
the same through restarts, a ttl and Prometheus 3).  The series Prometheus's own
rule engine records with the shipped 30-day window are checked for their label sets
(which the k = 10 privacy threshold decides).

Distinct users (issue 23): every process runs with a home of its own and user counters
on, so each is one user; library_users and users then equal library_used and reports,
and ``top --users`` ranks as ``top`` does.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from servers import (
    DEPLOY,
    Prometheus,
    StatsdExporter,
    statsd_exporter_binary,
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
HELM = DEPLOY / "helm" / "prometheus-statsd-exporter-values.yaml"
RULES = DEPLOY / "prometheus" / "popcon-site.rules.yml"
DASHBOARD = DEPLOY / "grafana" / "popcon-site-dashboard.json"

K = 10  # the privacy threshold of the shipped recording rules

# Wave 1 imports every library of its namespace, so that every series exists at t1.
WAVES = {
    "": (
        {
            "import yaml, ruamel.yaml, zope.interface, charset_normalizer, typing_extensions": 1,
            "import msgpack": 1,
        },
        {
            "import yaml": 9,  # + 1 below: pyyaml is imported by exactly k processes
            "import typing_extensions, msgpack, yaml": 1,
            "import ruamel.yaml": 2,
            "import zope.interface, charset_normalizer": 1,
            "pass": 2,
        },
    ),
    # typing-extensions is not imported in wave 2: its increase is 0 there.
    NAMESPACE: (
        {"import typing_extensions, msgpack, yaml": 1},
        {"import yaml": 2, "import msgpack": 1, "pass": 1},
    ),
}
# An unnormalized name, as popularity-contest 0.4.1 sent it: no rule may map it.
UNNORMALIZED = "python_popcon.library_used.ruamel.yaml"

Key = tuple[str, str]  # (hub_namespace, library); "" is the default prefix


def used(wave: int) -> dict[Key, int]:
    """Processes that imported each library in wave 1 (1), wave 2 (2) or both (0)."""
    found: dict[Key, int] = {}
    for namespace, plans in WAVES.items():
        for library in expected_counts(plans[0]):
            found[(namespace, library)] = 0
        for index, plan in enumerate(plans, 1):
            if wave in (0, index):
                for library, n in expected_counts(plan).items():
                    found[(namespace, library)] += n
    return found


def reports(wave: int) -> dict[str, int]:
    return {
        namespace: sum(sum(plan.values()) for i, plan in enumerate(plans, 1) if wave in (0, i))
        for namespace, plans in WAVES.items()
    }


def test_the_plan_covers_the_privacy_threshold() -> None:
    wave2 = used(2)
    assert wave2[("", "pyyaml")] == K and wave2[(NAMESPACE, "typing-extensions")] == 0
    assert reports(2) == {"": 15, NAMESPACE: 4}


@dataclass
class Pipeline:
    source: str
    exporter: StatsdExporter
    prometheus: Prometheus
    env: Env
    installed: set[str]
    t1: int  # ms, a scrape after wave 1
    t2: int  # ms, a scrape after wave 2

    @property
    def window(self) -> str:
        return f"{self.t2 - self.t1}ms"

    def exact(self, expr: str, kind: str = "vector") -> list[dict[str, Any]]:
        """An instant query at t2 (the window's end)."""
        data = self.prometheus.api("query", query=expr, time=f"{self.t2 / 1000:.3f}")
        assert data["resultType"] == kind, data
        return list(data["result"])


def mapping_file(source: str, workdir: Path) -> Path:
    if source == "mapping.yml":
        return MAPPING
    path = workdir / "helm-mapping.yml"
    path.write_text(yaml.safe_load(HELM.read_text())["statsd"]["mappingConfig"])
    return path


def prometheus_config(exporter: StatsdExporter) -> dict[str, Any]:
    """The shipped deploy/vm/prometheus-statsd-exporter.yml, at the test's exporter."""
    config = yaml.safe_load((DEPLOY / "vm" / "prometheus-statsd-exporter.yml").read_text())
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    assert config["rule_files"] == ["/etc/prometheus/popcon-site.rules.yml"]
    config["rule_files"] = [str(RULES)]
    (job,) = config["scrape_configs"]
    assert job["static_configs"] == [{"targets": ["127.0.0.1:9102"]}]
    job["static_configs"] = [{"targets": [f"127.0.0.1:{exporter.http_port}"]}]
    return config


@pytest.fixture(scope="module", params=["mapping.yml", "helm values"])
def pipeline(
    request: pytest.FixtureRequest, e2e_env: Env, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Pipeline]:
    source = str(request.param)
    workdir = tmp_path_factory.mktemp("exporter")
    exporter = StatsdExporter(workdir, mapping_file(source, workdir))
    exporter.start()
    try:
        prometheus = Prometheus(workdir, prometheus_config(exporter))
        prometheus.start()
        try:
            yield run_waves(source, e2e_env, workdir, exporter, prometheus)
        finally:
            prometheus.stop()
    finally:
        exporter.stop()


def scrape_time(prometheus: Prometheus) -> int:
    """Timestamp (ms) of the last scrape Prometheus stored."""
    ((value,),) = [
        (item["value"][1],) for item in prometheus.query('timestamp(up{job="popcon-site"})')
    ]
    return round(float(value) * 1000)


def run_waves(
    source: str, env: Env, workdir: Path, exporter: StatsdExporter, prometheus: Prometheus
) -> Pipeline:
    home = workdir / "home"
    home.mkdir()
    port = exporter.statsd_port
    environs = {
        "": reporting_environ(home, port),
        NAMESPACE: reporting_environ(home, port, PYTHON_POPCONTEST_STATSD_PREFIX=NS_PREFIX),
    }
    wait_for(
        lambda: prometheus.values('up{job="popcon-site"}') == {(): 1.0},
        "Prometheus to scrape statsd_exporter",
        30,
        prometheus,
    )
    users = workdir / "users"  # each process a user of its own: users = processes
    for namespace, environ in environs.items():
        run_processes(env, snippets(WAVES[namespace][0]), environ, users)
        inventory = DEPLOY / "inventory" / "popcon-site-inventory.py"
        # As the shipped units run it: not itself a reporting process.
        proc = env.run(str(inventory), env={**environ, "PYTHON_POPCONTEST_ENABLE": "0"})
        assert proc.returncode == 0, proc.stderr
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.sendto(f"{UNNORMALIZED}:1|c".encode(), ("127.0.0.1", port))
    installed = installed_distributions(env)
    wait_for(
        lambda: (
            used_now(prometheus) == used(1)
            and reports_now(prometheus) == reports(1)
            and len(prometheus.query("python_popcon_library_installed")) == 2 * len(installed)
        ),
        "Prometheus to scrape the first wave",
        30,
        prometheus,
    )
    t1 = scrape_time(prometheus)  # wave 2 has not started: this scrape holds wave 1 only
    for namespace, environ in environs.items():
        run_processes(env, snippets(WAVES[namespace][1]), environ, users)
    wait_for(
        lambda: used_now(prometheus) == used(0) and reports_now(prometheus) == reports(0),
        "Prometheus to scrape the second wave",
        30,
        prometheus,
    )
    t2 = scrape_time(prometheus)
    # The rule engine (every second) has evaluated a scrape of wave 2 once this holds.
    wait_for(
        lambda: (
            all(value >= used(2)[key] for key, value in recorded(prometheus, "increase30d").items())
            and len(recorded(prometheus, "increase30d")) == len(used(0))
        ),
        "the recording rules to evaluate the second wave",
        30,
        prometheus,
    )
    return Pipeline(source, exporter, prometheus, env, installed, t1, t2)


def used_now(prometheus: Prometheus) -> dict[Key, float]:
    found = prometheus.values(
        "sum by (hub_namespace, library) (python_popcon_library_used)", "hub_namespace", "library"
    )
    return {(ns, lib): value for (ns, lib), value in found.items()}


def reports_now(prometheus: Prometheus) -> dict[str, float]:
    found = prometheus.values("sum by (hub_namespace) (python_popcon_reports)", "hub_namespace")
    return {namespace: value for (namespace,), value in found.items()}


def recorded(prometheus: Prometheus, suffix: str) -> dict[Key, float]:
    found = prometheus.values(
        f"hub_namespace_library:python_popcon_library_used:{suffix}", "hub_namespace", "library"
    )
    return {(ns, lib): value for (ns, lib), value in found.items()}


# -- the exporter -------------------------------------------------------------------------


def test_exporter_loads_the_mapping_without_a_warning(pipeline: Pipeline) -> None:
    """Checked after all the traffic: no warning at start (backtracking) nor later."""
    assert pipeline.exporter.problems() == []
    loaded = pipeline.exporter.samples("statsd_exporter_loaded_mappings")
    assert loaded == {("statsd_exporter_loaded_mappings", frozenset()): 10.0}


def test_exporter_exposes_exactly_the_documented_series(pipeline: Pipeline) -> None:
    def labels(namespace: str, **more: str) -> frozenset[tuple[str, str]]:
        return frozenset({**more, **({"hub_namespace": namespace} if namespace else {})}.items())

    expected = {
        ("python_popcon_library_used", labels(ns, library=lib)): float(n)
        for (ns, lib), n in used(0).items()
    }
    expected |= {("python_popcon_reports", labels(ns)): float(n) for ns, n in reports(0).items()}
    # Distinct users: every process is a user of its own here (run_processes' homes).
    expected |= {
        ("python_popcon_library_users", labels(ns, library=lib)): float(n)
        for (ns, lib), n in used(0).items()
    }
    expected |= {("python_popcon_users", labels(ns)): float(n) for ns, n in reports(0).items()}
    expected |= {
        ("python_popcon_library_installed", labels(ns, library=lib)): 1.0
        for ns in WAVES
        for lib in pipeline.installed
    }
    # What no rule maps, the exporter exports under an escaped name of its own: no
    # recording rule or dashboard sees it (why popcon-site sends normalized names).
    expected[("python_popcon_library_used_ruamel_yaml", frozenset())] = 1.0
    assert pipeline.exporter.samples("python_popcon_") == expected
    unmapped = pipeline.exporter.samples("statsd_exporter_events_unmapped_total")
    assert sum(unmapped.values()) == 1.0


def readme_mappings() -> list[str]:
    """The mapping configs the manual shows (plain, and inside Helm values)."""
    text = (DEPLOY.parent / "docs" / "deploying.md").read_text()
    found = []
    for block in re.findall(r"```yaml\n(.*?)```", text, re.S):
        config = yaml.safe_load(block)
        if "statsd" in config:
            found.append(config["statsd"]["mappingConfig"])
        elif "mappings" in config:
            found.append(block)
    return found


def test_every_shipped_mapping_passes_the_exporters_own_check(tmp_path: Path) -> None:
    """`statsd_exporter --check-config`: exit 0 and not one warning, for each of them."""
    configs = {
        "mapping.yml": MAPPING.read_text(),
        "helm values": yaml.safe_load(HELM.read_text())["statsd"]["mappingConfig"],
    }
    configs |= {f"README #{i}": text for i, text in enumerate(readme_mappings(), 1)}
    assert len(configs) == 4, sorted(configs)
    binary = statsd_exporter_binary()
    for name, text in configs.items():
        path = tmp_path / "mapping.yml"
        path.write_text(text)
        proc = subprocess.run(
            [binary, f"--statsd.mapping-config={path}", "--check-config"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        output = proc.stdout + proc.stderr
        assert proc.returncode == 0, (name, output)
        assert "Configuration check successful" in output, (name, output)
        assert not re.search(r"\blevel=(WARN|ERROR)\b", output, re.I), (name, output)


# -- Prometheus: raw series, recording rules, dashboard -----------------------------------


def test_prometheus_scrapes_the_exact_counts(pipeline: Pipeline) -> None:
    prometheus = pipeline.prometheus
    assert used_now(prometheus) == {key: float(n) for key, n in used(0).items()}
    assert reports_now(prometheus) == {ns: float(n) for ns, n in reports(0).items()}
    installed = prometheus.values("python_popcon_library_installed", "hub_namespace", "library")
    assert installed == {(ns, lib): 1.0 for ns in WAVES for lib in pipeline.installed}
    # The window [t1, t2] really starts at the t1 sample (nothing to extrapolate there).
    selector = f'python_popcon_reports{{hub_namespace=""}}[{pipeline.window}]'
    (series,) = pipeline.exact(selector, "matrix")
    assert round(float(series["values"][0][0]) * 1000) == pipeline.t1


def rules() -> list[tuple[str, str]]:
    """The recording rules (the first group; the second holds the alert)."""
    group = yaml.safe_load(RULES.read_text())["groups"][0]
    return [(rule["record"], rule["expr"]) for rule in group["rules"]]


def inline(expr: str, window: str) -> str:
    """``expr`` with every recorded series replaced by its rule, all windows by ``window``."""
    # `group_left (x)` would read `(x)` as its label list: make the empty list explicit.
    expr = re.sub(r"\b(group_left|group_right)\b(?!\s*\()", r"\1()", expr)
    for record, body in reversed(rules()):
        body = re.sub(r"\b(group_left|group_right)\b(?!\s*\()", r"\1()", body)
        expr = re.sub(rf"(?<![\w:]){re.escape(record)}(?![\w:])", f"({body})", expr)
    assert not any(record in expr for record, _ in rules()), expr
    expr = re.sub(r"offset (?:30d|1d|1h|\$__range)\b", f"offset {window}", expr)
    return re.sub(r"\[(?:30d|1d|1h|\$__range)\]", f"[{window}]", expr)


def by_key(result: list[dict[str, Any]]) -> dict[Key, float]:
    return {
        (item["metric"].get("hub_namespace", ""), item["metric"].get("library", "")): float(
            item["value"][1]
        )
        for item in result
    }


def test_recording_rules_give_wave_two_exactly(pipeline: Pipeline) -> None:
    group, alerts = pipeline.prometheus.api("rules")["groups"]
    assert [rule["health"] for rule in group["rules"]] == ["ok"] * len(rules()), group
    assert [rule["health"] for rule in alerts["rules"]] == ["ok"], alerts
    wave2, processes = used(2), reports(2)
    share = {key: n / processes[key[0]] for key, n in wave2.items()}
    shareable = {key for key, n in wave2.items() if n >= K}
    assert shareable == {("", "pyyaml")}
    expected = {
        "hub_namespace_library:python_popcon_library_used:increase30d": wave2,
        "hub_namespace:python_popcon_reports:increase30d": {
            (ns, ""): n for ns, n in processes.items()
        },
        "hub_namespace:python_popcon_reports:increase1d": {
            (ns, ""): n for ns, n in processes.items()
        },
        # One user per process: as many users as processes.
        "hub_namespace_library:python_popcon_library_users:increase30d": wave2,
        "hub_namespace:python_popcon_users:increase30d": {
            (ns, ""): n for ns, n in processes.items()
        },
        "hub_namespace_library:python_popcon_library_share:ratio30d": share,
        "hub_namespace_library:python_popcon_library_used:increase30d_min10": {
            key: wave2[key] for key in shareable
        },
        "hub_namespace_library:python_popcon_library_share:ratio30d_min10": {
            key: share[key] for key in shareable
        },
    }
    assert [record for record, _ in rules()] == list(expected)
    for record, _ in rules():
        got = by_key(pipeline.exact(inline(record, pipeline.window)))
        assert got == expected[record], record
        # What the rule engine recorded over the shipped 30 days: the same series.
        live = by_key(pipeline.prometheus.query(record))
        assert set(live) == set(expected[record]), record


def dashboard_targets() -> list[tuple[int, dict[str, Any]]]:
    board = json.loads(DASHBOARD.read_text())
    return [(panel["id"], target) for panel in board["panels"] for target in panel["targets"]]


def dashboard_expectations(pipeline: Pipeline, namespace: str) -> dict[int, dict[Key, float]]:
    """Each panel's exact series over [t1, t2], for "All" (.*) or one namespace."""
    in_scope = {k: n for k, n in used(2).items() if namespace == ".*" or k[0] == namespace}
    processes = sum(n for ns, n in reports(2).items() if namespace == ".*" or ns == namespace)
    per_library: dict[str, float] = {}
    for (_, library), n in in_scope.items():
        per_library[library] = per_library.get(library, 0) + n
    shareable = {key: n / reports(2)[key[0]] for key, n in in_scope.items() if n >= K}
    return {
        1: {("", ""): processes},
        2: {("", ""): processes},
        3: {("", lib): n for lib, n in per_library.items()},
        4: {("", lib): n / processes for lib, n in per_library.items()},
        5: {("", lib): 1.0 for lib in pipeline.installed if not per_library.get(lib)},
        6: shareable,
        7: {("", lib): n for lib, n in per_library.items()},  # users: one per process here
    }


def unused_in_both(pipeline: Pipeline, namespace: str) -> set[Key]:
    """Panel 5's series over a window that holds both waves."""
    imported = {lib for (ns, lib), n in used(0).items() if n and namespace in (".*", ns)}
    return {("", lib) for lib in pipeline.installed - imported}


def selector_filter(expr: str) -> str | None:
    """The hub_namespace regex a panel applies to a recorded series, if any."""
    found = re.search(r':[a-z0-9_]+\{hub_namespace=~"([^"]*)"\}', expr)
    return found.group(1) if found else None


@pytest.mark.parametrize("namespace", [".*", NAMESPACE], ids=["all", NAMESPACE])
def test_every_dashboard_expression_gives_wave_two_exactly(
    pipeline: Pipeline, namespace: str
) -> None:
    expected = dashboard_expectations(pipeline, namespace)
    targets = dashboard_targets()
    assert sorted(panel for panel, _ in targets) == sorted(expected), "untested panel"
    for panel, target in targets:
        expr = target["expr"].replace("$hub_namespace", namespace)
        # As Grafana sends it (its range is ours), on the recorded series as recorded.
        verbatim = expr.replace("$__range", "1h")
        assert "$" not in verbatim, verbatim
        live = by_key(pipeline.prometheus.query(verbatim))
        # The last hour holds both waves: a library only wave 1 imported is used there.
        live_expected = expected[panel] if panel != 5 else unused_in_both(pipeline, namespace)
        assert set(live) == set(live_expected), (panel, verbatim)
        # Exact: recorded series inlined, every window [t1, t2], evaluated at t2; a
        # selector on a recorded series becomes a filter on the inlined result.
        pattern = selector_filter(expr)
        bare = re.sub(r'(:[a-z0-9_]+)\{hub_namespace=~"[^"]*"\}', r"\1", expr)
        exact = inline(bare, pipeline.window)
        got = by_key(pipeline.exact(exact))
        if pattern is not None:
            got = {key: v for key, v in got.items() if re.fullmatch(pattern, key[0])}
        assert got == expected[panel], (panel, exact)
        if target.get("range"):
            result = pipeline.prometheus.query_range(verbatim, seconds=60, step="5s")
            assert result and all(float(v) >= 0 for item in result for _, v in item["values"])


def test_dashboard_variable_lists_the_hub_namespaces(pipeline: Pipeline) -> None:
    board = json.loads(DASHBOARD.read_text())
    (variable,) = [v for v in board["templating"]["list"] if v["name"] == "hub_namespace"]
    match = re.fullmatch(r"label_values\((\w+), (\w+)\)", variable["definition"])
    assert match, variable["definition"]
    metric, label = match.groups()
    found = pipeline.prometheus.api(f"label/{label}/values", **{"match[]": metric})
    assert found == [NAMESPACE]


# -- popcon-site top / unused -------------------------------------------------------------


def cli(pipeline: Pipeline, *args: str) -> dict[str, Any]:
    command = [str(pipeline.env.root / "bin" / "popcon-site"), *args, "--json"]
    command += ["--prometheus", pipeline.prometheus.url]
    proc = subprocess.run(command, capture_output=True, text=True, env=base_environ(), timeout=60)
    assert proc.returncode == 0, proc.stderr
    return dict(json.loads(proc.stdout))


@pytest.mark.parametrize("namespace", [None, "", NAMESPACE], ids=["all", "default", NAMESPACE])
def test_top_and_unused_give_wave_two_exactly(pipeline: Pipeline, namespace: str | None) -> None:
    in_scope: dict[str, int] = {}
    for (ns, library), n in used(2).items():
        if namespace is None or ns == namespace:
            in_scope[library] = in_scope.get(library, 0) + n
    processes = sum(n for ns, n in reports(2).items() if namespace is None or ns == namespace)
    scope = [] if namespace is None else ["--selector", f'hub_namespace="{namespace}"']
    exact = ["--window", pipeline.window, "--at", f"{pipeline.t2 / 1000:.3f}", *scope]

    top = cli(pipeline, "top", "--limit", "100", *exact)
    ranked = sorted(((lib, n) for lib, n in in_scope.items() if n), key=lambda x: (-x[1], x[0]))
    assert top["reports"] == processes
    assert top["top"] == [
        {"rank": i, "library": lib, "processes": n, "share": round(n / processes, 6)}
        for i, (lib, n) in enumerate(ranked, 1)
    ]
    # The default 30-day window, now, as an admin asks: both waves, exactly (the first
    # wave created the series; increase() never saw it).
    both: dict[str, int] = {}
    for (ns, library), n in used(0).items():
        if (namespace is None or ns == namespace) and n:
            both[library] = both.get(library, 0) + n
    shipped = cli(pipeline, "top", "--limit", "100", *scope)
    assert {row["library"]: row["processes"] for row in shipped["top"]} == both
    assert shipped["reports"] == sum(
        n for ns, n in reports(0).items() if namespace is None or ns == namespace
    )

    # By people (issue 23): every process here is a user of its own.
    people = cli(pipeline, "top", "--users", "--limit", "100", *exact)
    assert (people["users"], people["reports"]) == (processes, processes)
    assert people["top"] == [
        {
            "rank": i,
            "library": lib,
            "users": n,
            "user_share": round(n / processes, 6),
            "processes": n,
        }
        for i, (lib, n) in enumerate(ranked, 1)
    ]

    never = pipeline.installed - {lib for lib, n in in_scope.items() if n}
    unused = cli(pipeline, "unused", *exact)
    assert {row["distribution"] for row in unused["unused"]} == never
    unused = cli(pipeline, "unused", *scope)
    assert {row["distribution"] for row in unused["unused"]} == pipeline.installed - set(both)
