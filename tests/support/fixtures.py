"""The fixtures every suite uses; each conftest imports them by name."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from support.envs import build_popcon_wheel
from support.sinks import UdpSink


@pytest.fixture(scope="session")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The package's wheel, built once from this checkout with hatchling."""
    return build_popcon_wheel(tmp_path_factory.mktemp("wheel"))


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
