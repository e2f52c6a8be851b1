"""The fixtures every suite uses; each conftest imports them by name."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from support.envs import HANG_PTH, Env, build_popcon_wheel, make_env
from support.sinks import UdpSink


@pytest.fixture(scope="session")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The package's wheel, built once from this checkout with hatchling."""
    return build_popcon_wheel(tmp_path_factory.mktemp("wheel"))


@pytest.fixture(scope="session")
def hanging_resolver_env(tmp_path_factory: pytest.TempPathFactory, wheel: Path) -> Env:
    """An environment whose host lookup never answers: see HANG_PTH."""
    env = make_env(tmp_path_factory.mktemp("hang") / "venv")
    env.install(str(wheel), "six")
    (env.site_packages / "00_hanging_resolver.pth").write_text(HANG_PTH)
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
