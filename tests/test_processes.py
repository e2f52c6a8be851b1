"""Watcher semantics across threads, fork and multiprocessing start methods."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from support.envs import Env, enabled, make_env
from support.sinks import UdpSink
from support.wire import per_process


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, wheel: Path) -> Env:
    env = make_env(tmp_path_factory.mktemp("processes") / "venv")
    env.install(str(wheel), "six", "typing_extensions", "attrs", "idna", "pyyaml")
    return env


def packets_by_process(sink: UdpSink) -> list[frozenset[str]]:
    """One set of libraries per received report (each process sends one datagram here)."""
    return per_process(sink.drain())


# A lookup is not an import (issue 25): importlib.util.find_spec() asks every finder,
# the watcher included, without loading anything.  Each process here sends one datagram
# at exit, which also holds `reports`, so an empty set still proves that it reported.
@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("assert importlib.util.find_spec('six')", set()),
        ("assert importlib.util.find_spec('six'); import attr", {"attrs"}),
        # The lookup of a submodule imports its parent package, which counts.
        ("assert importlib.util.find_spec('yaml.constructor')", {"pyyaml"}),
        ("assert importlib.util.find_spec('yaml.nosuch') is None", {"pyyaml"}),
        ("assert importlib.util.find_spec('nosuch') is None; import six", {"six"}),
        # Deleted right after its import, with no import after it: still counts.
        ("import six; del sys.modules['six']", {"six"}),
        ("import six; del sys.modules['six']; assert importlib.util.find_spec('six')", {"six"}),
        ("import six, attr; del sys.modules['six']; import idna", {"six", "attrs", "idna"}),
        # Probes from another thread while the main one imports.
        (
            "import threading\n"
            "probes = lambda: [importlib.util.find_spec('attr') for _ in range(200)]\n"
            "t = threading.Thread(target=probes); t.start(); import six; t.join()",
            {"six"},
        ),
    ],
    ids=[
        "probe",
        "probe-then-other-import",
        "probe-submodule",
        "probe-missing-submodule",
        "probe-missing",
        "import-then-delete",
        "import-delete-probe",
        "delete-then-other-import",
        "probe-in-thread",
    ],
)
def test_a_lookup_is_not_an_import(
    env: Env, sink: UdpSink, home: Path, code: str, expected: set[str]
) -> None:
    proc = env.run("-c", "import importlib.util, sys\n" + code, env=enabled(sink, home))
    assert (proc.returncode, proc.stderr) == (0, "")
    assert packets_by_process(sink) == [expected]


def test_a_module_run_with_dash_m_counts(
    env: Env, sink: UdpSink, home: Path, tmp_path: Path
) -> None:
    # runpy finds six with find_spec() and runs it as __main__: it is never imported.
    proc = env.run("-m", "six", env=enabled(sink, home))
    assert (proc.returncode, proc.stderr) == (0, "")
    # `-m tool` imports the package tool on the way: its own lookups are lookups.
    (tmp_path / "tool").mkdir()
    (tmp_path / "tool" / "__init__.py").write_text(
        "import importlib.util\nassert importlib.util.find_spec('attr')\n"
    )
    (tmp_path / "tool" / "__main__.py").write_text("import idna\n")
    proc = env.run("-m", "tool", env=enabled(sink, home), cwd=tmp_path)
    assert (proc.returncode, proc.stderr) == (0, "")
    assert packets_by_process(sink) == [{"six"}, {"idna"}]


def test_imports_in_threads_count(env: Env, sink: UdpSink, home: Path) -> None:
    code = (
        "import threading\n"
        "t = threading.Thread(target=lambda: __import__('six')); t.start(); t.join()\n"
    )
    proc = env.run("-c", code, env=enabled(sink, home))
    assert (proc.returncode, proc.stderr) == (0, "")
    assert packets_by_process(sink) == [{"six"}]


def test_daemon_thread_importing_during_exit(env: Env, sink: UdpSink, home: Path) -> None:
    code = (
        "import threading, sys, importlib\n"
        "def churn():\n"
        "    i = 0\n"
        "    while True:\n"
        "        sys.modules.pop('six', None); importlib.import_module('six'); i += 1\n"
        "threading.Thread(target=churn, daemon=True).start()\n"
        "import time; time.sleep(0.05)\n"
    )
    for _ in range(5):
        proc = env.run("-c", code, env=enabled(sink, home))
        assert (proc.returncode, proc.stderr) == (0, "")
    assert packets_by_process(sink) == [{"six"}] * 5


def test_fork_child_reports_only_its_own_imports(env: Env, sink: UdpSink, home: Path) -> None:
    code = (
        "import os, six\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    import attr\n"
        "    raise SystemExit(0)\n"  # normal exit: atexit runs in the child
        "os.waitpid(pid, 0)\n"
        "import idna\n"
    )
    proc = env.run("-c", code, env=enabled(sink, home))
    assert (proc.returncode, proc.stderr) == (0, "")
    reports = Counter(packets_by_process(sink))
    assert reports == Counter([frozenset({"attrs"}), frozenset({"six", "idna"})])


def test_fork_child_that_imports_nothing_reports_nothing_inherited(
    env: Env, sink: UdpSink, home: Path
) -> None:
    code = (
        "import os, six\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    raise SystemExit(0)\n"
        "os.waitpid(pid, 0)\n"
    )
    proc = env.run("-c", code, env=enabled(sink, home))
    assert proc.returncode == 0
    assert Counter(packets_by_process(sink)) == Counter([frozenset(), frozenset({"six"})])


def test_os_exit_in_fork_child_is_sent_by_the_parents_sweep(
    env: Env, sink: UdpSink, home: Path
) -> None:
    # os._exit() skips the child's exit report; its record (issue 22) outlives it, and the
    # parent's exit, after its own report, sends it: attrs and the child's reports, once.
    code = (
        "import os, six\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    import attr; os._exit(0)\n"
        "os.waitpid(pid, 0)\n"
    )
    proc = env.run("-c", code, env=enabled(sink, home))
    assert proc.returncode == 0
    assert packets_by_process(sink) == [{"six"}, {"attrs"}]
    assert os.listdir(home.with_name(home.name + "-run") / "popcon-site") == []


def test_nothing_of_popcon_site_outlives_the_report(env: Env, sink: UdpSink, home: Path) -> None:
    """Once the exit hook ran, nothing the interpreter keeps until teardown (the at-fork
    registry, sys.meta_path) may hold popcon_site's globals: held, they keep os, sys and
    most of the module graph alive through the collection at exit (~0.2 ms here)."""
    code = (
        "import atexit, gc, sys, weakref, popcon_site\n"
        "class Probe: pass\n"
        "probe = Probe(); popcon_site._probe = probe; alive = weakref.ref(probe); del probe\n"
        "popcon_site._at_exit()\n"
        "atexit.unregister(popcon_site._at_exit)\n"  # as the interpreter does once it ran
        "for name in [n for n in sys.modules if n.split('.')[0] == 'popcon_site']:\n"
        "    del sys.modules[name]\n"
        "del popcon_site; gc.collect()\n"
        "print('held' if alive() is not None else 'freed')\n"
    )
    proc = env.run("-c", code, env=enabled(sink, home))
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "freed\n", "")
    assert packets_by_process(sink) == [set()]


@pytest.mark.parametrize("program_collects", [True, False])
def test_the_report_sets_off_no_collection_and_leaves_the_collector_as_found(
    env: Env, sink: UdpSink, home: Path, program_collects: bool
) -> None:
    """A collection set off by the report's own allocations would walk the program's
    young objects at every exit (1.5 ms once pandas is loaded)."""
    code = (
        "import gc, sys, popcon_site, six\n"
        "during_report = []\n"
        "def note(phase, info):\n"
        "    frame = sys._getframe()\n"
        "    while frame is not None:\n"
        "        if frame.f_code.co_name in ('imported_names', '_exit_module', 'at_exit'):\n"
        "            during_report.append(frame.f_code.co_name)\n"
        "        frame = frame.f_back\n"
        "gc.callbacks.append(note)\n"
        f"gc.enable() if {program_collects} else gc.disable()\n"
        # Any allocation of a tracked object would set it off.  Before 3.11 calling the
        # hook allocates its frame, which may collect before the hook starts: not counted.
        "gc.set_threshold(1)\n"
        "popcon_site._at_exit()\n"
        "print(during_report, gc.isenabled())\n"
    )
    proc = env.run("-c", code, env=enabled(sink, home))
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, f"[] {program_collects}\n", "")
    assert packets_by_process(sink) == [{"six"}]


def test_fork_after_the_report_is_harmless(env: Env, sink: UdpSink, home: Path) -> None:
    # An exit handler registered before activation runs after the report, then forks.
    code = (
        "import atexit, os\n"
        "def late():\n"
        "    try:\n"
        "        pid = os.fork()\n"
        "    except RuntimeError:\n"  # 3.12 refuses to fork at interpreter shutdown
        "        return\n"
        "    if pid == 0:\n"
        "        import attr; os._exit(0)\n"
        "    os.waitpid(pid, 0)\n"
        "atexit.register(late)\n"
        "import popcon_site; popcon_site.activate()\n"
        "import six\n"
    )
    proc = env.run("-S", "-c", code, env=enabled(sink, home, PYTHONPATH=str(env.site_packages)))
    assert (proc.returncode, proc.stderr) == (0, "")
    assert packets_by_process(sink) == [{"six"}]


@pytest.mark.parametrize("method", ["spawn", "forkserver", "fork"])
def test_spawned_processes_report_on_their_own(
    env: Env, sink: UdpSink, home: Path, tmp_path: Path, method: str
) -> None:
    script = tmp_path / "mp.py"
    script.write_text(
        "import multiprocessing as mp\n"
        "def work(_):\n"
        "    import attr\n"
        "    return 1\n"
        "if __name__ == '__main__':\n"
        "    import six\n"
        f"    ctx = mp.get_context({method!r})\n"
        "    p = ctx.Process(target=work, args=(0,)); p.start(); p.join()\n"
        "    assert p.exitcode == 0\n"
    )
    proc = env.run(str(script), env=enabled(sink, home))
    assert (proc.returncode, proc.stderr) == (0, "")
    reports = packets_by_process(sink)
    # Each process once.  Helper processes (forkserver's server, the resource tracker)
    # import nothing of their own: how many there are is the interpreter's business.
    with_libraries = Counter(r for r in reports if r)
    assert with_libraries == Counter([frozenset({"six"}), frozenset({"attrs"})]), reports


def test_unhandled_ctrl_c_still_dies_by_sigint(
    env: Env, sink: UdpSink, home: Path, tmp_path: Path
) -> None:
    """With a cold index the report imports importlib-metadata (exec() inside namedtuple),
    which would clear CPython's unhandled-KeyboardInterrupt flag: status 1, not SIGINT."""
    ready = tmp_path / "ready"
    script = tmp_path / "wait.py"
    script.write_text(
        "import sys, time, six, pathlib\npathlib.Path(sys.argv[1]).touch()\ntime.sleep(60)\n"
    )
    proc = subprocess.Popen(
        [str(env.python), str(script), str(ready)],
        env=enabled(sink, home),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    for _ in range(500):
        if ready.exists():
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGINT, stderr
    assert stderr.rstrip().endswith("KeyboardInterrupt")
    assert packets_by_process(sink) == [{"six"}]
    assert list((home / ".cache" / "popcon-site").glob("*.idx")), "the index was built cold"
