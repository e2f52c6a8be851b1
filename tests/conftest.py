"""Fixtures of the main suite; the helpers every suite shares live in tests/support/.

The names below stay importable from here (``from conftest import Env, ...``) for
test modules written against the earlier conftest; new code imports from support.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from support.envs import ROOT, Env, base_environ, enabled, make_env, uv
from support.sinks import UdpSink
from support.wire import PREFIX, libraries

pytest_plugins = ["support.fixtures"]  # wheel, sink, home

__all__ = [
    "PREFIX",
    "ROOT",
    "Env",
    "UdpSink",
    "base_environ",
    "enabled",
    "libraries",
    "make_env",
    "uv",
]


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
