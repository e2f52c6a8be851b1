"""What popcon-site sent, read back with popcon_site._report: the one wire format.

Parsing goes through ``parse_lines``; a report is checked against what
``counter_lines`` and ``datagrams`` write.  ``LINE`` and ``NAME`` are the tests' own
statement of what may ever be on the wire, kept independent of the code under test
(``is_safe_name``) so that hostile-input tests can count what would be injected.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from popcon_site import DEFAULT_PREFIX
from popcon_site._report import counter_lines, datagrams, parse_lines, reports_name_for

PREFIX = DEFAULT_PREFIX + "."  # "python_popcon.library_used."
REPORTS_NAME = reports_name_for(DEFAULT_PREFIX)  # "python_popcon.reports"
REPORTS = f"{REPORTS_NAME}:1|c"

LINE = re.compile(rb"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*:1\|c")
NAME = re.compile(r"[a-z0-9]([a-z0-9-]{0,198}[a-z0-9])?")


def check_wire(packets: Iterable[bytes], prefix: bytes = PREFIX.encode()) -> list[str]:
    """Every datagram well formed; returns the lines.  Fails on any injected or malformed byte."""
    lines: list[str] = []
    for packet in packets:
        assert 0 < len(packet) < 512, len(packet)
        for line in packet.split(b"\n"):
            assert LINE.fullmatch(line), f"malformed or injected line {line!r} in {packet!r}"
            name = line[: -len(b":1|c")]
            if name.startswith(prefix):
                assert NAME.fullmatch(name[len(prefix) :].decode()), line
            lines.append(line.decode("ascii"))
    return lines


def counters(packets: Iterable[bytes]) -> dict[str, int]:
    """Counter name -> total over ``packets``; fails on any line that is not a counter."""
    counts, other = parse_lines(packets)
    assert other == [], f"not statsd counters: {other!r}"
    return counts


def libraries(lines: Iterable[str], prefix: str = PREFIX) -> set[str]:
    """The distribution names in counter lines; fails on any line but ``<name>:1|c``."""
    found = set()
    for line in lines:
        counts = counters([line.encode("ascii")])
        assert [f"{name}:{n}|c" for name, n in counts.items()] == [line], f"unexpected {line!r}"
        (name,) = counts
        if name.startswith(prefix):
            found.add(name[len(prefix) :])
    return found


def report(packet: bytes, prefix: str = DEFAULT_PREFIX) -> frozenset[str]:
    """The distributions one process reported in one datagram.

    Fails unless the datagram is well formed (``check_wire``), holds each counter once
    with the reports counter last, and is byte for byte what ``counter_lines`` and
    ``datagrams`` write for those names.
    """
    check_wire([packet], (prefix + ".").encode())
    counts = counters([packet])
    # Checked here, not only by comparing with counter_lines: a defect there is in both.
    reports = reports_name_for(prefix)
    assert set(counts.values()) == {1} and counts.get(reports) == 1, f"sent twice: {packet!r}"
    assert packet.endswith(f"{reports}:1|c".encode()), f"reports is not last: {packet!r}"
    names = frozenset(name[len(prefix) + 1 :] for name in counts if name.startswith(prefix + "."))
    expected = datagrams(counter_lines(prefix, reports, names))
    assert [packet] == expected, (packet, expected)
    return names


def per_process(packets: Iterable[bytes], prefix: str = DEFAULT_PREFIX) -> list[frozenset[str]]:
    """One set of distributions per datagram, in arrival order (one datagram per process)."""
    return [report(packet, prefix) for packet in packets]
