"""The benchmarked environments: built with uv, bytecode compiled, cached under work/.

Every environment spec is built three times, once per *flavor*, from the same
pinned requirements:

- ``bare``: the packages only;
- ``popcon``: the packages plus the popcon-site wheel built from this checkout;
- ``earlier``: the packages plus ``popularity-contest==0.4.1``, activated the way
  its README says (``setup_reporter()`` at start-up) by a one-line ``.pth`` file.

Synthetic distributions are generated once per count into a template tree
(sources, ``.pyc`` files, ``*.dist-info`` with ``RECORD``) and hard-linked into
each flavor's ``site-packages``, so all three flavors hold identical files.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent.parent
ROOT = BENCH_DIR.parent
REQUIREMENTS = BENCH_DIR / "requirements"

FLAVORS = ("bare", "popcon", "earlier")
EARLIER_REQUIREMENT = "popularity-contest==0.4.1"
# Exactly what popularity-contest's README asks users to run at start-up.
EARLIER_PTH_NAME = "popularity_contest_setup.pth"
EARLIER_PTH_LINE = (
    "import popularity_contest.reporter; popularity_contest.reporter.setup_reporter()\n"
)
SYNTHETIC_VERSION = 2  # bump when the generator changes, to rebuild the cached trees

# Variables of the calling shell that would change what an installer does.
_INSTALLER_NOISE = ("PIP_FIND_LINKS", "PIP_CONSTRAINT", "PYTHONDONTWRITEBYTECODE", "VIRTUAL_ENV")


@dataclass(frozen=True)
class EnvSpec:
    """One kind of environment: pinned requirements plus N synthetic distributions."""

    name: str
    requirements: str  # file name under benchmarks/requirements/
    synthetic: int = 0
    label: str = ""


@dataclass(frozen=True)
class BuiltEnv:
    spec: EnvSpec
    flavor: str
    root: Path
    site_packages: Path
    distributions: int  # *.dist-info / *.egg-info entries in site-packages

    @property
    def python(self) -> str:
        return str(self.root / "bin" / "python")


def installer_environ() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _INSTALLER_NOISE}
    env["PIP_FIND_LINKS"] = ""
    return env


def uv_binary() -> str:
    found = shutil.which("uv") or str(Path(sys.executable).with_name("uv"))
    if not Path(found).exists():
        raise SystemExit("uv is required (nox -s bench installs it)")
    return found


def base_python() -> str:
    """The interpreter the environments are made from: the one running the harness's base."""
    return getattr(sys, "_base_executable", sys.executable)


def build_wheel(work: Path) -> Path:
    """The popcon-site wheel of this checkout (rebuilt every run; cheap)."""
    out = work / "wheel"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
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
        env=installer_environ(),
    )
    (wheel,) = out.glob("popcon_site-*.whl")
    return wheel


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def _key(spec: EnvSpec, flavor: str, wheel: Path | None) -> str:
    parts = {
        "spec": [spec.name, spec.requirements, spec.synthetic, SYNTHETIC_VERSION],
        "requirements": _digest((REQUIREMENTS / spec.requirements).read_bytes()),
        "python": base_python(),
        "version": sys.version,
        "flavor": flavor,
        "wheel": _digest(wheel.read_bytes()) if (wheel and flavor == "popcon") else "",
        "earlier": EARLIER_PTH_LINE if flavor == "earlier" else "",
    }
    return _digest(json.dumps(parts, sort_keys=True).encode())


def _site_packages(python: str) -> Path:
    out = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
        env=installer_environ(),
    )
    return Path(out.stdout.strip())


def count_distributions(site_packages: Path) -> int:
    return sum(
        1 for entry in os.listdir(site_packages) if entry.endswith((".dist-info", ".egg-info"))
    )


def build_env(spec: EnvSpec, flavor: str, work: Path, wheel: Path, log: list[str]) -> BuiltEnv:
    """Build (or reuse, when its inputs are unchanged) one flavor of one spec."""
    root = work / "envs" / f"{spec.name}-{flavor}"
    key = _key(spec, flavor, wheel)
    stamp = root / ".bench-key"
    if not (stamp.exists() and stamp.read_text() == key):
        log.append(f"building {root.name}")
        shutil.rmtree(root, ignore_errors=True)
        uv = uv_binary()
        env = installer_environ()
        subprocess.run(
            [uv, "venv", "--quiet", "--python", base_python(), str(root)], check=True, env=env
        )
        extra: list[str] = []
        if flavor == "popcon":
            extra = [str(wheel)]
        elif flavor == "earlier":
            extra = [EARLIER_REQUIREMENT]
        subprocess.run(
            [
                uv,
                "pip",
                "install",
                "--quiet",
                "--compile-bytecode",
                "--python",
                str(root / "bin" / "python"),
                "-r",
                str(REQUIREMENTS / spec.requirements),
                *extra,
            ],
            check=True,
            env=env,
        )
        site = _site_packages(str(root / "bin" / "python"))
        if spec.synthetic:
            link_tree(synthetic_template(spec.synthetic, work, log), site)
        if flavor == "earlier":
            (site / EARLIER_PTH_NAME).write_text(EARLIER_PTH_LINE)
        stamp.write_text(key)
    site = _site_packages(str(root / "bin" / "python"))
    return BuiltEnv(spec, flavor, root, site, count_distributions(site))


# -- synthetic distributions -------------------------------------------------------

_MODULES = {
    "__init__.py": '"""Synthetic distribution {i} for popcon-site benchmarks."""\n\n'
    "from .core import VALUE\n\n__all__ = ['VALUE']\n",
    "core.py": "VALUE = {i}\n\n\ndef double(x):\n    return 2 * x\n",
    "util.py": "def describe():\n    return 'synthetic {i}'\n",
    "sub/__init__.py": "",
    "sub/impl.py": "TABLE = {{n: n * n for n in range(10)}}\n",
}


def synthetic_template(count: int, work: Path, log: list[str]) -> Path:
    """N distributions as pip would leave them: package, ``__pycache__``, dist-info, RECORD."""
    template = work / "synthetic" / f"n{count}-v{SYNTHETIC_VERSION}"
    done = template / ".complete"
    if done.exists():
        return template
    log.append(f"generating {count} synthetic distributions")
    shutil.rmtree(template, ignore_errors=True)
    template.mkdir(parents=True)
    for i in range(count):
        package = f"synth_dist_{i:04d}"
        for relative, text in _MODULES.items():
            path = template / package / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text.format(i=i))
    subprocess.run(
        [base_python(), "-m", "compileall", "-q", "-j", "0", str(template)],
        check=True,
        env=installer_environ(),
    )
    for i in range(count):
        package = f"synth_dist_{i:04d}"
        info = template / f"synth_dist_{i:04d}-1.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: synth-dist-{i:04d}\nVersion: 1.0\n"
            "Summary: synthetic distribution for popcon-site benchmarks\n"
        )
        (info / "WHEEL").write_text(
            "Wheel-Version: 1.0\nGenerator: popcon-bench\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        )
        (info / "INSTALLER").write_text("pip\n")
        (info / "top_level.txt").write_text(f"{package}\n")
        lines = []
        for path in sorted((template / package).rglob("*")):
            if path.is_file():
                lines.append(_record_line(path, template))
        for meta in ("METADATA", "WHEEL", "INSTALLER", "top_level.txt"):
            lines.append(_record_line(info / meta, template))
        lines.append(f"{info.name}/RECORD,,")
        (info / "RECORD").write_text("\n".join(lines) + "\n")
    done.write_text("ok\n")
    return template


def _record_line(path: Path, root: Path) -> str:
    data = path.read_bytes()
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{path.relative_to(root).as_posix()},sha256={digest},{len(data)}"


def link_tree(template: Path, site: Path) -> None:
    """Hard-link every file of the template into site-packages (same mtimes: .pyc stay valid)."""
    for directory, _dirs, files in os.walk(template):
        relative = Path(directory).relative_to(template)
        target = site / relative
        target.mkdir(exist_ok=True)
        for name in files:
            if name == ".complete":
                continue
            os.link(Path(directory) / name, target / name)
