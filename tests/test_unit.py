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

import popcon_site
from popcon_site import _hooks, _index, _ipython, _report, _select
from popcon_site._indexer import shortest_unique_prefixes


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
    assert popcon_site.normalize_name(name) == normalized
    assert popcon_site.is_safe_name(normalized)


@pytest.mark.parametrize(
    "name", ["", "a:b", "a|c", "a@b", "a#b", "a\nb", "é", "-a", "a-", "x" * 201, "A"]
)
def test_unsafe_names_never_reach_the_wire(name: str) -> None:
    assert not popcon_site.is_safe_name(name)
    assert _report.counter_lines("p", "reports", [name]) == ["reports:1|c"]


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        # What each launcher sets, measured on Slurm 22.05 and Open MPI 4.1 (tests_hpc/).
        ({"SLURM_PROCID": "3"}, 3),  # srun
        ({"SLURM_PROCID": "2", "PMIX_RANK": "2"}, 2),  # srun --mpi=pmix
        ({"SLURM_PROCID": "1", "PMI_RANK": "1"}, 1),  # srun --mpi=pmi2
        ({"OMPI_COMM_WORLD_RANK": "3", "PMIX_RANK": "3"}, 3),  # mpirun
        ({"SLURM_PROCID": "0", "OMPI_COMM_WORLD_RANK": "3", "PMIX_RANK": "3"}, 3),  # in sbatch
        ({"SLURM_PROCID": "0", "PMI_RANK": "2"}, 2),  # MPICH / Intel MPI mpiexec in sbatch
        ({"SLURM_PROCID": "0", "MV2_COMM_WORLD_RANK": "5"}, 5),  # MVAPICH2 in sbatch
        ({"PMIX_RANK": "4", "OMPI_COMM_WORLD_RANK": "1"}, 1),  # Open MPI's own first
        ({"SLURM_PROCID": "0", "OMPI_COMM_WORLD_RANK": " 7 "}, 7),
        # The innermost launcher's value is no rank: an outer one's is not used.
        ({"SLURM_PROCID": "0", "OMPI_COMM_WORLD_RANK": "x"}, None),
        ({"SLURM_PROCID": "3", "PMI_RANK": "-1"}, None),
        ({"SLURM_PROCID": "3", "PMI_RANK": "1" * 19}, None),
        ({"SLURM_PROCID": "3", "PMI_RANK": "\u0663"}, None),  # a non-ASCII digit
        # Set but empty (or blank) is not set.
        ({"SLURM_PROCID": "2", "OMPI_COMM_WORLD_RANK": "", "PMIX_RANK": " "}, 2),
        ({}, None),
    ],
)
def test_rank_comes_from_the_innermost_launcher(
    environ: dict[str, str], expected: int | None
) -> None:
    assert _select.rank(environ) == expected


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


# Each line is 55 bytes ("python_popcon.library_used.distribution-number-0000:1|c"):
# nine fill 503 bytes, a tenth would make 559, over statsd's 512; the 25-byte reports
# line ends the last datagram.
@pytest.mark.parametrize(
    ("count", "sizes"),
    [(0, [25]), (1, [81]), (7, [417]), (60, [503] * 6 + [361]), (500, [503] * 55 + [305])],
)
def test_datagrams_are_byte_identical_to_the_statsd_pipeline(count: int, sizes: list[int]) -> None:
    names = [f"distribution-number-{i:04d}" for i in range(count)]
    lines = _report.counter_lines("python_popcon.library_used", "python_popcon.reports", names)
    ours = _report.datagrams(lines)
    assert ours == statsd_pipeline_bytes(lines)
    assert [len(packet) for packet in ours] == sizes
    assert b"\n".join(ours).decode().split("\n") == lines


def test_shortest_unique_prefixes() -> None:
    owned = {
        parts: {owner}
        for parts, owner in {
            ("yaml", "__init__.py"): "pyyaml",
            ("yaml", "loader.py"): "pyyaml",
            ("_yaml", "__init__.py"): "pyyaml",
            ("six.py",): "six",
            ("google", "protobuf", "__init__.py"): "protobuf",
            ("google", "protobuf", "message.py"): "protobuf",
            ("google", "api", "http_pb2.py"): "googleapis-common-protos",
            ("google", "_upb", "_message.so"): "protobuf",
        }.items()
    }
    assert shortest_unique_prefixes(owned) == {
        "yaml": "pyyaml",
        "_yaml": "pyyaml",
        "six.py": "six",
        "google/protobuf": "protobuf",
        "google/_upb": "protobuf",
        "google/api": "googleapis-common-protos",
    }


def test_a_file_several_distributions_list_counts_for_none() -> None:
    # backports.tarfile and backports.functools-lru-cache both list backports/__init__.py.
    owned = {
        ("backports", "__init__.py"): {"backports-tarfile", "backports-functools-lru-cache"},
        ("backports", "tarfile", "__init__.py"): {"backports-tarfile"},
        ("backports", "functools_lru_cache.py"): {"backports-functools-lru-cache"},
        ("lazr",): {"lazr-uri", "lazr-restfulclient"},  # both top_level.txt say lazr
    }
    assert shortest_unique_prefixes(owned) == {
        "backports/tarfile": "backports-tarfile",
        "backports/functools_lru_cache.py": "backports-functools-lru-cache",
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


def test_a_dist_info_without_record_or_top_level_owns_the_module_named_like_it(
    tmp_path: Path,
) -> None:
    # Debian's python3-numpy: numpy-2.4.6.dist-info holds METADATA and INSTALLER only.
    from popcon_site._indexer import build

    (tmp_path / "numpy-2.4.6.dist-info").mkdir()
    (tmp_path / "numpy-2.4.6.dist-info" / "METADATA").write_text("Name: numpy\nVersion: 2.4.6\n")
    (tmp_path / "numpy").mkdir()
    (tmp_path / "numpy" / "__init__.py").write_text("")
    (tmp_path / "numpyish.py").write_text("")
    assert build(str(tmp_path)).owners == {"numpy": "numpy"}


def test_requirements_read_from_metadata_files_inside_a_collection(tmp_path: Path) -> None:
    """What a checkpoint inside the program's work reads instead of importlib.metadata:
    the header only (CRLF lines too), never a header it could not read whole."""
    site = tmp_path / "site-packages"
    crlf = site / "Crlf_Pkg-1.0.dist-info"
    crlf.mkdir(parents=True)
    (crlf / "METADATA").write_bytes(
        b"Metadata-Version: 2.1\r\nName: crlf-pkg\r\nRequires-Dist: six>=1\r\n"
        b"Requires-Dist: attrs; extra == 'x'\r\n\r\nRequires-Dist: in-the-description\r\n"
    )
    big = site / "big-2.0.dist-info"
    big.mkdir()
    (big / "METADATA").write_text("Name: big\n" + "Requires-Dist: six\n" * 20000)  # 360 KB
    listings: dict[str, list[str]] = {}
    assert _ipython.requirements_on_disk("crlf-pkg", [str(site)], listings) == ["six"]
    assert _ipython.requirements_on_disk("big", [str(site)], listings) is None
    assert _ipython.requirements_on_disk("absent", [str(site)], listings) is None
    assert list(listings) == [str(site)]  # listed once for the three
