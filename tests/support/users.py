"""Running a command as another, unprivileged user (needs root and setpriv)."""

from __future__ import annotations

import subprocess
from collections.abc import Mapping

NOBODY = 65534
AS_NOBODY = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]


def as_nobody(
    *command: str, environ: Mapping[str, str], timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*AS_NOBODY, *command], capture_output=True, text=True, env=dict(environ), timeout=timeout
    )
