"""What the end-to-end suites share: one measured environment, and running many processes.

``e2e_env`` is registered by tests/conftest.py (pytest_plugins) and built once per run.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from collections import Counter
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from support.envs import Env, base_environ, make_env, reporting_to

# Pinned, so that what each import statement pulls in stays exactly as asserted below.
# Dotted (ruamel.yaml, zope.interface), underscored (typing_extensions) and dashed
# (charset-normalizer) distribution names, and import names unlike the distribution's.
PACKAGES = [
    "pyyaml==6.0.4",
    "ruamel.yaml==0.19.1",
    "zope.interface==8.7",
    "typing_extensions==4.16.0",
    "charset-normalizer==3.5.3",
    "msgpack==1.2.4",
]

# What each snippet imports, as the normalized distribution names sent for it.
IMPORTS = {
    "import yaml": {"pyyaml"},
    "import ruamel.yaml": {"ruamel-yaml"},
    "import zope.interface, charset_normalizer": {"zope-interface", "charset-normalizer"},
    "import typing_extensions": {"typing-extensions"},
    "import msgpack": {"msgpack"},
    "import typing_extensions, msgpack, yaml": {"typing-extensions", "msgpack", "pyyaml"},
    "import yaml, ruamel.yaml, zope.interface, charset_normalizer, typing_extensions": {
        "pyyaml",
        "ruamel-yaml",
        "zope-interface",
        "charset-normalizer",
        "typing-extensions",
    },
    "pass": set(),
}

# The namespace prefix of the shipped mapping (a JupyterHub namespace's processes).
NAMESPACE = "jhub-prod"
NS_PREFIX = f"python_popcon.namespace.{NAMESPACE}.library_used"


@pytest.fixture(scope="session")
def e2e_env(tmp_path_factory: pytest.TempPathFactory, wheel: Path) -> Env:
    """A venv with the built wheel and PACKAGES, indexed with `popcon-site index --system`."""
    env = make_env(tmp_path_factory.mktemp("e2e") / "venv")
    env.install(str(wheel), *PACKAGES)
    subprocess.run(
        [str(env.root / "bin" / "popcon-site"), "index", "--system"],
        check=True,
        capture_output=True,
        env=base_environ(),
    )
    return env


def reporting_environ(home: Path, port: int, **extra: str) -> dict[str, str]:
    """A process of the measured environment, reporting to 127.0.0.1:port (debug mode)."""
    return reporting_to(port, home, PYTHON_POPCONTEST_DEBUG="1", **extra)


def run_processes(
    env: Env, snippets: Iterable[str], environ: Mapping[str, str], homes: Path | None = None
) -> None:
    """Run each snippet as its own interpreter, four at a time; each must say it sent.

    ``homes``: each process is a user of its own (issue 23: a user is a cache directory,
    here a new home under ``homes``) with user counters on, so that it sends
    library_users and users lines exactly as it sends library_used and reports.
    """

    def one(code: str) -> tuple[str, subprocess.CompletedProcess[str]]:
        own = dict(environ)
        if homes is not None:
            homes.mkdir(exist_ok=True)
            home = tempfile.mkdtemp(prefix="user-", dir=homes)
            own |= {"HOME": home, "XDG_CACHE_HOME": f"{home}/.cache"}
            own["PYTHON_POPCONTEST_USERS"] = "1"
        return code, env.run("-c", code, env=own)

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(one, snippets))
    for code, proc in results:
        assert proc.returncode == 0, (code, proc.stderr)
        assert re.fullmatch(r"popcon-site: sent .* \+ reports to \S+ over \w+.*\n", proc.stderr), (
            code,
            proc.stderr,
        )


def expected_counts(plan: Mapping[str, int]) -> Counter[str]:
    """{library: processes that imported it} for a plan of {snippet: how many processes}."""
    counts: Counter[str] = Counter()
    for code, times in plan.items():
        for library in IMPORTS[code]:
            counts[library] += times
    return counts


def installed_distributions(env: Env) -> set[str]:
    """Normalized names of the env's distributions but popcon-site, read from dist-info."""
    names = set()
    for metadata in env.site_packages.glob("*.dist-info/METADATA"):
        for line in metadata.read_text(errors="replace").splitlines():
            if line.startswith("Name:"):
                names.add(re.sub(r"[-_.]+", "-", line[5:].strip()).lower())
                break
    names.discard("popcon-site")
    return names


def snippets(plan: Mapping[str, int]) -> list[str]:
    return [code for code, times in plan.items() for _ in range(times)]
