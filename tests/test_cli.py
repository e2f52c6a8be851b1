"""The command line, run as a real subprocess of a real venv with the wheel installed.

``unused`` and ``top`` query a real Prometheus (``promserver``) started on
history written with promtool; ``watch`` runs real process trees.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import promserver
import pytest

from popcon_site.cli import COMMANDS
from support.envs import ROOT, Env, base_environ, enabled, make_env
from support.ports import free_port
from support.sinks import UdpSink
from support.users import NOBODY, as_nobody
from support.wire import counters

# The hook this Python runs, the only one its wheel holds: the .start from 3.18.
HOOK_FILE = "popcon_site.start" if sys.version_info >= (3, 18) else "popcon_site.pth"

# -- environments -----------------------------------------------------------------------------

CLI_PACKAGES = (
    "pyyaml",
    "six",
    "python-dateutil",
    "requests",
    "attrs",
    "types-six",  # stubs only: no importable module
    "pysocks",  # requested by requests only through its "socks" extra
    "protobuf",
    "googleapis-common-protos",  # requires protobuf; both share the google namespace
)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, wheel: Path) -> Env:
    env = make_env(tmp_path_factory.mktemp("cli") / "venv")
    env.install(str(wheel), *CLI_PACKAGES)
    return env


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory, wheel: Path) -> Env:
    """An environment the index tests may change (system index, extra installs, hooks)."""
    env = make_env(tmp_path_factory.mktemp("cli-small") / "venv")
    env.install(str(wheel), "six")
    return env


def private(home: Path, **extra: str) -> dict[str, str]:
    """A user environment with reporting off and an empty cache."""
    return base_environ(HOME=str(home), XDG_CACHE_HOME=str(home / ".cache"), **extra)


def cli(
    env: Env,
    *args: str,
    environ: dict[str, str],
    module: bool = False,
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    """``popcon-site ARGS`` (the console script) or ``python -m popcon_site ARGS``."""
    command = (
        [str(env.python), "-m", "popcon_site"] if module else [str(env.root / "bin/popcon-site")]
    )
    return subprocess.run(
        [*command, *args], capture_output=True, text=True, env=environ, timeout=timeout
    )


def as_json(proc: subprocess.CompletedProcess[str]) -> object:
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def one_line_error(proc: subprocess.CompletedProcess[str], status: int, *words: str) -> str:
    assert proc.returncode == status, (proc.stdout, proc.stderr)
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("popcon-site"), lines
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


# -- the command line itself --------------------------------------------------------------------


EXPECTED_COMMANDS = ["status", "which", "watch", "index", "unused", "top", "serve", "sweep"]


def listed_commands(help_text: str) -> list[str]:
    """The subcommands ``--help`` lists: the first word of each line under ``COMMAND``."""
    lines = help_text.splitlines()
    start = lines.index("  COMMAND") + 1
    names = []
    for line in lines[start:]:
        if not line.startswith("    "):
            break
        if line[4] != " ":  # deeper lines continue a command's help
            names.append(line.split()[0])
    return names


def test_console_script_and_module_agree(env: Env, home: Path) -> None:
    script = cli(env, "--help", environ=private(home))
    module = cli(env, "--help", environ=private(home), module=True)
    assert script.returncode == module.returncode == 0
    assert script.stdout == module.stdout
    assert listed_commands(script.stdout) == list(COMMANDS) == EXPECTED_COMMANDS
    version = cli(env, "--version", environ=private(home))
    assert version.stdout.startswith("popcon-site ")


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["nosuchcommand"],
        ["which"],
        ["top", "--window", "1d"],  # --prometheus is required
        ["top", "--prometheus", "http://127.0.0.1:1", "--limit", "many"],
    ],
)
def test_usage_errors_are_one_line(env: Env, home: Path, args: list[str]) -> None:
    one_line_error(cli(env, *args, environ=private(home)), 2)


def test_the_cli_never_reports_itself(env: Env, sink: UdpSink, home: Path) -> None:
    """Run with reporting on, the admin's own commands send nothing."""
    environ = enabled(sink, home)
    for args in (["status"], ["which", "yaml"], ["index"]):
        assert cli(env, *args, environ=environ).returncode == 0
    assert sink.drain() == []


# -- status -------------------------------------------------------------------------------------


def test_status_reports_hook_config_and_index(env: Env, home: Path) -> None:
    data = as_json(cli(env, "status", "--json", environ=private(home)))
    assert isinstance(data, dict)
    site = str(env.site_packages)
    files = {hook["file"] for hook in data["hook"]["files"]}
    assert files == {
        f"{site}/{HOOK_FILE}",
        str(env.root / "etc/ipython/startup/00-popcon-site.py"),
        str(env.root / "etc/jupyter/jupyter_server_config.d/popcon-site.json"),
    }
    assert data["hook"]["used_by_this_python"] == HOOK_FILE
    assert data["hook"]["installed"] is True
    assert data["python"]["executable"] == str(env.python)
    assert data["python"]["prefix"] == str(env.root)
    assert data["enabled_in_this_shell"] is False
    assert data["hook_ran_in_this_process"] is False
    assert data["config"] == {
        "host": "localhost",
        "port": 8125,
        "protocol": "udp",
        "prefix": "python_popcon.library_used",
        "reports_metric": "python_popcon.reports",
        "include": [],
        "exclude": [],
        "rank0_only": False,
        "debug": False,
    }
    assert data["host_resolves"] is True
    assert data["user_cache_dir"] == str(home / ".cache/popcon-site")
    (index,) = [entry for entry in data["indexes"] if entry["site_dir"] == site]
    assert index["fresh"] is None and index["stale"] == []

    text = cli(env, "status", environ=private(home))
    assert text.returncode == 0
    assert f"installed ({HOOK_FILE} is the one this Python runs)" in text.stdout
    assert f"why: {data['hook']['why']}" in text.stdout
    assert "no (PYTHON_POPCONTEST_ENABLE is not set)" in text.stdout
    assert "localhost:8125 over udp" in text.stdout
    assert "NO USABLE INDEX: a process killed before it exits sends only reports" in text.stdout
    assert "(checkpoints inside a program's work never build one;" in text.stdout
    assert "run popcon-site index --system as its owner after every install" in text.stdout


def test_status_when_enabled_shows_the_hook_ran(env: Env, home: Path) -> None:
    environ = private(
        home,
        PYTHON_POPCONTEST_ENABLE="1",
        PYTHON_POPCONTEST_STATSD_HOST="127.0.0.1",
        PYTHON_POPCONTEST_STATSD_PORT="9125",
        PYTHON_POPCONTEST_STATSD_PREFIX="python_popcon.namespace.hub.library_used",
        PYTHON_POPCONTEST_EXCLUDE="six",
    )
    data = as_json(cli(env, "status", "--json", environ=environ))
    assert isinstance(data, dict)
    assert data["enabled_in_this_shell"] is True
    assert data["hook_ran_in_this_process"] is True
    assert data["config"]["port"] == 9125
    assert data["config"]["reports_metric"] == "python_popcon.namespace.hub.reports"
    assert data["config"]["exclude"] == ["six"]
    text = cli(env, "status", environ=environ).stdout
    assert "yes, and the hook ran in this process" in text
    assert "an IP address (no lookup)" in text
    assert "never six" in text


def test_a_shared_install_with_both_hooks(tmp_path: Path, sink: UdpSink, home: Path) -> None:
    """A site directory for several Pythons (POPCON_SITE_HOOKS=both): one hook runs, once."""
    out = tmp_path / "wheel"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(out),
            str(ROOT),
        ],
        check=True,
        env={**base_environ(), "POPCON_SITE_HOOKS": "both"},
    )
    venv = make_env(tmp_path / "venv")
    venv.install(*map(str, out.glob("*.whl")), "six")
    assert {"popcon_site.pth", "popcon_site.start"} <= set(os.listdir(venv.site_packages))
    proc = venv.run("-c", "import six", env=enabled(sink, home))
    assert (proc.returncode, proc.stderr) == (0, "")
    assert sink.lines() == ["python_popcon.library_used.six:1|c", "python_popcon.reports:1|c"]
    data = as_json(cli(venv, "status", "--json", environ=private(home)))
    assert isinstance(data, dict)
    # 3.15-3.17: the .start beside the .pth switches the .pth off, and status says what it costs.
    expected = "popcon_site.start" if sys.version_info >= (3, 15) else "popcon_site.pth"
    assert data["hook"]["used_by_this_python"] == expected
    assert data["hook"]["installed"] is True
    assert ("pkgutil" in data["hook"]["why"]) is ((3, 15) <= sys.version_info < (3, 18))


def test_status_shows_an_invalid_config(env: Env, home: Path) -> None:
    proc = cli(env, "status", environ=private(home, PYTHON_POPCONTEST_STATSD_PORT="0"))
    assert proc.returncode == 0
    assert "INVALID, nothing is sent: PYTHON_POPCONTEST_STATSD_PORT='0' is outside" in proc.stdout


def test_status_shows_a_host_that_does_not_resolve(env: Env, home: Path) -> None:
    environ = private(home, PYTHON_POPCONTEST_STATSD_HOST="no-such-host.invalid")
    started = time.monotonic()
    data = as_json(cli(env, "status", "--json", environ=environ))
    assert time.monotonic() - started < 10
    assert isinstance(data, dict)
    assert data["host_resolves"] is False
    assert "does NOT resolve" in data["host_resolution"]


# -- which --------------------------------------------------------------------------------------


def test_which_explains_each_module(env: Env, home: Path) -> None:
    modules = [
        "yaml",
        "dateutil.parser",
        "socks",
        "google.protobuf",
        "google",
        "json",
        "sys",
        "popcon_site",
    ]
    data = as_json(cli(env, "which", "--json", *modules, environ=private(home)))
    assert isinstance(data, dict)
    assert "baseline" in data and "not counted in that process" in data["baseline"]
    rows = {row["module"]: row for row in data["modules"]}
    site = str(env.site_packages)
    expected = {
        "yaml": ("pyyaml", True, f"{site}/yaml/__init__.py"),
        "dateutil.parser": ("python-dateutil", True, f"{site}/dateutil/parser/__init__.py"),
        "socks": ("pysocks", True, f"{site}/socks.py"),
        "google.protobuf": ("protobuf", True, f"{site}/google/protobuf/__init__.py"),
        "google": (None, False, f"{site}/google"),
        "sys": (None, False, None),
    }
    for module, (distribution, counted, file) in expected.items():
        row = rows[module]
        assert (row["distribution"], row["counted"], row["file"]) == (distribution, counted, file)
    assert rows["yaml"]["evidence"].startswith("RECORD of PyYAML ")
    assert "lists yaml/__init__.py; index entry 'yaml' -> pyyaml" in rows["yaml"]["evidence"]
    assert "lists google/protobuf/__init__.py" in rows["google.protobuf"]["evidence"]
    assert rows["google"]["reason"].startswith("namespace package")
    assert rows["google"]["evidence"] == (
        "submodules installed by googleapis-common-protos, protobuf"
    )
    assert rows["json"]["reason"] == "standard library: never counted"
    assert rows["sys"]["reason"].startswith("standard library (built into the interpreter)")
    assert rows["popcon_site"]["reason"] == "popcon-site itself: never counted"

    text = cli(env, "which", "yaml", "json", environ=private(home))
    assert text.returncode == 0
    assert text.stdout.startswith("yaml: pyyaml (counted)\n")
    assert "json: not counted" in text.stdout
    assert "baseline: not applicable outside a running process" in text.stdout


def test_which_reports_missing_modules_one_line_each(env: Env, home: Path) -> None:
    proc = cli(env, "which", "yaml", "no_such_module", "six.nope", "a/b", environ=private(home))
    assert proc.returncode == 1
    assert proc.stdout.startswith("yaml: pyyaml (counted)")
    assert proc.stderr.splitlines() == [
        "popcon-site: which no_such_module: no such module on this Python's path",
        "popcon-site: which six.nope: no such module on this Python's path",
        "popcon-site: which a/b: not a module name",
    ]
    data = json.loads(cli(env, "which", "--json", "nope", environ=private(home)).stdout)
    assert data["modules"] == [
        {
            "module": "nope",
            "found": False,
            "file": None,
            "distribution": None,
            "counted": False,
            "reason": "no such module on this Python's path",
            "evidence": None,
        }
    ]


def test_which_imports_nothing(env: Env, home: Path, tmp_path: Path) -> None:
    """Looking up ``pkg.sub`` must not run ``pkg/__init__.py`` (it could be anything)."""
    package = tmp_path / "path" / "boom"
    (package / "sub").mkdir(parents=True)
    marker = tmp_path / "imported"
    (package / "__init__.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    (package / "sub" / "__init__.py").write_text("")
    environ = private(home, PYTHONPATH=str(tmp_path / "path"))
    data = as_json(cli(env, "which", "--json", "boom.sub", environ=environ))
    assert isinstance(data, dict)
    (row,) = data["modules"]
    assert row["file"] == str(package / "sub" / "__init__.py")
    assert (row["distribution"], row["counted"]) == (None, False)
    assert "outside every site directory" in row["reason"]
    assert not marker.exists()


def test_which_respects_exclude_in_this_shell(env: Env, home: Path) -> None:
    environ = private(home, PYTHON_POPCONTEST_EXCLUDE="pyyaml")
    data = as_json(cli(env, "which", "--json", "yaml", environ=environ))
    assert isinstance(data, dict)
    (row,) = data["modules"]
    assert (row["distribution"], row["counted"]) == ("pyyaml", False)
    assert "PYTHON_POPCONTEST_EXCLUDE" in row["reason"]


# -- watch --------------------------------------------------------------------------------------

TREE = """\
import multiprocessing, subprocess, sys
import yaml

def child():
    import attr

if __name__ == "__main__":
    subprocess.run([sys.executable, "-c", "import six"], check=True)
    subprocess.run(["sh", "-c", f"{sys.executable} -c 'import idna'"], check=True)
    process = multiprocessing.get_context("spawn").Process(target=child)
    process.start()
    process.join()
    sys.exit(process.exitcode)
"""


def test_watch_counts_every_process_of_the_tree(
    env: Env, sink: UdpSink, home: Path, tmp_path: Path
) -> None:
    script = tmp_path / "tree.py"
    script.write_text(TREE)
    # The oracle: the same command, reporting to a real UDP sink.
    oracle = env.run(str(script), env=enabled(sink, home))
    assert oracle.returncode == 0, oracle.stderr
    expected = counters(sink.drain())
    assert expected["python_popcon.reports"] >= 4  # parent, 2 subprocesses, spawned child
    # The spawned child runs the script's imports again (as __mp_main__): pyyaml twice.
    for name, n in (("pyyaml", 2), ("six", 1), ("idna", 1), ("attrs", 1)):
        assert expected[f"python_popcon.library_used.{name}"] == n

    proc = cli(env, "watch", "--json", "--", str(env.python), str(script), environ=private(home))
    data = as_json(proc)
    assert isinstance(data, dict)
    assert data["exit_status"] == 0
    assert data["counters"] == expected
    assert data["processes"] == expected["python_popcon.reports"]
    assert data["libraries"] == {
        name.rpartition(".")[2]: n
        for name, n in expected.items()
        if name.startswith("python_popcon.library_used.")
    }

    text = cli(env, "watch", "--", str(env.python), str(script), environ=private(home))
    assert text.returncode == 0
    lines = text.stdout.splitlines()
    assert lines[0] == (
        f"popcon-site watch: {data['processes']} process(es) reported, exit status 0"
    )
    assert lines[1] == f"  python_popcon.reports:{data['processes']}|c"
    assert "  python_popcon.library_used.pyyaml:2|c" in lines


def test_watch_overrides_the_shell_and_sends_nothing_outside(
    env: Env, sink: UdpSink, home: Path
) -> None:
    """Reporting on in the shell (to ``sink``): the command reports to watch's listener only."""
    environ = enabled(sink, home, PYTHON_POPCONTEST_STATSD_PROTOCOL="tcp")
    proc = cli(env, "watch", "--json", "--", str(env.python), "-c", "import six", environ=environ)
    data = as_json(proc)
    assert isinstance(data, dict)
    assert (data["processes"], data["libraries"]) == (1, {"six": 1})
    assert sink.drain() == []


def test_watch_keeps_a_custom_prefix(env: Env, home: Path) -> None:
    environ = private(
        home, PYTHON_POPCONTEST_STATSD_PREFIX="python_popcon.namespace.x.library_used"
    )
    proc = cli(env, "watch", "--", str(env.python), "-c", "import six", environ=environ)
    assert proc.returncode == 0
    assert proc.stdout.splitlines()[1:] == [
        "  python_popcon.namespace.x.reports:1|c",
        "  python_popcon.namespace.x.library_used.six:1|c",
    ]


@pytest.mark.parametrize(
    ("code", "status", "libraries"),
    [
        ("import yaml, sys; sys.exit(3)", 3, {"pyyaml": 1}),
        ("import six; raise RuntimeError('boom')", 1, {"six": 1}),
        # Killed: nothing runs at exit, so nothing is sent (a documented limitation).
        ("import six, os, signal; os.kill(os.getpid(), signal.SIGKILL)", 128 + 9, None),
    ],
)
def test_watch_exits_with_the_command_status(
    env: Env, home: Path, code: str, status: int, libraries: dict[str, int] | None
) -> None:
    proc = cli(env, "watch", "--json", "--", str(env.python), "-c", code, environ=private(home))
    assert proc.returncode == status, proc.stderr
    data = json.loads(proc.stdout)
    assert data["exit_status"] == status
    if libraries is None:
        assert (data["processes"], data["libraries"]) == (0, {})
        assert "no process reported" in proc.stderr
    else:
        assert (data["processes"], data["libraries"]) == (1, libraries)


@pytest.mark.parametrize(
    ("command", "status", "reason"),
    [
        (["/no/such/program"], 127, "command not found"),
        (["/"], 126, "Permission denied"),  # a directory
        (["NOT-EXECUTABLE"], 126, "Exec format error"),
        ([], 2, "watch needs a command"),
    ],
)
def test_watch_cannot_run(
    env: Env, home: Path, tmp_path: Path, command: list[str], status: int, reason: str
) -> None:
    if command == ["NOT-EXECUTABLE"]:
        command = [str(tmp_path / "data")]
        Path(command[0]).write_bytes(b"\x00\x01 not a program")
        Path(command[0]).chmod(0o755)
    proc = cli(env, "watch", "--", *command, environ=private(home))
    one_line_error(proc, status, reason)
    assert proc.stdout == ""


def test_watch_report_can_go_to_a_file(env: Env, home: Path, tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    proc = cli(
        env,
        "watch",
        "--json",
        "-o",
        str(out),
        "--",
        str(env.python),
        "-c",
        "import yaml; print('the command output')",
        environ=private(home),
    )
    assert (proc.returncode, proc.stdout) == (0, "the command output\n")
    assert json.loads(out.read_text())["libraries"] == {"pyyaml": 1}


LONG = """\
import subprocess, sys, time
import six
for i in range(8):
    subprocess.Popen([sys.executable, "-c", "import yaml, time; time.sleep(0.2)"]).wait()
    time.sleep(0.25)
"""


def test_watch_a_command_that_runs_for_a_while(env: Env, home: Path) -> None:
    started = time.monotonic()
    proc = cli(env, "watch", "--json", "--", str(env.python), "-c", LONG, environ=private(home))
    assert time.monotonic() - started > 3
    data = as_json(proc)
    assert isinstance(data, dict)
    assert (data["processes"], data["libraries"]) == (9, {"pyyaml": 8, "six": 1})


WAITS = """\
import pathlib, signal, sys, time
import six
if sys.argv[1] == "term":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(5))
pathlib.Path(sys.argv[2]).touch()
if sys.argv[1] == "interrupt-handled":
    try:
        time.sleep(60)
    except KeyboardInterrupt:
        sys.exit(7)
time.sleep(60)
"""


@pytest.mark.parametrize(
    ("how", "status"),
    [
        # Ctrl-C reaches the whole process group: the command ends, watch still reports.
        ("interrupt-handled", 7),
        ("interrupt", 128 + signal.SIGINT),
        # SIGTERM to watch alone is passed on to the command (here it exits cleanly).
        ("term", 5),
    ],
)
def test_watch_survives_signals_meant_for_the_command(
    env: Env, home: Path, tmp_path: Path, how: str, status: int
) -> None:
    ready = tmp_path / "ready"
    script = tmp_path / "waits.py"
    script.write_text(WAITS)
    command = [str(env.python), str(script), how, str(ready)]
    proc = subprocess.Popen(
        [str(env.root / "bin/popcon-site"), "watch", "--json", "--", *command],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=private(home),
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not ready.exists():
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
        if how.startswith("interrupt"):
            os.killpg(proc.pid, signal.SIGINT)
        else:
            os.kill(proc.pid, signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == status, err
    data = json.loads(out)
    assert (data["exit_status"], data["processes"], data["libraries"]) == (status, 1, {"six": 1})


# -- index --------------------------------------------------------------------------------------


def index_of(data: object, site: str) -> dict[str, object]:
    assert isinstance(data, dict)
    (entry,) = [e for e in data["indexes"] if e["site_dir"] == site]
    return entry  # type: ignore[no-any-return]


def test_index_user_cache(small: Env, home: Path) -> None:
    site = str(small.site_packages)
    data = as_json(cli(small, "index", "--json", environ=private(home)))
    assert isinstance(data, list)
    (entry,) = [e for e in data if e["site_dir"] == site]
    cache = home / ".cache" / "popcon-site"
    assert Path(entry["file"]).parent == cache
    assert entry["scope"] == "user cache"
    installed = len(list(small.site_packages.glob("*.dist-info")))
    assert entry["distributions"] == installed  # popcon-site, its dependencies, six
    assert stat.S_IMODE(os.stat(entry["file"]).st_mode) == 0o600
    status = as_json(cli(small, "status", "--json", environ=private(home)))
    fresh = index_of(status, site)["fresh"]
    assert isinstance(fresh, dict)
    assert (fresh["scope"], fresh["file"], fresh["distributions"]) == (
        "user cache",
        entry["file"],
        installed,
    )


def test_index_system_is_used_by_every_user_until_stale(
    small: Env, home: Path, sink: UdpSink, tmp_path: Path
) -> None:
    site = str(small.site_packages)
    proc = cli(small, "index", "--system", environ=private(home))
    assert proc.returncode == 0, proc.stderr
    system_file = Path(proc.stdout.splitlines()[1].removeprefix("  -> "))
    assert system_file.parent == small.root / "share/popcon-site/index"
    assert stat.S_IMODE(system_file.stat().st_mode) == 0o644
    assert "user site" not in proc.stdout
    assert not (home / ".cache").exists()

    # A user process reads the system index: nothing is built (the builder would import
    # importlib_metadata at exit, which -X importtime shows) or written in its home.
    user_home = tmp_path / "user"
    user_home.mkdir()
    run = small.run("-X", "importtime", "-c", "import six", env=enabled(sink, user_home))
    assert run.returncode == 0, run.stderr
    assert sink.lines() == ["python_popcon.library_used.six:1|c", "python_popcon.reports:1|c"]
    assert "importlib_metadata" not in run.stderr
    assert list(user_home.iterdir()) == []
    fresh = index_of(as_json(cli(small, "status", "--json", environ=private(home))), site)["fresh"]
    assert isinstance(fresh, dict) and fresh["scope"] == "system"

    # An install makes it stale: status says so and processes ignore it.
    small.install("attrs")
    state = index_of(as_json(cli(small, "status", "--json", environ=private(home))), site)
    assert state["fresh"] is None
    assert state["stale"] == [
        {
            "file": str(system_file),
            "scope": "system",
            "built_at": system_file.stat().st_mtime,
            "reason": "STALE: built before the last install or uninstall",
        }
    ]
    text = cli(small, "status", environ=private(home)).stdout
    assert "ignored system index (STALE: built before the last install or uninstall)" in text
    run = small.run("-X", "importtime", "-c", "import attr", env=enabled(sink, user_home))
    assert run.returncode == 0, run.stderr
    assert sink.lines() == ["python_popcon.library_used.attrs:1|c", "python_popcon.reports:1|c"]
    assert "importlib_metadata" in run.stderr  # the stale index was ignored, one was built

    # Rebuilt, it is fresh again.
    assert cli(small, "index", "--system", environ=private(home)).returncode == 0
    fresh = index_of(as_json(cli(small, "status", "--json", environ=private(home))), site)["fresh"]
    installed = len(list(small.site_packages.glob("*.dist-info")))
    assert isinstance(fresh, dict) and fresh["distributions"] == installed


def test_index_system_that_cannot_be_written(small: Env, home: Path) -> None:
    share = small.root / "share" / "popcon-site"
    saved = share.with_name("popcon-site.saved")
    existed = share.exists()
    if existed:
        share.rename(saved)
    share.parent.mkdir(exist_ok=True)
    share.write_text("not a directory")
    try:
        proc = cli(small, "index", "--system", environ=private(home))
    finally:
        share.unlink()
        if existed:
            saved.rename(share)
    one_line_error(proc, 2, "cannot write the index into", "owner of the environment")


def test_status_without_the_hook(small: Env, home: Path) -> None:
    site = small.site_packages
    hooks = [site / HOOK_FILE]
    for hook in hooks:
        hook.rename(hook.with_name(hook.name + ".off"))
    try:
        proc = cli(small, "status", environ=private(home, PYTHON_POPCONTEST_ENABLE="1"))
    finally:
        for hook in hooks:
            hook.with_name(hook.name + ".off").rename(hook)
    assert proc.returncode == 0
    assert f"NOT INSTALLED: no {HOOK_FILE} in any site directory" in proc.stdout
    assert "yes, but the hook did NOT run in this process" in proc.stdout


PROBE = "import subprocess, sys; sys.exit(subprocess.call([sys.executable, '-c', 'pass']))"


@pytest.fixture(scope="module")
def public(wheel: Path) -> Iterator[Env]:
    """An environment owned by root that other users can run, in a public directory.

    Made from the interpreter running the tests when user nobody can run it
    (pyenv builds under a private /root cannot), else from the system python3.
    """
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv to run commands as another user")
    root = Path(tempfile.mkdtemp(prefix="popcon-cli-", dir="/var/tmp"))
    try:
        root.chmod(0o755)
        for number, python in enumerate((sys.executable, "/usr/bin/python3")):
            venv = root / f"venv{number}"
            made = subprocess.run(
                [python, "-m", "venv", "--without-pip", str(venv)],
                capture_output=True,
                env=base_environ(),
            )
            if made.returncode != 0:
                continue
            env = Env(venv)
            if as_nobody(str(env.python), "-c", PROBE, environ=base_environ()).returncode == 0:
                break
        else:
            pytest.skip("user nobody cannot run any interpreter here")
        env.install(str(wheel), "six")
        yield env
    finally:
        shutil.rmtree(root)


def test_every_command_works_without_root(public: Env, sink: UdpSink) -> None:
    home = public.root.parent / "nobody-home"
    home.mkdir()
    os.chown(home, NOBODY, NOBODY)
    environ = private(home)
    script = str(public.root / "bin/popcon-site")
    status = as_nobody(script, "status", environ=environ)
    assert status.returncode == 0, status.stderr
    assert "hook         installed" in status.stdout
    which = as_nobody(script, "which", "six", environ=environ)
    assert which.stdout.startswith("six: six (counted)"), which.stderr
    watch = as_nobody(
        script, "watch", "--json", "--", str(public.python), "-c", "import six", environ=environ
    )
    assert json.loads(watch.stdout)["libraries"] == {"six": 1}, watch.stderr
    index = as_nobody(script, "index", environ=environ)
    assert index.returncode == 0, index.stderr
    assert (home / ".cache/popcon-site").is_dir()
    # Only the owner of the environment can write its system index.
    system = as_nobody(script, "index", "--system", environ=environ)
    one_line_error(system, 2, "Permission denied", "owner of the environment")

    # The owner writes it; a user whose home is read-only reports without writing anything.
    assert cli(public, "index", "--system", environ=private(home)).returncode == 0
    readonly = public.root.parent / "readonly-home"
    readonly.mkdir(mode=0o755)
    run = as_nobody(
        str(public.python), "-X", "importtime", "-c", "import six", environ=enabled(sink, readonly)
    )
    assert run.returncode == 0, run.stderr
    assert sink.lines() == ["python_popcon.library_used.six:1|c", "python_popcon.reports:1|c"]
    assert "importlib_metadata" not in run.stderr
    assert list(readonly.iterdir()) == []


# -- Prometheus: unused and top -----------------------------------------------------------------

T0 = 1_700_000_000.0  # the last sample; queries are evaluated here (--at)
STEP = 600.0
STEPS = 144  # one day of samples, every 10 minutes
WINDOW = 30 * 86400.0  # the commands' default --window


def ramp(total: int, reset_after: int | None = None) -> list[tuple[float, float]]:
    """A counter from 0 to ``total`` over the day; with a restart of the exporter midway.

    Every series starts at 0 and the query time is its last sample, so
    ``increase()`` extrapolates nothing and returns exactly ``total``.
    """
    if reset_after is None:
        values = [total * k // STEPS for k in range(STEPS + 1)]
    else:
        half = STEPS // 2
        second = total - reset_after
        values = [reset_after * k // half for k in range(half + 1)]
        values += [second * (k - half) // half for k in range(half + 1, STEPS + 1)]
    start = T0 - STEPS * STEP
    return [(start + k * STEP, float(v)) for k, v in enumerate(values)]


def history() -> list[promserver.Series]:
    used = "python_popcon_library_used"
    reports = "python_popcon_reports"
    hub = {"namespace": "hub"}
    return [
        (reports, {**hub, "instance": "a"}, ramp(600)),
        (reports, {**hub, "instance": "b"}, ramp(400)),
        (used, {**hub, "instance": "a", "library": "pyyaml"}, ramp(600, reset_after=400)),
        *(
            (used, {**hub, "instance": instance, "library": library}, ramp(150))
            for library in ("requests", "urllib3", "idna", "certifi", "charset-normalizer")
            for instance in ("a", "b")
        ),
        (used, {**hub, "instance": "b", "library": "six"}, ramp(50)),
        (used, {**hub, "instance": "b", "library": "numpy"}, ramp(200)),  # not installed here
        # Reported before the window began, not since: a flat series whose value at the
        # window's start (a sample a minute before it) is its value all along.
        (
            used,
            {**hub, "instance": "a", "library": "python-dateutil"},
            [(T0 - WINDOW - 60, 7.0)] + [(t, 7.0) for t, _ in ramp(0)],
        ),
        (reports, {"namespace": "other", "instance": "c"}, ramp(100)),
        (used, {"namespace": "other", "instance": "c", "library": "attrs"}, ramp(100)),
        (used, {"namespace": "other", "instance": "c", "library": "pyyaml"}, ramp(10)),
    ]


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with promserver.prometheus(tmp_path_factory.mktemp("prometheus"), history()) as url:
        yield url


def query_args(url: str, *more: str) -> list[str]:
    return ["--prometheus", url, "--at", f"{T0:.0f}", *more]


HUB = 'namespace="hub"'


def installed_names(site: Path) -> set[str]:
    """Normalized names of the distributions in a site directory, read from METADATA."""
    names = set()
    for metadata in site.glob("*.dist-info/METADATA"):
        for line in metadata.read_text(encoding="utf-8").splitlines():
            if line.startswith("Name:"):
                names.add(re.sub(r"[-_.]+", "-", line[5:].strip()).lower())
                break
    return names


def record_size(site: Path, dist_info: str) -> int:
    """Bytes on disk of the files a RECORD lists (the test's own reading of RECORD)."""
    total = 0
    with open(site / dist_info / "RECORD", newline="") as stream:
        for row in csv.reader(stream):
            total += os.lstat(site / row[0]).st_size
    return total


def test_unused_lists_installed_distributions_nobody_imported(
    env: Env, home: Path, prometheus: str
) -> None:
    proc = cli(
        env, "unused", "--json", *query_args(prometheus, "--selector", HUB), environ=private(home)
    )
    data = as_json(proc)
    assert isinstance(data, dict)
    assert (data["reports"], data["window"], data["selector"], data["time"]) == (
        1000,
        "30d",
        HUB,
        T0,
    )
    rows = {row["distribution"]: row for row in data["unused"]}
    site = env.site_packages
    installed = installed_names(site)
    used_in_hub = {"pyyaml", "six", "requests", "urllib3", "idna", "certifi", "charset-normalizer"}
    assert set(rows) == installed - used_in_hub - {"popcon-site"}
    assert {"python-dateutil", "attrs", "types-six", "pysocks", "protobuf", "zipp"} <= set(rows)
    assert rows["statsd"]["required_by"] == ["popcon-site"]
    assert rows["importlib-metadata"]["required_by"] == ["popcon-site"]
    assert rows["zipp"]["required_by"] == ["importlib-metadata"]
    assert rows["protobuf"]["required_by"] == ["googleapis-common-protos"]
    assert rows["pysocks"]["required_by"] == []  # only requests' "socks" extra asks for it
    assert (rows["attrs"]["required_by"], rows["attrs"]["safe_to_remove"]) == ([], True)
    assert rows["types-six"]["has_modules"] is False
    assert all(row["has_modules"] for name, row in rows.items() if name != "types-six")
    sizes = [row["size_bytes"] for row in data["unused"]]
    assert sizes == sorted(sizes, reverse=True) and all(sizes)
    (attrs_info,) = site.glob("attrs-*.dist-info")
    assert rows["attrs"]["size_bytes"] == record_size(site, attrs_info.name)
    assert data["unused_bytes"] == sum(sizes)

    # Without the selector, attrs and pyyaml were imported (in the other namespace).
    everyone = as_json(cli(env, "unused", "--json", *query_args(prometheus), environ=private(home)))
    assert isinstance(everyone, dict)
    assert everyone["reports"] == 1100
    assert {row["distribution"] for row in everyone["unused"]} == set(rows) - {"attrs"}

    text = cli(env, "unused", *query_args(prometheus, "--selector", HUB), environ=private(home))
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert lines[0] == (
        f"{len(rows)} of {len(installed)} installed distributions were imported by no process "
        'in the 30d before 2023-11-14 22:13:20 UTC where namespace="hub" '
        "(1,000 processes reported)"
    )
    assert lines[1].split() == ["SIZE", "DISTRIBUTION", "VERSION", "NOTE"]
    zipp = next(line for line in lines if " zipp " in line)
    assert zipp.endswith("required by importlib-metadata")
    assert any("no importable modules" in line for line in lines if " types-six " in line)


def test_top_ranks_libraries_by_processes(env: Env, home: Path, prometheus: str) -> None:
    proc = cli(
        env, "top", "--json", *query_args(prometheus, "--selector", HUB), environ=private(home)
    )
    data = as_json(proc)
    assert isinstance(data, dict)
    assert (data["reports"], data["libraries"]) == (1000, 8)
    assert [(row["library"], row["processes"], row["share"]) for row in data["top"]] == [
        ("pyyaml", 600, 0.6),  # across an exporter restart
        ("certifi", 300, 0.3),
        ("charset-normalizer", 300, 0.3),
        ("idna", 300, 0.3),
        ("requests", 300, 0.3),
        ("urllib3", 300, 0.3),
        ("numpy", 200, 0.2),
        ("six", 50, 0.05),
    ]

    text = cli(
        env,
        "top",
        *query_args(prometheus, "--selector", f"{{{HUB}}}", "--limit", "3"),
        environ=private(home, PYTHONIOENCODING="utf-8"),
    )
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert lines[0] == (
        "Libraries by processes that imported them in the 30d before 2023-11-14 22:13:20 UTC "
        'where namespace="hub" (1,000 processes reported)'
    )
    assert lines[1].split() == ["#", "LIBRARY", "PROCESSES", "SHARE"]
    assert lines[2].split() == ["1", "pyyaml", "600", "60.0%", "█" * 30]
    assert lines[3].split() == ["2", "certifi", "300", "30.0%", "█" * 15]
    assert lines[4].split()[:4] == ["3", "charset-normalizer", "300", "30.0%"]
    assert (
        lines[5] == "8 libraries imported; share = processes / all reporting processes; "
        "5 more not shown (--limit)"
    )

    everyone = as_json(cli(env, "top", "--json", *query_args(prometheus), environ=private(home)))
    assert isinstance(everyone, dict)
    assert everyone["reports"] == 1100
    assert everyone["top"][0] == {
        "rank": 1,
        "library": "pyyaml",
        "processes": 610,
        "share": 0.554545,
    }
    attrs = next(row for row in everyone["top"] if row["library"] == "attrs")
    assert attrs["processes"] == 100


def test_rfc3339_time_is_the_same_instant(env: Env, home: Path, prometheus: str) -> None:
    args = ["top", "--json", "--prometheus", prometheus, "--selector", HUB]
    by_seconds = as_json(cli(env, *args, "--at", f"{T0:.0f}", environ=private(home)))
    by_date = as_json(cli(env, *args, "--at", "2023-11-14T22:13:20Z", environ=private(home)))
    assert by_seconds == by_date


@pytest.mark.parametrize("command", ["unused", "top"])
@pytest.mark.parametrize(
    "more",
    [
        ["--selector", 'namespace="nobody"'],  # a selector that matches nothing
        ["--at", f"{T0 + 7200:.0f}", "--window", "1h"],  # after the last report
        ["--at", f"{T0 - 3 * 86400:.0f}"],  # before the first one
    ],
)
def test_no_reports_in_the_window(
    env: Env, home: Path, prometheus: str, command: str, more: list[str]
) -> None:
    args = ["--prometheus", prometheus, "--at", f"{T0:.0f}", *more]
    proc = cli(env, command, *args, environ=private(home))
    one_line_error(proc, 1, "no process reported in the", "check --window, --at and --selector")
    assert proc.stdout == ""


@pytest.mark.parametrize("command", ["unused", "top"])
def test_a_selector_prometheus_rejects(env: Env, home: Path, prometheus: str, command: str) -> None:
    proc = cli(
        env, command, *query_args(prometheus, "--selector", "namespace=hub"), environ=private(home)
    )
    one_line_error(proc, 2, "Prometheus rejected the query", "parse error")


@pytest.mark.parametrize("command", ["unused", "top"])
def test_unreachable_prometheus(env: Env, home: Path, command: str) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    proc = cli(env, command, "--prometheus", url, environ=private(home))
    one_line_error(proc, 2, f"cannot reach Prometheus at {url}", "refused")


def test_prometheus_that_never_answers(env: Env, home: Path) -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()  # accepts connections (in the backlog), never answers
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        started = time.monotonic()
        proc = cli(env, "top", "--prometheus", url, "--timeout", "0.5", environ=private(home))
    assert time.monotonic() - started < 10
    one_line_error(proc, 2, f"cannot reach Prometheus at {url}", "timed out")


def test_a_url_that_is_not_prometheus(env: Env, home: Path, prometheus: str) -> None:
    proc = cli(env, "top", "--prometheus", f"{prometheus}/nothing/here", environ=private(home))
    one_line_error(proc, 2, "did not answer like the Prometheus HTTP API")


@pytest.mark.parametrize(
    ("more", "reason"),
    [
        (["--window", "30x"], "is not a Prometheus duration"),
        (["--window", "30d]) or vector(1"], "is not a Prometheus duration"),
        (["--at", "yesterday"], "neither Unix seconds nor an RFC 3339 time"),
        (["--selector", 'library="six"'], "must not match on library or __name__"),
        (["--timeout", "0"], "--timeout must be positive"),
        (["--limit", "0"], "--limit must be at least 1"),
    ],
)
def test_bad_query_options(env: Env, home: Path, more: list[str], reason: str) -> None:
    proc = cli(env, "top", "--prometheus", "http://127.0.0.1:1", *more, environ=private(home))
    one_line_error(proc, 2, reason)


def test_credentials_in_the_url_become_basic_auth_and_stay_secret(env: Env, home: Path) -> None:
    import base64
    import http.server
    import threading

    seen: list[str | None] = []

    class Refuse(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.headers.get("Authorization"))
            self.send_response(401)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Refuse)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://admin:s%3Acret@127.0.0.1:{server.server_port}"
        proc = cli(env, "top", "--prometheus", url, environ=private(home))
    finally:
        server.shutdown()
        server.server_close()
    line = one_line_error(proc, 2, "refused access (HTTP 401)")
    assert "cret" not in line and "admin" not in line
    assert seen == ["Basic " + base64.b64encode(b"admin:s:cret").decode()]


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ftp://127.0.0.1/", "must be an http:// or https:// URL"),
        ("127.0.0.1:9090", "must be an http:// or https:// URL"),
        ("http://127.0.0.1:99999", "is not a URL"),
        ("http://127.0.0.1:9090/?x=1", "must be a base URL"),
    ],
)
def test_bad_prometheus_urls(env: Env, home: Path, url: str, reason: str) -> None:
    proc = cli(env, "unused", "--prometheus", url, environ=private(home))
    one_line_error(proc, 2, reason)
