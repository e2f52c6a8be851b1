"""Real listeners on the loopback that keep every byte popcon-site sends."""

from __future__ import annotations

import socket
import threading
import time


class UdpSink:
    """A real statsd-shaped UDP listener on 127.0.0.1 that keeps every datagram."""

    def __init__(self, family: int = socket.AF_INET, host: str = "127.0.0.1") -> None:
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
        self.port: int = self.sock.getsockname()[1]
        self.packets: list[bytes] = []

    def drain(self, wait: float = 0.3) -> list[bytes]:
        """Datagrams received so far; waits until ``wait`` seconds pass with nothing new."""
        self.sock.settimeout(wait)
        new = []
        try:
            while True:
                new.append(self.sock.recv(65535))
        except (TimeoutError, socket.timeout):
            pass
        self.packets += new
        return new

    def lines(self, wait: float = 0.3) -> list[str]:
        return [line for packet in self.drain(wait) for line in packet.decode("ascii").split("\n")]

    def close(self) -> None:
        self.sock.close()


class TcpCollector:
    """A real TCP statsd-style listener on 127.0.0.1 that keeps every byte of every connection.

    With ``read=False`` it accepts connections and never reads them (a stuck server).
    """

    def __init__(self, read: bool = True) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.server.getsockname()[1]
        self.data: list[bytes] = []
        self.read = read
        self.held: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            if not self.read:
                self.held.append(conn)
                continue
            chunks = []
            with conn:
                while chunk := conn.recv(65536):
                    chunks.append(chunk)
            self.data.append(b"".join(chunks))

    def wait_for(self, connections: int, timeout: float = 5) -> list[bytes]:
        """What was received once ``connections`` ended (or the timeout passed)."""
        deadline = time.monotonic() + timeout
        while len(self.data) < connections and time.monotonic() < deadline:
            time.sleep(0.01)
        return list(self.data)

    def close(self) -> None:
        self.server.close()
        for conn in self.held:
            conn.close()
