"""Every way of installing works: pip, pip -e, uv, the user site, editable projects, old layouts.

Each test installs for real (pip or uv, from this checkout or from PyPI) and
asserts the exact set of distributions a reporting process sends.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from support.distinfo import write_dist_info
from support.envs import ROOT, Env, base_environ, enabled, make_env, uv
from support.sinks import UdpSink
from support.wire import per_process

pytestmark = pytest.mark.slow

STARTUP_FILE = Path("etc", "ipython", "startup", "00-popcon-site.py")


def run_ok(cmd: list[str], **extra: str) -> subprocess.CompletedProcess[str]:
    """Run an installer; on failure show what it said."""
    proc = subprocess.run(
        cmd, capture_output=True, text=True, env=base_environ(**extra), timeout=600
    )
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


def pip(env: Env, *args: str) -> None:
    run_ok([str(env.python), "-m", "pip", "install", "--quiet", *args])


def sent(env: Env, sink: UdpSink, home: Path, code: str, cwd: Path | None = None) -> set[str]:
    """The distributions one reporting process sent; also checks it was silent and sent once."""
    proc = env.run("-c", code, env=enabled(sink, home), cwd=cwd)
    assert (proc.returncode, proc.stderr) == (0, ""), proc.stderr
    (report,) = per_process(sink.drain())
    return set(report)


def record_of(site: Path, distribution: str) -> list[str]:
    (info,) = site.glob(f"{distribution}-*.dist-info")
    return [line.split(",")[0] for line in (info / "RECORD").read_text().splitlines()]


# --- installing popcon-site itself ------------------------------------------------------------


def install_checkout(env: Env, method: str) -> None:
    if method == "pip":
        pip(env, str(ROOT), "six")
    elif method == "pip-editable":
        pip(env, "-e", str(ROOT), "six")
    else:
        # --no-cache: uv keys its build cache of a local directory on pyproject.toml,
        # so a cached wheel could hold older sources than the checkout.
        run_ok(
            [
                uv(),
                "pip",
                "install",
                "--quiet",
                "--no-cache",
                "--python",
                str(env.python),
                str(ROOT),
                "six",
            ]
        )


@pytest.mark.parametrize("method", ["pip", "pip-editable", "uv"])
def test_install_from_checkout(tmp_path: Path, sink: UdpSink, home: Path, method: str) -> None:
    env = make_env(tmp_path / "venv", pip=method != "uv")
    install_checkout(env, method)
    site = env.site_packages
    record = record_of(site, "popcon_site")

    # The hooks sit at the root of site-packages and are listed in RECORD (so uninstall
    # removes them), editable install included: hatchling's editable wheel carries the
    # force-included files and the shared data too.
    for hook in ("popcon_site.pth", "popcon_site.start"):
        assert (site / hook).read_bytes() == (ROOT / hook).read_bytes(), hook
        assert hook in record, (hook, record)
    assert (env.root / STARTUP_FILE).read_bytes() == (
        ROOT / "share" / "ipython-startup" / "00-popcon-site.py"
    ).read_bytes()

    where = env.run("-c", "import popcon_site; print(popcon_site.__file__)")
    assert where.returncode == 0, where.stderr
    if method == "pip-editable":
        assert not (site / "popcon_site").exists()
        assert where.stdout.strip() == str(ROOT / "src" / "popcon_site" / "__init__.py")
        # The editable wheel's own path entry: a .pth that sorts before ours.
        editable_pths = [f for f in record if f.endswith(".pth") and f != "popcon_site.pth"]
        assert editable_pths, record
        for name in editable_pths:
            assert name < "popcon_site.pth", "must put src/ on sys.path before our hook runs"
            assert (site / name).read_text().strip() == str(ROOT / "src")
    else:
        assert where.stdout.strip() == str(site / "popcon_site" / "__init__.py")

    assert sent(env, sink, home, "import six") == {"six"}
    # popcon-site itself (and its statsd, importlib-metadata) never counts, editable or not.
    assert sent(env, sink, home, "import popcon_site, six") == {"six"}


# --- editable installs of the user's own projects ---------------------------------------------


@pytest.fixture(scope="module")
def devenv(tmp_path_factory: pytest.TempPathFactory, wheel: Path) -> Env:
    """A venv with pip and the popcon-site wheel, where local projects get installed with -e."""
    env = make_env(tmp_path_factory.mktemp("devenv") / "venv", pip=True)
    env.install(str(wheel), "six")
    return env


def hatchling_project(root: Path) -> Path:
    (root / "src" / "mylocalpkg").mkdir(parents=True)
    (root / "pyproject.toml").write_text(
        textwrap.dedent("""\
        [build-system]
        requires = ["hatchling"]
        build-backend = "hatchling.build"

        [project]
        name = "mylocal-proj"
        version = "0.1"

        [tool.hatch.build.targets.wheel]
        packages = ["src/mylocalpkg"]
        """)
    )
    (root / "src" / "mylocalpkg" / "__init__.py").write_text("from . import sub\n")
    (root / "src" / "mylocalpkg" / "sub.py").write_text("VALUE = 1\n")
    return root


@pytest.mark.parametrize("installer", ["pip", "uv"])
def test_editable_hatchling_project_counts_under_its_name(
    devenv: Env, sink: UdpSink, home: Path, tmp_path: Path, installer: str
) -> None:
    project = hatchling_project(tmp_path / f"proj-{installer}")
    if installer == "pip":
        pip(devenv, "-e", str(project))
    else:
        run_ok(
            [uv(), "pip", "install", "--quiet", "--python", str(devenv.python), "-e", str(project)]
        )
    code = "import mylocalpkg, six; print(mylocalpkg.__file__)"
    proc = devenv.run("-c", code, env=enabled(sink, home), cwd=tmp_path)
    assert (proc.returncode, proc.stderr) == (0, "")
    assert proc.stdout.strip() == str(project / "src" / "mylocalpkg" / "__init__.py")
    assert per_process(sink.drain()) == [{"mylocal-proj", "six"}]
    # A module of the project imported alone counts too (no parent already loaded by anyone).
    assert sent(devenv, sink, home, "import mylocalpkg.sub", cwd=tmp_path) == {"mylocal-proj"}


@pytest.mark.parametrize(
    "layout",
    [
        # An explicit package list in a flat layout: setuptools installs its PEP 660
        # import hook, __editable___<name>_finder.py with MAPPING = {"pkg": "/src/pkg"}.
        "flat-finder",
        # The src layout: a plain __editable__.<name>.pth with the src directory.
        "src-pth",
    ],
)
def test_editable_setuptools_project_counts_under_its_name(
    devenv: Env, sink: UdpSink, home: Path, tmp_path: Path, layout: str
) -> None:
    dist, package = (
        ("setup-flat", "flatpkg") if layout == "flat-finder" else ("setup-src", "srcpkg")
    )
    project = tmp_path / dist
    source = project / package if layout == "flat-finder" else project / "src" / package
    source.mkdir(parents=True)
    (source / "__init__.py").write_text("VALUE = 1\n")
    (project / "README.txt").write_text("a stray file the flat layout must not expose\n")
    extra = f'\n[tool.setuptools]\npackages = ["{package}"]\n' if layout == "flat-finder" else ""
    (project / "pyproject.toml").write_text(
        textwrap.dedent(f"""\
        [build-system]
        requires = ["setuptools>=64"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "{dist}"
        version = "0.1"
        """)
        + extra
    )
    pip(devenv, "-e", str(project))

    site = devenv.site_packages
    normalized = dist.replace("-", "_")
    if layout == "flat-finder":
        assert list(site.glob(f"__editable___{normalized}_*_finder.py")), sorted(os.listdir(site))
    else:
        (pth,) = site.glob(f"__editable__.{normalized}-*.pth")
        assert pth.read_text().strip() == str(project / "src")

    proc = devenv.run(
        "-c", f"import {package}; print({package}.__file__)", env=enabled(sink, home), cwd=tmp_path
    )
    assert (proc.returncode, proc.stderr) == (0, "")
    assert proc.stdout.strip() == str(source / "__init__.py")
    assert per_process(sink.drain()) == [{dist}]


# --- the user site of a base interpreter ------------------------------------------------------


def base_interpreter() -> str:
    """The real interpreter behind the one running the tests (which may be a venv's).

    virtualenv-made venvs on 3.9/3.10 report the venv's own python as
    ``sys._base_executable``; the interpreter under ``sys.base_prefix`` is the real one.
    """
    if sys.prefix == sys.base_prefix:
        return sys.executable
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    for name in (f"python{version}", "python3"):
        candidate = os.path.join(sys.base_prefix, "bin", name)
        if os.path.exists(candidate):
            return candidate
    pytest.fail(f"no base interpreter under {sys.base_prefix}")


def listing(path: str) -> list[str]:
    return sorted(os.listdir(path)) if os.path.isdir(path) else []


def test_user_site_install(tmp_path: Path, wheel: Path, sink: UdpSink, home: Path) -> None:
    python = base_interpreter()
    userbase = tmp_path / "userbase"
    probe = subprocess.run(
        [
            python,
            "-s",
            "-c",
            "import json, site, sysconfig; "
            "print(json.dumps([sysconfig.get_paths()[k] for k in ('purelib', 'platlib', 'scripts')]"
            " + [site.getuserbase()]))",
        ],
        capture_output=True,
        text=True,
        env=base_environ(),
        check=True,
    )
    *base_dirs, default_userbase = json.loads(probe.stdout)
    # Debian's interpreters ship without pip: drive the test runner's pip at them.
    pip = [sys.executable, "-m", "pip", "--python", python]
    installed = subprocess.run(
        [python, "-s", "-c", "import popcon_site"], capture_output=True, env=base_environ()
    )
    assert installed.returncode != 0, f"{python} must not have popcon-site installed already"
    before = {d: listing(d) for d in [*base_dirs, default_userbase]}

    # --ignore-installed: the base interpreter may have six already; it must land in the user site.
    run_ok(
        [
            *pip,
            "install",
            "--quiet",
            "--user",
            "--break-system-packages",  # Debian marks its interpreters externally managed
            "--ignore-installed",
            "--no-warn-script-location",
            str(wheel),
            "six",
        ],
        PYTHONUSERBASE=str(userbase),
    )

    assert {d: listing(d) for d in before} == before, "installed outside the user base"
    (user_site,) = userbase.glob("lib/python*/site-packages")
    assert (user_site / "popcon_site.pth").exists()
    assert (userbase / STARTUP_FILE).exists()

    variables = enabled(sink, home, PYTHONUSERBASE=str(userbase))
    proc = subprocess.run(
        [python, "-c", "import six; print(six.__file__)"],
        capture_output=True,
        text=True,
        env=variables,
        cwd=tmp_path,
        timeout=120,
    )
    assert (proc.returncode, proc.stderr) == (0, "")
    assert proc.stdout.strip() == str(user_site / "six.py")
    (reported,) = per_process(sink.drain())
    # The user site is processed before the base site-packages, so the .pth files there
    # (setuptools' distutils-precedence.pth imports _distutils_hack) run after activation.
    assert reported == {"six"}, "start-up imports of later .pth files were counted"


# --- distributions without RECORD -------------------------------------------------------------


@pytest.fixture(scope="module")
def legacy(tmp_path_factory: pytest.TempPathFactory, wheel: Path) -> Env:
    """A venv whose site-packages also holds hand-made distributions without RECORD."""
    env = make_env(tmp_path_factory.mktemp("legacy") / "venv")
    env.install(str(wheel), "six")
    site = env.site_packages

    def dist_info(name: str, top_level: str | None = None, metadata: bool = True) -> None:
        write_dist_info(
            site,
            f"{name}-1.0.dist-info",
            name if metadata else None,
            record=False,
            top_level=top_level,
        )

    # dist-info with top_level.txt but no RECORD: a package and a one-file module.
    dist_info("legacydist", "legacymod")
    (site / "legacymod").mkdir()
    (site / "legacymod" / "__init__.py").write_text("from . import inner\n")
    (site / "legacymod" / "inner.py").write_text("X = 1\n")
    dist_info("legacyone", "legacyonemod")
    (site / "legacyonemod.py").write_text("X = 1\n")
    # Neither RECORD nor top_level.txt, and one without even METADATA; plus an unowned module.
    dist_info("ghostdist")
    dist_info("emptydist", metadata=False)
    (site / "ghostmod.py").write_text("X = 1\n")
    # setup.py install style: an .egg-info directory with installed-files.txt.
    egg = site / "legacyegg-1.0-py3.egg-info"
    egg.mkdir()
    (egg / "PKG-INFO").write_text("Metadata-Version: 1.1\nName: legacyegg\nVersion: 1.0\n")
    (egg / "installed-files.txt").write_text("../eggmod/__init__.py\nPKG-INFO\n")
    (site / "eggmod").mkdir()
    (site / "eggmod" / "__init__.py").write_text("X = 1\n")
    return env


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("import legacymod", {"legacydist"}),
        ("import legacymod.inner", {"legacydist"}),
        ("import legacyonemod", {"legacyone"}),
        ("import eggmod", {"legacyegg"}),
        (
            "import legacymod, legacyonemod, eggmod, six",
            {"legacydist", "legacyone", "legacyegg", "six"},
        ),
    ],
    ids=lambda value: value if isinstance(value, str) else None,
)
def test_distribution_without_record(
    legacy: Env, sink: UdpSink, home: Path, code: str, expected: set[str]
) -> None:
    assert sent(legacy, sink, home, code) == expected


def test_dist_info_without_record_or_top_level_breaks_nothing(
    legacy: Env, sink: UdpSink, home: Path
) -> None:
    assert sent(legacy, sink, home, "import six") == {"six"}
    # A module nobody claims stays unowned; the cached index (second run) agrees.
    assert sent(legacy, sink, home, "import ghostmod, six") == {"six"}
    assert sent(legacy, sink, home, "import ghostmod") == set()
