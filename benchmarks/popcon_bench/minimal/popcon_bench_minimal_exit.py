"""Exit half of a minimal popcon-site: the floor the bench compares popcon-site with.

Reads the configuration variables, lists the files of the modules imported since
start-up outside the standard library, sends the one datagram a process that
imported only the standard library sends.  No validation, no attribution.
"""

import os
import sys


def report(baseline: "frozenset[str]", seen: "set[str]") -> None:
    get = os.environ.get
    host = get("PYTHON_POPCONTEST_STATSD_HOST", "localhost")
    port = int(get("PYTHON_POPCONTEST_STATSD_PORT", "8125"))
    prefix = get("PYTHON_POPCONTEST_STATSD_PREFIX", "python_popcon.library_used")
    for name in ("PROTOCOL", "INCLUDE", "EXCLUDE", "RANK0_ONLY", "DEBUG"):
        get("PYTHON_POPCONTEST_" + name)
    stdlib = getattr(sys, "stdlib_module_names", frozenset())
    names = (set(sys.modules) | seen) - baseline
    files = {
        getattr(sys.modules.get(name), "__file__", None)
        for name in names
        if name.partition(".")[0] not in stdlib
    }
    files.discard(None)
    import _socket

    sock = _socket.socket(_socket.AF_INET, _socket.SOCK_DGRAM)
    sock.sendto(prefix.rpartition(".")[0].encode() + b".reports:1|c", (host, port))
    sock.close()
