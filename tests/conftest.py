"""Fixtures of the main suite; the helpers every suite shares live in tests/support/."""

from __future__ import annotations

from pathlib import Path

import pytest

from support.envs import Env, make_env

pytest_plugins = ["support.fixtures", "support.e2e"]  # wheel, sink, home; e2e_env


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
