"""Developer and CI sessions: ``nox`` runs lint and the tests on every Python found here."""

from __future__ import annotations

import glob
import os
import shlex
import shutil
import subprocess
from pathlib import Path

import nox

ROOT = Path(__file__).parent
nox.options.sessions = ["lint", "docs", "dist", "tests", "tests_sid", "e2e", "reliability", "hpc"]
nox.options.reuse_existing_virtualenvs = True

TEST_DEPS = ["pytest", "pytest-xdist", "uv", "hatchling", "statsd", "importlib-metadata"]
# Most of a test is waiting on child interpreters: two workers use both cores.
PYTEST_ARGS = ["-n", "2"]
ONCE_PYTHON = "3.11"  # the `tests` session that also runs the tests marked `once`
SID_ROOT = Path(os.environ.get("POPCON_SID_ROOT", "/var/tmp/popcon-sid"))
SID_PYTHONS = ["3.14", "3.15"]


def _interpreters() -> list[str]:
    """Every CPython 3.9-3.13 on this machine; pyenv installs are put on PATH for nox."""
    found = []
    for version in ["3.9", "3.10", "3.11", "3.12", "3.13"]:
        pyenv = sorted(glob.glob(f"/root/.pyenv/versions/{version}.*/bin/python{version}"))
        if pyenv:
            os.environ["PATH"] = f"{Path(pyenv[-1]).parent}{os.pathsep}{os.environ['PATH']}"
            found.append(version)
        elif shutil.which(f"python{version}"):
            found.append(version)
    return found


@nox.session(python=_interpreters())
def tests(session: nox.Session) -> None:
    """The whole test suite against real venvs, the built wheel and real PyPI packages."""
    _ensure_debs(session, ["prometheus", "chromium"])  # unused/top query a real one; serve's page
    _ensure_debs(session, ["faketime"])  # tests/test_users.py: a month boundary, time injected
    session.install(*TEST_DEPS, ".")
    # Tests marked `once` do not depend on the interpreter (a browser, a venv of
    # Debian's python3, a Prometheus scrape): one session runs them, not seven.
    once = [] if session.python == ONCE_PYTHON else ["-m", "not once"]
    session.run("python", "-m", "pytest", *(session.posargs or [*PYTEST_ARGS, *once]))


@nox.session(python="3.11")
def dist(session: nox.Session) -> None:
    """What a release uploads, in dist/: the sdist and the two wheels (hatch_build.py)."""
    session.install("hatchling", "build")
    out = ROOT / "dist"
    shutil.rmtree(out, ignore_errors=True)
    session.run("python", "-m", "build", "--sdist", "--no-isolation", "-o", str(out))
    for variant in ("pth", "start"):  # 3.9-3.17, and 3.18+
        session.run(
            *("python", "-m", "build", "--wheel", "--no-isolation", "-o", str(out)),
            env={"POPCON_SITE_HOOKS": variant},
        )
    built = sorted(path.name for path in out.iterdir())
    wanted = ["cp39.cp310.cp311.cp312.cp313.cp314.cp315.cp316.cp317-none-any.whl"]
    wanted += ["py318-none-any.whl", ".tar.gz"]
    if len(built) != 3 or not all(any(n.endswith(w) for n in built) for w in wanted):
        session.error(f"dist/ should hold the sdist and the two wheels, not {built}")


@nox.session(python=False)
def tests_sid(session: nox.Session) -> None:
    """The suite on Python 3.14 and 3.15 from Debian sid, in a chroot (needs root)."""
    if os.geteuid() != 0:
        session.error("tests_sid needs root (debootstrap, chroot)")
    _ensure_sid(session)
    # As schroot does: the machine's own names (its hostname) resolve inside the chroot too.
    shutil.copy("/etc/hosts", SID_ROOT / "etc/hosts")
    src = SID_ROOT / "src"
    shutil.rmtree(src, ignore_errors=True)
    shutil.copytree(
        ROOT,
        src,
        ignore=shutil.ignore_patterns(".git", ".nox", "__pycache__", "*.egg-info", "benchmarks"),
    )
    mounts = [(SID_ROOT / "proc", ["-t", "proc", "proc"]), (SID_ROOT / "dev", ["--rbind", "/dev"])]
    for target, how in mounts:
        if not os.path.ismount(target):
            session.run("mount", *how, str(target), external=True)
    try:
        for version in SID_PYTHONS:
            venv = f"/opt/popcon-tests-{version}"
            # tests/test_debian_system.py installs into the chroot's own python3 (once).
            system = "/usr/bin/python3" if version == SID_PYTHONS[0] else ""
            script = (
                f"set -e; rm -rf {venv}; python{version} -m venv {venv}; "
                f"{venv}/bin/pip install --quiet {' '.join(TEST_DEPS)} /src; "
                f"cd /src && {venv}/bin/python -m pytest -p no:cacheprovider "
                # `-- -k "a or b"` stays one word; `once` tests ran in tests-3.11
                + shlex.join(session.posargs or [*PYTEST_ARGS, "-m", "not once"])
            )
            session.run(
                "chroot",
                str(SID_ROOT),
                "sh",
                "-c",
                script,
                external=True,
                env={
                    "PIP_FIND_LINKS": "",
                    "HOME": "/root",
                    "PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
                    "POPCON_DEBIAN_SYSTEM_PYTHON": system,
                },
            )
    finally:
        for target, _ in reversed(mounts):
            session.run("umount", "-l", str(target), external=True, success_codes=[0, 1, 32])


def _ensure_sid(session: nox.Session) -> None:
    """A minimal Debian sid with python3.14 and python3.15 (about a minute the first time)."""
    ready = [SID_ROOT / f"usr/include/python{v}/Python.h" for v in SID_PYTHONS]
    ready.append(SID_ROOT / "usr/lib/python3/dist-packages/yaml/__init__.py")
    # Prometheus 3 and VictoriaMetrics 1.145 for the e2e exact-count tests (e2e runs them
    # from the host: Go binaries that need only libc).
    ready += [SID_ROOT / "usr/bin/prometheus", SID_ROOT / "usr/bin/victoria-metrics"]
    # libfaketime: tests/test_users.py crosses a month boundary without touching the clock.
    ready.append(SID_ROOT / "usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")
    if all(path.exists() for path in ready):
        return
    if not shutil.which("debootstrap"):
        session.run("apt-get", "update", "-qq", external=True)
        session.run("apt-get", "install", "-y", "-qq", "debootstrap", external=True)
    if not (SID_ROOT / "usr/bin").exists():
        session.run("debootstrap", "--variant=minbase", "sid", str(SID_ROOT), external=True)
    shutil.copy("/etc/resolv.conf", SID_ROOT / "etc/resolv.conf")
    # Packages must not start services in the chroot (prometheus would listen on *:9090).
    policy = SID_ROOT / "usr/sbin/policy-rc.d"
    policy.write_text("#!/bin/sh\nexit 101\n")
    policy.chmod(0o755)
    # A compiler and headers: not every test dependency has wheels for a new Python yet.
    # Debian's own python3 with apt-installed libraries: tests/test_debian_system.py.
    packages = "gcc libc6-dev prometheus victoria-metrics faketime "
    packages += "python3-pip python3-yaml python3-numpy python3-requests "
    packages += " ".join(f"python{v} python{v}-venv python{v}-dev" for v in SID_PYTHONS)
    session.run(
        "chroot",
        str(SID_ROOT),
        "sh",
        "-c",
        "apt-get -o Acquire::Check-Valid-Until=false update -qq && "
        f"DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends {packages}",
        external=True,
    )
    # pip inside the chroot trusts only the chroot's CA bundle.
    certs = SID_ROOT / "etc/ssl/certs"
    certs.mkdir(parents=True, exist_ok=True)
    shutil.copy("/etc/ssl/certs/ca-certificates.crt", certs / "ca-certificates.crt")


@nox.session(python="3.11")
def bench(session: nox.Session) -> None:
    """Benchmarks side by side with popularity-contest 0.4.1; not a test (benchmarks/README.md).

    ``nox -s bench -- --quick`` runs fewer rounds.  Environments are cached in
    benchmarks/work/; results go to benchmarks/results/.
    """
    session.install("uv", "hatchling", "matplotlib")
    session.run("python", "benchmarks/run.py", *session.posargs, env={"PIP_FIND_LINKS": ""})
    _start_file_cost(session)


@nox.session(python="3.11")
def start_file_cost(session: nox.Session) -> None:
    """Only the Python 3.15 start-up hook cost of ``bench`` (a few minutes; ``-- --quick``)."""
    session.install("hatchling")
    _start_file_cost(session)


def _start_file_cost(session: nox.Session) -> None:
    """What the start-up hook costs Python 3.15 processes, in the sid chroot if it exists."""
    if not (SID_ROOT / "usr/bin/python3.15").exists():
        session.log(f"start-file cost skipped: no python3.15 in {SID_ROOT} (nox -s tests_sid)")
        return
    rounds = (
        "3" if "--smoke" in session.posargs else "101" if "--quick" in session.posargs else "301"
    )
    work = SID_ROOT / "tmp/popcon-bench"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    # The published 3.9-3.17 wheel, and the one for a site directory of several Pythons.
    wheels = []
    for variant in ("pth", "both"):
        out = work / variant
        session.run(
            *("python", "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"),
            *("-w", str(out), str(ROOT)),
            env={"POPCON_SITE_HOOKS": variant},
        )
        (wheel,) = out.glob("popcon_site-*.whl")
        wheels.append(f"/tmp/popcon-bench/{variant}/{wheel.name}")
    shutil.copy("benchmarks/start_file_cost.py", work)
    argv = ["python3.15", "/tmp/popcon-bench/start_file_cost.py", *wheels, rounds]
    output = session.run("chroot", str(SID_ROOT), *argv, external=True, silent=True)
    Path("benchmarks/results/start-file-cost.txt").write_text(str(output))
    print(output)


# End-to-end: the servers the tests start (tests/e2e/servers.py), all from Debian or npm.
E2E_DEBS = ["collectd-core", "libprotobuf-c1", "libmicrohttpd12", "prometheus", "victoria-metrics"]
E2E_STATSD_DAEMON = "statsd@0.9.0"  # the reference (Etsy) statsd daemon
E2E_PROXY = "configurable-http-proxy@5.3.0"  # JupyterHub's proxy (test_e2e_jupyterhub.py)
E2E_NODE = ROOT / ".nox" / "e2e-node"


@nox.session
def e2e(session: nox.Session) -> None:
    """Real processes -> the statsd daemon, collectd and statsd_exporter -> Prometheus 2.42
    and 3 and VictoriaMetrics (the last two from the Debian sid chroot); deploy/.

    statsd_exporter comes from $POPCON_STATSD_EXPORTER (.ci/run sets it); without it
    those tests are skipped, and under CI=true they fail.
    """
    _ensure_debs(session, E2E_DEBS)
    if os.geteuid() == 0:  # Prometheus 3 and VictoriaMetrics 1.145 (tests/e2e/test_e2e_exact.py)
        _ensure_sid(session)
    if not (E2E_NODE / "node_modules" / "statsd" / "stats.js").is_file():
        if not shutil.which("npm"):
            session.error("npm is needed to install the statsd daemon")
        E2E_NODE.mkdir(parents=True, exist_ok=True)
        session.run(
            "npm",
            "install",
            "--no-audit",
            "--no-fund",
            "--omit=optional",
            "--prefix",
            str(E2E_NODE),
            E2E_STATSD_DAEMON,
            external=True,
        )
    if not (E2E_NODE / "node_modules" / ".bin" / "configurable-http-proxy").is_file():
        session.run(
            "npm",
            "install",
            "--no-audit",
            "--no-fund",
            "--omit=optional",
            "--prefix",
            str(E2E_NODE),
            E2E_STATSD_DAEMON,
            E2E_PROXY,
            external=True,
        )
    # JupyterHub's test builds its hub's venv itself, with Debian's /usr/bin/python3.
    _ensure_debs(session, ["python3-venv"])
    session.install(*TEST_DEPS, "pyyaml", "traitlets", "websocket-client", ".")
    session.run(
        "python",
        "-m",
        "pytest",
        *(session.posargs or ["tests/e2e"]),
        env={"POPCON_E2E_NODE_PREFIX": str(E2E_NODE)},
    )


def _ensure_debs(session: nox.Session, packages: list[str]) -> None:
    """apt-get install what is missing, without letting the packages start their services."""
    missing = [
        name
        for name in packages
        if subprocess.run(
            ["dpkg-query", "-W", "-f=${Status}", name], capture_output=True, text=True
        ).stdout
        != "install ok installed"
    ]
    if not missing:
        return
    if os.geteuid() != 0:
        session.error(f"these Debian packages are needed (install them as root): {missing}")
    env = {"DEBIAN_FRONTEND": "noninteractive"}
    # Others may run apt on a shared machine: wait for its lock instead of failing.
    apt = ["apt-get", "-o", "DPkg::Lock::Timeout=300"]
    install = [*apt, "install", "-y", "-qq", "--no-install-recommends", *missing]
    # No daemon may start on install (the prometheus package would listen on *:9090).
    policy = Path("/usr/sbin/policy-rc.d")
    added_policy = not policy.exists()
    if added_policy:
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
    try:
        # Package lists may be missing or stale on a fresh machine: update, then retry.
        if subprocess.run(install, env={**os.environ, **env}).returncode != 0:
            session.run(*apt, "update", "-qq", external=True, env=env)
            session.run(*install, external=True, env=env)
    finally:
        if added_policy:
            policy.unlink()


@nox.session(python="3.11")
def reliability(session: nox.Session) -> None:
    """Fault matrix, load test, hostile input (tests_reliability/).

    Needs root (network namespaces, read-only mounts, a second user) and node + npm
    (the reference daemon, npm statsd@0.9.0, installed once under .nox/).
    """
    session.install(*TEST_DEPS, "hypothesis", ".")
    session.run(
        "python",
        "-m",
        "pytest",
        "tests_reliability",
        "-p",
        "no:cacheprovider",
        *session.posargs,
        env={"POPCON_STATSD_DIR": str(ROOT / ".nox" / "statsd-0.9.0")},
    )


# A one-node Slurm cluster and Open MPI, from Debian; PMIx for ``srun --mpi=pmix``.
HPC_DEBS = ["slurmctld", "slurmd", "slurm-client", "munge", "openmpi-bin", "libpmix-dev"]


@nox.session(python="3.11")
def hpc(session: nox.Session) -> None:
    """Real Slurm and Open MPI jobs on 127.0.0.1 (tests_hpc/); needs root for the daemons."""
    if os.geteuid() != 0:
        session.error("hpc needs root (munge, slurmctld and slurmd run as root)")
    _ensure_debs(session, HPC_DEBS)
    session.install(*TEST_DEPS, ".")
    session.run("python", "-m", "pytest", "tests_hpc", "-p", "no:cacheprovider", *session.posargs)


@nox.session(python="3.11")
def docs(session: nox.Session) -> None:
    """The manual (docs/, mkdocs.yml): --strict, so a broken link or anchor fails; the
    commands' --help in it comes from the installed package (docs/hooks/command_help.py)."""
    session.install("mkdocs==1.6.1", ".")
    out = ROOT / ".nox" / "site"
    session.run("mkdocs", "build", "--strict", "--site-dir", str(out))


@nox.session
def lint(session: nox.Session) -> None:
    """ruff (lint + format check) and mypy --strict on src/."""
    session.install("ruff", "mypy", "statsd", "importlib-metadata")
    paths = [
        "src",
        "tests",
        "tests_reliability",
        "tests_hpc",
        "benchmarks",
        "noxfile.py",
        "hatch_build.py",
        "docs/hooks",
    ]
    session.run("ruff", "check", *paths)
    session.run("ruff", "format", "--check", *paths)
    session.run("mypy", "--strict", "src")
