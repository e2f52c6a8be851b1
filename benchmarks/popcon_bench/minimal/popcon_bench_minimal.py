"""Start-up half of a minimal popcon-site: the floor the bench compares popcon-site with.

Imported by the shipped `.pth` check in a venv without popcon-site.  It does only what
any design of this kind must: note what is loaded, put a finder first in
sys.meta_path that notes every name asked for, register an exit hook.  No guards, no
validation, no fork or subinterpreter handling.
"""

import atexit
import sys

baseline = frozenset(sys.modules)


class Watcher:
    __slots__ = ("seen",)

    def __init__(self) -> None:
        self.seen: set[str] = set()

    def find_spec(self, name: str, path: object = None, target: object = None) -> None:
        self.seen.add(name)


watcher = Watcher()
sys.meta_path.insert(0, watcher)


def _at_exit() -> None:
    import popcon_bench_minimal_exit

    popcon_bench_minimal_exit.report(baseline, watcher.seen)
    sys.meta_path.remove(watcher)


atexit.register(_at_exit)
