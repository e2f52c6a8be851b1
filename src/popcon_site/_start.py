"""PEP 829 start-up entry point (Python 3.15+), listed in ``popcon_site.start``.

On 3.15+ this runs instead of the import line of ``popcon_site.pth``; it does
the same cheap check.  Start-up prints any exception an entry point raises,
so this must not raise.
"""

from __future__ import annotations

import os


def run() -> None:
    if os.environ.get("PYTHON_POPCONTEST_ENABLE", "").strip().lower() in ("1", "true", "yes", "on"):
        from popcon_site._bootstrap import activate

        activate()
