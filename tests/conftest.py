"""Shared fixtures: the built wheel, real virtual environments, a real UDP sink.

Everything here runs real interpreters: environments are created from the
interpreter running pytest, packages come from PyPI (through uv, for speed),
and counters are read from a real socket on 127.0.0.1.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PREFIX = "python_popcon.library_used."

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


def base_environ(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("PYTHON_POPCONTEST_") and k not in _SCRUBBED
    }
    env.update(extra)
    return env


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


class UdpSink:
    """A real statsd-shaped UDP listener on 127.0.0.1 that keeps every datagram."""

    def __init__(self, family: int = socket.AF_INET, host: str = "127.0.0.1") -> None:
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
        self.port: int = self.sock.getsockname()[1]
        self.packets: list[bytes] = []

    def drain(self, wait: float = 0.3) -> list[bytes]:
        """Datagrams received so far; waits until ``wait`` seconds pass with nothing new."""
        self.sock.settimeout(wait)
        new = []
        try:
            while True:
                new.append(self.sock.recv(65535))
        except (TimeoutError, socket.timeout):
            pass
        self.packets += new
        return new

    def lines(self, wait: float = 0.3) -> list[str]:
        return [line for packet in self.drain(wait) for line in packet.decode("ascii").split("\n")]

    def close(self) -> None:
        self.sock.close()


def libraries(lines: list[str], prefix: str = PREFIX) -> set[str]:
    """The distribution names in counter lines; fails on anything that is not ``:1|c``."""
    found = set()
    for line in lines:
        name, _, value = line.partition(":")
        assert value == "1|c", f"unexpected line {line!r}"
        if name.startswith(prefix):
            found.add(name[len(prefix) :])
    return found


@pytest.fixture(scope="session")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The package's wheel, built once from this checkout with hatchling.

    Built as released (hatch_build.py): the 3.9-3.17 wheel, or the 3.18+ one, so it
    also installs into venvs of the other interpreters of that range.
    """
    out = tmp_path_factory.mktemp("wheel")
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


@pytest.fixture(scope="session")
def zoo(tmp_path_factory: pytest.TempPathFactory, wheel: Path) -> Env:
    """One environment with the wheel and real PyPI packages of every awkward shape."""
    env = make_env(tmp_path_factory.mktemp("zoo") / "venv")
    env.install(
        str(wheel),
        "pyyaml",
        "pillow",
        "beautifulsoup4",
        "python-dateutil",
        "protobuf",
        "googleapis-common-protos",
        "zope.interface",
        "ruamel.yaml",
        "ruamel.yaml.clib",
        "six",
        "typing_extensions",
        "attrs",
        "requests",
        "msgpack",
    )
    return env


@pytest.fixture
def sink() -> Iterator[UdpSink]:
    s = UdpSink()
    yield s
    s.close()


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A private HOME, so every test starts with an empty index cache."""
    path = tmp_path / "home"
    path.mkdir()
    return path


def enabled(sink: UdpSink, home: Path, **extra: str) -> dict[str, str]:
    """Environment variables of a process that reports to ``sink``."""
    values = {
        "HOME": str(home),
        "XDG_CACHE_HOME": str(home / ".cache"),
        "PYTHON_POPCONTEST_ENABLE": "1",
        "PYTHON_POPCONTEST_STATSD_HOST": "127.0.0.1",
        "PYTHON_POPCONTEST_STATSD_PORT": str(sink.port),
    }
    values.update(extra)
    return base_environ(**values)


def timed(fn, *args, **kwargs):  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - start
