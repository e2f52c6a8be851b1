"""What goes on the wire: metric lines, datagrams, and the two transports.

Only ``<name>:1|c`` lines ever leave the process.  Every distribution name is
checked against ``[a-z0-9-]`` right before it is written, whatever the index
said, so metadata cannot inject a statsd line.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable

    from popcon_site._resolve import Address

# The statsd client's pipeline default: a payload that fits any sane MTU.
MAX_DATAGRAM = 512
MAX_NAME = 200  # PyPI has no longer names; caps what one line can cost.

_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-")


def is_safe_name(name: str) -> bool:
    """True for a normalized name that can only ever be one metric component."""
    return (
        0 < len(name) <= MAX_NAME
        and set(name) <= _NAME_CHARS
        and name[0] != "-"
        and name[-1] != "-"
    )


def counter_lines(prefix: str, reports_name: str, names: Iterable[str]) -> list[str]:
    """One ``+1`` counter per distribution (sorted), then the per-process ``reports``."""
    lines = [f"{prefix}.{name}:1|c" for name in sorted(set(names)) if is_safe_name(name)]
    lines.append(f"{reports_name}:1|c")
    return lines


def datagrams(lines: list[str], max_size: int = MAX_DATAGRAM) -> list[bytes]:
    """Join lines into payloads exactly as ``statsd``'s UDP pipeline does.

    A line starts a new datagram when ``len(data) + 1 + len(line) >= max_size``.
    """
    if not lines:
        return []
    payloads = []
    data = lines[0]
    for line in lines[1:]:
        if len(line) + len(data) + 1 >= max_size:
            payloads.append(data)
            data = line
        else:
            data += "\n" + line
    payloads.append(data)
    return [payload.encode("ascii") for payload in payloads]


def send_udp(address: Address, payloads: list[bytes]) -> int:
    """Send each payload; returns how many the kernel accepted.  Never blocks."""
    import _socket

    family, sockaddr = address
    sent = 0
    sock = _socket.socket(family, _socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        for payload in payloads:
            try:
                sock.sendto(payload, sockaddr)
                sent += 1
            except OSError:
                pass
    finally:
        sock.close()
    return sent


def send_tcp(address: Address, lines: list[str], timeout: float) -> None:
    """Send all lines over one TCP connection with the ``statsd`` TCP client.

    Raises OSError when the server cannot be reached within ``timeout``.
    """
    import _socket

    from statsd import TCPStatsClient

    family, sockaddr = address
    client = TCPStatsClient(
        host=str(sockaddr[0]),
        port=int(str(sockaddr[1])),
        timeout=max(timeout, 0.001),
        ipv6=family == _socket.AF_INET6,
    )
    try:
        with client.pipeline() as pipe:
            for line in lines:
                stat, _, _value = line.rpartition(":")
                pipe.incr(stat)
    finally:
        client.close()
