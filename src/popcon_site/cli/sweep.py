"""``popcon-site sweep``: send what killed processes of this user recorded, and remove it.

For a Slurm epilog (as the job's user), cron or a systemd timer.  Each record whose
lock can be taken belongs to a dead process: it is attributed in that process's
environment, sent as its exit report would have been, and removed; live processes'
records are left alone.  Only the calling user's records: as root too (a record is
another user's configuration and site directories; root runs it as each user).
"""

from __future__ import annotations

import argparse

from popcon_site import _sweep
from popcon_site.cli._output import EXIT_OK, print_json

HELP = "send and remove the records of this user's killed processes on this node"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--limit", type=int, default=10000, help="records to send at most (default 10000)"
    )
    parser.add_argument(
        "--dir",
        action="append",
        metavar="DIR",
        help="sweep this directory only (repeatable); default: $XDG_RUNTIME_DIR/popcon-site, "
        "/run/user/UID/popcon-site and /dev/shm/popcon-site-UID",
    )


def run(args: argparse.Namespace) -> int:
    said = _sweep.sweep(build=True, limit=args.limit, look=1 << 30, dirs=args.dir)
    if args.json:
        print_json({"swept": said})
    else:
        for line in said:
            print(line)
    return EXIT_OK
