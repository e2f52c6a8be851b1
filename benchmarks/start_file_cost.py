"""What the start-up hook costs every Python 3.15 process, reporting off, as installed.

    python3.15 benchmarks/start_file_cost.py PTH_WHEEL BOTH_WHEEL [ROUNDS]

Standard library only: it runs under the interpreter it measures (`nox -s
start_file_cost`, and `nox -s bench`, run it inside the Debian sid chroot that
`nox -s tests_sid` builds). Three venvs of that interpreter, side by side,
`python -c pass` interleaved:

- no hook: nothing installed;
- the 3.9-3.17 wheel: what pip and uv install on 3.15, popcon_site.pth alone (a
  build from source on 3.15 holds the same files);
- .pth + .start: a wheel built with POPCON_SITE_HOOKS=both, for a site directory
  shared by several Python versions. The .start switches the .pth line off and runs
  its entry point, for which site imports pkgutil (and re, collections, enum...).
"""

from __future__ import annotations

import compileall
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import venv
import zipfile
from pathlib import Path


def make_env(root: Path, wheel: Path | None) -> str:
    venv.EnvBuilder(with_pip=False).create(root)
    python = str(root / "bin" / "python")
    if wheel is not None:
        site = Path(
            subprocess.run(
                [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
        )
        with zipfile.ZipFile(wheel) as archive:  # a pure wheel: unpacking it is installing it
            members = [m for m in archive.namelist() if ".data/" not in m]
            archive.extractall(site, members)
        compileall.compile_dir(str(site / "popcon_site"), quiet=1)
    return python


def run_once(python: str, environ: dict[str, str]) -> float:
    started = time.perf_counter_ns()
    pid = os.posix_spawn(python, [python, "-c", "pass"], environ)
    os.waitpid(pid, 0)
    return (time.perf_counter_ns() - started) / 1e6


def main() -> int:
    pth_wheel, both_wheel = (Path(arg).resolve() for arg in sys.argv[1:3])
    rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 301
    environ = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    with tempfile.TemporaryDirectory() as tmp:
        variants = {
            "no hook": make_env(Path(tmp, "none"), None),
            "3.9-3.17 wheel (.pth)": make_env(Path(tmp, "pth"), pth_wheel),
            "shared dir (.pth + .start)": make_env(Path(tmp, "both"), both_wheel),
        }
        times: dict[str, list[float]] = {name: [] for name in variants}
        for round_index in range(rounds + 1):  # the first round warms the page cache
            order = list(variants)
            random.shuffle(order)
            for name in order:
                elapsed = run_once(variants[name], environ)
                if round_index:
                    times[name].append(elapsed)
    reference = times["no hook"]
    print(f"python -c pass, PYTHON_POPCONTEST_ENABLE unset, {rounds} interleaved rounds")
    print(f"python: {sys.version.split()[0]} ({sys.executable})")
    print(f"{'variant':30} {'median ms':>10} {'paired ratio [25th..75th pct]':>32}")
    for name, values in times.items():
        ratios = [a / b for a, b in zip(values, reference)]
        q1, _, q3 = statistics.quantiles(ratios, n=4)
        spread = f"{statistics.median(ratios):.3f} [{q1:.3f}..{q3:.3f}]"
        print(f"{name:30} {statistics.median(values):10.2f} {spread:>32}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
