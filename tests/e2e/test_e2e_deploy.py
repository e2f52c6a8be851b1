"""The deploy/ kit: every shipped file is parsed and validated, every query is executed.

Exact values of the recording rules and of every dashboard expression come from
promtool (Prometheus's own rule-test engine) on synthetic series with known
increases, counter resets and a namespace; test_e2e_prometheus.py runs the same
files against a live Prometheus fed by real processes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import statsd_mapping
import yaml
from servers import DEPLOY, need

import popcon_site
from popcon_site import _report
from support.e2e import installed_distributions
from support.envs import Env, base_environ

MAPPING = DEPLOY / "statsd-exporter" / "mapping.yml"
RULES = DEPLOY / "prometheus" / "popcon-site.rules.yml"
DASHBOARD = DEPLOY / "grafana" / "popcon-site-dashboard.json"
HELM = DEPLOY / "helm" / "prometheus-statsd-exporter-values.yaml"
Z2JH = DEPLOY / "kubernetes" / "z2jh-config.yaml"
VM = DEPLOY / "vm"
POPCON_KEYS = {
    popcon_site.ENV_ENABLE,
    popcon_site.ENV_HOST,
    popcon_site.ENV_PORT,
    popcon_site.ENV_PREFIX,
    popcon_site.ENV_PROTOCOL,
}


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def promtool(*args: str, cwd: Path | None = None) -> str:
    proc = subprocess.run([need("promtool"), *args], capture_output=True, text=True, cwd=cwd)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout + proc.stderr


def wire_names(prefix: str, libraries: list[str]) -> list[str]:
    """The statsd names popcon-site itself puts on the wire for this prefix."""
    lines = _report.counter_lines(prefix, _report.reports_name_for(prefix), libraries)
    return [line.rpartition(":")[0] for line in lines]


# -- statsd_exporter mapping and Helm values ----------------------------------------------


def test_mapping_maps_every_name_popcon_site_sends() -> None:
    rules = statsd_mapping.load(MAPPING)
    default = wire_names(popcon_site.DEFAULT_PREFIX, ["ruamel-yaml", "zope-interface"])
    assert [statsd_mapping.apply(rules, name, "counter") for name in default] == [
        ("python_popcon_library_used", {"library": "ruamel-yaml"}),
        ("python_popcon_library_used", {"library": "zope-interface"}),
        ("python_popcon_reports", {}),
    ]
    namespaced = wire_names("python_popcon.namespace.jhub-prod.library_used", ["pyyaml"])
    assert [statsd_mapping.apply(rules, name, "counter") for name in namespaced] == [
        ("python_popcon_library_used", {"hub_namespace": "jhub-prod", "library": "pyyaml"}),
        ("python_popcon_reports", {"hub_namespace": "jhub-prod"}),
    ]
    for name, labels in [
        ("python_popcon.library_installed.numpy", {"library": "numpy"}),
        (
            "python_popcon.namespace.jhub-prod.library_installed.numpy",
            {"hub_namespace": "jhub-prod", "library": "numpy"},
        ),
    ]:
        assert statsd_mapping.apply(rules, name, "gauge") == (
            "python_popcon_library_installed",
            labels,
        )


def test_mapping_rejects_unnormalized_names_and_wrong_types() -> None:
    """Why names are normalized: a `*` is one component, so `ruamel.yaml` never matches."""
    rules = statsd_mapping.load(MAPPING)
    assert statsd_mapping.apply(rules, "python_popcon.library_used.ruamel.yaml", "counter") is None
    assert statsd_mapping.apply(rules, "python_popcon.library_used.numpy", "gauge") is None
    assert statsd_mapping.apply(rules, "python_popcon.library_installed.numpy", "counter") is None
    assert "one dot-separated component" in MAPPING.read_text()


def test_helm_values_embed_the_same_mapping() -> None:
    values = load_yaml(HELM)
    assert set(values) <= {"replicaCount", "statsd", "service", "serviceMonitor", "podAnnotations"}
    assert set(values["statsd"]) <= {"udpPort", "tcpPort", "mappingConfig"}
    assert set(values["service"]) <= {"type", "port", "path", "annotations"}
    assert yaml.safe_load(values["statsd"]["mappingConfig"]) == load_yaml(MAPPING)
    statsd_mapping.load(values["statsd"]["mappingConfig"])
    assert values["replicaCount"] == 1
    assert values["statsd"]["udpPort"] == values["statsd"]["tcpPort"] == 9125
    annotations = values["service"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == values["service"]["port"] == 9102
    assert "checksum/config" in HELM.read_text()  # why a mapping change restarts the pod


# -- recording rules and the dashboard, exactly, with promtool ----------------------------


def test_recording_rules_pass_promtool_check_and_their_unit_tests() -> None:
    assert "SUCCESS: 9 rules found" in promtool("check", "rules", str(RULES))
    assert "SUCCESS" in promtool("test", "rules", "popcon-site.rules.test.yml", cwd=RULES.parent)


def dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


def test_dashboard_json_is_a_well_formed_grafana_dashboard() -> None:
    board = dashboard()
    assert board["uid"] == "popcon-site" and board["schemaVersion"] >= 36
    panels = board["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["hub_namespace"]["includeAll"] and variables["hub_namespace"]["allValue"]
    for panel in panels:
        assert set(panel["gridPos"]) == {"h", "w", "x", "y"}
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["refId"] and target["expr"]
            assert target["datasource"] == panel["datasource"]
            assert 'hub_namespace=~"$hub_namespace"' in target["expr"]


# Synthetic series, one sample an hour for 30 days (720 h); promtool evaluates at 720h.
DASHBOARD_SERIES = {
    'python_popcon_reports{job="popcon-site"}': "0+2x720",
    'python_popcon_library_used{job="popcon-site", library="pyyaml"}': "0+1x720",
    'python_popcon_library_used{job="popcon-site", library="ruamel-yaml"}': "0+0x360 1+0x360",
    # an exporter restart at hour 361
    'python_popcon_library_used{job="popcon-site", library="msgpack"}': "0+1x360 0+1x360",
    'python_popcon_reports{job="popcon-site", hub_namespace="jhub-prod"}': "0+1x720",
    # imported by 9 processes in the last 10 hours: under k = 10
    'python_popcon_library_used{job="popcon-site", hub_namespace="jhub-prod", library="pyyaml"}': (
        "0+0x710 0+1x10"
    ),
    # Distinct users (issue 23) at 720 h: pyyaml 120, msgpack 5 (under k = 10 users, 719
    # processes), jhub-prod's pyyaml 9; ruamel-yaml none.
    'python_popcon_library_users{job="popcon-site", library="pyyaml"}': "0+0x600 1+1x120",
    'python_popcon_library_users{job="popcon-site", library="msgpack"}': "0+0x715 1+1x5",
    'python_popcon_library_users{job="popcon-site", hub_namespace="jhub-prod", library="pyyaml"}': (
        "0+0x710 0+1x10"
    ),
    **{
        f'python_popcon_library_installed{{job="popcon-site", library="{lib}"}}': "1+0x720"
        for lib in ["pyyaml", "ruamel-yaml", "zope-interface", "msgpack", "lazy-importer"]
    },
    **{
        f'python_popcon_library_installed{{job="popcon-site", hub_namespace="jhub-prod", '
        f'library="{lib}"}}': "1+0x720"
        for lib in ["pyyaml", "charset-normalizer", "numpy"]
    },
}


def dashboard_expectations(namespace: str) -> dict[int, dict[str, float]]:
    """Exact values per panel: {series labels as promtool writes them: value}."""
    if namespace == ".*":
        reports = 1440 + 720
        used = {"pyyaml": 720 + 9, "ruamel-yaml": 1, "msgpack": 360 + 359}
        never = ["zope-interface", "lazy-importer", "charset-normalizer", "numpy"]
        # msgpack: 719 processes but 5 users, withheld by k (users) as well.
        shareable = {'{library="pyyaml"}': 720 / 1440}
        users = {"pyyaml": 120 + 9, "msgpack": 5}
        per_hour = 2 + 1
    else:
        reports, used, per_hour = 720, {"pyyaml": 9}, 1
        users = {"pyyaml": 9}
        never = ["charset-normalizer", "numpy"]
        shareable = {}
    return {
        1: {"{}": reports},
        2: {"{}": per_hour},
        3: {f'{{library="{lib}"}}': n for lib, n in used.items()},
        4: {f'{{library="{lib}"}}': n / reports for lib, n in used.items()},
        5: {f'{{library="{lib}"}}': 1 for lib in never},
        6: {
            "hub_namespace_library:python_popcon_library_share:ratio30d_min10" + labels: value
            for labels, value in shareable.items()
        },
        7: {f'{{library="{lib}"}}': n for lib, n in users.items()},
    }


@pytest.mark.parametrize("namespace", [".*", "jhub-prod"], ids=["all", "jhub-prod"])
def test_every_dashboard_expression_gives_exact_values(tmp_path: Path, namespace: str) -> None:
    expected = dashboard_expectations(namespace)
    tests = []
    for panel in dashboard()["panels"]:
        for target in panel["targets"]:
            expr = target["expr"].replace("$hub_namespace", namespace).replace("$__range", "30d")
            assert "$" not in expr
            tests.append(
                {
                    "expr": expr,
                    "eval_time": "720h",
                    "exp_samples": [
                        {"labels": labels, "value": float(value)}
                        for labels, value in expected.pop(panel["id"]).items()
                    ],
                }
            )
    assert not expected, f"panels missing from the dashboard: {sorted(expected)}"
    shutil.copy(RULES, tmp_path / RULES.name)
    (tmp_path / "dashboard.test.yml").write_text(
        yaml.safe_dump(
            {
                "rule_files": [RULES.name],
                "evaluation_interval": "1d",
                "tests": [
                    {
                        "interval": "1h",
                        "input_series": [
                            {"series": series, "values": values}
                            for series, values in DASHBOARD_SERIES.items()
                        ],
                        "promql_expr_test": tests,
                    }
                ],
            },
            sort_keys=False,
        )
    )
    assert "SUCCESS" in promtool("test", "rules", "dashboard.test.yml", cwd=tmp_path)


# -- Kubernetes / JupyterHub --------------------------------------------------------------


def test_z2jh_config_reports_to_the_exporter_of_the_helm_values() -> None:
    config = load_yaml(Z2JH)
    helm = load_yaml(HELM)
    env = config["singleuser"]["extraEnv"]
    assert all(isinstance(v, str) for v in env.values())  # Kubernetes wants strings
    assert set(env) <= POPCON_KEYS
    parsed = _report.config_from_environ(env)
    assert popcon_site.is_true(env[popcon_site.ENV_ENABLE])
    assert parsed.port == helm["statsd"]["udpPort"]
    assert parsed.protocol == "udp"
    # <release>-<chart>.<namespace>.svc.cluster.local., the chart's Service name
    assert re.fullmatch(
        r"[a-z0-9-]+-prometheus-statsd-exporter\.monitoring\.svc\.cluster\.local\.", parsed.host
    )

    (rule,) = config["singleuser"]["networkPolicy"]["egress"]
    assert rule["ports"] == [{"port": parsed.port, "protocol": "UDP"}]
    (peer,) = rule["to"]
    assert peer["podSelector"]["matchLabels"] == {
        "app.kubernetes.io/name": "prometheus-statsd-exporter"
    }
    assert peer["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "monitoring"}

    command = config["singleuser"]["lifecycleHooks"]["postStart"]["exec"]["command"]
    assert command[:2] == ["sh", "-c"]
    assert command[2].startswith("PYTHON_POPCONTEST_ENABLE=0 ")
    assert command[2].endswith(" || true")  # a failing postStart hook kills the pod
    assert "popcon-site-inventory.py" in command[2]


def test_z2jh_namespace_snippet_gives_the_hub_namespace_label(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from traitlets.config import Config

    config = load_yaml(Z2JH)
    c = Config()
    # What z2jh's jupyterhub_config.py does before running hub.extraConfig.
    c.KubeSpawner.environment = dict(config["singleuser"]["extraEnv"])
    monkeypatch.setenv("POD_NAMESPACE", "jhub-prod")
    for code in config["hub"]["extraConfig"].values():
        exec(compile(code, "extraConfig", "exec"), {"c": c})
    env = c.KubeSpawner.environment
    parsed = _report.config_from_environ(env)
    assert parsed.prefix == "python_popcon.namespace.jhub-prod.library_used"
    rules = statsd_mapping.load(MAPPING)
    assert [
        statsd_mapping.apply(rules, name, "counter")
        for name in wire_names(parsed.prefix, ["numpy"])
    ] == [
        ("python_popcon_library_used", {"hub_namespace": "jhub-prod", "library": "numpy"}),
        ("python_popcon_reports", {"hub_namespace": "jhub-prod"}),
    ]


# -- the plain VM -------------------------------------------------------------------------


def env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines (comments and blanks allowed), as systemd and `set -a; .` read them."""
    values = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, sep, value = line.partition("=")
            assert sep and re.fullmatch(r"[A-Z_][A-Z0-9_]*", key) and value == value.strip()
            assert not any(c in value for c in "\"'$`\\ "), line  # same meaning for all readers
            values[key] = value
    return values


def test_vm_environment_file_enables_reporting_to_collectd() -> None:
    values = env_file(VM / "popcon-site.env")
    assert set(values) <= POPCON_KEYS
    parsed = _report.config_from_environ(values)
    assert popcon_site.is_true(values[popcon_site.ENV_ENABLE])
    assert (parsed.host, parsed.protocol) == ("127.0.0.1", "udp")  # collectd: UDP only
    collectd = (VM / "collectd.conf").read_text()
    statsd_block = re.search(r"<Plugin statsd>(.*?)</Plugin>", collectd, re.S)
    assert statsd_block and f'Port "{parsed.port}"' in statsd_block.group(1)
    exporter_unit = (VM / "systemd" / "statsd-exporter.service").read_text()
    assert f"--statsd.listen-udp=127.0.0.1:{parsed.port}" in exporter_unit


def test_profile_script_exports_the_environment_file(tmp_path: Path) -> None:
    shutil.copy(VM / "popcon-site.env", tmp_path / "env")
    script = tmp_path / "popcon-site.sh"
    shipped = (VM / "popcon-site.sh").read_text()
    assert ". /etc/popcon-site/env" in shipped
    script.write_text(shipped.replace("/etc/popcon-site/env", str(tmp_path / "env")))
    for shell in ("sh", "bash"):
        proc = subprocess.run(
            [shell, "-c", f". {script} && env"],
            capture_output=True,
            text=True,
            env={"PATH": "/usr/bin:/bin"},
        )
        assert proc.returncode == 0, proc.stderr
        exported = dict(line.partition("=")[::2] for line in proc.stdout.splitlines())
        assert {k: v for k, v in exported.items() if k.startswith("PYTHON_POPCONTEST_")} == (
            env_file(VM / "popcon-site.env")
        )


def test_collectd_config_passes_collectd_check(tmp_path: Path) -> None:
    text = f'BaseDir "{tmp_path}"\nPIDFile "{tmp_path}/pid"\n' + (VM / "collectd.conf").read_text()
    (tmp_path / "collectd.conf").write_text(text)
    proc = subprocess.run(
        [need("collectd"), "-t", "-C", str(tmp_path / "collectd.conf")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("name", ["prometheus.yml", "prometheus-statsd-exporter.yml"])
def test_vm_prometheus_configs_pass_promtool(tmp_path: Path, name: str) -> None:
    config = load_yaml(VM / name)
    assert config["rule_files"] == ["/etc/prometheus/popcon-site.rules.yml"]
    config["rule_files"] = [str(RULES)]
    (tmp_path / name).write_text(yaml.safe_dump(config))
    assert "SUCCESS" in promtool("check", "config", str(tmp_path / name))
    (job,) = config["scrape_configs"]
    (target,) = job["static_configs"][0]["targets"]
    if name == "prometheus.yml":
        assert target == "127.0.0.1:9103" and 'Port "9103"' in (VM / "collectd.conf").read_text()
    else:
        unit = (VM / "systemd" / "statsd-exporter.service").read_text()
        assert f"--web.listen-address={target}" in unit


UNIT_KEYS = {
    "Unit": {"Description", "Documentation", "After", "Wants", "Requires"},
    "Service": {
        "Type",
        "DynamicUser",
        "ExecStart",
        "ExecReload",
        "Restart",
        "RestartSec",
        "NoNewPrivileges",
        "ProtectSystem",
        "ProtectHome",
        "PrivateTmp",
        "EnvironmentFile",
    },
    "Timer": {"OnCalendar", "RandomizedDelaySec", "Persistent", "Unit"},
    "Install": {"WantedBy"},
}


def unit_file(path: Path) -> dict[str, dict[str, list[str]]]:
    """A systemd unit as {section: {key: [values]}}, with line continuations joined."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    text = re.sub(r"\\\n\s*", " ", path.read_text())
    for line in text.splitlines():
        if not line.strip() or line.startswith(("#", ";")):
            continue
        header = re.fullmatch(r"\[(\w+)\]", line)
        if header:
            current = sections.setdefault(header.group(1), {})
            continue
        key, sep, value = line.partition("=")
        assert current is not None and sep, f"{path.name}: {line!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def test_systemd_units_are_valid() -> None:
    units = sorted((VM / "systemd").rglob("*.service")) + sorted((VM / "systemd").rglob("*.timer"))
    units += sorted((VM / "systemd").rglob("*.conf"))
    assert len(units) == 4
    parsed = {path.name: unit_file(path) for path in units}
    for name, sections in parsed.items():
        for section, keys in sections.items():
            assert set(keys) <= UNIT_KEYS[section], (name, section, keys)
        for command in sections.get("Service", {}).get("ExecStart", []):
            assert command.startswith("/"), command
    timer = parsed["popcon-site-inventory.timer"]
    assert timer["Timer"]["Unit"] == ["popcon-site-inventory.service"]
    inventory = parsed["popcon-site-inventory.service"]["Service"]
    assert inventory["EnvironmentFile"] == ["/etc/popcon-site/env"]
    (command,) = inventory["ExecStart"]
    assert command.startswith("/usr/bin/env PYTHON_POPCONTEST_ENABLE=0 ")
    assert command.endswith("/popcon-site-inventory.py")
    assert parsed["popcon-site.conf"]["Service"]["EnvironmentFile"] == ["/etc/popcon-site/env"]

    analyze = shutil.which("systemd-analyze")
    if analyze:  # systemd's own checker, where systemd is installed (it is on CI's machine)
        for path in units:
            if path.suffix == ".conf":
                continue  # a drop-in, not a unit
            proc = subprocess.run(
                [analyze, "verify", "--man=no", str(path)], capture_output=True, text=True
            )
            problems = [
                line
                for line in (proc.stdout + proc.stderr).splitlines()
                # Site-specific binaries, and a root without a booted systemd.
                if not re.search(
                    r"Command /usr/local/bin/statsd_exporter is not executable"
                    r"|sysinit.target not found|Command /bin/kill is not executable",
                    line,
                )
            ]
            assert not problems, (path.name, problems)


def _run_jupyterhub_snippet(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], **environ: str
) -> tuple[dict[str, str], str]:
    from traitlets.config import Config

    for key in list(os.environ):
        if key.startswith("PYTHON_POPCONTEST_") or key == "POPCON_SITE_ENV_FILE":
            monkeypatch.delenv(key)
    for key, value in environ.items():
        monkeypatch.setenv(key, value)
    c = Config()
    code = (VM / "jupyterhub_config.d" / "popcon-site.py").read_text()
    exec(compile(code, "popcon-site.py", "exec"), {"get_config": lambda: c})
    environment: dict[str, str] = c.Spawner.environment.get_value({})  # what the hub merges
    return environment, capsys.readouterr().err


def test_jupyterhub_snippet_reads_the_env_file_however_the_hub_started(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # A hub started by hand, in a container or by TLJH has none of the settings in its
    # environment: the snippet reads /etc/popcon-site/env (here, the shipped file) itself.
    shipped = env_file(VM / "popcon-site.env")
    environment, err = _run_jupyterhub_snippet(
        monkeypatch, capsys, POPCON_SITE_ENV_FILE=str(VM / "popcon-site.env")
    )
    assert environment == shipped and err == ""
    # The hub's own environment (the systemd drop-in, `docker run -e`) wins over the file.
    environment, err = _run_jupyterhub_snippet(
        monkeypatch,
        capsys,
        POPCON_SITE_ENV_FILE=str(VM / "popcon-site.env"),
        PYTHON_POPCONTEST_STATSD_HOST="10.0.0.5",
        PYTHON_POPCONTEST_STATSD_PREFIX="python_popcon.namespace.a.library_used",
    )
    assert environment == {
        **shipped,
        "PYTHON_POPCONTEST_STATSD_HOST": "10.0.0.5",
        "PYTHON_POPCONTEST_STATSD_PREFIX": "python_popcon.namespace.a.library_used",
    }
    assert err == ""


def test_jupyterhub_snippet_says_when_servers_will_not_report(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    environment, err = _run_jupyterhub_snippet(
        monkeypatch, capsys, POPCON_SITE_ENV_FILE=str(tmp_path / "missing")
    )
    assert environment == {}
    assert err == (
        "popcon-site: no PYTHON_POPCONTEST_* settings in the hub's environment nor in "
        f"{tmp_path / 'missing'}: single-user servers will not report\n"
    )


# -- the inventory script -----------------------------------------------------------------


def test_inventory_prints_what_the_mapping_accepts(e2e_env: Env) -> None:
    script = DEPLOY / "inventory" / "popcon-site-inventory.py"
    rules = statsd_mapping.load(MAPPING)
    for prefix, labels in [
        (None, {}),
        ("python_popcon.namespace.jhub-prod.library_used", {"hub_namespace": "jhub-prod"}),
    ]:
        extra = {"PYTHON_POPCONTEST_STATSD_PREFIX": prefix} if prefix else {}
        proc = e2e_env.run(str(script), "--print", env=base_environ(**extra))
        assert proc.returncode == 0, proc.stderr
        found = set()
        for line in proc.stdout.splitlines():
            name, _, value = line.partition(":")
            assert value == "1|g", line
            mapped = statsd_mapping.apply(rules, name, "gauge")
            assert mapped is not None and mapped[0] == "python_popcon_library_installed", line
            assert {k: v for k, v in mapped[1].items() if k != "library"} == labels
            found.add(mapped[1]["library"])
        assert found == installed_distributions(e2e_env)


def test_inventory_fails_cleanly_on_a_bad_port(e2e_env: Env) -> None:
    script = DEPLOY / "inventory" / "popcon-site-inventory.py"
    proc = e2e_env.run(str(script), env=base_environ(PYTHON_POPCONTEST_STATSD_PORT="99999"))
    assert (proc.returncode, proc.stdout) == (1, "")
    assert proc.stderr == (
        "popcon-site-inventory: PYTHON_POPCONTEST_STATSD_PORT='99999' is outside 1-65535\n"
    )


def test_deploy_readme_describes_every_shipped_file() -> None:
    readme = (DEPLOY / "README.md").read_text()
    for path in sorted(DEPLOY.rglob("*")):
        if path.is_file() and path.name != "README.md":
            relative = str(path.relative_to(DEPLOY))
            assert relative in readme, f"deploy/README.md does not mention {relative}"


def test_rules_and_dashboard_count_as_the_commands_do() -> None:
    """The recording rules and every dashboard count use the commands' exact expression
    (cli/_prometheus.py count_in), not increase(), which misses a series' first count."""
    from popcon_site.cli._prometheus import count_in

    rules = {
        rule.get("record") or rule.get("alert"): rule["expr"]
        for group in load_yaml(RULES)["groups"]
        for rule in group["rules"]
    }
    used, reports = "python_popcon_library_used", "python_popcon_reports"
    assert rules["hub_namespace_library:python_popcon_library_used:increase30d"] == count_in(
        used, "30d", "hub_namespace, library"
    )
    assert rules["hub_namespace:python_popcon_reports:increase30d"] == count_in(
        reports, "30d", "hub_namespace"
    )
    assert rules["hub_namespace:python_popcon_reports:increase1d"] == count_in(
        reports, "1d", "hub_namespace"
    )
    users = "python_popcon_library_users"
    assert rules["hub_namespace_library:python_popcon_library_users:increase30d"] == count_in(
        users, "30d", "hub_namespace, library"
    )
    assert rules["hub_namespace:python_popcon_users:increase30d"] == count_in(
        "python_popcon_users", "30d", "hub_namespace"
    )
    selector = '{hub_namespace=~"$hub_namespace"}'
    exprs = [
        target["expr"]
        for panel in json.loads(DASHBOARD.read_text())["panels"]
        for target in panel.get("targets", [])
    ]
    for expr in exprs:
        assert "increase(" not in expr.replace("round(increase(", ""), expr
    joined = "\n".join(exprs)
    assert count_in(used + selector, "$__range", "library") in joined
    assert count_in(reports + selector, "$__range") in joined
    assert count_in(users + selector, "$__range", "library") in joined
