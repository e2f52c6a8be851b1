"""``popcon-site watch -- COMMAND``: run a command with reporting pointed at a local
listener, then print what its processes sent."""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

from popcon_site import DEFAULT_PREFIX, ENV_ENABLE, ENV_HOST, ENV_PORT, ENV_PREFIX, ENV_PROTOCOL
from popcon_site._report import ConfigError, parse_lines, parse_prefix, reports_name_for
from popcon_site.cli._output import CommandError

HELP = "run a command with reporting pointed at a local listener; print what its processes sent"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-o",
        "--output",
        metavar="FILE",
        help="write the report to FILE, apart from the command's own output",
    )
    parser.add_argument("command", nargs=argparse.REMAINDER, metavar="-- COMMAND...")


class Listener:
    """A local statsd stand-in: a UDP socket on 127.0.0.1 that keeps every line."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
        except OSError:
            pass
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.05)
        self.port: int = self.sock.getsockname()[1]
        self.payloads: list[bytes] = []
        self.last_packet = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            self._receive()

    def _receive(self) -> bool:
        try:
            packet = self.sock.recv(65535)
        except (socket.timeout, OSError):
            return False
        self.payloads.append(packet)
        self.last_packet = time.monotonic()
        return True

    def stop(self, quiet: float = 0.1, limit: float = 2.0) -> None:
        """Stop once ``quiet`` seconds passed without a datagram (at most ``limit`` s)."""
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline and time.monotonic() - self.last_packet < quiet:
            time.sleep(0.02)
        self._stop.set()
        self._thread.join()
        while self._receive():  # whatever arrived after the last poll
            pass
        self.sock.close()


def run(args: argparse.Namespace) -> int:
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise CommandError("watch needs a command: popcon-site watch -- python script.py")
    try:
        prefix = parse_prefix(os.environ.get(ENV_PREFIX, DEFAULT_PREFIX))
    except ConfigError as exc:
        raise CommandError(str(exc)) from None
    output = None
    if args.output:
        try:
            output = open(args.output, "w", encoding="utf-8")  # noqa: SIM115
        except OSError as exc:
            raise CommandError(f"cannot write {args.output}: {exc.strerror or exc}") from None
    listener = Listener()
    env = dict(os.environ)
    env.update(
        {
            ENV_ENABLE: "1",
            ENV_HOST: "127.0.0.1",
            ENV_PORT: str(listener.port),
            ENV_PROTOCOL: "udp",
            ENV_PREFIX: prefix,
        }
    )
    status = _run_command(command, env, listener)
    listener.stop()
    reports_name = reports_name_for(prefix)
    counts, other = parse_lines(listener.payloads)
    processes = counts.pop(reports_name, 0)
    libraries = {
        name[len(prefix) + 1 :]: n for name, n in counts.items() if name.startswith(prefix + ".")
    }
    foreign = {name: n for name, n in counts.items() if not name.startswith(prefix + ".")}
    ordered = sorted(libraries.items(), key=lambda item: (-item[1], item[0]))
    if args.json:
        text = json.dumps(
            {
                "command": command,
                "exit_status": status,
                "processes": processes,
                "libraries": dict(ordered),
                "counters": {reports_name: processes, **{f"{prefix}.{k}": v for k, v in ordered}},
                "other_lines": other + [f"{k}:{v}|c" for k, v in foreign.items()],
            },
            indent=2,
        )
    else:
        # Printed after the command ended, so it never interleaves with its output.
        lines = [f"popcon-site watch: {processes} process(es) reported, exit status {status}"]
        lines.append(f"  {reports_name}:{processes}|c")
        lines += [f"  {prefix}.{name}:{n}|c" for name, n in ordered]
        lines += [f"  (not popcon-site) {line}" for line in other]
        text = "\n".join(lines)
    if output is not None:
        with output:
            output.write(text + "\n")
    else:
        print(text, flush=True)
    if processes == 0:
        print(
            "popcon-site watch: no process reported. Is popcon-site installed in the "
            "environment of the command's Python (see popcon-site status)?",
            file=sys.stderr,
        )
    return status


def _run_command(command: list[str], env: dict[str, str], listener: Listener) -> int:
    """Run the command to its end, with the exit status a shell would give.

    Ctrl-C reaches the whole foreground process group, so the command gets it
    directly; this process keeps waiting (to print the report) instead of
    dying first.  SIGTERM and SIGHUP sent to this process are passed on.
    """
    proc: subprocess.Popen[bytes] | None = None

    def forward(signum: int, _frame: object) -> None:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signum)

    # Python handlers (unlike SIG_IGN) are reset to the default in the command.
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGINT,)}
    for sig in (signal.SIGTERM, signal.SIGHUP):
        previous[sig] = signal.signal(sig, forward)
    try:
        try:
            proc = subprocess.Popen(command, env=env)
        except FileNotFoundError:
            listener.stop(quiet=0)
            raise _CannotRun(f"cannot run {command[0]!r}: command not found", 127) from None
        except OSError as exc:
            listener.stop(quiet=0)
            raise _CannotRun(f"cannot run {command[0]!r}: {exc.strerror or exc}", 126) from None
        status = proc.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 128 - status if status < 0 else status


class _CannotRun(CommandError):
    """The command could not be started: 127 not found, 126 not executable (as a shell)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status
