"""Fault matrix, the running program: environment changes, exit-time threads and signals,
sys.modules and sys.meta_path games.

Every case: the program's exit status (3 unless said), nothing printed that
the program does not print itself, and the exact counters.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
from reliability_support import EXIT_TIMER_ENV, exit_times, install_exit_timer

from conftest import NETWORK_BOUND, TCP_BOUND, exit_delay
from support.envs import HANG_PTH, Env, enabled, make_env, uv
from support.sinks import TcpCollector, UdpSink
from support.wire import per_process

pytestmark = pytest.mark.fault


def reports(sink: UdpSink) -> list[frozenset[str]]:
    """One set of distributions per process that reported (one datagram each here)."""
    return per_process(sink.drain())


def main_report(sink: UdpSink) -> frozenset[str]:
    """The one report with libraries; uv's short interpreter probes report nothing."""
    sent = reports(sink)
    with_libraries = [r for r in sent if r]
    assert len(with_libraries) == 1 and len(sent) >= 1, sent
    return with_libraries[0]


def run(env: Env, code: str, variables: dict[str, str], status: int = 3, **kw: object) -> None:
    proc = env.run("-c", code, env=variables, **kw)  # type: ignore[arg-type]
    assert (proc.returncode, proc.stdout, proc.stderr) == (status, "", ""), proc


@pytest.fixture(scope="module")
def mutable_env(tmp_path_factory: pytest.TempPathFactory, wheel: Path) -> Env:
    env = make_env(tmp_path_factory.mktemp("mutable") / "venv")
    env.install(str(wheel), "six==1.16.0", "idna")
    return env


@pytest.fixture(scope="module")
def hang_env(tmp_path_factory: pytest.TempPathFactory, wheel: Path) -> Env:
    """Its resolver never answers (patched before popcon-site starts; nothing is sent)."""
    env = make_env(tmp_path_factory.mktemp("hang") / "venv")
    env.install(str(wheel), "six")
    (env.site_packages / "00_hanging_resolver.pth").write_text(HANG_PTH)
    install_exit_timer(env.site_packages)
    return env


# -- the environment changes under a running process --------------------------------------


def uv_pip(env: Env, *args: str) -> str:
    return (
        f"import subprocess; subprocess.run([{uv()!r}, 'pip', *{list(args)!r}, "
        f"'--quiet', '--python', {str(env.python)!r}], check=True)\n"
    )


def test_package_installed_before_exit_counts(mutable_env: Env, sink: UdpSink, home: Path) -> None:
    mutable_env.run("-c", "import six", env=enabled(sink, home))  # a warm, soon stale index
    sink.drain()
    code = (
        "import six, sys\n"
        + uv_pip(mutable_env, "install", "attrs")
        + "import importlib; importlib.invalidate_caches(); import attr\n"
        + "sys.exit(3)\n"
    )
    try:
        run(mutable_env, code, enabled(sink, home))
        assert main_report(sink) == {"six", "attrs"}
    finally:
        mutable_env.run("-c", uv_pip(mutable_env, "uninstall", "attrs"))


def test_package_upgraded_before_exit_counts(mutable_env: Env, sink: UdpSink, home: Path) -> None:
    mutable_env.run("-c", "import six", env=enabled(sink, home))
    sink.drain()
    code = "import six, sys\n" + uv_pip(mutable_env, "install", "six==1.17.0") + "sys.exit(3)\n"
    try:
        run(mutable_env, code, enabled(sink, home))
        assert main_report(sink) == {"six"}
    finally:
        mutable_env.run("-c", uv_pip(mutable_env, "install", "six==1.16.0"))


def test_package_removed_before_exit_still_counts(
    mutable_env: Env, sink: UdpSink, home: Path
) -> None:
    mutable_env.run("-c", "import idna", env=enabled(sink, home))  # a warm index
    sink.drain()
    code = "import idna, sys\n" + uv_pip(mutable_env, "uninstall", "idna") + "sys.exit(3)\n"
    try:
        run(mutable_env, code, enabled(sink, home))
        assert main_report(sink) == {"idna"}
    finally:
        mutable_env.run("-c", uv_pip(mutable_env, "install", "idna"))


def test_package_removed_before_exit_is_harmless(
    mutable_env: Env, sink: UdpSink, home: Path
) -> None:
    """Whatever is counted, the process is unharmed and the wire stays well formed."""
    code = "import idna, six, sys\n" + uv_pip(mutable_env, "uninstall", "idna") + "sys.exit(3)\n"
    try:
        run(mutable_env, code, enabled(sink, home))
        sent = main_report(sink)
        assert "six" in sent and sent <= {"six", "idna"}
    finally:
        mutable_env.run("-c", uv_pip(mutable_env, "install", "idna"))


# -- threads and signals at exit ----------------------------------------------------------

CHURN = """
import importlib, sys, threading
MODULES = ["six", "attr", "idna", "typing_extensions"]
class Nothing:
    def find_spec(self, *args): return None
def churn(name):  # one thread per module: two threads racing on one import is the program's bug
    while True:
        for key in [k for k in list(sys.modules) if k == name or k.startswith(name + ".")]:
            sys.modules.pop(key, None)
        try:
            importlib.import_module(name)
        except Exception:
            pass
def meta():  # at the end: inserting at the front would make the program's own imports skip finders
    finder = Nothing()
    while True:
        sys.meta_path.append(finder); sys.meta_path.remove(finder)
for name in MODULES:  # all used for sure, however slowly the threads below get going
    importlib.import_module(name)
for name in MODULES:
    threading.Thread(target=churn, args=(name,), daemon=True).start()
for _ in range(4):
    target = lambda: [importlib.import_module(m) for m in MODULES * 10**6]
    threading.Thread(target=target, daemon=True).start()
threading.Thread(target=meta, daemon=True).start()
import time; time.sleep(0.05)
sys.exit(3)
"""


def test_threads_importing_while_the_interpreter_exits(
    relenv: Env, sink: UdpSink, home: Path, tmp_path: Path
) -> None:
    """Nine daemon threads import, delete and re-import modules and rewrite sys.meta_path."""
    variables = enabled(sink, home)
    for _ in range(10):
        run(relenv, CHURN, variables)
    assert reports(sink) == [{"six", "attrs", "idna", "typing-extensions"}] * 10


def test_non_daemon_thread_importing_after_main_returns(
    relenv: Env, sink: UdpSink, home: Path
) -> None:
    code = (
        "import threading, time, sys\n"
        "def late():\n"
        "    time.sleep(0.1); import idna\n"
        "threading.Thread(target=late).start()\n"
        "import six\n"
        "sys.exit(3)\n"
    )
    run(relenv, code, enabled(sink, home))
    assert reports(sink) == [{"six", "idna"}]


ALARM = """
import os, signal, sys, six
signal.signal(signal.SIGALRM, {handler})
signal.setitimer(signal.ITIMER_REAL, 0.05)  # fires while popcon-site waits on the resolver
sys.exit(3)
"""


@pytest.mark.parametrize(
    ("raised", "handler"),
    [
        ("KeyboardInterrupt", "signal.default_int_handler"),
        ("SystemExit", "lambda *args: sys.exit(143)"),
        ("RuntimeError", "lambda *args: (_ for _ in ()).throw(RuntimeError('boom'))"),
    ],
)
def test_exception_raised_during_the_exit_report(
    hang_env: Env, sink: UdpSink, home: Path, tmp_path: Path, raised: str, handler: str
) -> None:
    """A signal handler raises while the report waits at exit: swallowed, status kept."""
    variables = enabled(sink, home, PYTHON_POPCONTEST_STATSD_HOST="statsd.example.internal")
    hang_env.run("-c", "import six", env=variables)  # a warm index: the alarm lands in the wait
    code = ALARM.format(handler=handler)
    delay = exit_delay(hang_env, code, variables, tmp_path / "t", status=3, runs=3)
    assert 0.03 <= delay <= NETWORK_BOUND, delay  # interrupted at ~50 ms
    debug = hang_env.run("-c", code, env=dict(variables, PYTHON_POPCONTEST_DEBUG="1"))
    assert debug.returncode == 3
    assert (
        debug.stderr
        == f"popcon-site: report failed: {raised}: "
        + {
            "KeyboardInterrupt": "",
            "SystemExit": "143",
            "RuntimeError": "boom",
        }[raised]
        + "\n"
    )


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_signal_from_outside_during_the_exit_report(
    hang_env: Env, sink: UdpSink, home: Path, tmp_path: Path, sig: str
) -> None:
    """Ctrl-C, or SIGTERM to a program whose handler exits, while the report waits."""
    import signal

    marker = tmp_path / "main-done"
    code = (
        "import signal, sys, six\n"
        "signal.signal(signal.SIGTERM, lambda *args: sys.exit(143))\n"
        f"open({str(marker)!r}, 'w').close()\n"
        "sys.exit(3)\n"
    )
    variables = enabled(
        sink,
        home,
        PYTHON_POPCONTEST_STATSD_HOST="statsd.example.internal",
        **{EXIT_TIMER_ENV: str(tmp_path / "t")},
    )
    hang_env.run("-c", "import six", env=variables)  # a warm index
    (tmp_path / "t").write_text("")
    for _ in range(3):
        marker.unlink(missing_ok=True)
        proc = subprocess.Popen(
            [str(hang_env.python), "-c", code],
            env=variables,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 10
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.002)
        time.sleep(0.05)
        proc.send_signal(getattr(signal, sig))
        stdout, stderr = proc.communicate(timeout=10)
        assert (proc.returncode, stdout, stderr) == (3, "", "")
    times = exit_times(tmp_path / "t")
    assert len(times) == 3 and max(times) <= NETWORK_BOUND, times


@pytest.mark.xfail(
    strict=True,
    reason="limitation: a KeyboardInterrupt pending when the hook is entered is raised at "
    "its first bytecode, before any try: Python prints it as ignored in _at_exit",
)
def test_keyboard_interrupt_pending_when_the_exit_hook_starts(
    relenv: Env, sink: UdpSink, home: Path
) -> None:
    """Ctrl-C lands while a C-level exit callback runs; Python delivers it in the next
    Python frame, which is popcon-site's hook (reproduced with libc raise())."""
    code = (
        "import atexit, ctypes, signal, sys, six\n"
        "atexit.register(getattr(ctypes.CDLL(None), 'raise'), signal.SIGINT)\n"
        "sys.exit(3)\n"
    )
    off = relenv.run(
        "-c",
        code,
        env={k: v for k, v in enabled(sink, home).items() if k != "PYTHON_POPCONTEST_ENABLE"},
    )
    assert (off.returncode, off.stdout, off.stderr) == (3, "", "")
    run(relenv, code, enabled(sink, home))


# -- sys.modules entries replaced -----------------------------------------------------------


@pytest.mark.parametrize(
    ("case", "code", "expected"),
    [
        (
            "module-subclass-with-hostile-getattribute",
            "import six, types\n"
            "class Hostile(types.ModuleType):\n"
            "    def __getattribute__(self, name): raise RuntimeError(name)\n"
            "object.__getattribute__(Hostile('six'), '__dict__')\n"
            "h = Hostile('six'); object.__getattribute__(h, '__dict__').update(vars(six))\n"
            "sys.modules['six'] = h\n",
            {"six"},
        ),
        (
            "blocked-before-any-import",
            "sys.modules['attr'] = None; sys.modules['idna'] = 42\nimport six\n",
            {"six"},
        ),
        ("os-replaced-by-none", "import six; sys.modules['os'] = None\n", None),
        (
            "stdlib-replaced-by-object",
            "import six, json; sys.modules['json'] = object()\n",
            {"six"},
        ),
        (
            "sys-modules-rebound",
            "import six; sys.modules = dict(sys.modules); import attr\n",
            {"six", "attrs"},
        ),
        ("sys-modules-cleared", "import six, attr; sys.modules.clear()\n", None),
        (
            "popcon-report-module-clobbered",
            "import six; sys.modules['popcon_site._report'] = 42\n",
            None,
        ),
        (
            "popcon-package-replaced-by-none",
            "import six; sys.modules['popcon_site'] = None\n",
            None,
        ),
        ("socket-blocked", "import six; sys.modules['_socket'] = None\n", None),
        (
            "file-is-not-a-str",
            "import six, pathlib, attr; six.__file__ = pathlib.Path(six.__file__); "
            "attr.__dict__['__file__'] = b'/x.py'\n",
            {"attrs"},  # attr's submodules still have real files
        ),
    ],
)
def test_sys_modules_games(
    relenv: Env, sink: UdpSink, home: Path, case: str, code: str, expected: set[str] | None
) -> None:
    """``None`` in ``expected``: the program broke what the report itself imports at exit (os,
    sys, _socket, popcon_site, the path hooks): nothing is sent, and the program is unharmed."""
    relenv.run("-c", "import six, attr", env=enabled(sink, home))  # a warm index
    sink.drain()
    run(relenv, "import sys\n" + code + "sys.exit(3)\n", enabled(sink, home))
    assert reports(sink) == ([] if expected is None else [expected])


@pytest.mark.parametrize(
    "replacement",
    ["object()", "None", "type('Proxy', (), {'__getattr__': lambda s, n: 1})()"],
)
def test_replaced_entry_still_counts(
    relenv: Env, sink: UdpSink, home: Path, replacement: str
) -> None:
    code = f"import sys, six\nsys.modules['six'] = {replacement}\nsys.exit(3)\n"
    run(relenv, code, enabled(sink, home))
    assert reports(sink) == [{"six"}]


def test_a_broken_process_does_not_poison_the_cache(relenv: Env, sink: UdpSink, home: Path) -> None:
    """The first process builds the index at exit with sys.modules replaced by a copy (before
    3de3eac every distribution then failed to parse and an empty index was saved for all)."""
    broken = "import sys, six\nsys.modules = dict(sys.modules)\nsys.exit(3)\n"
    run(relenv, broken, enabled(sink, home))  # builds the index at exit, cold
    sink.drain()
    run(relenv, "import six, sys; sys.exit(3)", enabled(sink, home))
    assert reports(sink) == [{"six"}]


# -- sys.meta_path games ----------------------------------------------------------------

META_PATH_CASES = {
    "watcher-removed-after-first-import": (
        "import json\n"
        "sys.meta_path[:] = [f for f in sys.meta_path if type(f).__name__ != 'ImportWatcher']\n"
        "import six\n",
        {"six"},
    ),
    "meta-path-rebound": (
        "import json\n"
        "sys.meta_path = [f for f in sys.meta_path if type(f).__name__ != 'ImportWatcher']\n"
        "import six, attr\n",
        {"six", "attrs"},
    ),
    "in-memory-finder-first": (
        "import importlib.abc, importlib.util\n"
        "class Mem(importlib.abc.MetaPathFinder, importlib.abc.Loader):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name == 'virtual':\n"
        "            return importlib.util.spec_from_loader(name, self)\n"
        "    def create_module(self, spec): return None\n"
        "    def exec_module(self, module): module.X = 1\n"
        "sys.meta_path.insert(0, Mem())\n"
        "import virtual, six\n",
        {"six"},
    ),
    "lazy-loader": (
        "import importlib.util\n"
        "spec = importlib.util.find_spec('idna')\n"
        "spec.loader = importlib.util.LazyLoader(spec.loader)\n"
        "module = importlib.util.module_from_spec(spec); sys.modules['idna'] = module\n"
        "spec.loader.exec_module(module)\n",  # never touched: still imported
        {"idna"},
    ),
    "six-moves-importer": (
        "import six\nfrom six.moves import urllib, configparser\n"
        "from six.moves.urllib.parse import quote\n",
        {"six"},
    ),
    "finder-that-raises-for-one-name": (
        "class Boom:\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name == 'forbidden': raise ImportError('no')\n"
        "sys.meta_path.insert(0, Boom())\n"
        "try:\n    import forbidden\nexcept ImportError:\n    pass\n"
        "import attr\n",
        {"attrs"},
    ),
    "path-hooks-cleared": (  # the report cannot import its own modules any more
        "import six; sys.path_hooks.clear(); sys.path_importer_cache.clear()\n",
        None,
    ),
}


@pytest.mark.parametrize("case", sorted(META_PATH_CASES))
def test_meta_path_games(relenv: Env, sink: UdpSink, home: Path, case: str) -> None:
    code, expected = META_PATH_CASES[case]
    run(relenv, "import sys\n" + code + "sys.exit(3)\n", enabled(sink, home))
    assert reports(sink) == ([] if expected is None else [expected])


DELEGATING_FINDER = (
    "import sys\n"
    "class Delegate:\n"
    "    def find_spec(self, name, path=None, target=None):\n"
    "        finder = sys.modules['_frozen_importlib_external'].PathFinder\n"
    "        return finder.find_spec(name, path, target)\n"
)


@pytest.mark.parametrize("case", ["watcher-removed-first-thing", "delegating-finder-first"])
def test_watcher_starved_from_the_start(relenv: Env, sink: UdpSink, home: Path, case: str) -> None:
    if case == "watcher-removed-first-thing":
        code = (
            "import sys\n"
            "sys.meta_path[:] = [f for f in sys.meta_path if type(f).__name__ != 'ImportWatcher']\n"
        )
    else:
        code = DELEGATING_FINDER + "sys.meta_path.insert(0, Delegate())\n"
    run(relenv, code + "import six, attr\nsys.exit(3)\n", enabled(sink, home))
    assert reports(sink) == [{"six", "attrs"}]


@pytest.fixture(scope="module")
def pytest_env(tmp_path_factory: pytest.TempPathFactory, wheel: Path) -> Env:
    env = make_env(tmp_path_factory.mktemp("pytest-env") / "venv")
    env.install(str(wheel), "pytest", "six", "attrs")
    return env


def test_under_pytest_assertion_rewriting(
    pytest_env: Env, sink: UdpSink, home: Path, tmp_path: Path
) -> None:
    """pytest puts its rewriting hook in front of sys.meta_path; its output is unchanged."""
    (tmp_path / "test_sample.py").write_text(
        "import six\n"
        "def test_ok():\n    import attr\n    assert attr.__name__ == 'attr'\n"
        "def test_fails():\n    assert six.PY3 is False\n"
    )
    argv = ["-m", "pytest", "-q", "-p", "no:cacheprovider", "test_sample.py"]
    variables = enabled(sink, home)
    off = {k: v for k, v in variables.items() if k != "PYTHON_POPCONTEST_ENABLE"}
    plain = pytest_env.run(*argv, env=off, cwd=tmp_path)
    proc = pytest_env.run(*argv, env=variables, cwd=tmp_path)
    assert proc.returncode == plain.returncode == 1
    strip = lambda text: [line for line in text.splitlines() if " in " not in line]  # noqa: E731
    assert strip(proc.stdout) == strip(plain.stdout) and proc.stderr == plain.stderr == ""
    (sent,) = reports(sink)
    assert {"pytest", "pluggy", "iniconfig", "six", "attrs"} <= sent
    names = pytest_env.run(
        "-c",
        "import importlib.metadata as m, re\n"
        "print('\\n'.join(re.sub(r'[-_.]+', '-', d.metadata['Name']).lower() "
        "for d in m.distributions()))",
        env=off,
    ).stdout.split()
    assert sent <= set(names) - {"popcon-site"}


# -- the TCP transport's own cost ------------------------------------------------------------


def test_tcp_report_is_bounded(relenv: Env, sink: UdpSink, home: Path, tmp_path: Path) -> None:
    collector = TcpCollector()
    code = "import six, sys; sys.exit(3)"
    try:
        relenv.run("-c", code, env=enabled(sink, home))  # a warm index
        sink.drain()
        udp = exit_delay(relenv, code, enabled(sink, home), tmp_path / "udp", status=3, runs=7)
        tcp_variables = enabled(
            sink,
            home,
            PYTHON_POPCONTEST_STATSD_PORT=str(collector.port),
            PYTHON_POPCONTEST_STATSD_PROTOCOL="tcp",
        )
        tcp = exit_delay(relenv, code, tcp_variables, tmp_path / "tcp", status=3, runs=7)
        received = collector.wait_for(7)
    finally:
        collector.close()
    assert received == [b"python_popcon.library_used.six:1|c\npython_popcon.reports:1|c\n"] * 7
    # TCP pays for importing the statsd package's client at exit (~15-35 ms here), by
    # design (the choice of transport implementation); bounded, not free.
    assert tcp <= udp + TCP_BOUND, (udp, tcp)
