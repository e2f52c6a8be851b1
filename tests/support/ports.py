"""One free port."""

from __future__ import annotations

import socket


def free_port(kind: int = socket.SOCK_STREAM, host: str = "127.0.0.1") -> int:
    """A port free on ``host`` for ``kind`` and for the other protocol too.

    Servers such as the statsd daemon bind one number for both UDP and TCP.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    other = socket.SOCK_DGRAM if kind == socket.SOCK_STREAM else socket.SOCK_STREAM
    while True:
        with socket.socket(family, kind) as probe:
            probe.bind((host, 0))
            port = int(probe.getsockname()[1])
        try:
            with socket.socket(family, other) as probe:
                probe.bind((host, port))
        except OSError:
            continue
        return port
