"""The layouts admins really have: shared namespace files, flat --target dirs on
PYTHONPATH, a hook left without its package, values written the way people write them.

Real venvs with the built wheel and real PyPI packages; counts read from a real socket.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from popcon_site._report import parse_lines
from support.envs import Env, base_environ, enabled, make_env, uv
from support.sinks import UdpSink

PREFIX = "python_popcon.library_used."
REPORTS = "python_popcon.reports"


def sent(sink: UdpSink) -> Counter[str]:
    counts, other = parse_lines(sink.drain())
    assert not other, other
    return Counter(counts)


def libraries_sent(sink: UdpSink) -> dict[str, int]:
    return {k[len(PREFIX) :]: v for k, v in sent(sink).items() if k.startswith(PREFIX)}


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory, wheel: Path) -> Env:
    """Two distributions that both list backports/__init__.py in their RECORD."""
    env = make_env(tmp_path_factory.mktemp("shared") / "venv")
    env.install(str(wheel), "backports.tarfile", "backports.functools-lru-cache")
    records = [p.read_text() for p in env.site_packages.glob("backports*.dist-info/RECORD")]
    assert sum("backports/__init__.py," in r for r in records) == 2, "the layout under test"
    return env


@pytest.mark.parametrize(
    ("module", "owner"),
    [
        ("backports.functools_lru_cache", "backports-functools-lru-cache"),
        ("backports.tarfile", "backports-tarfile"),
    ],
)
def test_a_file_two_distributions_list_counts_for_neither(
    shared: Env, sink: UdpSink, home: Path, module: str, owner: str
) -> None:
    proc = shared.run("-c", f"import {module}", env=enabled(sink, home))
    assert proc.returncode == 0, proc.stderr
    assert libraries_sent(sink) == {owner: 1}


def test_which_says_a_shared_file_counts_for_none(shared: Env, home: Path) -> None:
    cli = str(shared.root / "bin" / "popcon-site")
    out = subprocess.run(
        [cli, "which", "--json", "backports", "backports.tarfile"],
        capture_output=True,
        text=True,
        env=base_environ(HOME=str(home)),
    )
    rows = {row["module"]: row for row in json.loads(out.stdout)["modules"]}
    assert rows["backports"]["counted"] is False
    assert "backports-functools-lru-cache, backports-tarfile" in rows["backports"]["reason"]
    assert rows["backports.tarfile"]["distribution"] == "backports-tarfile"


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory, wheel: Path) -> Env:
    env = make_env(tmp_path_factory.mktemp("plain") / "venv")
    env.install(str(wheel))
    return env


def test_a_flat_target_directory_on_pythonpath_is_counted(
    plain: Env, sink: UdpSink, home: Path, tmp_path: Path
) -> None:
    target = tmp_path / "opt" / "modules" / "py-attrs-23"
    subprocess.run(
        [uv(), "pip", "install", "--quiet", "--target", str(target), "attrs==23.2.0"],
        check=True,
        env=base_environ(),
    )
    # Without metadata, the same files are only a directory of modules: not counted.
    bare = tmp_path / "bare"
    shutil.copytree(target / "attr", bare / "attr")
    for path, expected in ((target, {"attrs": 1}), (bare, {})):
        env = enabled(sink, home, PYTHONPATH=str(path))
        proc = plain.run("-c", "import attr; print(attr.__file__)", env=env)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.startswith(str(path)), proc.stdout
        assert libraries_sent(sink) == expected, path


def test_which_credits_a_target_directory(plain: Env, home: Path, tmp_path: Path) -> None:
    target = tmp_path / "py-six"
    subprocess.run(
        [uv(), "pip", "install", "--quiet", "--target", str(target), "six"],
        check=True,
        env=base_environ(),
    )
    out = subprocess.run(
        [str(plain.root / "bin" / "popcon-site"), "which", "--json", "six"],
        capture_output=True,
        text=True,
        env=base_environ(HOME=str(home), PYTHONPATH=str(target)),
    )
    (row,) = json.loads(out.stdout)["modules"]
    assert (row["distribution"], row["counted"]) == ("six", True), row


def test_a_hook_left_without_its_package_is_silent(
    tmp_path: Path, wheel: Path, sink: UdpSink, home: Path
) -> None:
    env = make_env(tmp_path / "venv")
    env.install(str(wheel))
    shutil.rmtree(env.site_packages / "popcon_site")
    assert (env.site_packages / "popcon_site.pth").is_file()
    for value in ("1", "enabled"):
        proc = env.run("-c", "print('ok')", env=enabled(sink, home, PYTHON_POPCONTEST_ENABLE=value))
        assert (proc.returncode, proc.stdout, proc.stderr) == (0, "ok\n", "")
    assert sink.drain() == []


@pytest.mark.parametrize("value", ["2", "enabled", "Y"])
def test_an_enable_value_that_is_no_word_says_why_in_debug_mode(
    plain: Env, sink: UdpSink, home: Path, value: str
) -> None:
    quiet = plain.run("-c", "pass", env=enabled(sink, home, PYTHON_POPCONTEST_ENABLE=value))
    assert (quiet.returncode, quiet.stderr) == (0, "")
    loud = plain.run(
        "-c",
        "pass",
        env=enabled(sink, home, PYTHON_POPCONTEST_ENABLE=value, PYTHON_POPCONTEST_DEBUG="1"),
    )
    assert loud.returncode == 0
    assert loud.stderr == (
        f"popcon-site: not reporting: PYTHON_POPCONTEST_ENABLE={value!r} is not one of "
        "1/true/yes/on (0/false/no/off: off)\n"
    )
    assert sink.drain() == []


def test_host_with_a_port_is_used_as_written(plain: Env, sink: UdpSink, home: Path) -> None:
    env = enabled(sink, home, PYTHON_POPCONTEST_STATSD_HOST=f"127.0.0.1:{sink.port}")
    del env["PYTHON_POPCONTEST_STATSD_PORT"]
    proc = plain.run("-c", "import json", env=env)
    assert proc.returncode == 0, proc.stderr
    assert sent(sink) == {REPORTS: 1}


def test_host_and_port_that_disagree_say_why(plain: Env, sink: UdpSink, home: Path) -> None:
    env = enabled(
        sink,
        home,
        PYTHON_POPCONTEST_STATSD_HOST="127.0.0.1:1",
        PYTHON_POPCONTEST_DEBUG="1",
    )
    proc = plain.run("-c", "pass", env=env)
    assert proc.stderr == (
        "popcon-site: not reporting: PYTHON_POPCONTEST_STATSD_HOST says port 1, "
        f"PYTHON_POPCONTEST_STATSD_PORT says {sink.port}\n"
    )
    assert sink.drain() == []


def test_an_unknown_debug_word_does_not_stop_counting(
    plain: Env, sink: UdpSink, home: Path
) -> None:
    env = enabled(sink, home, PYTHON_POPCONTEST_DEBUG="maybe")
    proc = plain.run("-c", "pass", env=env)
    assert (proc.returncode, proc.stderr) == (0, "")
    assert sent(sink) == {REPORTS: 1}
    status = subprocess.run(
        [str(plain.root / "bin" / "popcon-site"), "status", "--json"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert json.loads(status.stdout)["debug_problem"] == (
        "PYTHON_POPCONTEST_DEBUG='maybe' must be one of 1/true/yes/on or 0/false/no/off: "
        "debug output is off (reporting is not affected)"
    )


def test_an_unbalanced_pattern_is_refused_with_its_reason(
    plain: Env, sink: UdpSink, home: Path
) -> None:
    env = enabled(sink, home, PYTHON_POPCONTEST_EXCLUDE="py[yaml", PYTHON_POPCONTEST_DEBUG="1")
    proc = plain.run("-c", "pass", env=env)
    assert proc.stderr == (
        "popcon-site: not reporting: PYTHON_POPCONTEST_EXCLUDE: 'py[yaml' is not a "
        "distribution name or pattern\n"
    )
    assert sink.drain() == []


def test_index_system_remove_deletes_what_index_system_wrote(plain: Env, home: Path) -> None:
    cli = str(plain.root / "bin" / "popcon-site")
    env = base_environ(HOME=str(home))
    subprocess.run([cli, "index", "--system"], check=True, capture_output=True, env=env)
    share = plain.root / "share"
    assert list((share / "popcon-site" / "index").glob("*.idx"))
    done = subprocess.run(
        [cli, "index", "--system", "--remove"], capture_output=True, text=True, env=env
    )
    assert done.returncode == 0, done.stderr
    assert not share.exists(), "index/, popcon-site/ and the empty share/ are gone"
    again = subprocess.run(
        [cli, "index", "--system", "--remove"], capture_output=True, text=True, env=env
    )
    assert (again.returncode, again.stdout) == (0, "no system index to remove\n")
