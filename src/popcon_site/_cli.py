"""The admin's command line: see what popcon-site does before trusting it."""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

from popcon_site import __version__, _index, _report


class CommandError(Exception):
    """A bad input or an unreachable server: one line to stderr, exit status 2."""


def run(argv: list[str]) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args))
    except CommandError as exc:
        print(f"popcon-site: {exc}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="popcon-site",
        description="Which installed distributions do this environment's processes import?",
    )
    parser.add_argument("--version", action="version", version=f"popcon-site {__version__}")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    status = commands.add_parser("status", help="hook, configuration and index of this environment")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(handler=cmd_status)

    which = commands.add_parser("which", help="the distribution a module would be credited to")
    which.add_argument("modules", nargs="+", metavar="MODULE")
    which.add_argument("--json", action="store_true", help="machine-readable output")
    which.set_defaults(handler=cmd_which)

    watch = commands.add_parser(
        "watch", help="run a command with reporting on and print what it would send"
    )
    watch.add_argument("--json", action="store_true", help="machine-readable output")
    watch.add_argument("command", nargs=argparse.REMAINDER, metavar="-- COMMAND...")
    watch.set_defaults(handler=cmd_watch)

    index = commands.add_parser("index", help="build the module -> distribution index now")
    index.add_argument(
        "--system",
        action="store_true",
        help="write it into the environment for all users (run after installing packages)",
    )
    index.add_argument("--json", action="store_true", help="machine-readable output")
    index.set_defaults(handler=cmd_index)
    return parser


# -- status -------------------------------------------------------------------


def cmd_status(args: argparse.Namespace) -> int:
    site_dirs = _report.site_dirs()
    hooks = [
        str(Path(d) / name)
        for d in site_dirs
        for name in ("popcon_site.pth", "popcon_site.start")
        if (Path(d) / name).exists()
    ]
    enabled = _report.is_true(os.environ.get(_report.ENV_ENABLE))
    try:
        config: _report.Config | None = _report.config_from_environ()
        config_error = None
    except _report.ConfigError as exc:
        config, config_error = None, str(exc)
    resolves = None
    if config is not None:
        resolves = _resolves(config.host, config.port)
    cache_dir = _index.user_cache_dir()
    indexes = []
    for site_dir in site_dirs:
        stamp = _index.stamp_of(site_dir)
        entry: dict[str, object] = {"site_dir": site_dir, "fresh_in": None, "owners": 0}
        for where, shared in [(d, True) for d in _index.system_index_dirs()] + [(cache_dir, False)]:
            if where is None or stamp is None:
                continue
            found = _index.load(where, site_dir, stamp, shared=shared)
            if found is not None:
                entry.update(fresh_in=where, owners=len(set(found.owners.values())))
                break
        indexes.append(entry)
    data = {
        "python": sys.executable,
        "version": sys.version.split()[0],
        "hook_files": hooks,
        "enabled_in_this_shell": enabled,
        "config": None
        if config is None
        else {
            "host": config.host,
            "port": config.port,
            "protocol": config.protocol,
            "prefix": config.prefix,
            "reports_metric": config.reports_name,
        },
        "config_error": config_error,
        "host_resolves": resolves,
        "user_cache_dir": cache_dir,
        "indexes": indexes,
    }
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    print(f"python        {data['python']} ({data['version']})")
    print(f"hook          {', '.join(hooks) if hooks else 'NOT INSTALLED in this environment'}")
    print(f"enabled       {'yes' if enabled else 'no'} ({_report.ENV_ENABLE})")
    if config is None:
        print(f"config        INVALID: {config_error}")
    else:
        print(
            f"statsd        {config.host}:{config.port} over {config.protocol}"
            f" (resolves: {'yes' if resolves else 'NO'})"
        )
        print(f"metrics       {config.prefix}.<distribution>, {config.reports_name}")
    print(f"cache         {cache_dir or 'none (no usable home or cache directory)'}")
    for entry in indexes:
        state = (
            f"fresh in {entry['fresh_in']}, {entry['owners']} distributions"
            if entry["fresh_in"]
            else "not built yet (the next reporting process builds it)"
        )
        print(f"index         {entry['site_dir']}: {state}")
    return 0


def _resolves(host: str, port: int) -> bool:
    from popcon_site import _resolve

    return (_report.literal_address(host, port) or _resolve.lookup(host, port)) is not None


# -- which --------------------------------------------------------------------


def cmd_which(args: argparse.Namespace) -> int:
    import importlib.util

    attributor = _report.Attributor.for_this_process()
    rows = []
    for name in args.modules:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError) as exc:
            raise CommandError(f"cannot look up {name!r}: {exc}") from None
        if spec is None:
            raise CommandError(f"no module named {name!r}")
        origin = spec.origin if spec.has_location else None
        if origin is None:
            locations = list(spec.submodule_search_locations or [])
            reason = (
                "namespace package: its submodules are counted"
                if locations
                else ("built in or frozen: part of the interpreter, never counted")
            )
            rows.append({"module": name, "file": None, "distribution": None, "reason": reason})
            continue
        owner, decided = attributor.owner_in_site_dir(origin)
        if owner is None and not decided:
            owner = _report.owner_by_root(origin, attributor.editable_roots())
        if owner == _report.OWN_DISTRIBUTION:
            reason = "popcon-site itself: never counted"
            owner = None
        elif owner is not None:
            reason = "installed file of this distribution (from its RECORD)"
        elif attributor.site_dir_of(origin) is None and attributor.in_stdlib(origin):
            reason = "standard library: never counted"
        else:
            reason = "no installed distribution owns this file: never counted"
        rows.append({"module": name, "file": origin, "distribution": owner, "reason": reason})
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for row in rows:
            print(f"{row['module']}: {row['distribution'] or '-'}  ({row['reason']})")
            if row["file"]:
                print(f"    {row['file']}")
    return 0


# -- watch --------------------------------------------------------------------


class _Listener:
    """A local statsd stand-in: a UDP socket on 127.0.0.1 that keeps every line."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.05)
        self.port = self.sock.getsockname()[1]
        self.lines: list[str] = []
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
        self.lines += packet.decode("ascii", "replace").split("\n")
        return True

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        while self._receive():  # whatever arrived after the last poll
            pass
        self.sock.close()


def cmd_watch(args: argparse.Namespace) -> int:
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise CommandError("watch needs a command: popcon-site watch -- python script.py")
    try:
        prefix = _report.parse_prefix(os.environ.get(_report.ENV_PREFIX, _report.DEFAULT_PREFIX))
    except _report.ConfigError as exc:
        raise CommandError(str(exc)) from None
    listener = _Listener()
    env = dict(os.environ)
    env.update(
        {
            _report.ENV_ENABLE: "1",
            _report.ENV_HOST: "127.0.0.1",
            _report.ENV_PORT: str(listener.port),
            _report.ENV_PROTOCOL: "udp",
            _report.ENV_PREFIX: prefix,
        }
    )
    try:
        status = subprocess.call(command, env=env)
    except OSError as exc:
        listener.stop()
        raise CommandError(f"cannot run {command[0]!r}: {exc.strerror or exc}") from None
    except KeyboardInterrupt:
        status = 130
    time.sleep(0.05)  # datagrams from processes that exited just now
    listener.stop()
    counts = Counter(line.rpartition(":")[0] for line in listener.lines if line.endswith(":1|c"))
    reports_name = _report.reports_name_for(prefix)
    processes = counts.pop(reports_name, 0)
    libraries = {
        name[len(prefix) + 1 :]: n for name, n in counts.items() if name.startswith(prefix + ".")
    }
    if args.json:
        print(
            json.dumps(
                {"exit_status": status, "processes": processes, "libraries": libraries},
                indent=2,
                sort_keys=True,
            )
        )
    else:
        # Printed after the command ended, so it never interleaves with its output.
        print(f"popcon-site watch: {processes} process(es) reported")
        print(f"  {reports_name}:{processes}|c")
        for name, n in sorted(libraries.items(), key=lambda item: (-item[1], item[0])):
            print(f"  {prefix}.{name}:{n}|c")
    return status


# -- index --------------------------------------------------------------------


def cmd_index(args: argparse.Namespace) -> int:
    from popcon_site._build import build

    if args.system:
        target = _index.system_index_dirs()[0]
    else:
        cache = _index.user_cache_dir()
        if cache is None:
            raise CommandError("no usable cache directory (set PYTHON_POPCONTEST_CACHE_DIR)")
        target = cache
    results: list[dict[str, object]] = []
    lines = []
    for site_dir in _report.site_dirs():
        started = time.perf_counter()
        built = build(site_dir)
        elapsed = time.perf_counter() - started
        written = _index.save(built, target, shared=args.system)
        if not written:
            raise CommandError(f"cannot write the index into {target}")
        results.append(
            {
                "site_dir": site_dir,
                "distributions": len(set(built.owners.values()) | set(built.roots.values())),
                "seconds": round(elapsed, 4),
                "written_to": target,
            }
        )
        lines.append(
            f"{site_dir}: {results[-1]['distributions']} distributions "
            f"indexed in {elapsed * 1000:.0f} ms -> {target}"
        )
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print("\n".join(lines))
    return 0
