"""A statsd host given by name: looked up by a child process, kept in the user cache.

The machine's own host name is in /etc/hosts (127.0.0.1), so it resolves without
any name server.  Run on 3.12 and 3.13, where a thread alive at fork() makes the
interpreter warn (or raise, under -W error).
"""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.envs import Env, enabled, make_env
from support.sinks import UdpSink
from support.wire import libraries

HOST = socket.gethostname()
# The fork comes first: a lookup thread started at activation would still be alive then.
FORK_AT_ONCE = (
    "import os\npid = os.fork()\nif pid == 0:\n    os._exit(0)\nos.waitpid(pid, 0)\nimport six\n"
)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, wheel: Path) -> Env:
    env = make_env(tmp_path_factory.mktemp("resolver") / "venv")
    env.install(str(wheel), "six")
    return env


@pytest.fixture
def sink6() -> Iterator[UdpSink]:
    try:
        sink = UdpSink(socket.AF_INET6, "::1")
    except OSError:
        pytest.fail("this machine has no IPv6 loopback")
    yield sink
    sink.close()


def entry_file(home: Path, host: str = HOST) -> Path:
    return home / ".cache" / "popcon-site" / "resolved" / host.lower()


def write_entry(home: Path, address: str, resolved_at: float, family: int) -> Path:
    path = entry_file(home)
    path.parent.mkdir(parents=True, mode=0o700, exist_ok=True)
    (home / ".cache" / "popcon-site").chmod(0o700)
    path.write_text(f"popcon-site-resolved 1\n{HOST}\n{resolved_at!r}\n{family} {address} 0\n")
    path.chmod(0o600)
    return path


def cached(home: Path) -> tuple[float, str]:
    lines = entry_file(home).read_text().split("\n")
    return float(lines[2]), lines[3]


def wait_for(predicate: object, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if callable(predicate) and predicate():
            return True
        time.sleep(0.02)
    return False


def test_hostname_is_in_etc_hosts() -> None:
    assert socket.gethostbyname(HOST) == "127.0.0.1", "the tests below need it"


@pytest.mark.parametrize("cache", ["no entry yet", "cached"])
def test_fork_at_once_warns_nothing_and_counts_arrive(
    env: Env, sink: UdpSink, home: Path, cache: str
) -> None:
    """No thread of ours exists at the program's fork(): 3.12+ neither warns nor raises."""
    variables = enabled(sink, home, PYTHON_POPCONTEST_STATSD_HOST=HOST)
    if cache == "cached":
        env.run("-c", "pass", env=variables)
        assert wait_for(entry_file(home).exists)
        sink.drain()
    for flags in ([], ["-W", "error::DeprecationWarning"]):
        for _ in range(3):
            if cache == "no entry yet":
                entry_file(home).unlink(missing_ok=True)
            proc = env.run(*flags, "-c", FORK_AT_ONCE, env=variables)
            assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", ""), (flags, proc)
            assert libraries(sink.lines()) == {"six"}, flags


def test_first_process_looks_up_and_fills_the_private_cache(
    env: Env, sink: UdpSink, home: Path
) -> None:
    variables = enabled(sink, home, PYTHON_POPCONTEST_STATSD_HOST=HOST, PYTHON_POPCONTEST_DEBUG="1")
    before = time.time()
    proc = env.run("-c", "import six", env=variables)
    assert proc.returncode == 0
    assert (
        proc.stderr
        == f"popcon-site: sent six + reports to 127.0.0.1:{sink.port} over udp in 1 datagram(s)\n"
    )
    assert libraries(sink.lines()) == {"six"}
    assert wait_for(entry_file(home).exists)
    resolved_at, address = cached(home)
    assert before <= resolved_at <= time.time() and address == "2 127.0.0.1 0"
    assert stat.S_IMODE(entry_file(home).stat().st_mode) == 0o600
    assert stat.S_IMODE(entry_file(home).parent.stat().st_mode) == 0o700
    assert not list(entry_file(home).parent.glob(".lookup-*")), "the child removed its marker"


def test_a_fresh_entry_is_used_as_is(env: Env, sink6: UdpSink, home: Path) -> None:
    """The entry says ::1 while the name resolves to 127.0.0.1: counts reaching ::1 came
    from the cache, and nothing looked the name up again."""
    path = write_entry(home, "::1", time.time() - 10, socket.AF_INET6)
    text = path.read_text()
    variables = enabled(sink6, home, PYTHON_POPCONTEST_STATSD_HOST=HOST)
    proc = env.run("-c", "import six", env=variables)
    assert (proc.returncode, proc.stderr) == (0, "")
    assert libraries(sink6.lines()) == {"six"}
    time.sleep(0.3)
    assert path.read_text() == text


def test_a_stale_entry_is_used_and_refreshed(env: Env, sink6: UdpSink, home: Path) -> None:
    write_entry(home, "::1", time.time() - 3600, socket.AF_INET6)
    variables = enabled(sink6, home, PYTHON_POPCONTEST_STATSD_HOST=HOST)
    proc = env.run("-c", "import six", env=variables)
    assert (proc.returncode, proc.stderr) == (0, "")
    assert libraries(sink6.lines()) == {"six"}, "the stale address is used, not waited on"
    assert wait_for(lambda: cached(home)[1] == "2 127.0.0.1 0"), cached(home)
    assert time.time() - cached(home)[0] < 30


@pytest.mark.parametrize(
    "content",
    [
        b"garbage\n",
        b"popcon-site-resolved 1\nHOST\nnan\n2 127.0.0.1 0\n",
        b"popcon-site-resolved 1\nHOST\n1.0\n2 not-an-address 0\n",
        b"popcon-site-resolved 1\nother.example\n1e12\n10 ::1 0\n",
        b"x" * 5000,
    ],
    ids=["garbage", "nan-time", "bad-address", "other-host", "oversized"],
)
def test_a_corrupt_entry_is_ignored_and_replaced(
    env: Env, sink: UdpSink, home: Path, content: bytes
) -> None:
    path = write_entry(home, "127.0.0.1", 0.0, socket.AF_INET)
    path.write_bytes(content.replace(b"HOST", HOST.encode()))
    variables = enabled(sink, home, PYTHON_POPCONTEST_STATSD_HOST=HOST)
    proc = env.run("-c", "import six", env=variables)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "")
    assert libraries(sink.lines()) == {"six"}
    assert wait_for(
        lambda: path.read_bytes().startswith(b"popcon-site-resolved 1\n" + HOST.encode())
    )
    assert cached(home)[1] == "2 127.0.0.1 0"


def test_a_symlinked_entry_is_refused(env: Env, sink6: UdpSink, home: Path, tmp_path: Path) -> None:
    """Somebody else's file linked in place of the entry: never followed."""
    target = tmp_path / "elsewhere"
    target.write_text(f"popcon-site-resolved 1\n{HOST}\n{time.time()!r}\n10 ::1 0\n")
    path = entry_file(home)
    path.parent.mkdir(parents=True, mode=0o700)
    path.symlink_to(target)
    variables = enabled(
        sink6, home, PYTHON_POPCONTEST_STATSD_HOST=HOST, PYTHON_POPCONTEST_DEBUG="1"
    )
    env.run("-c", "import six", env=variables)
    assert sink6.drain() == [], "the linked entry's ::1 was not used"


def test_no_usable_cache_dir_still_counts(env: Env, sink: UdpSink, home: Path) -> None:
    variables = enabled(
        sink, home, PYTHON_POPCONTEST_STATSD_HOST=HOST, PYTHON_POPCONTEST_CACHE_DIR="relative"
    )
    for _ in range(2):
        proc = env.run("-c", "import six", env=variables)
        assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "")
        assert libraries(sink.lines()) == {"six"}
    assert not (home / ".cache").exists()


def test_status_shows_the_cached_resolution(env: Env, sink: UdpSink, home: Path) -> None:
    variables = enabled(sink, home, PYTHON_POPCONTEST_STATSD_HOST=HOST)

    def status() -> str:
        command = [str(env.root / "bin" / "popcon-site"), "status"]
        proc = subprocess.run(command, env=variables, capture_output=True, text=True, check=True)
        return proc.stdout

    assert "cached: none yet: the next process to report looks the name up" in status()
    env.run("-c", "import six", env=variables)
    assert wait_for(entry_file(home).exists)
    assert "cached: 127.0.0.1, resolved 0 s ago (fresh)" in status()
    write_entry(home, "127.0.0.1", time.time() - 600, socket.AF_INET)
    stale = "cached: 127.0.0.1, resolved 10 min ago (stale: the next process looks it up again)"
    assert stale in status()
    entry_file(home).write_text("garbage\n")
    assert "cached: refused: malformed: ignored, the next process to report looks" in status()


# Keeps allocating containers, so that collections trigger checkpoints.
LOOP = (
    "import os, signal, sys, time\n"
    "children = []\n"
    "signal.signal(signal.SIGCHLD, lambda *args: children.append(1))\n"
    "def work(seconds):\n"
    "    keep, end = [], time.monotonic() + seconds\n"
    "    while time.monotonic() < end:\n"
    "        keep.append([len(keep)])\n"
    "import six\n"
    "work(2.5)\n"
)


def test_checkpoints_in_the_programs_work_start_no_lookup(
    env: Env, sink: UdpSink, home: Path
) -> None:
    """No cached answer: checkpoints after imports and collections wait for the exit
    report; no child was started under the program (no SIGCHLD, nothing to wait for)."""
    code = LOOP + (
        "try:\n"
        "    os.waitpid(-1, os.WNOHANG)\n"
        "    print('a child exists')\n"
        "except ChildProcessError:\n"
        "    pass\n"
        f"print(len(children), os.path.exists({str(entry_file(home))!r}))\n"
    )
    variables = enabled(
        sink, home, PYTHON_POPCONTEST_STATSD_HOST=HOST, PYTHON_POPCONTEST_CHECKPOINT="0.5"
    )
    env.run("-c", "import six", env=dict(variables, PYTHON_POPCONTEST_CACHE_DIR="relative"))
    sink.drain()  # the index is warm; no answer is cached (that run had no usable cache)
    proc = env.run("-c", code, env=variables)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "0 False\n", "")
    assert [sorted(p.decode().split("\n")) for p in sink.drain()] == [
        ["python_popcon.library_used.six:1|c", "python_popcon.reports:1|c"]
    ], "one datagram: the exit report's"


def test_checkpoints_use_a_cached_answer(env: Env, sink: UdpSink, home: Path) -> None:
    variables = enabled(
        sink, home, PYTHON_POPCONTEST_STATSD_HOST=HOST, PYTHON_POPCONTEST_CHECKPOINT="0.5"
    )
    env.run("-c", "import six", env=variables)  # warm index, cached answer
    assert wait_for(entry_file(home).exists)
    sink.drain()
    proc = subprocess.Popen([str(env.python), "-c", LOOP + "work(600)\n"], env=variables)
    try:
        time.sleep(2.0)
        proc.kill()
        proc.wait(timeout=30)
    finally:
        proc.kill()
    assert libraries(sink.lines()) == {"six"}, "sent by a checkpoint, before the kill"


def test_the_lookup_child_holds_none_of_the_programs_files(
    hanging_resolver_env: Env, sink: UdpSink, home: Path
) -> None:
    """Whoever waits for the program's output, or for EOF on a pipe it inherited, hears
    of its exit at once, not when the lookup child it left behind ends."""
    reader, writer = os.pipe()
    started = time.monotonic()
    proc = subprocess.Popen(
        [str(hanging_resolver_env.python), "-c", "import six"],
        env=enabled(sink, home, PYTHON_POPCONTEST_STATSD_HOST=HOST),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        pass_fds=(writer,),
    )
    os.close(writer)
    try:
        assert proc.communicate(timeout=4) == (b"", b"")  # EOF on stdout and stderr
        assert os.read(reader, 1) == b""  # EOF: no other holder of the inherited pipe
    finally:
        os.close(reader)
        proc.kill()
    assert time.monotonic() - started < 2.5
    marker = entry_file(home).parent / f".lookup-{HOST.lower()}"
    assert marker.exists(), "a lookup child was started, and is still asleep"
