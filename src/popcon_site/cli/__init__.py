"""The admin's command line: see what popcon-site does, and what the counts say.

One module per command (``status``, ``which``, ``watch``, ``index`` look at this
environment; ``unused`` and ``top`` ask Prometheus).  Each defines ``HELP``,
``add_arguments(parser)`` and ``run(args) -> int``.  Every command prints a table,
or JSON with ``--json``.  Exit statuses: 0 done; 1 nothing to show (``which``: a
module was not found; ``unused``/``top``: no process reported in the window); 2 bad
input or an unreachable server, with a one-line reason on stderr.  ``watch`` exits
with the command's own status.

This process never reports itself: it is the admin's tool, not a use of the
environment's libraries (it imports ``importlib-metadata``, which would otherwise
be counted at every run).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import NoReturn

import popcon_site
from popcon_site.cli._output import EXIT_ERROR, CommandError, one_line

COMMANDS = ("status", "which", "watch", "index", "unused", "top", "serve", "sweep")


def run(argv: list[str]) -> int:
    popcon_site.stop_reporting()  # the admin's tool is not a use of the environment
    args = _parser().parse_args(argv)
    try:
        return int(args.command_module.run(args))
    except CommandError as exc:
        print(f"popcon-site: {one_line(str(exc))}", file=sys.stderr)
        return exc.status
    except KeyboardInterrupt:
        print("popcon-site: interrupted", file=sys.stderr)
        return 130


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (the usage stays available with --help)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_ERROR, f"{self.prog}: {one_line(message)} (see --help)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="popcon-site",
        description="Which installed distributions do this environment's processes import?",
        epilog="Exit status: 0 done, 1 nothing found, 2 bad input or unreachable server; "
        "watch exits with the command's status.",
    )
    parser.add_argument(
        "--version", action="version", version=f"popcon-site {popcon_site.__version__}"
    )
    commands = parser.add_subparsers(
        required=True, metavar="COMMAND", dest="command_name", parser_class=_Parser
    )
    for name in COMMANDS:
        module = importlib.import_module(f"popcon_site.cli.{name}")
        sub = commands.add_parser(name, help=module.HELP, description=module.HELP)
        sub.add_argument("--json", action="store_true", help="machine-readable output")
        module.add_arguments(sub)
        sub.set_defaults(command_module=module)
    return parser
