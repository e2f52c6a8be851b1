"""popcon-site: which installed distributions do the processes of this environment import?

Importing this package does nothing by itself.  Reporting starts from the
start-up hook (``popcon_site.pth`` / ``popcon_site.start``) when
``PYTHON_POPCONTEST_ENABLE`` is true, or from an explicit :func:`activate`.
"""

from __future__ import annotations

__version__ = "1.0.0"
__all__ = ["activate", "setup_reporter"]


def activate() -> bool:
    """Start watching imports in this process and report at exit.

    For places the start-up hook does not reach (``python -S``, embedded
    interpreters).  Modules loaded before the call are the baseline and never
    count.  Reporting is configured by the ``PYTHON_POPCONTEST_*`` variables
    but does not require ``PYTHON_POPCONTEST_ENABLE``: calling this is the
    opt-in.  Returns True when reporting is active (also when it already was).
    Never raises.
    """
    from popcon_site._bootstrap import activate as _activate

    return _activate()


def setup_reporter() -> bool:
    """Same as :func:`activate`; the name ``popularity_contest.reporter`` used."""
    return activate()
