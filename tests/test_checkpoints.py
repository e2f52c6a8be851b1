"""Checkpoints: a running process sends what it imported before it ends, however it ends.

Real interpreters in a real venv with the built wheel and PyPI packages, a real UDP
socket, real signals.  PYTHON_POPCONTEST_CHECKPOINT=1 keeps most tests short; one
test runs with the default delay (10 s) and the SIGTERM 20 s after start of the issue.
"""

from __future__ import annotations

import signal
import subprocess
import textwrap
import time
from collections import Counter
from pathlib import Path

import pytest

from support.envs import Env, enabled, make_env
from support.sinks import UdpSink
from support.wire import PREFIX, REPORTS

# Keeps allocating containers, so the collector runs (a loop that accumulates).
LOOP = textwrap.dedent("""\
    import sys, time
    def work(seconds):
        keep, end = [], time.monotonic() + seconds
        while time.monotonic() < end:
            keep.append([len(keep)])
    """)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, wheel: Path) -> Env:
    env = make_env(tmp_path_factory.mktemp("checkpoints") / "venv")
    env.install(str(wheel), "pyyaml", "six", "attrs", "idna", "typing_extensions")
    return env


@pytest.fixture
def warm(env: Env, sink: UdpSink, home: Path) -> Path:
    """A home whose index cache is built (a checkpoint never builds one itself)."""
    proc = env.run("-c", "import yaml, six, attr, idna, typing_extensions", env=enabled(sink, home))
    assert (proc.returncode, proc.stderr) == (0, "")
    sink.drain()
    sink.packets.clear()
    return home


def counts(packets: list[bytes]) -> Counter[str]:
    """How often each line arrived, over all datagrams."""
    return Counter(line for packet in packets for line in packet.decode("ascii").split("\n"))


def wait_for(sink: UdpSink, wanted: set[str], timeout: float) -> list[bytes]:
    """Datagrams until every wanted line has arrived, or the timeout."""
    end = time.monotonic() + timeout
    while time.monotonic() < end and not wanted <= set(counts(sink.packets)):
        sink.drain(0.1)
    return list(sink.packets)


def lib(name: str) -> str:
    return f"{PREFIX}{name}:1|c"


def start(env: Env, code: str, variables: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(env.python), "-c", code],
        env=variables,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.parametrize(
    ("delay", "sig", "after"),
    [("1", signal.SIGKILL, 3.0), ("1", signal.SIGTERM, 3.0), (None, signal.SIGTERM, 20.0)],
    ids=["sigkill-1s", "sigterm-1s", "sigterm-20s-default-delay"],
)
def test_a_killed_process_is_counted(
    env: Env, sink: UdpSink, warm: Path, delay: str | None, sig: int, after: float
) -> None:
    extra = {} if delay is None else {"PYTHON_POPCONTEST_CHECKPOINT": delay}
    started = time.monotonic()
    proc = start(env, LOOP + "import yaml, six\nwork(600)\n", enabled(sink, warm, **extra))
    try:
        time.sleep(max(0.0, after - (time.monotonic() - started)))
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=30)
    finally:
        proc.kill()
    # Killed as before: the status says the signal, nothing was printed.
    assert (proc.returncode, stderr) == (-sig, "")
    lines = counts(wait_for(sink, {REPORTS}, 2.0))
    assert lines == Counter({lib("pyyaml"): 1, lib("six"): 1, REPORTS: 1})


def test_the_first_checkpoint_comes_at_the_delay_not_before(
    env: Env, sink: UdpSink, warm: Path
) -> None:
    proc = start(env, LOOP + "import six\nwork(600)\n", enabled(sink, warm))
    try:
        assert sink.drain(8.0) == []  # default delay: 10 s
        packets = wait_for(sink, {REPORTS}, 6.0)
    finally:
        proc.kill()
        proc.communicate()
    assert counts(packets) == Counter({lib("six"): 1, REPORTS: 1})


def test_imports_after_a_checkpoint_are_sent_once_and_reports_once(
    env: Env, sink: UdpSink, warm: Path
) -> None:
    code = LOOP + textwrap.dedent("""\
        import yaml
        work(1.5)      # checkpoint at 1 s: pyyaml + reports
        import six     # not due: kept for the next checkpoint (2 s later, at ~3 s)
        work(2.5)      # ends ~1 s after it, so a late checkpoint still falls inside
        import attr, idna  # not due (4 s later, ~7 s): sent by the exit report
        raise SystemExit(7)
        """)
    variables = enabled(sink, warm, PYTHON_POPCONTEST_CHECKPOINT="1", PYTHON_POPCONTEST_DEBUG="1")
    proc = start(env, code, variables)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 7, stderr
    assert stderr == (
        f"popcon-site: sent attrs, idna to 127.0.0.1:{sink.port} over udp in 1 datagram(s); "
        "at checkpoints: pyyaml, six + reports\n"
    )
    packets = wait_for(sink, {lib("idna")}, 2.0)
    assert [sorted(packet.decode().split("\n")) for packet in packets] == [
        [lib("pyyaml"), REPORTS],
        [lib("six")],
        [lib("attrs"), lib("idna")],
    ]


def test_checkpoints_and_the_exit_report_count_by_one_rule(
    env: Env, sink: UdpSink, warm: Path
) -> None:
    """Only what was imported counts: a probed package never, by a checkpoint or at exit;
    a module imported then deleted always (the exit report finds its file); what is
    loaded at a checkpoint goes then."""
    code = LOOP + textwrap.dedent("""        import importlib.util
        assert importlib.util.find_spec("attr")  # a lookup, not an import
        import six; del sys.modules["six"]
        import yaml
        work(1.5)      # checkpoint at 1 s: pyyaml + reports; six is no longer loaded
        assert importlib.util.find_spec("idna")
        """)
    proc = start(env, code, enabled(sink, warm, PYTHON_POPCONTEST_CHECKPOINT="1"))
    _, stderr = proc.communicate(timeout=60)
    assert (proc.returncode, stderr) == (0, "")
    packets = wait_for(sink, {lib("six")}, 2.0)
    assert [sorted(packet.decode().split("\n")) for packet in packets] == [
        [lib("pyyaml"), REPORTS],
        [lib("six")],
    ]


def test_a_cold_index_is_left_to_the_exit_report(env: Env, sink: UdpSink, home: Path) -> None:
    """No index cached yet: a checkpoint inside the program's work builds none (neither
    the builder nor importlib-metadata is loaded, no cache file written) and sends only
    the reports counter; the exit report builds the index and sends the rest, once."""
    code = LOOP + textwrap.dedent("""\
        import os, yaml, six
        work(2.5)      # checkpoints at 1 s and 2 s, the index still to build
        import popcon_site
        cache = os.path.join(os.environ["XDG_CACHE_HOME"], "popcon-site")
        print(type(popcon_site.current().checkpoint).__name__,
              "popcon_site._indexer" in sys.modules, "importlib.metadata" in sys.modules,
              os.listdir(cache) if os.path.isdir(cache) else [])
        """)
    proc = start(env, code, enabled(sink, home, PYTHON_POPCONTEST_CHECKPOINT="1"))
    stdout, stderr = proc.communicate(timeout=60)
    assert (proc.returncode, stdout, stderr) == (0, "State False False []\n", "")
    packets = wait_for(sink, {lib("six")}, 2.0)
    assert [sorted(packet.decode().split("\n")) for packet in packets] == [
        [REPORTS],
        [lib("pyyaml"), lib("six")],
    ]


def test_a_short_process_sends_one_datagram_identical_to_before(
    env: Env, sink: UdpSink, warm: Path
) -> None:
    """Ends before the first checkpoint: the exit report alone, and no checkpoint code."""
    code = "import sys, six; print('popcon_site._checkpoint' in sys.modules)"
    for extra in ({}, {"PYTHON_POPCONTEST_CHECKPOINT": "off"}):
        proc = env.run("-c", code, env=enabled(sink, warm, **extra))
        assert (proc.returncode, proc.stdout, proc.stderr) == (0, "False\n", "")
        assert sink.drain() == [f"{PREFIX}six:1|c\n{REPORTS}".encode()]


@pytest.mark.parametrize("value", ["0", "off", "no", "-3", "soon"])
def test_checkpoints_can_be_turned_off(env: Env, sink: UdpSink, warm: Path, value: str) -> None:
    variables = enabled(sink, warm, PYTHON_POPCONTEST_CHECKPOINT=value)
    proc = start(env, LOOP + "import six\nwork(600)\n", variables)
    try:
        assert sink.drain(2.5) == []
    finally:
        proc.kill()
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL


def test_fork_after_a_checkpoint(env: Env, sink: UdpSink, warm: Path) -> None:
    """The child is a process of its own: its own reports and first delay; the parent's
    sends are its baseline, never sent again by it."""
    code = LOOP + textwrap.dedent("""\
        import os, six
        work(1.5)                 # the parent's checkpoint: six + reports
        pid = os.fork()
        if pid == 0:
            import attr
            work(1.5)             # the child's own checkpoint, 1 s after the fork
            os._exit(0)           # no exit report: only that checkpoint counts it
        os.waitpid(pid, 0)
        pid = os.fork()
        if pid == 0:
            import yaml
            raise SystemExit(0)   # before its first checkpoint: the exit report, as today
        os.waitpid(pid, 0)
        import idna
        """)
    proc = start(env, code, enabled(sink, warm, PYTHON_POPCONTEST_CHECKPOINT="1"))
    _, stderr = proc.communicate(timeout=60)
    assert (proc.returncode, stderr) == (0, "")
    packets = wait_for(sink, {lib("idna")}, 2.0)
    assert sorted(sorted(packet.decode().split("\n")) for packet in packets) == sorted(
        [
            [lib("six"), REPORTS],  # parent, checkpoint
            [lib("attrs"), REPORTS],  # first child, its checkpoint
            [lib("pyyaml"), REPORTS],  # second child, at exit
            [lib("idna")],  # parent, at exit
        ]
    )


def test_threads_importing_while_checkpoints_run(env: Env, sink: UdpSink, warm: Path) -> None:
    """Checkpoints in whichever thread triggers them, while five threads import,
    forget and import again: each distribution once, reports once."""
    code = LOOP + textwrap.dedent("""\
        import importlib, threading
        names = ["yaml", "six", "attr", "idna", "typing_extensions"]
        def churn(name):  # one name per thread: two threads popping one module race
            end = time.monotonic() + 3
            while time.monotonic() < end:
                for key in [k for k in list(sys.modules) if k.split(".")[0] == name]:
                    sys.modules.pop(key, None)
                importlib.import_module(name)
                [[j] for j in range(50)]
        threads = [threading.Thread(target=churn, args=(name,)) for name in names]
        for t in threads: t.start()
        work(3)
        for t in threads: t.join()
        """)
    variables = enabled(sink, warm, PYTHON_POPCONTEST_CHECKPOINT="0.1")
    proc = start(env, code, variables)
    _, stderr = proc.communicate(timeout=60)
    assert (proc.returncode, stderr) == (0, "")
    lines = counts(wait_for(sink, {REPORTS}, 2.0))
    assert lines == Counter(
        {
            lib("pyyaml"): 1,
            lib("six"): 1,
            lib("attrs"): 1,
            lib("idna"): 1,
            lib("typing-extensions"): 1,
            REPORTS: 1,
        }
    )


# An object in sys.modules whose __dict__ the checkpoint reads (to find its file): it
# sends this process a signal right then, so that the signal lands inside the checkpoint.
TRAP = textwrap.dedent("""\
    import os, signal, sys, time
    class Trap:
        armed = True
        @property
        def __dict__(self):
            if Trap.armed and "popcon_site._checkpoint" in sys.modules:
                Trap.armed = False
                os.kill(os.getpid(), SIGNAL)
                time.sleep(0.05)  # the handler runs here, inside the checkpoint
            return {}
    sys.modules["trap"] = Trap()
    """)

IMPORTS = (
    "i = 0\nwhile True:\n    i += 1\n"
    "    try: __import__(f'nosuch{i}')\n    except ImportError: pass\n"
)
COLLECTIONS = "keep = []\nwhile True:\n    keep.append([1])\n"


@pytest.mark.parametrize("trigger", ["gc", "import"])
def test_ctrl_c_during_a_checkpoint_still_stops_the_program(
    env: Env, sink: UdpSink, warm: Path, trigger: str
) -> None:
    loop = COLLECTIONS if trigger == "gc" else IMPORTS
    code = (
        TRAP.replace("SIGNAL", "signal.SIGINT")
        + "import six\ntry:\n"
        + textwrap.indent(loop, "    ")
        + "except KeyboardInterrupt:\n    print('interrupted', flush=True)\n    raise\n"
    )
    proc = start(env, code, enabled(sink, warm, PYTHON_POPCONTEST_CHECKPOINT="0.5"))
    try:
        stdout, stderr = proc.communicate(timeout=20)
    finally:
        proc.kill()
    # Stopped as a Ctrl-C stops it: KeyboardInterrupt in the program, death by SIGINT.
    assert (proc.returncode, stdout) == (-signal.SIGINT, "interrupted\n"), stderr
    assert stderr.rstrip().endswith("KeyboardInterrupt"), stderr
    assert "Exception ignored" not in stderr, stderr
    assert counts(wait_for(sink, {REPORTS}, 2.0)) == Counter({lib("six"): 1, REPORTS: 1})


def test_a_sigterm_handler_during_a_checkpoint_still_ends_the_program(
    env: Env, sink: UdpSink, warm: Path
) -> None:
    """sys.exit() from a SIGTERM handler (a batch job's clean-up) that runs during a
    checkpoint in a collection: its SystemExit reaches the program once the checkpoint
    is over, and the handler ran once."""
    code = (
        TRAP.replace("SIGNAL", "signal.SIGTERM")
        + "calls = []\n"
        + "def on_term(signum, frame):\n    calls.append(signum)\n    sys.exit(3)\n"
        + "signal.signal(signal.SIGTERM, on_term)\n"
        + "import atexit; atexit.register(lambda: print('handler ran', len(calls), flush=True))\n"
        + "import six\n"
        + COLLECTIONS
    )
    proc = start(env, code, enabled(sink, warm, PYTHON_POPCONTEST_CHECKPOINT="0.5"))
    try:
        stdout, stderr = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert (proc.returncode, stdout, stderr) == (3, "handler ran 1\n", "")
    assert counts(wait_for(sink, {REPORTS}, 2.0)) == Counter({lib("six"): 1, REPORTS: 1})


# ast.parse of this source collects many times (3.9-3.11) or once as it returns (3.12+,
# where a collection waits for the next eval-breaker check): a signal sent by a thread,
# which gets the GIL only inside the collection callback, is handled in that callback.
# One sender thread for all trials: a thread's end runs a weakref callback in the main
# thread, where a re-raised interrupt would be printed and lost (see the report).
PARSE = textwrap.dedent("""\
    import ast, os, signal, sys, threading, time, _queue
    src = "x = [1, 2, 3]\\n" * 5000
    wanted, sent = _queue.SimpleQueue(), [0]
    def serve():
        while True:
            signums = wanted.get()
            time.sleep(0.01)
            for signum in signums:
                os.kill(os.getpid(), signum)
            sent[0] += 1
    def wait_sent(trial):  # polls: an interrupt raised in it leaves nothing half done
        while sent[0] <= trial:
            time.sleep(0.001)
        time.sleep(0.001)  # a signal still pending is handled here, inside the caller's try
    threading.Thread(target=serve, daemon=True).start()
    """)


def test_ctrl_c_during_a_long_c_call_that_collects_reaches_the_program(
    env: Env, sink: UdpSink, warm: Path
) -> None:
    """20 times in one process; a Python function as the gc callback lost all 20 (the
    handler ran at its first instruction, outside any try, and gc printed it)."""
    code = PARSE + textwrap.dedent("""\
        import six
        delivered = lost = 0
        for trial in range(20):
            wanted.put([signal.SIGINT])
            try:
                ast.parse(src)
                wait_sent(trial)  # sent during the parse, or now: interrupted either way
                lost += 1
            except KeyboardInterrupt:
                delivered += 1
                wait_sent(trial)
        print(delivered, lost)
        """)
    proc = env.run("-c", code, env=enabled(sink, warm))
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "20 0\n", "")
    assert counts(wait_for(sink, {REPORTS}, 2.0)) == Counter({lib("six"): 1, REPORTS: 1})


def test_a_sigterm_handler_during_a_long_c_call_that_collects_ends_the_program(
    env: Env, sink: UdpSink, warm: Path
) -> None:
    """sys.exit(3) from the handler: caught by the program 19 times, the 20th ends it."""
    code = PARSE + textwrap.dedent("""\
        import atexit
        calls, caught = [], [0]
        def on_term(signum, frame):
            calls.append(signum)
            sys.exit(3)
        signal.signal(signal.SIGTERM, on_term)
        atexit.register(lambda: print(len(calls), caught[0], flush=True))
        for trial in range(20):
            wanted.put([signal.SIGTERM])
            try:
                ast.parse(src)
                wait_sent(trial)
            except SystemExit:
                wait_sent(trial)
                if trial == 19:
                    raise
                caught[0] += 1
        """)
    proc = env.run("-c", code, env=enabled(sink, warm))
    assert (proc.returncode, proc.stdout, proc.stderr) == (3, "20 19\n", "")


def test_ctrl_c_from_outside_during_a_long_collection_reaches_the_program(
    env: Env, sink: UdpSink, warm: Path
) -> None:
    """A real SIGINT from this process lands in gc.collect() of a big heap (~0.1 s), and
    is handled in the callback gc calls when the collection ends (3.13 too)."""
    code = textwrap.dedent("""\
        import gc, sys
        keep = [[i] for i in range(1000000)]
        delivered = 0
        for trial in range(10):
            try:
                print("collecting", flush=True)
                gc.collect()
                sys.stdin.readline()  # this process's word that it sent the signal
            except KeyboardInterrupt:
                delivered += 1
                sys.stdin.readline()
        print(delivered)
        """)
    proc = subprocess.Popen(
        [str(env.python), "-c", code],
        env=enabled(sink, warm),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        for _ in range(10):
            assert proc.stdout.readline() == "collecting\n"
            time.sleep(0.01)
            proc.send_signal(signal.SIGINT)
            proc.stdin.write("sent\n")
            proc.stdin.flush()
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert (proc.returncode, stdout, stderr) == (0, "10\n", "")


def test_two_raising_handlers_pending_at_once_during_a_collection(
    env: Env, sink: UdpSink, warm: Path
) -> None:
    """SIGINT and SIGTERM sent back to back: the second handler raises right after the
    first one's exception was caught, at the next eval-breaker check.  Each of the 20
    trials is interrupted, and nothing is printed.  The handlers raise only inside
    trial(), so that the program's own except clause never gets the second one."""
    code = PARSE + textwrap.dedent("""\
        def trial(number):
            wanted.put([signal.SIGINT, signal.SIGTERM])
            ast.parse(src)
            wait_sent(number)
        def in_trial(frame):
            while frame is not None:
                if frame.f_code is trial.__code__:
                    return True
                frame = frame.f_back
            return False
        def on_int(signum, frame):
            if in_trial(frame):
                raise KeyboardInterrupt
        def on_term(signum, frame):
            if in_trial(frame):
                sys.exit(3)
        signal.signal(signal.SIGINT, on_int)
        signal.signal(signal.SIGTERM, on_term)
        uninterrupted = 0
        for number in range(20):
            try:
                trial(number)
                uninterrupted += 1
            except (KeyboardInterrupt, SystemExit):
                wait_sent(number)
        print(uninterrupted)
        """)
    proc = env.run("-c", code, env=enabled(sink, warm))
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "0\n", "")


def test_checkpoints_from_collections_when_every_allocation_collects(
    env: Env, sink: UdpSink, warm: Path
) -> None:
    """gc.set_threshold(1): the checkpoint the collection clock runs allocates, and gc
    never nests a collection in it (a nested one would resume the running clock:
    "generator already executing" on stderr)."""
    code = textwrap.dedent("""\
        import gc, time, six
        gc.set_threshold(1)
        end = time.monotonic() + 1.5
        while time.monotonic() < end:
            x = [[]]
        """)
    variables = enabled(sink, warm, PYTHON_POPCONTEST_CHECKPOINT="0.5")
    proc = env.run("-c", code, env=variables)
    assert (proc.returncode, proc.stderr) == (0, "")
    packets = wait_for(sink, {REPORTS}, 2.0)
    assert [sorted(packet.decode().split("\n")) for packet in packets] == [[lib("six"), REPORTS]]
