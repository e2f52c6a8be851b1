"""Real virtual environments, the variables of a reporting process, the wheel under test.

Environments are made from the interpreter running pytest; packages come from
PyPI through uv (for speed), compiled as pip compiles them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from support.sinks import UdpSink

ROOT = Path(__file__).resolve().parents[2]

# Variables of the test runner that must not leak into the processes under test.
_SCRUBBED = (
    "PYTHONDONTWRITEBYTECODE",
    "PYTHONPATH",
    "PYTHONHOME",
    "PYTHONSTARTUP",
    "PYTHONSAFEPATH",
    "VIRTUAL_ENV",
    "PYTHONNOUSERSITE",
)

# A resolver that never answers, patched in before popcon-site starts: in this process
# (getaddrinfo), and in popcon-site's lookup child, which runs ``python -I -S`` and so
# never sees this file: a spawn whose code calls child_main runs a child that sleeps
# instead, holding its answer pipe open.  A .pth line runs inside site's addpackage():
# names it imports are locals there, so the lambdas bind them as default arguments (a
# global lookup would raise NameError at once, and the "hanging" resolver fail fast).
HANG_PTH = (
    "import _socket, os, time; "
    "_socket.getaddrinfo = lambda *args, _time=time, **kwargs: _time.sleep(3600); "
    "os.posix_spawn = lambda path, argv, *args, _spawn=os.posix_spawn, **kwargs: _spawn("
    "path, [argv[0], '-I', '-S', '-c', 'import time; time.sleep(5)'] "
    "if 'child_main' in ' '.join(argv) else argv, *args, **kwargs)\n"
)


def base_environ(**extra: str) -> dict[str, str]:
    """The caller's environment without PYTHON_POPCONTEST_* (and _SCRUBBED), plus ``extra``.

    User counters (issue 23) are off here (``PYTHON_POPCONTEST_USERS=0``), so that the
    suites' exact wire assertions stay what they were; tests/test_users.py, tests/e2e
    (run_processes' ``homes``, test_e2e_users.py) and test_serve's users test turn them
    on or unset the variable (the default, on) and assert the user lines exactly.
    """
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("PYTHON_POPCONTEST_") and k not in _SCRUBBED
    }
    env["PYTHON_POPCONTEST_USERS"] = "0"
    env.update(extra)
    return env


def enabled(sink: UdpSink, home: Path, **extra: str) -> dict[str, str]:
    """Environment variables of a process that reports to ``sink``."""
    return reporting_to(sink.port, home, **extra)


def reporting_to(port: int, home: Path, **extra: str) -> dict[str, str]:
    """Environment variables of a process that reports to 127.0.0.1:port, HOME ``home``
    (user counters off, as base_environ says)."""
    # Records (issue 22): each test's own runtime directory, as a login's would be, beside
    # HOME (some tests check that HOME stays empty).
    runtime = home.with_name(home.name + "-run")
    runtime.mkdir(mode=0o700, parents=True, exist_ok=True)
    values = {
        "HOME": str(home),
        "XDG_CACHE_HOME": str(home / ".cache"),
        "XDG_RUNTIME_DIR": str(runtime),
        "PYTHON_POPCONTEST_ENABLE": "1",
        "PYTHON_POPCONTEST_STATSD_HOST": "127.0.0.1",
        "PYTHON_POPCONTEST_STATSD_PORT": str(port),
    }
    values.update(extra)
    return base_environ(**values)


def uv() -> str:
    found = shutil.which("uv") or str(Path(sys.executable).with_name("uv"))
    if not Path(found).exists():
        pytest.fail("uv is required by the test suite (nox installs it)")
    return found


@dataclass
class Env:
    """A real virtual environment made from the interpreter running the tests."""

    root: Path
    _purelib: str = field(default="", repr=False)

    @property
    def python(self) -> Path:
        return self.root / "bin" / "python"

    @property
    def site_packages(self) -> Path:
        if not self._purelib:
            out = subprocess.run(
                [
                    str(self.python),
                    "-c",
                    "import sysconfig; print(sysconfig.get_paths()['purelib'])",
                ],
                check=True,
                capture_output=True,
                text=True,
                env=base_environ(),
            )
            self._purelib = out.stdout.strip()
        return Path(self._purelib)

    def install(self, *args: str) -> None:
        subprocess.run(
            # Compiled like pip does, so tests never time bytecode compilation.
            [
                uv(),
                "pip",
                "install",
                "--quiet",
                "--compile-bytecode",
                "--python",
                str(self.python),
                *args,
            ],
            check=True,
            env=base_environ(),
        )

    def run(
        self,
        *args: str,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        timeout: float = 120,
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.python), *args],
            capture_output=True,
            text=True,
            env=dict(env or base_environ()),
            cwd=cwd,
            timeout=timeout,
        )


def make_env(path: Path, *, system_site_packages: bool = False, pip: bool = False) -> Env:
    cmd = [sys.executable, "-m", "venv", str(path)]
    if system_site_packages:
        cmd.append("--system-site-packages")
    if not pip:
        cmd.append("--without-pip")
    subprocess.run(cmd, check=True, env=base_environ())
    return Env(path)


def build_popcon_wheel(out: Path) -> Path:
    """popcon-site's wheel, built from this checkout with hatchling into ``out``.

    Built as released (hatch_build.py): the 3.9-3.17 wheel, or the 3.18+ one, so it
    also installs into venvs of the other interpreters of that range.
    """
    variant = "start" if sys.version_info >= (3, 18) else "pth"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(out),
            str(ROOT),
        ],
        check=True,
        env=base_environ(POPCON_SITE_HOOKS=variant),
    )
    (built,) = out.glob("popcon_site-*.whl")
    return built
