"""``popcon-site serve``: a statsd collector, a durable store and a page, in one process.

One thread reads UDP datagrams and TCP streams (``selectors``) and commits what it
counted at least once a second (``FLUSH_INTERVAL``); the page runs in a second
thread (``http.server``) and reads the store through its own connections.  The
standard library only: ``sqlite3``, ``selectors``, ``socket``, ``http.server``.
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import signal
import socket
import sqlite3
import sys
import threading
import time
from types import FrameType

from popcon_site import split_host_port
from popcon_site.cli._collector import (
    DEFAULT_MAX_NEW_NAMES,
    INTERNAL_ERROR,
    MAX_LINE,
    Collector,
)
from popcon_site.cli._output import EXIT_OK, CommandError
from popcon_site.cli._public import DEFAULT_K
from popcon_site.cli._store import SCHEMA_VERSION, StoreError, Writer, connect

HELP = "collect the counters in a local store and show them on a page (no other server needed)"

DEFAULT_STATSD = "127.0.0.1:8125"
DEFAULT_HTTP = "127.0.0.1:8080"
FLUSH_INTERVAL = 0.5  # seconds between commits: a SIGKILL loses at most this much
LOG_INTERVAL = 60.0  # seconds between two log lines about refused input
MAX_CONNECTIONS = 256  # TCP connections open at once; more are closed at once
IDLE_TIMEOUT = 30.0  # seconds a TCP connection may stay silent
_BURST = 256  # datagrams read per wake-up before the loop checks the clock


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", required=True, metavar="PATH", help="the store (SQLite file)")
    parser.add_argument(
        "--statsd",
        default=DEFAULT_STATSD,
        metavar="HOST:PORT",
        help=f"where to receive statsd lines, UDP and TCP (default: {DEFAULT_STATSD})",
    )
    parser.add_argument(
        "--http",
        default=DEFAULT_HTTP,
        metavar="HOST:PORT",
        help=f"where to serve the page (default: {DEFAULT_HTTP})",
    )
    parser.add_argument(
        "--site-dir",
        action="append",
        metavar="DIR",
        help="a site directory whose distributions the page lists as unused when no "
        "process imported them (repeat for several environments; default: the site "
        "directories of the environment serve runs in)",
    )
    parser.add_argument(
        "--public",
        metavar="HOST:PORT",
        help="also serve the public view alone here: only libraries at least --k processes "
        "imported in the window, without per-library dates (default: none; the page "
        "shows it at /public)",
    )
    parser.add_argument(
        "--k",
        type=int,
        default=DEFAULT_K,
        metavar="N",
        help=f"the public view's threshold (default: {DEFAULT_K}, as the recording rules)",
    )
    parser.add_argument(
        "--rcvbuf",
        type=int,
        default=0,
        metavar="BYTES",
        help="UDP receive buffer (SO_RCVBUF; the kernel caps it at net.core.rmem_max); "
        "default: the system's",
    )
    parser.add_argument(
        "--max-new-names",
        type=int,
        default=DEFAULT_MAX_NEW_NAMES,
        metavar="N",
        help="new library and namespace names accepted per UTC day "
        f"(default: {DEFAULT_MAX_NEW_NAMES}); lines with more are refused",
    )


def address(raw: str, option: str) -> tuple[str, int]:
    host, port_text = split_host_port(raw)
    if not host or port_text is None or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise CommandError(f"{option} {raw!r} must be HOST:PORT (e.g. 127.0.0.1:8125)")
    return host, int(port_text)


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _bind(kind: socket.SocketKind, where: tuple[str, int], option: str) -> socket.socket:
    sock = socket.socket(_family(where[0]), kind)
    try:
        if kind == socket.SOCK_STREAM:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(where)
        if kind == socket.SOCK_STREAM:
            sock.listen(128)
    except OSError as exc:
        sock.close()
        proto = "TCP" if kind == socket.SOCK_STREAM else "UDP"
        raise CommandError(
            f"cannot listen on {option} {where[0]}:{where[1]} ({proto}): {exc.strerror or exc}"
        ) from None
    sock.setblocking(False)
    return sock


_HELD: list[object] = []  # the open store file whose flock says "serve writes here"


def _hold_exclusively(path: str, db: sqlite3.Connection) -> None:
    """One serve per store: a second one would hand out the same name ids."""
    import fcntl  # SQLite locks with fcntl(); flock() is a separate lock on Linux

    handle = open(path, "rb")  # noqa: SIM115 (held open until the process ends)
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        db.close()
        raise CommandError(f"another popcon-site serve is writing {path}") from None
    _HELD.append(handle)


def _url(host: str, port: int) -> str:
    return f"http://{host if ':' not in host else f'[{host}]'}:{port}/"


def log(message: str) -> None:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    print(f"{stamp} popcon-site serve: {message}", file=sys.stderr, flush=True)


class _Stream:
    """One TCP connection: bytes not yet split into lines."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""
        self.skipping = False  # inside a line already refused as too long
        self.last = time.monotonic()


def run(args: argparse.Namespace) -> int:
    if args.max_new_names < 0:
        raise CommandError("--max-new-names must be 0 or more")
    if args.rcvbuf < 0:
        raise CommandError("--rcvbuf must be 0 (the system's) or more")
    if args.k < 1:
        raise CommandError("--k must be at least 1")
    statsd_at = address(args.statsd, "--statsd")
    http_at = address(args.http, "--http")
    public_at = None if args.public is None else address(args.public, "--public")
    site_dirs = [os.path.abspath(d) for d in args.site_dir or ()]
    for directory in site_dirs:
        if not os.path.isdir(directory):
            raise CommandError(f"--site-dir {directory} is not a directory")
    try:
        db = connect(args.db, write=True)
    except StoreError as exc:
        raise CommandError(str(exc)) from None
    _hold_exclusively(args.db, db)
    writer = Writer(db)
    collector = Collector(writer, args.max_new_names)
    udp = _bind(socket.SOCK_DGRAM, statsd_at, "--statsd")
    if args.rcvbuf:
        udp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, args.rcvbuf)
    tcp = _bind(socket.SOCK_STREAM, statsd_at, "--statsd")

    from popcon_site.cli._page import start_http

    servers = []
    for option, at, public_only in (("--http", http_at, False), ("--public", public_at, True)):
        if at is None:
            continue
        try:
            servers.append(start_http(at, args.db, args.k, public_only, site_dirs or None))
        except OSError as exc:
            for started_server in servers:
                started_server.shutdown()
            raise CommandError(
                f"cannot listen on {option} {at[0]}:{at[1]}: {exc.strerror or exc}"
            ) from None
    httpd = servers[0]
    stopping = threading.Event()

    def stop(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    page = _url(http_at[0], int(httpd.server_address[1]))
    started = {
        "db": args.db,
        "schema_version": SCHEMA_VERSION,
        "statsd": f"{statsd_at[0]}:{statsd_at[1]}",
        "protocols": ["udp", "tcp"],
        "http": page,
        "public": None if public_at is None else _url(*public_at),
        "k": args.k,
        "max_new_names": args.max_new_names,
        "udp_rcvbuf": udp.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF),  # Linux: doubled
    }
    if args.json:  # one line, printed once both servers listen
        print(json.dumps(started), flush=True)
    else:
        print(
            f"popcon-site serve: store {args.db} (schema {SCHEMA_VERSION}); statsd UDP and TCP "
            f"on {started['statsd']}; page {page}"
            + (f"; public view {started['public']}" if started["public"] else ""),
            flush=True,
        )
    sys.stdout.flush()
    try:
        _loop(udp, tcp, writer, collector, stopping)
    finally:
        for server in servers:
            server.shutdown()
        writer.flush()
        db.close()
        udp.close()
        tcp.close()
    log(f"stopped: {collector.accepted} lines counted, {sum(collector.refused.values())} refused")
    return EXIT_OK


def _loop(
    udp: socket.socket,
    tcp: socket.socket,
    writer: Writer,
    collector: Collector,
    stopping: threading.Event,
) -> None:
    selector = selectors.DefaultSelector()
    selector.register(udp, selectors.EVENT_READ, "udp")
    selector.register(tcp, selectors.EVENT_READ, "listen")
    streams: dict[int, _Stream] = {}
    next_flush = time.monotonic() + FLUSH_INTERVAL
    next_log = next_failure_log = 0.0
    logged = 0
    failing = ""  # the last commit error, logged once a minute while it lasts
    while not stopping.is_set():
        timeout = max(0.0, min(next_flush - time.monotonic(), FLUSH_INTERVAL))
        for key, _ in selector.select(timeout):
            try:
                if key.data == "udp":
                    _read_udp(udp, collector)
                elif key.data == "listen":
                    _accept(tcp, selector, streams)
                else:
                    _read_stream(streams[key.fd], selector, streams, collector)
            except Exception as exc:  # no known input gets here; a server keeps running
                log(f"error while reading ({type(exc).__name__}: {exc}); input refused")
                collector.refuse(INTERNAL_ERROR)
        now = time.monotonic()
        if now >= next_flush:
            try:
                writer.flush()
                if failing:
                    log("committing again")
                    failing = ""
            except Exception as exc:  # a full disk: keep counting, retry at the next tick
                if str(exc) != failing or now >= next_failure_log:
                    log(f"cannot commit to the store, will retry twice a second: {exc}")
                    failing, next_failure_log = str(exc), now + LOG_INTERVAL
            next_flush = now + FLUSH_INTERVAL
            for stream in [s for s in streams.values() if now - s.last > IDLE_TIMEOUT]:
                _close(stream, selector, streams)
            refused = sum(collector.refused.values())
            if refused != logged and now >= next_log:
                reasons = ", ".join(f"{n} {r}" for r, n in sorted(collector.refused.items()))
                log(f"refused {refused} items since start ({reasons})")
                logged, next_log = refused, now + LOG_INTERVAL
    for stream in list(streams.values()):
        _close(stream, selector, streams)
    selector.close()


def _read_udp(udp: socket.socket, collector: Collector) -> None:
    for _ in range(_BURST):
        try:
            data = udp.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:  # e.g. ICMP errors reported on the socket: nothing to read
            return
        collector.datagram(data)


def _accept(
    tcp: socket.socket, selector: selectors.BaseSelector, streams: dict[int, _Stream]
) -> None:
    try:
        conn, _ = tcp.accept()
    except OSError:
        return
    if len(streams) >= MAX_CONNECTIONS:
        conn.close()
        return
    conn.setblocking(False)
    stream = _Stream(conn)
    streams[conn.fileno()] = stream
    selector.register(conn, selectors.EVENT_READ, "stream")


def _read_stream(
    stream: _Stream,
    selector: selectors.BaseSelector,
    streams: dict[int, _Stream],
    collector: Collector,
) -> None:
    try:
        chunk = stream.sock.recv(65536)
    except (BlockingIOError, InterruptedError):
        return
    except OSError:
        chunk = b""
    stream.last = time.monotonic()
    if not chunk:  # the client closed: its last line may lack a newline
        if stream.buffer and not stream.skipping:
            collector.line(stream.buffer)
        _close(stream, selector, streams)
        return
    *lines, rest = (stream.buffer + chunk).split(b"\n")
    for line in lines:
        if stream.skipping:
            stream.skipping = False  # the end of a line already refused
            continue
        collector.line(line)
    if len(rest) > MAX_LINE:
        if not stream.skipping:
            collector.line(rest)  # refused as too large, once
        stream.skipping = True
        rest = b""
    stream.buffer = rest


def _close(stream: _Stream, selector: selectors.BaseSelector, streams: dict[int, _Stream]) -> None:
    streams.pop(stream.sock.fileno(), None)
    try:
        selector.unregister(stream.sock)
    except (KeyError, ValueError):
        pass
    stream.sock.close()
