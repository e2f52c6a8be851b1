"""Distinct users (issue 23): library_users and users counters, once per user and month.

Real interpreters, a real UDP socket, real Unix users with their own homes (useradd,
runuser; Debian's /usr/bin/python3, which every user may run), time injected with
libfaketime (Debian's faketime package, installed by ``nox -s tests``), never the clock.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.envs import Env, base_environ, enabled, make_env, reporting_to
from support.sinks import TcpCollector, UdpSink
from support.wire import counters

ON = {"PYTHON_POPCONTEST_USERS": "1"}
USED = "python_popcon.library_used."
USERS = "python_popcon.library_users."
LIBFAKETIME = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, wheel: Path) -> Env:
    env = make_env(tmp_path_factory.mktemp("users") / "venv")
    env.install(str(wheel), "six", "idna")
    return env


def run(env: Env, code: str, environ: dict[str, str]) -> subprocess.CompletedProcess[str]:
    proc = env.run("-c", code, env=environ)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "" or "popcon-site: sent" in proc.stderr, proc.stderr
    return proc


def markers(home: Path) -> dict[str, list[str]]:
    users = home / ".cache/popcon-site/users"
    if not users.exists():
        return {}
    return {month.name: sorted(p.name for p in month.iterdir()) for month in users.iterdir()}


def test_exact_bytes_once_per_month(env: Env, sink: UdpSink, home: Path) -> None:
    run(env, "import six, idna", enabled(sink, home, **ON))
    # Exactly these bytes, one datagram: the +1 lines and nothing that names the user.
    assert sink.drain() == [
        b"python_popcon.library_used.idna:1|c\n"
        b"python_popcon.library_used.six:1|c\n"
        b"python_popcon.reports:1|c\n"
        b"python_popcon.library_users.idna:1|c\n"
        b"python_popcon.library_users.six:1|c\n"
        b"python_popcon.users:1|c"
    ]
    (month,) = markers(home)
    assert markers(home) == {month: ["-user", "idna", "six"]}
    month_dir = home / ".cache/popcon-site/users" / month
    assert stat.S_IMODE(month_dir.stat().st_mode) == 0o700
    for marker in month_dir.iterdir():
        assert stat.S_IMODE(marker.stat().st_mode) == 0o600
        assert marker.stat().st_size == 0
    # The same user again: only the per-process counters.
    run(env, "import six, idna", enabled(sink, home, **ON))
    assert sink.drain() == [
        b"python_popcon.library_used.idna:1|c\n"
        b"python_popcon.library_used.six:1|c\n"
        b"python_popcon.reports:1|c"
    ]
    # Only the standard library: reports, and no users line (sent this month already).
    run(env, "import json", enabled(sink, home, **ON))
    assert sink.drain() == [b"python_popcon.reports:1|c"]


def test_users_line_for_a_process_that_imports_only_the_stdlib(
    env: Env, sink: UdpSink, home: Path
) -> None:
    run(env, "import json", enabled(sink, home, **ON))
    assert sink.drain() == [b"python_popcon.reports:1|c\npython_popcon.users:1|c"]


def test_default_is_on_and_the_setting_turns_it_off(env: Env, sink: UdpSink, home: Path) -> None:
    environ = enabled(sink, home)
    del environ["PYTHON_POPCONTEST_USERS"]  # the test helpers turn them off: the default
    run(env, "import six", environ)
    assert counters(sink.drain()) == {
        USED + "six": 1,
        "python_popcon.reports": 1,
        USERS + "six": 1,
        "python_popcon.users": 1,
    }
    other = home.parent / "other-home"
    other.mkdir()
    for word in ("0", "false", "no", "off", " OFF "):
        run(env, "import six", enabled(sink, other, PYTHON_POPCONTEST_USERS=word))
        assert counters(sink.drain()) == {USED + "six": 1, "python_popcon.reports": 1}
    assert not (other / ".cache/popcon-site/users").exists(), "off writes nothing"


def test_over_tcp_the_same_lines(env: Env, home: Path) -> None:
    server = TcpCollector()
    try:
        environ = reporting_to(server.port, home, PYTHON_POPCONTEST_STATSD_PROTOCOL="tcp", **ON)
        run(env, "import six", environ)
        (data,) = server.wait_for(1)
    finally:
        server.close()
    # The statsd client's TCP lines, each ending with a newline.
    assert sorted(data.decode().splitlines()) == [
        "python_popcon.library_used.six:1|c",
        "python_popcon.library_users.six:1|c",
        "python_popcon.reports:1|c",
        "python_popcon.users:1|c",
    ]


def test_a_prefix_that_would_collide_sends_no_user_lines(
    env: Env, sink: UdpSink, home: Path
) -> None:
    for prefix in ("x.users", "x.library_users"):
        run(env, "import six", enabled(sink, home, PYTHON_POPCONTEST_STATSD_PREFIX=prefix, **ON))
        assert counters(sink.drain()) == {f"{prefix}.six": 1, "x.reports": 1}
    assert markers(home) == {}


def test_two_processes_sharing_a_home_at_once_count_once(
    env: Env, sink: UdpSink, home: Path
) -> None:
    # Eight processes (two "nodes" with one home, four each), released together.
    go = home.parent / "go"
    code = (
        "import os, time\n"
        f"while not os.path.exists({str(go)!r}): time.sleep(0.001)\n"
        "import six, idna"
    )
    environ = enabled(sink, home, **ON)
    procs = [
        subprocess.Popen([str(env.python), "-c", code], env=environ, stderr=subprocess.PIPE)
        for _ in range(8)
    ]
    go.touch()
    for proc in procs:
        assert proc.wait(60) == 0, proc.stderr
        assert proc.stderr is not None and proc.stderr.read() == b""
    assert counters(sink.drain()) == {
        USED + "six": 8,
        USED + "idna": 8,
        "python_popcon.reports": 8,
        USERS + "six": 1,
        USERS + "idna": 1,
        "python_popcon.users": 1,
    }


def test_checkpoint_and_exit_send_each_once(env: Env, sink: UdpSink, home: Path) -> None:
    run(env, "import six, idna", enabled(sink, home))  # warms the index; users off
    sink.drain()
    code = (
        "import six, time\n"
        "keep, end = [], time.monotonic() + 2.5\n"
        "while time.monotonic() < end: keep.append([len(keep)])\n"  # collections: checkpoints
        "import idna"
    )
    environ = enabled(sink, home, PYTHON_POPCONTEST_CHECKPOINT="1", PYTHON_POPCONTEST_DEBUG="1")
    proc = run(env, code, {**environ, **ON})
    assert "at checkpoints: six + reports" in proc.stderr, proc.stderr
    packets = sink.drain()
    assert len(packets) == 2, packets  # the checkpoint's, then the exit report's
    assert counters(packets[:1]) == {
        USED + "six": 1,
        "python_popcon.reports": 1,
        USERS + "six": 1,
        "python_popcon.users": 1,
    }
    assert counters(packets[1:]) == {USED + "idna": 1, USERS + "idna": 1}


def test_month_boundary_with_injected_time(env: Env, sink: UdpSink, home: Path) -> None:
    assert Path(LIBFAKETIME).exists(), "Debian's faketime package (nox -s tests installs it)"

    def at(when: str) -> None:
        environ = enabled(
            sink,
            home,
            LD_PRELOAD=LIBFAKETIME,
            FAKETIME=f"@{when}",
            FAKETIME_DONT_FAKE_MONOTONIC="1",
            **ON,
        )
        proc = run(env, "import six, time; print(time.strftime('%Y-%m', time.gmtime()))", environ)
        assert proc.stdout == when[:7] + "\n", "the time was injected"

    at("2026-11-30 23:59:58")
    assert counters(sink.drain())["python_popcon.users"] == 1
    at("2026-11-30 23:59:59")
    assert counters(sink.drain()) == {USED + "six": 1, "python_popcon.reports": 1}
    assert markers(home) == {"2026-11": ["-user", "six"]}
    at("2026-12-01 00:00:01")  # a new month: counted again, the old month's markers gone
    assert counters(sink.drain()) == {
        USED + "six": 1,
        "python_popcon.reports": 1,
        USERS + "six": 1,
        "python_popcon.users": 1,
    }
    assert markers(home) == {"2026-12": ["-user", "six"]}
    at("2026-12-31 23:00:00")
    assert counters(sink.drain()) == {USED + "six": 1, "python_popcon.reports": 1}


@pytest.mark.parametrize("hostile", ["symlink", "group-writable", "file"])
def test_hostile_month_directory_sends_no_user_counters(
    env: Env, sink: UdpSink, home: Path, hostile: str
) -> None:
    run(env, "import json", enabled(sink, home, **ON))  # makes the directories
    sink.drain()
    (month,) = markers(home)
    month_dir = home / ".cache/popcon-site/users" / month
    shutil.rmtree(month_dir)
    elsewhere = home.parent / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    if hostile == "symlink":
        month_dir.symlink_to(elsewhere)
    elif hostile == "group-writable":
        month_dir.mkdir()
        month_dir.chmod(0o770)
    else:
        month_dir.write_text("")
    run(env, "import six", enabled(sink, home, **ON))
    assert counters(sink.drain()) == {USED + "six": 1, "python_popcon.reports": 1}
    assert list(elsewhere.iterdir()) == []
    if hostile == "group-writable":
        assert list(month_dir.iterdir()) == []


def test_status_says_whether_users_are_counted(env: Env, home: Path) -> None:
    script = str(env.root / "bin/popcon-site")

    def users_row(**extra: str) -> str:
        environ = base_environ(HOME=str(home), PYTHON_POPCONTEST_ENABLE="1", **extra)
        if "PYTHON_POPCONTEST_USERS" not in extra:
            del environ["PYTHON_POPCONTEST_USERS"]  # the default: on
        proc = subprocess.run([script, "status"], capture_output=True, text=True, env=environ)
        assert proc.returncode == 0, proc.stderr
        (line,) = [line for line in proc.stdout.splitlines() if line.startswith("users ")]
        return line

    assert "counted: once a month per library (0 sent this month" in users_row()
    assert "not counted: turned off (PYTHON_POPCONTEST_USERS=off)" in users_row(
        PYTHON_POPCONTEST_USERS="off"
    )
    assert "not counted: the prefix" in users_row(PYTHON_POPCONTEST_STATSD_PREFIX="a.users")


# -- real Unix users ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def public(wheel: Path) -> Iterator[Env]:
    """An environment of Debian's python3 that every user may run (pyenv's are /root's)."""
    if os.geteuid() != 0:
        pytest.fail("these tests create Unix users: run them as root")
    root = Path(tempfile.mkdtemp(prefix="popcon-users-", dir="/var/tmp"))
    try:
        root.chmod(0o755)
        made = subprocess.run(
            ["/usr/bin/python3", "-m", "venv", "--without-pip", str(root / "venv")],
            capture_output=True,
            env=base_environ(),
        )
        assert made.returncode == 0, made.stderr
        env = Env(root / "venv")
        env.install(str(wheel), "six", "idna")
        yield env
    finally:
        shutil.rmtree(root)


@pytest.fixture
def unix_users(public: Env) -> Iterator[list[tuple[str, Path]]]:
    """Three real users, each with an own home under /var/tmp; removed afterwards."""
    tag = uuid.uuid4().hex[:6]
    made: list[tuple[str, Path]] = []
    try:
        for letter in "abc":
            name = f"pcu{tag}{letter}"
            home = public.root.parent / f"home-{letter}"
            subprocess.run(
                ["useradd", "-m", "-d", str(home), "-s", "/bin/sh", name],
                check=True,
                capture_output=True,
            )
            made.append((name, home))
        yield made
    finally:
        for name, _ in made:
            subprocess.run(["userdel", "-r", name], capture_output=True)


def as_user(
    user: str, env: Env, code: str, port: int, *, wait: bool = True
) -> subprocess.Popen[bytes]:
    environ = base_environ(
        PYTHON_POPCONTEST_ENABLE="1",
        PYTHON_POPCONTEST_STATSD_HOST="127.0.0.1",
        PYTHON_POPCONTEST_STATSD_PORT=str(port),
    )
    # The default (user counters on); runuser sets HOME from the password database.
    for variable in ("HOME", "XDG_CACHE_HOME", "PYTHON_POPCONTEST_USERS"):
        environ.pop(variable, None)
    proc = subprocess.Popen(
        ["runuser", "-u", user, "--", str(env.python), "-c", code],
        env=environ,
        stderr=subprocess.PIPE,
        cwd="/",
    )
    if wait:
        assert proc.wait(60) == 0, proc.stderr
    return proc


def test_real_users_with_their_own_homes(
    public: Env, unix_users: list[tuple[str, Path]], sink: UdpSink
) -> None:
    (a, home_a), (b, home_b), (c, home_c) = unix_users
    for _ in range(3):
        as_user(a, public, "import six", sink.port)
    as_user(a, public, "import six, idna", sink.port)
    # b: four processes at once (one home, as two nodes sharing it).
    go = public.root.parent / "go"
    code = (
        f"import os, time\nwhile not os.path.exists({str(go)!r}): time.sleep(0.001)\n"
        "import six, idna"
    )
    procs = [as_user(b, public, code, sink.port, wait=False) for _ in range(4)]
    go.touch()
    for proc in procs:
        assert proc.wait(60) == 0
        assert proc.stderr is not None and proc.stderr.read() == b""
    # c: a read-only home (no cache can be made): per-process counters only.
    home_c.chmod(0o555)
    for _ in range(2):
        as_user(c, public, "import six", sink.port)
    assert counters(sink.drain()) == {
        USED + "six": 10,
        USED + "idna": 5,
        "python_popcon.reports": 10,
        USERS + "six": 2,
        USERS + "idna": 2,
        "python_popcon.users": 2,
    }
    for home, expected in ((home_a, ["-user", "idna", "six"]), (home_b, ["-user", "idna", "six"])):
        (month,) = markers(home)
        assert markers(home) == {month: expected}
        month_dir = home / ".cache/popcon-site/users" / month
        owner = home.stat().st_uid
        assert {p.stat().st_uid for p in month_dir.iterdir()} == {owner}
    assert not (home_c / ".cache").exists()
    status = subprocess.run(
        ["runuser", "-u", c, "--", str(public.root / "bin/popcon-site"), "status"],
        capture_output=True,
        text=True,
        env={
            k: v
            for k, v in base_environ().items()
            if k not in ("HOME", "XDG_CACHE_HOME", "PYTHON_POPCONTEST_USERS")
        },
        cwd="/",
    )
    assert status.returncode == 0, status.stderr
    (line,) = [line for line in status.stdout.splitlines() if line.startswith("users ")]
    assert "not counted:" in line and "read-only or not ours" in line, line


@pytest.mark.parametrize(
    "variables",
    [
        {"PYTHON_POPCONTEST_CACHE_DIR": "/srv/cache", "XDG_CACHE_HOME": "/x", "HOME": "/h"},
        {"PYTHON_POPCONTEST_CACHE_DIR": "relative", "HOME": "/h"},
        {"XDG_CACHE_HOME": "/x", "HOME": "/h"},
        {"XDG_CACHE_HOME": "relative", "HOME": "/h"},
        {"HOME": "/h"},
        {"HOME": "/"},
        {"HOME": "relative"},
    ],
)
def test_the_cache_dir_without_loading_the_index_module_is_the_index_modules(
    monkeypatch: pytest.MonkeyPatch, variables: dict[str, str]
) -> None:
    from popcon_site import _index, _users

    for name in ("PYTHON_POPCONTEST_CACHE_DIR", "XDG_CACHE_HOME", "HOME"):
        monkeypatch.delenv(name, raising=False)
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    expected = _index.user_cache_dir()
    monkeypatch.delitem(sys.modules, "popcon_site._index")  # _users' own copy answers
    assert _users.cache_dir() == expected
