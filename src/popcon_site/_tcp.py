# The TCP transport (PYTHON_POPCONTEST_STATSD_PROTOCOL=tcp), through the statsd package.
#
# Costs the import of ``statsd`` (~15 ms) at exit: the price of a
# connection-oriented transport, chosen by the admin.  UDP never loads this.

TYPE_CHECKING = False
if TYPE_CHECKING:
    from popcon_site._resolve import Address


def send_tcp(address: "Address", lines: "list[str]", timeout: float) -> None:
    # All lines over one TCP connection, with the ``statsd`` package's TCP client.
    # Raises OSError when the server cannot be reached within ``timeout``.
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
                pipe.incr(line.rpartition(":")[0])
    finally:
        client.close()
