"""MkDocs hook: ``<!-- help: COMMAND -->`` becomes that command's live ``--help``.

The reference never drifts from the code: the text is what ``popcon-site COMMAND
--help`` prints when the manual is built (80 columns, the installed package).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from typing import Any

_MARKER = re.compile(r"<!-- help: ([a-z]*) -->")


def _help(command: str) -> str:
    argv = [sys.executable, "-m", "popcon_site", *([command] if command else []), "--help"]
    env = {**os.environ, "COLUMNS": "80", "PYTHON_POPCONTEST_ENABLE": ""}
    done = subprocess.run(argv, capture_output=True, text=True, env=env, check=True)
    return done.stdout.rstrip()


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    shown = "popcon-site {} --help"
    return _MARKER.sub(
        lambda m: f"```\n$ {shown.format(m.group(1)).replace('  ', ' ')}\n{_help(m.group(1))}\n```",
        markdown,
    )
