#!/usr/bin/env python3
"""Send the list of distributions installed in this environment, as statsd gauges.

popcon-site counts what processes import; this tells the pipeline what is installed,
so that a dashboard can show what is installed and never imported.  Run it with the
environment's own interpreter, after every install or upgrade and at least weekly
(the statsd_exporter mapping expires an installed library after 8 days):

    PYTHON_POPCONTEST_ENABLE=0 /opt/conda/bin/python popcon-site-inventory.py
    /opt/conda/bin/python popcon-site-inventory.py --print    # only print the lines

(PYTHON_POPCONTEST_ENABLE=0, so that this run is not itself counted as a process.)
It reads the same PYTHON_POPCONTEST_STATSD_* variables as popcon-site (not
PYTHON_POPCONTEST_ENABLE: running it is the opt-in) and sends, for each distribution
in the environment's site-packages, except popcon-site itself:

    <PARENT>.library_installed.<name>:1|g

where <name> is the PEP 503 normalized name and <PARENT> is the prefix without its
last segment, like the `reports` counter: `python_popcon.library_installed.numpy` for
the default prefix.  It needs only the standard library (Python 3.9+).  It exits 0
after sending, 1 when the configuration is invalid or the server cannot be reached.
"""

from __future__ import annotations

import os
import re
import socket
import sys
import sysconfig
from importlib import metadata

DEFAULT_PREFIX = "python_popcon.library_used"
MAX_DATAGRAM = 512
_PREFIX = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*")
_NAME = re.compile(r"[a-z0-9]([a-z0-9-]{0,198}[a-z0-9])?")
OWN = "popcon-site"


def normalize(name: str) -> str:
    """PEP 503: lower case, each run of -, _ and . becomes one -."""
    return re.sub(r"[-_.]+", "-", name).lower()


def site_dirs() -> list[str]:
    paths = sysconfig.get_paths()
    found = []
    for key in ("purelib", "platlib"):
        path = os.path.normpath(paths[key])
        if path not in found and os.path.isdir(path):
            found.append(path)
    return found


def installed(dirs: list[str]) -> list[str]:
    names = set()
    for dist in metadata.distributions(path=dirs):
        raw = dist.metadata["Name"] if dist.metadata else None
        if not raw:
            continue
        name = normalize(str(raw))
        if name != OWN and _NAME.fullmatch(name):
            names.add(name)
    return sorted(names)


def gauge_lines(prefix: str, names: list[str]) -> list[str]:
    parent, dot, _last = prefix.rpartition(".")
    base = f"{parent}{dot}library_installed"
    return [f"{base}.{name}:1|g" for name in names]


def datagrams(lines: list[str]) -> list[bytes]:
    """Lines joined with newlines, at most MAX_DATAGRAM bytes each, as popcon-site does."""
    payloads: list[str] = []
    for line in lines:
        if payloads and len(payloads[-1]) + 1 + len(line) < MAX_DATAGRAM:
            payloads[-1] += "\n" + line
        else:
            payloads.append(line)
    return [payload.encode("ascii") for payload in payloads]


def main(argv: list[str]) -> int:
    env = os.environ
    host = env.get("PYTHON_POPCONTEST_STATSD_HOST", "localhost").strip().strip("[]")
    port_text = env.get("PYTHON_POPCONTEST_STATSD_PORT", "8125").strip()
    prefix = env.get("PYTHON_POPCONTEST_STATSD_PREFIX", DEFAULT_PREFIX).strip()
    protocol = env.get("PYTHON_POPCONTEST_STATSD_PROTOCOL", "udp").strip().lower()
    if not (port_text.isdigit() and 0 < int(port_text) < 65536):
        print(f"popcon-site-inventory: bad port {port_text!r}", file=sys.stderr)
        return 1
    if not _PREFIX.fullmatch(prefix) or protocol not in ("udp", "tcp"):
        print("popcon-site-inventory: bad prefix or protocol", file=sys.stderr)
        return 1
    lines = gauge_lines(prefix, installed(site_dirs()))
    if "--print" in argv:
        print("\n".join(lines))
        return 0
    if host == "localhost":
        host = "127.0.0.1"  # as popcon-site does
    try:
        if protocol == "tcp":
            with socket.create_connection((host, int(port_text)), timeout=5) as conn:
                conn.sendall(("\n".join(lines) + "\n").encode("ascii"))
        else:
            family, _, _, _, address = socket.getaddrinfo(
                host, int(port_text), 0, socket.SOCK_DGRAM
            )[0]
            with socket.socket(family, socket.SOCK_DGRAM) as sock:
                for payload in datagrams(lines):
                    sock.sendto(payload, address)
    except OSError as exc:
        print(f"popcon-site-inventory: cannot send to {host}:{port_text}: {exc}", file=sys.stderr)
        return 1
    print(f"popcon-site-inventory: sent {len(lines)} installed distributions to {host}:{port_text}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
