"""A module tree as Spack, EasyBuild or Lmod lay it out, used from a real Slurm job.

The cluster's Python (a venv with only the wheel) is the "python" module; each package
is installed from PyPI into a prefix of its own, and the job script puts each prefix's
``lib/pythonX.Y/site-packages`` on ``PYTHONPATH``, as ``module load py-...`` does.
"""

from __future__ import annotations

import shlex
from collections import Counter
from pathlib import Path

from slurm_cluster import Cluster

from support.envs import enabled, make_env
from support.sinks import UdpSink

# Spack-like prefixes, one per package: a package with a C extension (yaml), one whose
# module name is not its distribution's (dateutil), a single-file module.
PACKAGES = {
    "py-pyyaml": "pyyaml",
    "py-python-dateutil": "python-dateutil",
    "py-typing-extensions": "typing_extensions",
}


def test_packages_in_their_own_prefixes_count_under_their_names(
    cluster: Cluster, wheel: Path, sink: UdpSink, home: Path, tmp_path: Path
) -> None:
    core = make_env(tmp_path / "python-3")
    core.install(str(wheel))
    version = core.site_packages.parent.name  # pythonX.Y
    modules = ["yaml", "dateutil", "typing_extensions"]
    found = core.run(
        "-c", f"import importlib.util as u; print([m for m in {modules} if u.find_spec(m)])"
    )
    assert found.stdout.strip() == "[]", "the tree's modules must come only from the tree"
    tree = tmp_path / "opt" / "linux-x86_64"
    site_dirs = []
    for module, requirement in PACKAGES.items():
        prefix = tree / module
        core.install("--no-deps", "--prefix", str(prefix), requirement)
        site_dirs.append(prefix / "lib" / version / "site-packages")
        assert site_dirs[-1].is_dir()
    # What `module load` does to the job's environment, line by line.
    script = "\n".join(
        f'export PYTHONPATH={shlex.quote(str(d))}"${{PYTHONPATH:+:$PYTHONPATH}}"' for d in site_dirs
    )
    imports = "import yaml, dateutil.parser, typing_extensions"
    script += f"\n{shlex.quote(str(core.python))} -c {shlex.quote(imports)}"
    job = cluster.submit(
        "-n", "1", "-o", str(tmp_path / "job.out"), script=script, env=enabled(sink, home)
    )
    assert cluster.wait(job) == {job: "COMPLETED"}, (tmp_path / "job.out").read_text()
    assert Counter(sink.lines()) == {
        "python_popcon.library_used.pyyaml:1|c": 1,
        "python_popcon.library_used.python-dateutil:1|c": 1,
        "python_popcon.library_used.typing-extensions:1|c": 1,
        "python_popcon.reports:1|c": 1,
    }
