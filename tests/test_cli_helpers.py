"""The command line's parsing and formatting helpers, in this process (no subprocess).

tests/test_cli.py runs the commands for real; these pin the pieces they are made of.
"""

from __future__ import annotations

import argparse
import importlib

import pytest

from popcon_site._installed import required_name
from popcon_site.cli import COMMANDS, _parser
from popcon_site.cli._output import CommandError, age, bar, one_line, size, table
from popcon_site.cli._prometheus import Query, base_url, parse_time

T0 = 1_700_000_000.0  # 2023-11-14 22:13:20 UTC

# -- the parser -----------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["status", "which", "watch", "index", "unused", "top", "serve"])
def test_each_command_has_its_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert command in COMMANDS
    with pytest.raises(SystemExit) as info:
        _parser().parse_args([command, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: popcon-site {command} [-h] [--json]")
    help_text = importlib.import_module(f"popcon_site.cli.{command}").HELP
    assert " ".join(help_text.split()) in " ".join(out.split())


# -- Prometheus: URL, time, query options ---------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("http://prometheus:9090", ("http://prometheus:9090", None)),
        (" https://prom.example/sub/path/ ", ("https://prom.example/sub/path", None)),
        (
            "http://admin:s%3Acret@127.0.0.1:9090/",
            ("http://127.0.0.1:9090", "Basic YWRtaW46czpjcmV0"),
        ),
        ("http://user@127.0.0.1", ("http://127.0.0.1", "Basic dXNlcjo=")),
    ],
)
def test_base_url(raw: str, expected: tuple[str, str | None]) -> None:
    assert base_url(raw) == expected


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("ftp://127.0.0.1/", "--prometheus must be an http:// or https:// URL"),
        ("127.0.0.1:9090", "--prometheus must be an http:// or https:// URL"),
        ("http://", "--prometheus must be an http:// or https:// URL"),
        ("http://127.0.0.1:99999", "--prometheus is not a URL: "),
        ("http://127.0.0.1:9090/?x=1", "--prometheus must be a base URL, without ? or #"),
        ("http://127.0.0.1:9090/#top", "--prometheus must be a base URL, without ? or #"),
    ],
)
def test_bad_base_url(raw: str, reason: str) -> None:
    with pytest.raises(CommandError) as info:
        base_url(raw)
    assert str(info.value).startswith(reason)
    assert info.value.status == 2


@pytest.mark.parametrize(
    ("raw", "seconds"),
    [
        ("1700000000", T0),
        (" 1700000000.5 ", T0 + 0.5),
        ("2023-11-14T22:13:20Z", T0),
        ("2023-11-14T22:13:20+00:00", T0),
        ("2023-11-14T22:13:20+01:00", T0 - 3600),
        ("2023-11-14T22:13:20", T0),  # no zone: UTC, not the local time
    ],
)
def test_parse_time(raw: str, seconds: float) -> None:
    assert parse_time(raw) == seconds


@pytest.mark.parametrize("raw", ["yesterday", "", "2023-13-01T00:00:00Z", "17e8x"])
def test_bad_time(raw: str) -> None:
    with pytest.raises(CommandError, match="is neither Unix seconds nor an RFC 3339 time"):
        parse_time(raw)


def query(**options: object) -> Query:
    values: dict[str, object] = {
        "prometheus": "http://127.0.0.1:9090",
        "window": "30d",
        "selector": "",
        "at": "1700000000",
        "timeout": 10.0,
    }
    values.update(options)
    return Query(argparse.Namespace(**values))


@pytest.mark.parametrize("window", ["30d", "12h", "1w", "1y", "500ms", "1h30m", "90s"])
def test_windows_prometheus_accepts(window: str) -> None:
    assert query(window=window).window == window


@pytest.mark.parametrize("window", ["30x", "30d]) or vector(1", "", "d", "1.5h", "30 d", "-1d"])
def test_windows_that_are_not_durations(window: str) -> None:
    with pytest.raises(CommandError, match="is not a Prometheus duration"):
        query(window=window)


@pytest.mark.parametrize(
    ("selector", "kept", "matchers"),
    [
        ("", "", ""),
        ('namespace="hub"', 'namespace="hub"', '{namespace="hub"}'),
        (' { namespace="hub" } ', 'namespace="hub"', '{namespace="hub"}'),
        ('mylibrary="x"', 'mylibrary="x"', '{mylibrary="x"}'),  # only the label itself
    ],
)
def test_selector(selector: str, kept: str, matchers: str) -> None:
    q = query(selector=selector)
    assert (q.selector, q.matchers()) == (kept, matchers)


@pytest.mark.parametrize(
    "selector",
    [
        'library="six"',
        '{library!="six"}',
        'namespace="x",library=~"a.*"',
        'namespace="x", library!~"a"',
        '__name__="python_popcon_reports"',
    ],
)
def test_selector_on_library_or_name_is_refused(selector: str) -> None:
    with pytest.raises(CommandError, match="must not match on library or __name__"):
        query(selector=selector)


@pytest.mark.parametrize("timeout", [0.0, -1.0, float("nan")])
def test_timeout_must_be_positive(timeout: float) -> None:
    with pytest.raises(CommandError, match="--timeout must be positive"):
        query(timeout=timeout)


def test_query_describes_its_window() -> None:
    q = query(selector='namespace="hub"', window="1w")
    assert q.at == T0
    assert q.describe() == 'in the 1w before 2023-11-14 22:13:20 UTC where namespace="hub"'
    assert q.as_json() == {
        "prometheus": "http://127.0.0.1:9090",
        "window": "1w",
        "selector": 'namespace="hub"',
        "time": T0,
    }


# -- output ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (None, "?"),
        (0, "0 B"),
        (1023, "1023 B"),
        (1024, "1.0 KiB"),
        (1536, "1.5 KiB"),
        (1024**2, "1.0 MiB"),
        (5 * 1024**3, "5.0 GiB"),
        (1024**4, "1024.0 GiB"),
    ],
)
def test_size(n: int | None, text: str) -> None:
    assert size(n) == text


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (-5, "0 s ago"),  # a clock that went back
        (59.9, "59 s ago"),
        (60, "1 min ago"),
        (3599, "59 min ago"),
        (3600, "1 h ago"),
        (86399, "23 h ago"),
        (86400, "1 day ago"),
        (2 * 86400, "2 days ago"),
    ],
)
def test_age(seconds: float, text: str) -> None:
    assert age(seconds) == text


def test_bar_resolution() -> None:
    assert bar(1.0) == "█" * 30
    assert bar(0.5) == "█" * 15
    assert bar(1 / 240) == "▏"  # one eighth of a character
    assert bar(0.0) == ""
    assert bar(0.55, width=10) == "█" * 5 + "▌"
    assert bar(2.0) == "█" * 30 and bar(-1.0) == ""  # clamped
    assert bar(0.5, blocks=False) == "#" * 15


def test_table() -> None:
    rows = [["a", "bb"], ["ccc", "d"]]
    assert table(rows) == "  a    bb\n  ccc  d"
    assert table(rows, right={1}, indent="") == "a    bb\nccc   d"


def test_one_line() -> None:
    assert one_line("no such\n  file:\t'x'") == "no such file: 'x'"


# -- installed metadata ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("requirement", "name"),
    [
        ("six>=1.5", "six"),
        ("Zope.Interface ; python_version < '3.12'", "zope-interface"),  # markers not evaluated
        ("typing_extensions>=4; sys_platform == 'win32'", "typing-extensions"),
        ("PySocks!=1.5.7,>=1.5.6; extra == 'socks'", None),  # only an extra asks for it
        ('chardet<6,>=3.0.2; extra == "use-chardet-on-py3"', None),
        ("foo; python_version < '3.8' or extra == 'x'", "foo"),  # maybe required: kept
        ("", None),
    ],
)
def test_required_name(requirement: str, name: str | None) -> None:
    assert required_name(requirement) == name
