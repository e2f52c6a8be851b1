"""What leaves the process: only the prefix, normalized names and ``:1|c``."""

from __future__ import annotations

import getpass
import re
import socket
from pathlib import Path

import pytest

from support.envs import Env, enabled, make_env
from support.sinks import UdpSink
from support.wire import LINE, REPORTS, libraries


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, wheel: Path) -> Env:
    env = make_env(tmp_path_factory.mktemp("privacy") / "venv")
    env.install(str(wheel), "six", "attrs", "idna", "typing_extensions", "ruamel.yaml")
    return env


CODE = "import six, attr, idna, typing_extensions, ruamel.yaml, os; print(os.getpid())"


def test_wire_carries_no_identifying_data(env: Env, sink: UdpSink, home: Path) -> None:
    proc = env.run("-c", CODE, env=enabled(sink, home))
    assert proc.returncode == 0
    pid = proc.stdout.strip()
    packets = sink.drain()
    payload = b"\n".join(packets)
    lines = payload.split(b"\n")
    assert all(LINE.fullmatch(line) for line in lines), lines
    allowed = {
        b"python_popcon.reports",
        *(
            b"python_popcon.library_used." + name
            for name in (b"six", b"attrs", b"idna", b"typing-extensions", b"ruamel-yaml")
        ),
    }
    assert {line.rpartition(b":")[0] for line in lines} == allowed
    for secret in (getpass.getuser(), socket.gethostname(), str(env.root), str(home), pid):
        assert secret.encode() not in payload, secret
    assert re.search(rb"\d\.\d", payload) is None, "no version numbers"


@pytest.mark.parametrize(
    ("variables", "expected"),
    [
        ({"PYTHON_POPCONTEST_EXCLUDE": "six, Typing_Extensions"}, {"attrs", "idna", "ruamel-yaml"}),
        ({"PYTHON_POPCONTEST_EXCLUDE": "ruamel*,i?na"}, {"six", "attrs", "typing-extensions"}),
        ({"PYTHON_POPCONTEST_INCLUDE": "six,attrs"}, {"six", "attrs"}),
        ({"PYTHON_POPCONTEST_INCLUDE": "ruamel.yaml"}, {"ruamel-yaml"}),
        (
            {"PYTHON_POPCONTEST_INCLUDE": "*", "PYTHON_POPCONTEST_EXCLUDE": "a*"},
            {"six", "idna", "typing-extensions", "ruamel-yaml"},
        ),
    ],
)
def test_include_and_exclude(
    env: Env, sink: UdpSink, home: Path, variables: dict[str, str], expected: set[str]
) -> None:
    proc = env.run("-c", CODE, env=enabled(sink, home, **variables))
    assert (proc.returncode, proc.stderr) == (0, "")
    lines = sink.lines()
    assert lines[-1] == REPORTS, "the process itself is always counted"
    assert libraries(lines) == expected


def test_invalid_pattern_disables_reporting(env: Env, sink: UdpSink, home: Path) -> None:
    variables = enabled(
        sink, home, PYTHON_POPCONTEST_EXCLUDE="six:1|c", PYTHON_POPCONTEST_DEBUG="1"
    )
    proc = env.run("-c", "import six", env=variables)
    assert proc.returncode == 0
    assert "PYTHON_POPCONTEST_EXCLUDE" in proc.stderr
    assert sink.drain() == []


@pytest.mark.parametrize(
    ("rank_variables", "reports"),
    [
        ({"SLURM_PROCID": "0"}, True),
        ({"SLURM_PROCID": "3"}, False),
        ({"PMI_RANK": "1"}, False),
        ({"OMPI_COMM_WORLD_RANK": "0"}, True),
        ({"OMPI_COMM_WORLD_RANK": "12"}, False),
        ({"SLURM_PROCID": "0", "OMPI_COMM_WORLD_RANK": "2"}, False),  # sbatch + mpirun
        ({"SLURM_PROCID": "garbage"}, True),
        ({}, True),
    ],
)
def test_rank_zero_only(
    env: Env, sink: UdpSink, home: Path, rank_variables: dict[str, str], reports: bool
) -> None:
    variables = enabled(sink, home, PYTHON_POPCONTEST_RANK0_ONLY="1", **rank_variables)
    proc = env.run("-c", "import six", env=variables)
    assert (proc.returncode, proc.stderr) == (0, "")
    lines = sink.lines()
    if reports:
        assert lines == ["python_popcon.library_used.six:1|c", "python_popcon.reports:1|c"]
    else:
        assert lines == []


def test_ranks_report_without_the_opt_in(env: Env, sink: UdpSink, home: Path) -> None:
    proc = env.run("-c", "import six", env=enabled(sink, home, SLURM_PROCID="5"))
    assert proc.returncode == 0
    assert libraries(sink.lines()) == {"six"}
