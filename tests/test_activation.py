"""The start-up hook: off costs nothing, on activates once, manual activation works."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from support.envs import Env, base_environ, enabled, make_env
from support.sinks import UdpSink
from support.wire import libraries

# From 3.18 the .start entry point (module:callable) imports popcon_site even when off;
# up to 3.17 the wheel holds only the .pth, whose line imports it only when on.
LOADED_WHEN_OFF = sys.version_info >= (3, 18)
PROBE = (
    "import sys, atexit; "
    "print('popcon_site' in sys.modules, "
    "any('ImportWatcher' in [c.__name__ for c in type(f).__mro__] for f in sys.meta_path), "
    "atexit._ncallbacks() > 0)"
)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, wheel: Path) -> Env:
    env = make_env(tmp_path_factory.mktemp("activation") / "venv")
    env.install(str(wheel), "six", "typing_extensions")
    return env


@pytest.mark.parametrize("value", [None, "", "0", "false", "no", "off", " Off "])
def test_off_means_nothing_loaded_nothing_sent(
    env: Env, sink: UdpSink, home: Path, value: str | None
) -> None:
    variables = enabled(sink, home)
    if value is None:
        del variables["PYTHON_POPCONTEST_ENABLE"]
    else:
        variables["PYTHON_POPCONTEST_ENABLE"] = value
    proc = env.run("-c", PROBE + "; import six", env=variables)
    assert (proc.returncode, proc.stdout, proc.stderr) == (
        0,
        f"{LOADED_WHEN_OFF} False False\n",
        "",
    )
    assert sink.drain() == []
    assert not (home / ".cache").exists(), "off must not touch any file"


@pytest.mark.parametrize("value", ["maybe", "2"])
def test_a_value_that_is_no_word_loads_the_package_to_say_why_but_never_activates(
    env: Env, sink: UdpSink, home: Path, value: str
) -> None:
    # Neither on nor off: the package loads (so debug mode can give the reason,
    # tests/test_layouts.py), and nothing is activated, sent or written.
    variables = enabled(sink, home, PYTHON_POPCONTEST_ENABLE=value)
    proc = env.run("-c", PROBE + "; import six", env=variables)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "True False False\n", "")
    assert sink.drain() == []
    assert not (home / ".cache").exists()


@pytest.mark.parametrize("value", ["1", "true", "TRUE", "Yes", "on", " On "])
def test_true_values_activate(env: Env, sink: UdpSink, home: Path, value: str) -> None:
    proc = env.run(
        "-c", PROBE + "; import six", env=enabled(sink, home, PYTHON_POPCONTEST_ENABLE=value)
    )
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "True True True\n", "")
    lines = sink.lines()
    assert lines == ["python_popcon.library_used.six:1|c", "python_popcon.reports:1|c"]


def test_python_c_pass_sends_only_reports(env: Env, sink: UdpSink, home: Path) -> None:
    proc = env.run("-c", "pass", env=enabled(sink, home))
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "")
    assert sink.drain() == [b"python_popcon.reports:1|c"]


def test_activation_happens_once_however_many_paths(env: Env, sink: UdpSink, home: Path) -> None:
    code = (
        "import popcon_site, six\n"
        "assert popcon_site.activate() and popcon_site.setup_reporter()\n"
        "popcon_site._startup_hook()\n"
        "import sys\n"
        "assert sum(isinstance(f, popcon_site.ImportWatcher) for f in sys.meta_path) == 1\n"
    )
    proc = env.run("-c", code, env=enabled(sink, home))
    assert (proc.returncode, proc.stderr) == (0, "")
    assert sink.lines() == ["python_popcon.library_used.six:1|c", "python_popcon.reports:1|c"]


@pytest.mark.parametrize("flags", [["-I"], ["-E"], ["-s"], ["-B"]], ids=" ".join)
def test_interpreter_flags(env: Env, sink: UdpSink, home: Path, flags: list[str]) -> None:
    """-E does not disable it: see README (the variable belongs to popcon-site, not CPython)."""
    proc = env.run(*flags, "-c", "import six", env=enabled(sink, home))
    assert (proc.returncode, proc.stderr) == (0, "")
    assert libraries(sink.lines()) == {"six"}


def test_pythonsafepath(env: Env, sink: UdpSink, home: Path, tmp_path: Path) -> None:
    script = tmp_path / "s.py"
    script.write_text("import six\n")
    proc = env.run(str(script), env=enabled(sink, home, PYTHONSAFEPATH="1"))
    assert (proc.returncode, proc.stderr) == (0, "")
    assert libraries(sink.lines()) == {"six"}


@pytest.mark.parametrize("call", ["popcon_site.activate()", "popcon_site.setup_reporter()"])
def test_manual_activation_under_dash_S(env: Env, sink: UdpSink, home: Path, call: str) -> None:
    """No start-up files run with -S: the explicit call opts in; its moment is the baseline."""
    variables = enabled(sink, home)
    del variables["PYTHON_POPCONTEST_ENABLE"]
    code = (
        f"import sys; sys.path.append({str(env.site_packages)!r})\n"
        "import typing_extensions\n"  # loaded before activation: baseline
        f"import popcon_site; {call}\n"
        "import six\n"
    )
    proc = env.run("-S", "-c", code, env=variables)
    assert (proc.returncode, proc.stderr) == (0, "")
    assert sink.lines() == ["python_popcon.library_used.six:1|c", "python_popcon.reports:1|c"]


def test_the_exit_module_loaded_directly_is_the_regular_one(
    env: Env, sink: UdpSink, home: Path
) -> None:
    """At exit popcon_site loads _report straight from its file; any later import
    of it must get that very module, with what the import system would have set."""
    code = (
        "import popcon_site, importlib.util\n"
        "direct = popcon_site._exit_module()\n"
        "import popcon_site._report as regular\n"
        "from popcon_site import _report as attribute\n"
        "spec = importlib.util.find_spec('popcon_site._report')\n"
        "print(direct is regular is attribute, direct.__file__ == spec.origin, "
        "direct.__spec__.cached == spec.cached, type(direct.__loader__) is type(spec.loader))\n"
    )
    proc = env.run("-c", code, env=enabled(sink, home))
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "True True True True\n", "")
    assert sink.lines() == ["python_popcon.reports:1|c"]


@pytest.mark.parametrize("where", ["zip", "no bytecode cache"])
def test_the_exit_module_loads_from_a_zip_or_from_source(
    env: Env, sink: UdpSink, home: Path, tmp_path: Path, where: str
) -> None:
    """Not loaded by a plain file loader (a zip) or without .pyc files, the report still
    goes out."""
    import shutil
    import zipfile

    package = env.site_packages / "popcon_site"
    if where == "zip":
        entry = tmp_path / "popcon.zip"
        with zipfile.ZipFile(entry, "w") as archive:
            for source in package.glob("*.py"):
                archive.write(source, f"popcon_site/{source.name}")
    else:
        entry = tmp_path / "copy"
        shutil.copytree(package, entry / "popcon_site", ignore=shutil.ignore_patterns("*.pyc"))
    code = (
        f"import atexit, sys; sys.path.insert(0, {str(entry)!r})\n"
        "show = lambda: print(type(sys.modules['popcon_site._report'].__loader__).__name__)\n"
        "atexit.register(show)\n"
        "import popcon_site; popcon_site.activate()\n"  # its exit hook runs before the line above
    )
    proc = env.run("-S", "-B", "-c", code, env=enabled(sink, home))
    loader = "zipimporter" if where == "zip" else "SourceFileLoader"
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, loader + "\n", "")
    assert sink.lines() == ["python_popcon.reports:1|c"]
    assert where == "zip" or not list(entry.rglob("*.pyc"))


def test_dash_S_alone_does_nothing(env: Env, sink: UdpSink, home: Path) -> None:
    proc = env.run("-S", "-c", "pass", env=enabled(sink, home))
    assert (proc.returncode, proc.stderr) == (0, "")
    assert sink.drain() == []


@pytest.mark.parametrize(
    ("prefix", "reports"),
    [
        ("python_popcon.library_used", "python_popcon.reports"),
        (
            "python_popcon.namespace.jhub-prod.library_used",
            "python_popcon.namespace.jhub-prod.reports",
        ),
        ("popcon", "reports"),
    ],
)
def test_prefix_and_reports_names(
    env: Env, sink: UdpSink, home: Path, prefix: str, reports: str
) -> None:
    proc = env.run(
        "-c", "import six", env=enabled(sink, home, PYTHON_POPCONTEST_STATSD_PREFIX=prefix)
    )
    assert proc.returncode == 0
    assert sink.lines() == [f"{prefix}.six:1|c", f"{reports}:1|c"]


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("PYTHON_POPCONTEST_STATSD_PORT", "eighty"),
        ("PYTHON_POPCONTEST_STATSD_PORT", "70000"),
        ("PYTHON_POPCONTEST_STATSD_PREFIX", "bad:prefix|c"),
        ("PYTHON_POPCONTEST_STATSD_PREFIX", "a..b"),
        ("PYTHON_POPCONTEST_STATSD_HOST", ""),
        ("PYTHON_POPCONTEST_STATSD_PROTOCOL", "http"),
    ],
)
def test_invalid_config_disables_silently_or_explains_in_debug(
    env: Env, sink: UdpSink, home: Path, variable: str, value: str
) -> None:
    proc = env.run("-c", "import six", env=enabled(sink, home, **{variable: value}))
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "")
    assert sink.drain() == []
    debug = enabled(sink, home, PYTHON_POPCONTEST_DEBUG="1", **{variable: value})
    proc = env.run("-c", "import six", env=debug)
    assert proc.returncode == 0
    (line,) = proc.stderr.splitlines()
    assert line.startswith("popcon-site: not reporting: ") and variable in line
    assert sink.drain() == []


def test_debug_mode_prints_one_line(env: Env, sink: UdpSink, home: Path) -> None:
    proc = env.run("-c", "import six", env=enabled(sink, home, PYTHON_POPCONTEST_DEBUG="1"))
    assert proc.returncode == 0
    assert proc.stderr == (
        f"popcon-site: sent six + reports to 127.0.0.1:{sink.port} over udp in 1 datagram(s)\n"
    )


@pytest.mark.parametrize(
    ("code", "status"),
    [("import six, sys; sys.exit(3)", 3), ("import six, os; os.kill(os.getpid(), 0)", 0)],
)
def test_exit_status_is_unchanged(
    env: Env, sink: UdpSink, home: Path, code: str, status: int
) -> None:
    proc = env.run("-c", code, env=enabled(sink, home))
    assert (proc.returncode, proc.stderr) == (status, "")
    assert libraries(sink.lines()) == {"six"}


def test_uncaught_exception_keeps_its_traceback_and_status(
    env: Env, sink: UdpSink, home: Path
) -> None:
    proc = env.run("-c", "import six; raise ValueError('boom')", env=enabled(sink, home))
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == "ValueError: boom"
    assert "popcon" not in proc.stderr
    assert libraries(sink.lines()) == {"six"}


def test_ipv6_literal(env: Env, home: Path) -> None:
    import socket

    try:
        sink6 = UdpSink(socket.AF_INET6, "::1")
    except OSError:
        pytest.fail("this machine has no IPv6 loopback")
    try:
        for host in ("::1", "[::1]"):
            variables = enabled(sink6, home, PYTHON_POPCONTEST_STATSD_HOST=host)
            proc = env.run("-c", "import six", env=variables)
            assert (proc.returncode, proc.stderr) == (0, "")
            assert libraries(sink6.lines()) == {"six"}
    finally:
        sink6.close()


def test_host_name_goes_through_the_resolver(env: Env, sink: UdpSink, home: Path) -> None:
    # "LOCALHOST" is not the literal "localhost" shortcut, so it takes the real
    # getaddrinfo path in the lookup child (/etc/hosts matches names case-insensitively).
    variables = enabled(sink, home, PYTHON_POPCONTEST_STATSD_HOST="LOCALHOST")
    proc = env.run("-c", "import six", env=variables)
    assert (proc.returncode, proc.stderr) == (0, "")
    assert libraries(sink.lines()) == {"six"}


def test_uninstall_removes_the_hook(tmp_path: Path, wheel: Path) -> None:
    env = make_env(tmp_path / "venv", pip=True)
    pip = [str(env.python), "-m", "pip", "--quiet"]
    subprocess.run([*pip, "install", "--no-deps", str(wheel)], check=True, env=base_environ())
    site = env.site_packages
    hook = "popcon_site.start" if sys.version_info >= (3, 18) else "popcon_site.pth"
    installed = {
        site / hook,
        env.root / "etc" / "ipython" / "startup" / "00-popcon-site.py",
    }
    assert all(path.exists() for path in installed)
    subprocess.run([*pip, "uninstall", "-y", "popcon-site"], check=True, env=base_environ())
    assert not any(path.exists() for path in installed)
