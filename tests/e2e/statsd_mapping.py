"""statsd_exporter's mapping, as the exporter applies it: a unit-test helper only.

The evidence that the shipped mapping works is test_e2e_exporter.py, which runs the
real statsd_exporter; this model lets the fast tests check names without the binary.
statsd_exporter splits a statsd name on ``.``; each ``*`` of a glob matches exactly one
component; ``$n`` in labels is the n-th capture.  Globs are tried first (the first
matching one wins), then ``match_type: regex`` rules in file order.
``match_metric_type`` restricts a rule to counters, gauges or timers.  An unmatched
name is not one of ours (the exporter would export it under an escaped name of its
own, which no rule, recording rule or dashboard here uses).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_PLACEHOLDER = re.compile(r"\$\{?(\d+)\}?")
_PROM_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


@dataclass(frozen=True)
class Rule:
    components: tuple[str, ...]  # of a glob; empty for a regex rule
    regex: re.Pattern[str] | None
    metric_type: str | None
    name: str
    labels: tuple[tuple[str, str], ...]


def load(source: str | Path | dict[str, Any]) -> list[Rule]:
    """Parse and validate a mapping config (a path, YAML text or the parsed dict)."""
    import yaml

    if isinstance(source, Path):
        source = source.read_text()
    config = yaml.safe_load(source) if isinstance(source, str) else source
    assert set(config) <= {"defaults", "mappings"}, config.keys()
    rules = []
    for mapping in config["mappings"]:
        keys = {"match", "match_type", "match_metric_type", "name", "labels", "ttl"}
        assert set(mapping) <= keys, mapping
        match = mapping["match"]
        match_type = mapping.get("match_type", "glob")
        assert match_type in ("glob", "regex"), match_type
        if match_type == "regex":
            # Anchored, as the exporter does not anchor it for us.
            assert match.startswith("^") and match.endswith("$"), match
            regex, components = re.compile(match), ()
            captures = regex.groups
        else:
            regex, components = None, tuple(match.split("."))
            assert all(c == "*" or re.fullmatch(r"[A-Za-z0-9_-]+", c) for c in components), match
            captures = components.count("*")
        labels = {str(k): str(v) for k, v in (mapping.get("labels") or {}).items()}
        for label, template in labels.items():
            assert _LABEL_NAME.fullmatch(label) and not label.startswith("__"), label
            for index in _PLACEHOLDER.findall(template):
                assert 1 <= int(index) <= captures, f"{label}: ${index} in {match}"
        assert _PROM_NAME.fullmatch(mapping["name"]), mapping["name"]
        if "ttl" in mapping:
            assert re.fullmatch(r"(\d+(ns|us|µs|ms|s|m|h))+|0", str(mapping["ttl"]))
        metric_type = mapping.get("match_metric_type")
        assert metric_type in (None, "counter", "gauge", "observer", "timer"), metric_type
        rules.append(Rule(components, regex, metric_type, mapping["name"], tuple(labels.items())))
    # The exporter's FSM (every glob) answers first; regex rules only when it finds nothing.
    return sorted(rules, key=lambda rule: rule.regex is not None)


def apply(rules: list[Rule], name: str, metric_type: str) -> tuple[str, dict[str, str]] | None:
    """(Prometheus metric name, labels) for a statsd name, or None when no rule matches."""
    parts = name.split(".")
    for rule in rules:
        if rule.metric_type not in (None, metric_type):
            continue
        if rule.regex is not None:
            found = rule.regex.search(name)
            if found:
                captures = list(found.groups())
                return rule.name, {
                    label: _expand(template, captures) for label, template in rule.labels
                }
            continue
        if len(parts) != len(rule.components):
            continue
        captures = []
        for part, pattern in zip(parts, rule.components):
            if pattern == "*":
                if not part:
                    break
                captures.append(part)
            elif part != pattern:
                break
        else:
            return rule.name, {
                label: _expand(template, captures) for label, template in rule.labels
            }
    return None


def _expand(template: str, captures: list[str]) -> str:
    return _PLACEHOLDER.sub(lambda m: captures[int(m.group(1)) - 1], template)
