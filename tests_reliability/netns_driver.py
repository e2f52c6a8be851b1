"""Runs inside a fresh network + mount namespace made by ``unshare --net --mount``.

The namespace has only a loopback interface, so nothing can leave the machine.
The driver sets it up (``lo`` up, optionally without 127.0.0.1: an IPv6-only
host), starts its own fake DNS server on port 53 and points
``/etc/resolv.conf`` at it (a bind mount private to this mount namespace),
starts UDP sinks on 127.0.0.1:8125 and [::1]:8125 and optional TCP servers on
port 8126, runs the jobs and writes what happened as JSON.

Spec (JSON file given as argv[1]):
    workdir, result   paths
    ipv4              keep 127.0.0.1 on lo (default true)
    dns               null, or {"listen": "127.0.0.1" | "::1",
                                "mode": "answer" | "blackhole" | "nxdomain",
                                "delay": seconds before answering,
                                "records": {name: {"A": [...], "AAAA": [...]}}}
    tcp               null, or {"mode": "read" | "noread" | "backlog-full", "host": ...}
    jobs              [{"name", "argv", "env": {key: hex bytes}, "repeat", "signal_after"}]
"""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

SINK_PORT = 8125
TCP_PORT = 8126


def sh(*args: str) -> None:
    subprocess.run(args, check=True)


def setup_network(spec: dict) -> None:
    sh("ip", "link", "set", "lo", "up")
    if not spec.get("ipv4", True):
        sh("ip", "addr", "del", "127.0.0.1/8", "dev", "lo")
    dns = spec.get("dns")
    resolv = os.path.join(spec["workdir"], f"resolv-{os.getpid()}.conf")
    with open(resolv, "w") as stream:
        if dns:
            stream.write(f"nameserver {dns.get('listen', '127.0.0.1')}\n")
        else:
            stream.write("# no name server in this namespace\n")
    sh("mount", "--bind", resolv, "/etc/resolv.conf")
    hosts = os.path.join(spec["workdir"], f"hosts-{os.getpid()}")
    with open(hosts, "w") as stream:
        stream.write("127.0.0.1 localhost\n::1 localhost ip6-localhost\n")
    sh("mount", "--bind", hosts, "/etc/hosts")


# -- a fake DNS server ---------------------------------------------------------------


class FakeDns:
    def __init__(self, config: dict) -> None:
        self.mode = config.get("mode", "answer")
        self.delay = float(config.get("delay", 0))
        self.records = {k.lower().rstrip("."): v for k, v in config.get("records", {}).items()}
        host = config.get("listen", "127.0.0.1")
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.bind((host, 53))
        self.queries = 0
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self) -> None:
        while True:
            try:
                query, peer = self.sock.recvfrom(4096)
            except OSError:
                return
            self.queries += 1
            if self.mode == "blackhole":
                continue  # never answer
            answer = self.answer(query)
            if answer is None:
                continue
            if self.delay:
                threading.Timer(self.delay, self.sock.sendto, (answer, peer)).start()
            else:
                self.sock.sendto(answer, peer)

    def answer(self, query: bytes) -> bytes | None:
        if len(query) < 12:
            return None
        (ident,) = struct.unpack("!H", query[:2])
        labels, offset = [], 12
        while offset < len(query) and query[offset]:
            length = query[offset]
            labels.append(query[offset + 1 : offset + 1 + length].decode("ascii", "replace"))
            offset += 1 + length
        question_end = offset + 5
        qtype, _qclass = struct.unpack("!HH", query[offset + 1 : question_end])
        question = query[12:question_end]
        name = ".".join(labels).lower()
        found = self.records.get(name)
        rcode = 3 if self.mode == "nxdomain" or found is None else 0
        answers = []
        if rcode == 0:
            wanted = {1: ("A", socket.AF_INET), 28: ("AAAA", socket.AF_INET6)}.get(qtype)
            if wanted:
                for address in found.get(wanted[0], []):
                    rdata = socket.inet_pton(wanted[1], address)
                    answers.append(struct.pack("!HHHIH", 0xC00C, qtype, 1, 60, len(rdata)) + rdata)
        header = struct.pack("!HHHHHH", ident, 0x8180 | rcode, 1, len(answers), 0, 0)
        return header + question + b"".join(answers)


# -- sinks ---------------------------------------------------------------------------


class UdpSink:
    def __init__(self, family: int, host: str) -> None:
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.bind((host, SINK_PORT))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)

    def drain(self, wait: float = 0.05) -> list[str]:
        self.sock.settimeout(wait)
        packets = []
        try:
            while True:
                packets.append(self.sock.recv(65535).hex())
        except (TimeoutError, socket.timeout):
            pass
        return packets


def make_sinks(spec: dict) -> dict[str, UdpSink]:
    sinks = {"v6": UdpSink(socket.AF_INET6, "::1")}
    if spec.get("ipv4", True):
        sinks["v4"] = UdpSink(socket.AF_INET, "127.0.0.1")
    return sinks


class TcpServer:
    def __init__(self, config: dict) -> None:
        self.mode = config.get("mode", "read")
        host = config.get("host", "127.0.0.1")
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.server = socket.socket(family, socket.SOCK_STREAM)
        self.server.bind((host, TCP_PORT))
        self.server.listen(0 if self.mode == "backlog-full" else 16)
        self.data: list[str] = []
        self.held: list[socket.socket] = []
        self.lock = threading.Lock()
        if self.mode == "backlog-full":
            # Fill the accept queue with connections that are never accepted.
            for _ in range(8):
                filler = socket.socket(family, socket.SOCK_STREAM)
                filler.setblocking(False)
                try:
                    filler.connect((host, TCP_PORT))
                except (BlockingIOError, OSError):
                    pass
                self.held.append(filler)
            return
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            if self.mode == "noread":
                self.held.append(conn)
                continue
            threading.Thread(target=self.read, args=(conn,), daemon=True).start()

    def read(self, conn: socket.socket) -> None:
        chunks = []
        with conn:
            conn.settimeout(10)
            try:
                while chunk := conn.recv(65536):
                    chunks.append(chunk)
            except OSError:
                pass
        with self.lock:
            self.data.append(b"".join(chunks).hex())

    def take(self) -> list[str]:
        time.sleep(0.05)
        with self.lock:
            data, self.data = self.data, []
        return data


# -- jobs ----------------------------------------------------------------------------


def run_job(job: dict, sinks: dict[str, UdpSink], tcp: TcpServer | None) -> list[dict]:
    env = {key: bytes.fromhex(value) for key, value in job.get("env", {}).items()}
    runs = []
    for _ in range(int(job.get("repeat", 1))):
        start = time.perf_counter()
        proc = subprocess.Popen(
            job["argv"],
            env={os.fsencode(k): v for k, v in env.items()},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=job.get("cwd"),
            start_new_session=True,  # a hung job is killed with all its descendants
        )
        if job.get("signal_after") is not None:
            time.sleep(float(job["signal_after"]))
            try:
                proc.send_signal(int(job.get("signal", signal.SIGINT)))
            except ProcessLookupError:
                pass
        try:
            stdout, stderr = proc.communicate(timeout=float(job.get("timeout", 60)))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            stdout, stderr = proc.communicate()
            runs.append(
                {
                    "rc": "timeout",
                    "stdout": stdout.decode("utf-8", "backslashreplace"),
                    "stderr": stderr.decode("utf-8", "backslashreplace"),
                    "seconds": -1,
                    "packets": {name: sink.drain() for name, sink in sinks.items()},
                    "tcp": [],
                }
            )
            continue
        seconds = time.perf_counter() - start
        runs.append(
            {
                "rc": proc.returncode,
                "stdout": stdout.decode("utf-8", "backslashreplace"),
                "stderr": stderr.decode("utf-8", "backslashreplace"),
                "seconds": seconds,
                "packets": {name: sink.drain() for name, sink in sinks.items()},
                "tcp": tcp.take() if tcp is not None and tcp.mode == "read" else [],
            }
        )
    return runs


def main() -> None:
    with open(sys.argv[1]) as stream:
        spec = json.load(stream)
    setup_network(spec)
    dns = FakeDns(spec["dns"]) if spec.get("dns") else None
    sinks = make_sinks(spec)
    tcp = TcpServer(spec["tcp"]) if spec.get("tcp") else None
    result = {"jobs": {}}
    for job in spec["jobs"]:
        result["jobs"][job["name"]] = run_job(job, sinks, tcp)
    result["dns_queries"] = dns.queries if dns else 0
    with open(spec["result"], "w") as stream:
        json.dump(result, stream)


if __name__ == "__main__":
    main()
