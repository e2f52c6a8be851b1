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
import zipfile
from pathlib import Path

import pytest

from support.distinfo import write_dist_info
from support.envs import ROOT, Env, base_environ, enabled, make_env, uv
from support.sinks import UdpSink
from support.wire import per_process

pytestmark = pytest.mark.slow

STARTUP_FILE = Path("etc", "ipython", "startup", "00-popcon-site.py")
HOOKS = {"popcon_site.pth", "popcon_site.start"}
# The one hook this Python runs: 3.15-3.17 pay ~12 ms per process for any .start,
# 3.18 ignores .pth import lines (hatch_build.py).
OWN_HOOK = "popcon_site.start" if sys.version_info >= (3, 18) else "popcon_site.pth"


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


def install_checkout(env: Env, method: str, sdist: Path) -> None:
    if method == "pip":
        pip(env, str(ROOT), "six")
    elif method == "pip-editable":
        pip(env, "-e", str(ROOT), "six")
    elif method == "pip-sdist":
        pip(env, str(sdist), "six")
    else:
        # --no-cache: uv keys its build cache of a local directory on pyproject.toml,
        # so a cached wheel could hold older sources than the checkout.
        editable = ["-e"] if method == "uv-editable" else []
        run_ok(
            [
                uv(),
                "pip",
                "install",
                "--quiet",
                "--no-cache",
                "--python",
                str(env.python),
                *editable,
                str(ROOT),
                "six",
            ]
        )


@pytest.mark.parametrize("method", ["pip", "pip-editable", "pip-sdist", "uv", "uv-editable"])
def test_install_from_checkout(
    tmp_path: Path, sink: UdpSink, home: Path, method: str, sdist: Path
) -> None:
    env = make_env(tmp_path / "venv", pip=not method.startswith("uv"))
    install_checkout(env, method, sdist)
    site = env.site_packages
    record = record_of(site, "popcon_site")

    # Built from source for this interpreter: its own hook alone, at the root of
    # site-packages and listed in RECORD (so uninstall removes it), editable included:
    # hatchling's editable wheel carries the forced files and the shared data too.
    assert HOOKS & set(os.listdir(site)) == {OWN_HOOK}
    assert (site / OWN_HOOK).read_bytes() == (ROOT / OWN_HOOK).read_bytes()
    assert OWN_HOOK in record, record
    assert (env.root / STARTUP_FILE).read_bytes() == (
        ROOT / "share" / "ipython-startup" / "00-popcon-site.py"
    ).read_bytes()
    # Jupyter servers of the environment load popcon-site's extension (_jupyter_server).
    assert (env.root / "etc/jupyter/jupyter_server_config.d/popcon-site.json").read_bytes() == (
        ROOT / "share" / "jupyter-server-config" / "popcon-site.json"
    ).read_bytes()

    where = env.run("-c", "import popcon_site; print(popcon_site.__file__)")
    assert where.returncode == 0, where.stderr
    if method.endswith("-editable"):
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


# --- the published wheels: one per hook, tagged so exactly one fits each Python ---------------


PIP_WHEEL = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation"]
PIP_DRY_RUN = [sys.executable, "-m", "pip", "install", "--quiet", "--dry-run", "--report", "-"]
PIP_DRY_RUN += ["--no-index", "--only-binary=:all:", "--no-deps", "--target", "/nonexistent"]
UV_TARGET = ["pip", "install", "--quiet", "--no-cache", "--no-index", "--no-deps"]
UV_TARGET += ["--python-platform", "x86_64-unknown-linux-gnu", "--target"]


def build_wheel(out: Path, variant: str) -> Path:
    run_ok([*PIP_WHEEL, "-w", str(out), str(ROOT)], POPCON_SITE_HOOKS=variant)
    (built,) = out.glob("popcon_site-*.whl")
    return built


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The two wheels the release uploads, as the release builds them (POPCON_SITE_HOOKS)."""
    return {v: build_wheel(tmp_path_factory.mktemp(f"wheel-{v}"), v) for v in ("pth", "start")}


@pytest.fixture(scope="module")
def sdist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sdist")
    run_ok([sys.executable, "-m", "hatchling", "build", "-t", "sdist", "-d", str(out)], PWD="")
    (built,) = out.glob("popcon_site-*.tar.gz")
    return built


@pytest.fixture(scope="module")
def links(tmp_path_factory: pytest.TempPathFactory, published: dict[str, Path]) -> Path:
    """A --find-links directory holding both published wheels, like the PyPI release."""
    directory = tmp_path_factory.mktemp("links")
    for wheel in published.values():
        (directory / wheel.name).write_bytes(wheel.read_bytes())
    return directory


def hook_files(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as archive:
        return HOOKS & set(archive.namelist())


def test_published_wheels_hold_one_hook_each(published: dict[str, Path]) -> None:
    assert hook_files(published["pth"]) == {"popcon_site.pth"}
    assert hook_files(published["start"]) == {"popcon_site.start"}
    assert published["start"].name == "popcon_site-1.0.0-py318-none-any.whl"


VERSIONS = [(3, minor) for minor in range(9, 22)]


@pytest.mark.parametrize("version", VERSIONS, ids=lambda v: f"{v[0]}.{v[1]}")
def test_exactly_one_published_wheel_fits_each_python(
    published: dict[str, Path], version: tuple[int, int]
) -> None:
    from packaging.tags import compatible_tags, cpython_tags
    from packaging.utils import parse_wheel_filename

    # CPython X.Y's tags as packaging (so pip) orders them; py3 outranks py317 on 3.19+.
    interpreter = f"cp{version[0]}{version[1]}"
    supported = [*cpython_tags(version), *compatible_tags(version, interpreter)]
    fits = [v for v, w in published.items() if parse_wheel_filename(w.name)[3] & set(supported)]
    assert fits == ["start" if version >= (3, 18) else "pth"]


def chosen_by_pip(links: Path, version: str) -> list[str]:
    proc = run_ok(
        [*PIP_DRY_RUN, "--find-links", str(links), "--python-version", version, "popcon-site"]
    )
    report = json.loads(proc.stdout)["install"]
    return [item["download_info"]["url"].rsplit("/", 1)[1] for item in report]


def installed_by_uv(links: Path, version: str, target: Path) -> set[str]:
    run_ok(
        [
            uv(),
            *UV_TARGET,
            str(target),
            "--find-links",
            str(links),
            "--python-version",
            version,
            "popcon-site",
        ]
    )
    return HOOKS & set(os.listdir(target))


@pytest.mark.parametrize("version", ["3.9", "3.14", "3.15", "3.17", "3.18", "3.19", "3.20"])
def test_pip_and_uv_pick_the_wheel_for_the_python(
    links: Path, published: dict[str, Path], tmp_path: Path, version: str
) -> None:
    variant = "start" if version in ("3.18", "3.19", "3.20") else "pth"
    assert chosen_by_pip(links, version) == [published[variant].name]
    assert installed_by_uv(links, version, tmp_path / "target") == hook_files(published[variant])


@pytest.mark.parametrize("installer", ["pip", "uv"])
def test_install_the_published_wheels(
    tmp_path: Path, links: Path, sink: UdpSink, home: Path, installer: str
) -> None:
    """`pip install popcon-site` with the release on the index: this Python's hook, run once."""
    env = make_env(tmp_path / "venv", pip=installer == "pip")
    if installer == "pip":
        pip(env, "--find-links", str(links), "popcon-site", "six")
    else:
        run_ok(
            [
                uv(),
                "pip",
                "install",
                "--quiet",
                "--no-cache",
                "--python",
                str(env.python),
                "--find-links",
                str(links),
                "popcon-site",
                "six",
            ]
        )
    assert HOOKS & set(os.listdir(env.site_packages)) == {OWN_HOOK}
    assert OWN_HOOK in record_of(env.site_packages, "popcon_site")
    assert sent(env, sink, home, "import six") == {"six"}  # sent() checks one report


@pytest.mark.parametrize("editable", [False, True], ids=["uv", "uv-editable"])
def test_uv_cache_never_hands_a_build_to_the_wrong_python(tmp_path: Path, editable: bool) -> None:
    """A build for 3.18+ (forced here) sits in uv's cache; this Python must build its own.

    Builds from source are tagged for the building interpreter (cp311-none-any), so
    uv only reuses them where they fit; a py3-none-any build was reused everywhere.
    uv rebuilds editables at each install.
    """
    cache = tmp_path / "uv-cache"
    flag = ["-e"] if editable else []

    def install(env: Env, **extra: str) -> subprocess.CompletedProcess[str]:
        cmd = [uv(), "pip", "install", "--quiet", "--cache-dir", str(cache)]
        cmd += ["--python", str(env.python), *flag, str(ROOT)]
        return subprocess.run(cmd, capture_output=True, text=True, env=base_environ(**extra))

    first = make_env(tmp_path / "first")
    forced = install(first, POPCON_SITE_HOOKS="start")
    if editable:  # hatchling tags every editable wheel py3-none-any
        assert forced.returncode == 0, forced.stderr
        assert HOOKS & set(os.listdir(first.site_packages)) == {"popcon_site.start"}
    elif sys.version_info < (3, 18):
        assert forced.returncode != 0 and "py318-none-any.whl" in forced.stderr, forced.stderr
    cached = {p.name for p in cache.rglob("popcon_site-*.whl")}
    assert any("py318" in name or editable for name in cached), cached

    second = make_env(tmp_path / "second")
    proc = install(second)
    assert proc.returncode == 0, proc.stderr
    assert HOOKS & set(os.listdir(second.site_packages)) == {OWN_HOOK}


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
