"""What PEP 829's .start file costs every Python 3.15+ process, reporting off.

    python3.15 benchmarks/start_file_cost.py WHEEL [ROUNDS]

Standard library only: it runs under the interpreter it measures (`nox -s bench`
runs it inside the Debian sid chroot that `nox -s tests_sid` builds). Three venvs
of that interpreter, side by side, `python -c pass` interleaved:

- no hook: nothing installed;
- .pth only: the wheel installed, popcon_site.start deleted (what README advises on
  3.15-3.17, where .pth import lines still run);
- as installed: popcon_site.pth and popcon_site.start.

To run an entry point, site imports pkgutil (and re, collections, enum...), so the
.start file costs what that import costs, whatever the entry point does.
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


def make_env(root: Path, wheel: Path | None, keep_start: bool) -> str:
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
        if not keep_start:
            (site / "popcon_site.start").unlink()
        compileall.compile_dir(str(site / "popcon_site"), quiet=1)
    return python


def run_once(python: str, environ: dict[str, str]) -> float:
    started = time.perf_counter_ns()
    pid = os.posix_spawn(python, [python, "-c", "pass"], environ)
    os.waitpid(pid, 0)
    return (time.perf_counter_ns() - started) / 1e6


def main() -> int:
    wheel = Path(sys.argv[1]).resolve()
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 301
    environ = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    with tempfile.TemporaryDirectory() as tmp:
        variants = {
            "no hook": make_env(Path(tmp, "none"), None, False),
            ".pth only (.start deleted)": make_env(Path(tmp, "pth"), wheel, False),
            "as installed (.pth + .start)": make_env(Path(tmp, "both"), wheel, True),
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
