"""The kernel's after-cell hook, for a cell without any import, by modules loaded.

    PYTHON_POPCONTEST_ENABLE=1 python benchmarks/cell_cost.py [ROUNDS]

Needs IPython (pandas, when installed, adds the last row). The interpreter that runs it
must import this checkout's popcon_site (PYTHONPATH=src). An InteractiveShell, not a
kernel, runs the cells; our startup file's part is `exclude_kernel_machinery(shell)`,
then one cell runs (the first after-cell checkpoint reads metadata and the index). Each
row then times ROUNDS blocks of 1,000 calls of `after_cell` with the result of a cell
`x = 1`, as IPython's post_run_cell event calls it, and prints the median per call with
the number of modules loaded. Send it nowhere that matters: the checkpoint after the
first cell sends `reports` (PYTHON_POPCONTEST_STATSD_PORT to an unused port).
"""

from __future__ import annotations

import importlib
import statistics
import sys
import time

STDLIB_MORE = [
    "asyncio",
    "email.mime.multipart",
    "http.server",
    "xml.dom.minidom",
    "logging.handlers",
    "unittest.mock",
    "multiprocessing.pool",
    "concurrent.futures",
    "sqlite3",
    "decimal",
    "csv",
    "zipfile",
    "tarfile",
    "ssl",
    "urllib.request",
    "xmlrpc.client",
    "ctypes",
    "difflib",
    "pdb",
    "doctest",
    "argparse",
    "statistics",
    "fractions",
    "uuid",
]


def per_call(after_cell: object, result: object, rounds: int) -> float:
    blocks = []
    for _ in range(rounds):
        start = time.perf_counter_ns()
        for _ in range(1000):
            after_cell(result)  # type: ignore[operator]
        blocks.append((time.perf_counter_ns() - start) / 1000)
    return statistics.median(blocks) / 1000  # us


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 21
    from IPython.core.interactiveshell import InteractiveShell

    import popcon_site
    from popcon_site._ipython import after_cell, exclude_kernel_machinery

    shell = InteractiveShell.instance()
    exclude_kernel_machinery(shell)
    assert popcon_site.current() is not None, "set PYTHON_POPCONTEST_ENABLE=1"
    shell.run_cell("y = 0")
    result = shell.run_cell("x = 1")
    print(f"# Python {sys.version.split()[0]}, {rounds} blocks of 1,000 calls, median per call")
    print(
        f"IPython shell               {len(sys.modules):5d} modules  {per_call(after_cell, result, rounds):6.1f} us"
    )
    for name in STDLIB_MORE:
        importlib.import_module(name)
    shell.run_cell("z = 2")  # the checkpoint that takes them in, as after a cell
    print(
        f"+ {len(STDLIB_MORE)} stdlib packages        {len(sys.modules):5d} modules  {per_call(after_cell, result, rounds):6.1f} us"
    )
    try:
        importlib.import_module("pandas")
    except ImportError:
        return
    shell.run_cell("w = 3")
    print(
        f"+ pandas                    {len(sys.modules):5d} modules  {per_call(after_cell, result, rounds):6.1f} us"
    )


if __name__ == "__main__":
    main()
