# What a forked child needs beyond the start-up module's own after-fork hook.
#
# Imported only by children forked by multiprocessing; plain forks never load it.

import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable


def after_fork_in_child(report_hook: "Callable[[], None]") -> None:
    # multiprocessing's fork and forkserver children end with os._exit(), which
    # skips atexit; they do run multiprocessing's own exit finalizers.
    mp_util = sys.modules.get("multiprocessing.util")
    if mp_util is not None:
        mp_util.register_after_fork(report_hook, _report_from_multiprocessing_exit)


def _report_from_multiprocessing_exit(callback: object) -> None:
    # Runs in a multiprocessing child after its finalizer registry was reset.
    mp_util = sys.modules.get("multiprocessing.util")
    if mp_util is not None:
        mp_util.Finalize(None, callback, exitpriority=-1000)
