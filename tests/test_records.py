"""Records (issue 22): a killed process loses nothing, and nothing is counted twice.

Real interpreters in a real venv with the built wheel and numpy from PyPI, a real UDP
sink, real signals.  Each program does its imports, says "ready", then works (a numpy
loop, a sleep loop, a subprocess driver); it is killed right after "ready", and
``popcon-site sweep`` (or the next recording process's exit) sends its record.  The
counts must equal what the same imports send at a normal exit.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import pytest

from support.envs import Env, enabled, make_env
from support.sinks import UdpSink
from support.wire import PREFIX, REPORTS

IMPORTS = "import numpy, idna\n"

PROGRAMS = {
    "numpy-loop": IMPORTS + "a = numpy.ones(100000)\nprint('ready', flush=True)\n"
    "while True:\n    a = a * 1.0000001 + 0.5\n",
    "sleep-loop": IMPORTS + "import time\nprint('ready', flush=True)\n"
    "while True:\n    time.sleep(0.05)\n",
    "subprocess-driver": IMPORTS + "import subprocess\nprint('ready', flush=True)\n"
    "while True:\n    subprocess.run(['sleep', '0.05'])\n",
}


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, wheel: Path) -> Env:
    env = make_env(tmp_path_factory.mktemp("records") / "venv")
    env.install(str(wheel), "numpy", "idna")
    return env


def lib(name: str) -> str:
    return f"{PREFIX}{name}:1|c"


def counts(packets: list[bytes]) -> Counter[str]:
    return Counter(line for packet in packets for line in packet.decode("ascii").split("\n"))


def arrived(sink: UdpSink, wanted: Counter[str], timeout: float = 5.0) -> Counter[str]:
    """What the sink got, once at least ``wanted`` arrived (or the timeout), plus 0.3 s."""
    end = time.monotonic() + timeout
    while time.monotonic() < end and any(counts(sink.packets)[k] < n for k, n in wanted.items()):
        sink.drain(0.1)
    sink.drain(0.3)
    return counts(sink.packets)


def records_dir(home: Path) -> Path:
    return home.with_name(home.name + "-run") / "popcon-site"


def records(home: Path) -> list[str]:
    directory = records_dir(home)
    return sorted(os.listdir(directory)) if directory.exists() else []


def start_ready(env: Env, code: str, variables: dict[str, str]) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [str(env.python), "-c", code],
        env=variables,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line == "ready\n", (line, proc.stderr.read() if proc.poll() is not None else "")
    return proc


def children(pid: int) -> list[int]:
    """The pids whose parent is ``pid`` (from /proc/PID/stat, field 4)."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except (OSError, ValueError):
            continue
        if entry.isdigit() and int(stat.rpartition(")")[2].split()[1]) == pid:
            found.append(int(entry))
    return found


def kill(proc: subprocess.Popen[str], sig: int) -> None:
    proc.send_signal(sig)
    assert proc.wait(timeout=10) == -sig


def sweep(env: Env, home: Path, variables: dict[str, str]) -> subprocess.CompletedProcess[str]:
    done = env.run("-m", "popcon_site", "sweep", "--dir", str(records_dir(home)), env=variables)
    assert done.returncode == 0, done.stderr
    return done


def normal_exit(env: Env, sink: UdpSink, home: Path) -> Counter[str]:
    """What the same imports send at a normal exit (which also warms the index cache)."""
    done = env.run("-c", IMPORTS, env=enabled(sink, home))
    assert (done.returncode, done.stderr) == (0, "")
    got = arrived(sink, Counter({REPORTS: 1}))
    sink.packets.clear()
    assert got == Counter({lib("numpy"): 1, lib("idna"): 1, REPORTS: 1})
    assert records(home) == []  # a normal exit leaves no record
    return got


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["sigkill", "sigterm"])
@pytest.mark.parametrize("program", sorted(PROGRAMS))
def test_killed_after_its_imports_loses_nothing(
    env: Env, sink: UdpSink, home: Path, program: str, sig: int
) -> None:
    expected = normal_exit(env, sink, home)
    variables = enabled(sink, home)
    proc = start_ready(env, PROGRAMS[program], variables)
    kill(proc, sig)
    assert counts(sink.drain(0.3)) == Counter()  # killed: nothing sent by itself
    assert len(records(home)) == 1
    sweep(env, home, variables)
    assert arrived(sink, expected) == expected
    assert records(home) == []
    sweep(env, home, variables)  # a second sweep sends nothing again
    assert arrived(sink, expected) == expected


def test_normal_exit_sends_once_and_leaves_no_record(env: Env, sink: UdpSink, home: Path) -> None:
    variables = enabled(sink, home)
    proc = start_ready(env, IMPORTS + "print('ready', flush=True)\n", variables)
    assert proc.wait(timeout=10) == 0
    expected = Counter({lib("numpy"): 1, lib("idna"): 1, REPORTS: 1})
    assert arrived(sink, expected) == expected
    assert records(home) == []
    sweep(env, home, variables)
    assert arrived(sink, expected) == expected


def test_standard_library_only_creates_no_record(env: Env, sink: UdpSink, home: Path) -> None:
    code = (
        "import json, csv, decimal, email.parser, sys; print('popcon_site._record' in sys.modules)"
    )
    done = env.run("-c", code, env=enabled(sink, home))
    assert (done.returncode, done.stderr) == (0, "")
    assert not records_dir(home).exists()
    # 3.10+: the record's module is not even loaded (3.9 has no sys.stdlib_module_names:
    # it loads it to tell the standard library's names apart, and still writes nothing).
    assert done.stdout == ("True\n" if sys.version_info < (3, 10) else "False\n")
    assert arrived(sink, Counter({REPORTS: 1})) == Counter({REPORTS: 1})


def test_record_is_user_only_and_locked_while_alive(env: Env, sink: UdpSink, home: Path) -> None:
    variables = enabled(sink, home)
    proc = start_ready(env, PROGRAMS["sleep-loop"], variables)
    try:
        directory = records_dir(home)
        assert directory.stat().st_mode & 0o777 == 0o700
        (name,) = records(home)
        assert name.endswith(".rec")
        assert (directory / name).stat().st_mode & 0o777 == 0o600
        text = (directory / name).read_bytes().partition(b"\0")[0].decode()
        assert {"numpy", "idna"} <= set(text.split("\n"))
        done = sweep(env, home, variables)  # alive: its lock cannot be taken
        assert done.stdout == ""
        assert records(home) == [name]
        assert counts(sink.drain(0.3)) == Counter()
    finally:
        kill(proc, signal.SIGKILL)


def test_checkpoint_sent_lines_are_never_sent_again(env: Env, sink: UdpSink, home: Path) -> None:
    # A checkpoint (1 s) sends numpy and reports; idna is imported after it; then killed.
    normal_exit(env, sink, home)
    code = textwrap.dedent("""\
        import numpy, time
        keep, end = [], time.monotonic() + 2.5
        while time.monotonic() < end:
            keep.append([len(keep)])
            if len(keep) > 100000:
                keep = []
        import idna
        print('ready', flush=True)
        time.sleep(60)
        """)
    variables = enabled(sink, home, PYTHON_POPCONTEST_CHECKPOINT="1")
    proc = start_ready(env, code, variables)
    kill(proc, signal.SIGKILL)
    first = arrived(sink, Counter({lib("numpy"): 1, REPORTS: 1}))
    assert first == Counter({lib("numpy"): 1, REPORTS: 1})
    sweep(env, home, variables)
    expected = Counter({lib("numpy"): 1, lib("idna"): 1, REPORTS: 1})
    assert arrived(sink, expected) == expected


def test_two_sweepers_at_once_send_each_record_once(env: Env, sink: UdpSink, home: Path) -> None:
    expected = normal_exit(env, sink, home)
    variables = enabled(sink, home)
    for _ in range(4):
        kill(start_ready(env, PROGRAMS["sleep-loop"], variables), signal.SIGKILL)
    assert len(records(home)) == 4
    command = [str(env.python), "-m", "popcon_site", "sweep", "--dir", str(records_dir(home))]
    sweepers = [subprocess.Popen(command, env=variables, stdout=subprocess.PIPE) for _ in "ab"]
    assert [s.wait(timeout=30) for s in sweepers] == [0, 0]
    four = Counter({line: 4 * n for line, n in expected.items()})
    assert arrived(sink, four) == four
    assert records(home) == []


def test_next_recording_process_sweeps_at_its_exit(env: Env, sink: UdpSink, home: Path) -> None:
    expected = normal_exit(env, sink, home)
    variables = enabled(sink, home)
    kill(start_ready(env, PROGRAMS["numpy-loop"], variables), signal.SIGTERM)
    assert len(records(home)) == 1
    done = env.run("-c", IMPORTS, env=variables)  # its own report, then the dead one's
    assert (done.returncode, done.stderr) == (0, "")
    two = Counter({line: 2 * n for line, n in expected.items()})
    assert arrived(sink, two) == two
    assert records(home) == []


def test_fork_child_has_a_record_of_its_own(env: Env, sink: UdpSink, home: Path) -> None:
    normal_exit(env, sink, home)
    code = textwrap.dedent("""\
        import numpy, os, time
        if os.fork() == 0:
            import idna
            print('ready', flush=True)
        else:
            time.sleep(0.5)
            print('ready', flush=True)
        time.sleep(60)
        """)
    variables = enabled(sink, home)
    parent = subprocess.Popen(
        [str(env.python), "-c", code], env=variables, stdout=subprocess.PIPE, text=True
    )
    assert parent.stdout is not None
    assert [parent.stdout.readline(), parent.stdout.readline()] == ["ready\n"] * 2
    assert len(records(home)) == 2
    for child in children(parent.pid):  # no pkill in a minimal Debian (the sid chroot)
        os.kill(child, signal.SIGKILL)
    kill(parent, signal.SIGKILL)
    sweep(env, home, variables)
    # The parent: numpy; the child, whose inherited numpy is baseline: idna; one report each.
    expected = Counter({lib("numpy"): 1, lib("idna"): 1, REPORTS: 2})
    assert arrived(sink, expected) == expected
    assert records(home) == []


def test_planted_or_malformed_records_are_refused(env: Env, sink: UdpSink, home: Path) -> None:
    variables = enabled(sink, home)
    directory = records_dir(home)
    directory.mkdir(mode=0o700)
    garbage = directory / "1-garbage.rec"
    garbage.write_bytes(b"numpy\nidna\n")
    garbage.chmod(0o600)
    readable = directory / "2-readable.rec"
    readable.write_text("popcon-site record 1\nnumpy\n")
    readable.chmod(0o644)
    oversized = directory / "3-big.rec"
    oversized.write_bytes(b"popcon-site record 1\n" + b"numpy\n" * 200000)
    oversized.chmod(0o600)
    link = directory / "4-link.rec"
    link.symlink_to(oversized)
    planted = []
    if os.geteuid() == 0:
        other = directory / "5-other.rec"
        other.write_text("popcon-site record 1\nnumpy\n")
        other.chmod(0o600)
        os.chown(other, 65534, 65534)
        planted.append("5-other.rec")
    done = sweep(env, home, variables)
    refused = [line for line in done.stdout.splitlines() if line.startswith("refused")]
    assert len(refused) == 4 + len(planted), done.stdout
    assert counts(sink.drain(0.5)) == Counter()
    # The garbage one, ours and dead, is removed; the others stay, refused again next time.
    assert records(home) == sorted(["2-readable.rec", "3-big.rec", "4-link.rec", *planted])
    # A recording process's exit refuses them silently and still reports.
    done = env.run("-c", IMPORTS, env=variables)
    assert (done.returncode, done.stderr) == (0, "")
    expected = Counter({lib("numpy"): 1, lib("idna"): 1, REPORTS: 1})
    assert arrived(sink, expected) == expected


def test_unusable_runtime_dir_falls_back_silently(env: Env, sink: UdpSink, home: Path) -> None:
    # $XDG_RUNTIME_DIR readable by others: never used; the process reports as before.
    loose = home / "loose"
    loose.mkdir()
    (loose / "popcon-site").mkdir(mode=0o755)
    (loose / "popcon-site").chmod(0o755)
    variables = enabled(sink, home, XDG_RUNTIME_DIR=str(loose))
    done = env.run("-c", IMPORTS, env=variables)
    assert (done.returncode, done.stderr) == (0, "")
    expected = Counter({lib("numpy"): 1, lib("idna"): 1, REPORTS: 1})
    assert arrived(sink, expected) == expected
    assert os.listdir(loose / "popcon-site") == []


def test_status_counts_live_and_dead_records_and_names_refused_ones(
    env: Env, sink: UdpSink, home: Path
) -> None:
    variables = enabled(sink, home)
    alive = start_ready(env, PROGRAMS["sleep-loop"], variables)
    try:
        kill(start_ready(env, PROGRAMS["sleep-loop"], variables), signal.SIGKILL)
        garbage = records_dir(home) / "1-garbage.rec"
        garbage.write_text("popcon-site record 1\\nnumpy\\n")
        garbage.chmod(0o640)
        done = env.run("-m", "popcon_site", "status", env=variables)
        assert done.returncode == 0, done.stderr
        lines = done.stdout.splitlines()
        assert f"{records_dir(home)}: 1 live, 1 dead (sent by the next sweep)" in done.stdout
        refused = f"refused: {garbage}: not this user's, or readable by others"
        assert [line.strip() for line in lines if "refused" in line] == [refused], lines
        assert counts(sink.drain(0.3)) == Counter()  # status sends nothing
    finally:
        kill(alive, signal.SIGKILL)


def test_a_swept_record_counts_its_user_once_a_month(env: Env, sink: UdpSink, home: Path) -> None:
    """User counters on (the default): a sweep sends the dead process's user lines, claimed
    in the user's cache like an exit's, so a second killed process adds no user line."""
    normal_exit(env, sink, home)  # warms the index; the suite's default has users off
    variables = enabled(sink, home)
    del variables["PYTHON_POPCONTEST_USERS"]
    for _ in range(2):
        kill(start_ready(env, PROGRAMS["sleep-loop"], variables), signal.SIGKILL)
        sweep(env, home, variables)
    users = "python_popcon.library_users."
    expected = Counter({lib("numpy"): 2, lib("idna"): 2, REPORTS: 2})
    expected.update({f"{users}numpy:1|c": 1, f"{users}idna:1|c": 1, "python_popcon.users:1|c": 1})
    assert arrived(sink, expected) == expected
    # Another user (home) whose process had them off: its sweep sends none, though the
    # sweeper's setting is on and that user has claimed nothing this month.
    other = home.with_name(home.name + "-other")
    other.mkdir()
    sink.packets.clear()
    normal_exit(env, sink, other)
    variables = {**enabled(sink, other), "PYTHON_POPCONTEST_USERS": "off"}
    kill(start_ready(env, PROGRAMS["sleep-loop"], variables), signal.SIGKILL)
    del variables["PYTHON_POPCONTEST_USERS"]
    sweep(env, other, variables)
    expected = Counter({lib("numpy"): 1, lib("idna"): 1, REPORTS: 1})
    assert arrived(sink, expected) == expected
