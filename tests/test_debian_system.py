"""A system-wide install into a real Debian Python, with apt-installed libraries.

`pip install --break-system-packages popcon-site` as root puts everything under
/usr/local (pip's scheme for Debian's python3), beside libraries dpkg installed under
/usr/lib/python3/dist-packages, several of which ship only top_level.txt or .egg-info.
Runs where ``nox -s tests_sid`` sets POPCON_DEBIAN_SYSTEM_PYTHON: as root inside the
Debian sid chroot, whose python3 and python3-yaml/-numpy/-requests come from apt.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from popcon_site._report import parse_lines
from support.envs import base_environ, enabled
from support.sinks import UdpSink

PYTHON = os.environ.get("POPCON_DEBIAN_SYSTEM_PYTHON", "")
pytestmark = pytest.mark.skipif(
    not PYTHON, reason="needs a Debian system python3 as root: nox -s tests_sid runs it"
)
CLI = "/usr/local/bin/popcon-site"


def pip(*args: str) -> None:
    subprocess.run(
        [PYTHON, "-m", "pip", "--quiet", *args, "--break-system-packages"],
        check=True,
        env=base_environ(PIP_ROOT_USER_ACTION="ignore"),
    )


@pytest.fixture(scope="module")
def system_install(wheel: Path) -> Iterator[None]:
    pip("install", str(wheel))
    try:
        yield
    finally:
        subprocess.run([CLI, "index", "--system", "--remove"], env=base_environ())
        pip("uninstall", "-y", "popcon-site")


def test_the_files_land_under_usr_local(system_install: None) -> None:
    out = subprocess.run(
        [PYTHON, "-c", "import popcon_site, sys; print(popcon_site.__file__, sys.prefix)"],
        capture_output=True,
        text=True,
        check=True,
        env=base_environ(),
    ).stdout.split()
    assert out[0].startswith("/usr/local/lib/python3") and out[1] == "/usr"
    site = Path(out[0]).parent.parent
    assert (site / "popcon_site.pth").is_file()
    assert Path("/usr/local/etc/ipython/startup/00-popcon-site.py").is_file()


def test_apt_libraries_are_counted_under_their_names(
    system_install: None, sink: UdpSink, home: Path
) -> None:
    proc = subprocess.run(
        [PYTHON, "-c", "import yaml, numpy, requests"],
        capture_output=True,
        text=True,
        env=enabled(sink, home),
    )
    assert (proc.returncode, proc.stderr) == (0, "")
    counts, other = parse_lines(sink.drain())
    assert not other
    prefix = "python_popcon.library_used."
    used = {name[len(prefix) :]: n for name, n in counts.items() if name.startswith(prefix)}
    assert counts["python_popcon.reports"] == 1
    for name in ("pyyaml", "numpy", "requests", "urllib3", "idna"):
        assert used.get(name) == 1, (name, used)
    assert set(used.values()) == {1}


def test_index_system_and_status_use_usr_local(system_install: None, home: Path) -> None:
    env = base_environ(HOME=str(home))
    subprocess.run([CLI, "index", "--system"], check=True, capture_output=True, env=env)
    assert list(Path("/usr/local/share/popcon-site/index").glob("*.idx"))
    assert not Path("/usr/share/popcon-site").exists(), "dpkg's /usr stays untouched"
    status = json.loads(
        subprocess.run(
            [CLI, "status", "--json"], check=True, capture_output=True, text=True, env=env
        ).stdout
    )
    files = [hook["file"] for hook in status["hook"]["files"]]
    assert "/usr/local/etc/ipython/startup/00-popcon-site.py" in files
    fresh = [entry["fresh"] for entry in status["indexes"] if entry["fresh"]]
    assert any(entry["scope"] == "system" for entry in fresh), status["indexes"]
