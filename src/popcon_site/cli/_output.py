"""What every command shares: exit statuses, errors, tables and JSON."""

from __future__ import annotations

import json
import sys

EXIT_OK, EXIT_EMPTY, EXIT_ERROR = 0, 1, 2


class CommandError(Exception):
    """A bad input or an unreachable server: one line to stderr, exit status 2."""

    status = EXIT_ERROR


class NothingToShow(CommandError):
    """The question was fine but has no answer (no reports in the window): exit status 1."""

    status = EXIT_EMPTY


def one_line(text: str) -> str:
    return " ".join(text.split())


def print_json(data: object) -> None:
    print(json.dumps(data, indent=2))


def table(rows: list[list[str]], right: set[int] | None = None, indent: str = "  ") -> str:
    """Columns padded to their widest cell; ``right`` are right-aligned column numbers."""
    right = right or set()
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [
            cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
            for i, cell in enumerate(row)
        ]
        lines.append((indent + "  ".join(cells)).rstrip())
    return "\n".join(lines)


def age(seconds: float) -> str:
    seconds = max(0.0, seconds)
    for unit, size in (("day", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            value = int(seconds // size)
            return f"{value} {unit}{'s' if unit == 'day' and value > 1 else ''} ago"
    return f"{int(seconds)} s ago"


def size(n: int | None) -> str:
    if n is None:
        return "?"
    value = float(n)
    for unit in ("B", "KiB", "MiB"):
        if value < 1024:
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


BAR_WIDTH = 30
_EIGHTHS = " ▏▎▍▌▋▊▉█"


def bar(fraction: float, width: int = BAR_WIDTH, blocks: bool = True) -> str:
    """A horizontal bar in eighths of a character, or in ``#`` without ``blocks``."""
    fraction = min(max(fraction, 0.0), 1.0)
    if not blocks:
        return "#" * round(fraction * width)
    eighths = round(fraction * width * 8)
    return "█" * (eighths // 8) + (_EIGHTHS[eighths % 8] if eighths % 8 else "")


def can_draw_blocks() -> bool:
    """Whether stdout can encode the block characters (not with LANG=C on old Pythons)."""
    try:
        "█▏".encode(getattr(sys.stdout, "encoding", None) or "ascii")
    except (UnicodeEncodeError, LookupError):
        return False
    return True
