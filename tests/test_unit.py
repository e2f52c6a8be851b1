"""Unit tests of the pure pieces: config, names, datagrams, index format."""

from __future__ import annotations

import importlib.machinery
import os
import socket
import stat
import sys
from pathlib import Path

import pytest
import statsd

from popcon_site import _hooks, _index, _report, _select
from popcon_site._build import shortest_unique_prefixes


def test_defaults_match_the_earlier_readme() -> None:
    config = _report.config_from_environ({})
    assert (config.host, config.port, config.prefix, config.protocol) == (
        "localhost",
        8125,
        "python_popcon.library_used",
        "udp",
    )
    assert config.reports_name == "python_popcon.reports"


@pytest.mark.parametrize(
    ("prefix", "reports"),
    [
        ("python_popcon.library_used", "python_popcon.reports"),
        ("python_popcon.namespace.X.library_used", "python_popcon.namespace.X.reports"),
        ("single", "reports"),
    ],
)
def test_reports_is_a_sibling_of_the_last_segment(prefix: str, reports: str) -> None:
    assert _report.reports_name_for(prefix) == reports


@pytest.mark.parametrize(
    "environ",
    [
        {"PYTHON_POPCONTEST_STATSD_PORT": "0"},
        {"PYTHON_POPCONTEST_STATSD_PORT": "-1"},
        {"PYTHON_POPCONTEST_STATSD_PORT": "١٢٣"},  # non-ASCII digits
        {"PYTHON_POPCONTEST_STATSD_PREFIX": "a.b:1|c\nx"},
        {"PYTHON_POPCONTEST_STATSD_PREFIX": ".lead"},
        {"PYTHON_POPCONTEST_STATSD_PREFIX": "x" * 201},
        {"PYTHON_POPCONTEST_STATSD_HOST": "host name"},
        {"PYTHON_POPCONTEST_STATSD_HOST": "h\x00"},
        {"PYTHON_POPCONTEST_STATSD_HOST": "\udcff"},
        {"PYTHON_POPCONTEST_STATSD_PROTOCOL": "quic"},
    ],
)
def test_invalid_values_raise_config_error_only(environ: dict[str, str]) -> None:
    with pytest.raises(_report.ConfigError) as info:
        _report.config_from_environ(environ)
    assert "\n" not in str(info.value)


def test_accepted_spellings() -> None:
    config = _report.config_from_environ(
        {
            "PYTHON_POPCONTEST_STATSD_HOST": " [::1] ",
            "PYTHON_POPCONTEST_STATSD_PORT": " 9125 ",
            "PYTHON_POPCONTEST_STATSD_PROTOCOL": "TCP",
            "PYTHON_POPCONTEST_DEBUG": "Yes",
        }
    )
    assert (config.host, config.port, config.protocol, config.debug) == ("::1", 9125, "tcp", True)


@pytest.mark.parametrize(
    ("name", "normalized"),
    [
        ("ruamel.yaml", "ruamel-yaml"),
        ("Zope.Interface", "zope-interface"),
        ("typing_extensions", "typing-extensions"),
        ("a-_.b", "a-b"),
    ],
)
def test_pep503_normalization(name: str, normalized: str) -> None:
    assert _select.normalize_name(name) == normalized
    assert _report.is_safe_name(normalized)


@pytest.mark.parametrize(
    "name", ["", "a:b", "a|c", "a@b", "a#b", "a\nb", "é", "-a", "a-", "x" * 201, "A"]
)
def test_unsafe_names_never_reach_the_wire(name: str) -> None:
    assert not _report.is_safe_name(name)
    assert _report.counter_lines("p", "reports", [name]) == ["reports:1|c"]


def statsd_pipeline_bytes(lines: list[str]) -> list[bytes]:
    """What the statsd client's UDP pipeline puts on a real socket for these stats."""
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.settimeout(0.5)
    client = statsd.StatsClient("127.0.0.1", receiver.getsockname()[1])
    with client.pipeline() as pipe:
        for line in lines:
            pipe.incr(line.rpartition(":")[0])
    packets = []
    try:
        while True:
            packets.append(receiver.recv(65535))
    except socket.timeout:
        pass
    receiver.close()
    return packets


@pytest.mark.parametrize("count", [0, 1, 7, 60, 500])
def test_datagrams_are_byte_identical_to_the_statsd_pipeline(count: int) -> None:
    names = [f"distribution-number-{i:04d}" for i in range(count)]
    lines = _report.counter_lines("python_popcon.library_used", "python_popcon.reports", names)
    ours = _report.datagrams(lines)
    assert ours == statsd_pipeline_bytes(lines)
    assert all(len(packet) < _report.MAX_DATAGRAM for packet in ours)
    assert b"\n".join(ours).decode().split("\n") == lines


def test_shortest_unique_prefixes() -> None:
    owned = {
        ("yaml", "__init__.py"): "pyyaml",
        ("yaml", "loader.py"): "pyyaml",
        ("_yaml", "__init__.py"): "pyyaml",
        ("six.py",): "six",
        ("google", "protobuf", "__init__.py"): "protobuf",
        ("google", "protobuf", "message.py"): "protobuf",
        ("google", "api", "http_pb2.py"): "googleapis-common-protos",
        ("google", "_upb", "_message.so"): "protobuf",
    }
    assert shortest_unique_prefixes(owned) == {
        "yaml": "pyyaml",
        "_yaml": "pyyaml",
        "six.py": "six",
        "google/protobuf": "protobuf",
        "google/_upb": "protobuf",
        "google/api": "googleapis-common-protos",
    }


def sample_index(site_dir: str = "/env/site-packages", stamp: str = "1:2:3") -> _index.SiteIndex:
    return _index.SiteIndex(
        site_dir,
        stamp,
        {"yaml": "pyyaml", "google/protobuf": "protobuf"},
        {"/src/proj/src": "proj"},
    )


def test_index_text_round_trip() -> None:
    original = sample_index()
    parsed = _index.parse(original.to_text(), original.site_dir, original.stamp)
    assert parsed is not None
    assert (parsed.owners, parsed.roots) == (original.owners, original.roots)
    assert parsed.owner_of(["google", "protobuf", "internal", "x.py"]) == "protobuf"
    assert parsed.owner_of(["google", "api", "x.py"]) is None


@pytest.mark.parametrize(
    "text",
    [
        "",
        "garbage",
        sample_index(stamp="9:9:9").to_text(),  # stale
        sample_index(site_dir="/other").to_text(),  # another directory's index
        sample_index().to_text().replace("\n1\n", "\n99\n", 1),  # lying root count
        sample_index().to_text().rstrip("\n"),  # truncated
        sample_index().to_text() + "extra\n",  # odd number of lines
    ],
)
def test_bad_or_stale_index_text_is_refused(text: str) -> None:
    assert _index.parse(text, "/env/site-packages", "1:2:3") is None


def test_save_is_private_and_atomic(tmp_path: Path) -> None:
    cache = tmp_path / "cache" / "popcon-site"
    index = sample_index()
    assert _index.save(index, str(cache))
    (written,) = cache.iterdir()
    assert written.name == _index.file_name(index.site_dir)
    assert stat.S_IMODE(written.stat().st_mode) == 0o600
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700
    loaded = _index.load(str(cache), index.site_dir, index.stamp, shared=False)
    assert loaded is not None and loaded.owners == index.owners


def test_symlinked_index_is_refused(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o700)
    real = tmp_path / "elsewhere.idx"
    real.write_text(sample_index().to_text())
    os.symlink(real, cache / _index.file_name("/env/site-packages"))
    assert _index.load(str(cache), "/env/site-packages", "1:2:3", shared=False) is None


def test_group_writable_cache_dir_is_not_written(tmp_path: Path) -> None:
    cache = tmp_path / "shared-cache"
    cache.mkdir()
    cache.chmod(0o777)
    assert not _index.save(sample_index(), str(cache))


class _AmbiguousEntry:
    """A sys.path entry whose == raises, like a numpy array: the import system skips it."""

    def __eq__(self, other: object) -> bool:
        raise ValueError("ambiguous")

    __hash__ = object.__hash__


def test_failed_imports_are_told_apart_from_cached_listings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "present.py").write_text("")
    finder = importlib.machinery.FileFinder(
        str(tmp_path), (importlib.machinery.SourceFileLoader, [".py"])
    )
    assert finder.find_spec("present") is not None  # fills the finder's listing
    missing_zip = str(tmp_path / "python3x.zip")
    monkeypatch.setattr(sys, "path", [str(tmp_path), missing_zip, _AmbiguousEntry()])
    # As after importlib.invalidate_caches(): the nonexistent zip entry is forgotten.
    monkeypatch.setattr(sys, "path_importer_cache", {str(tmp_path): finder})
    listings = _report._path_listings()
    assert listings == [finder._path_cache]  # no "cannot tell" entry: no lookup per name
    assert _report._listed_in("present", listings)
    assert not _report._listed_in("not_there", listings)
    assert _report.module_files(["not_there"], seen=["not_there"]) == set()


@pytest.mark.parametrize("minor", [9, 14, 15, 17, 18, 19])
def test_hook_state_names_the_hook_each_python_runs(tmp_path: Path, minor: int) -> None:
    """The .pth up to 3.17 unless a .start is beside it (3.15-3.17); the .start from 3.18."""

    a, b = tmp_path / "a", tmp_path / "b"
    for directory, names in ((a, ["popcon_site.pth"]), (b, ["popcon_site.start"])):
        directory.mkdir()
        for name in names:
            (directory / name).write_text("")
    version = (3, minor)
    elsewhere = _hooks.state([str(a), str(b)], version)
    assert elsewhere["used_by_this_python"] == (
        "popcon_site.start" if minor >= 18 else "popcon_site.pth"
    )
    assert elsewhere["installed"] is True
    (a / "popcon_site.start").write_text("")  # a shared install: both files side by side
    beside = _hooks.state([str(a)], version)
    assert beside["used_by_this_python"] == (
        "popcon_site.start" if minor >= 15 else "popcon_site.pth"
    )
    assert ("pkgutil" in beside["why"]) is (15 <= minor < 18)
    alone = _hooks.state([str(b)], version)  # only a .start: 3.9-3.14 have no hook at all
    assert alone["installed"] is (minor >= 15)
    assert {Path(f["file"]).name for f in beside["files"]} == {
        "popcon_site.pth",
        "popcon_site.start",
    }
