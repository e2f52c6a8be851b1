"""Medians and spreads, paired by round: the machine is noisy, drift cancels within a round."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

from popcon_bench.runner import Sample, Variant


@dataclass(frozen=True)
class Summary:
    """Median and interquartile range (25th-75th percentile) of n values."""

    median: float
    p25: float
    p75: float
    n: int

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def summarize(values: Sequence[float]) -> Summary:
    if not values:
        return Summary(float("nan"), float("nan"), float("nan"), 0)
    if len(values) == 1:
        return Summary(values[0], values[0], values[0], 1)
    quartiles = statistics.quantiles(values, n=4, method="inclusive")
    return Summary(statistics.median(values), quartiles[0], quartiles[2], len(values))


Field = Callable[[Sample], float]

FIELDS: dict[str, Field] = {
    "total_ms": lambda s: s.total_ns / 1e6,
    "start_ms": lambda s: s.start_ns / 1e6,
    "body_ms": lambda s: s.body_ns / 1e6,
    "exit_ms": lambda s: s.exit_ns / 1e6,
    "cpu_ms": lambda s: s.cpu_ns / 1e6,
    "maxrss_mb": lambda s: s.maxrss_kb / 1024,
}


def values(variant: Variant, field: Field) -> list[float]:
    return [field(sample) for _round, sample in variant.samples]


def paired(variant: Variant, reference: Variant, field: Field, ratio: bool) -> Summary:
    """Per round, variant minus (or over) the reference run of the same round; summarized."""
    ref = {round_index: field(sample) for round_index, sample in reference.samples}
    out = []
    for round_index, sample in variant.samples:
        if round_index in ref:
            value = field(sample)
            if ratio:
                if ref[round_index] > 0:
                    out.append(value / ref[round_index])
            else:
                out.append(value - ref[round_index])
    return summarize(out)


def difference_of_medians(variant: Variant, reference: Variant, field: Field) -> float:
    """For variants run in fewer rounds than the reference: median minus median."""
    return statistics.median(values(variant, field)) - statistics.median(values(reference, field))


def hook_ms(variant: Variant) -> Summary:
    return summarize([s.hook_ns / 1e6 for _r, s in variant.samples if s.hook_ns is not None])
