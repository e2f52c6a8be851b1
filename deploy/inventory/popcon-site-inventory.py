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
the default prefix.  It uses popcon-site's own configuration reader and wire format
(popcon_site._report), so popcon-site must be installed in that environment, as it is
wherever there is something to count.  It exits 0 after sending, 1 when the
configuration is invalid or the server cannot be reached.
"""

from __future__ import annotations

import os
import socket
import sys
import sysconfig
from importlib import metadata

from popcon_site import normalize_name
from popcon_site._report import ConfigError, config_from_environ, datagrams, installed_gauge_lines

OWN = "popcon-site"


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
        if raw and normalize_name(str(raw)) != OWN:
            names.add(normalize_name(str(raw)))
    return sorted(names)


def main(argv: list[str]) -> int:
    try:
        config = config_from_environ()
    except ConfigError as exc:
        print(f"popcon-site-inventory: {exc}", file=sys.stderr)
        return 1
    lines = installed_gauge_lines(config.prefix, installed(site_dirs()))
    if "--print" in argv:
        print("\n".join(lines))
        return 0
    host, port, protocol = config.host, config.port, config.protocol
    if host == "localhost":
        host = "127.0.0.1"  # as popcon-site does
    try:
        if protocol == "tcp":
            with socket.create_connection((host, port), timeout=5) as conn:
                conn.sendall(("\n".join(lines) + "\n").encode("ascii"))
        else:
            family, _, _, _, address = socket.getaddrinfo(host, port, 0, socket.SOCK_DGRAM)[0]
            with socket.socket(family, socket.SOCK_DGRAM) as sock:
                for payload in datagrams(lines):
                    sock.sendto(payload, address)
    except OSError as exc:
        print(f"popcon-site-inventory: cannot send to {host}:{port}: {exc}", file=sys.stderr)
        return 1
    print(f"popcon-site-inventory: sent {len(lines)} installed distributions to {host}:{port}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
