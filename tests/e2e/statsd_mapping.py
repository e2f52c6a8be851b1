"""statsd_exporter's glob mapping, as the exporter applies it, for checking the shipped files.

statsd_exporter (not installable here) splits a statsd name on ``.``; each ``*`` of a
glob matches exactly one component; ``$n`` in labels is the n-th capture; the first
matching rule wins; ``match_metric_type`` restricts a rule to counters, gauges or
timers.  An unmatched name is not one of ours (the exporter would export it under an
escaped name of its own, which no rule, recording rule or dashboard here uses).
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
    components: tuple[str, ...]
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
        assert set(mapping) <= {"match", "match_metric_type", "name", "labels", "ttl"}, mapping
        assert mapping.get("match_type", "glob") == "glob"
        match = mapping["match"]
        components = tuple(match.split("."))
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
        rules.append(Rule(components, metric_type, mapping["name"], tuple(labels.items())))
    return rules


def apply(rules: list[Rule], name: str, metric_type: str) -> tuple[str, dict[str, str]] | None:
    """(Prometheus metric name, labels) for a statsd name, or None when no rule matches."""
    parts = name.split(".")
    for rule in rules:
        if rule.metric_type not in (None, metric_type) or len(parts) != len(rule.components):
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
