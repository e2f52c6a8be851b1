"""The admin's command line: see what popcon-site does, and what the counts say.

``status``, ``which``, ``watch`` and ``index`` look at this environment;
``unused`` and ``top`` ask Prometheus (HTTP API, stdlib ``urllib``) about the
counts the environment's processes sent.  Every command prints a table, or
JSON with ``--json``.  Exit statuses: 0 done; 1 nothing to show (``which``: a
module was not found; ``unused``/``top``: no process reported in the window);
2 bad input or an unreachable server, with a one-line reason on stderr.
``watch`` exits with the command's own status.

This process never reports itself: it is the admin's tool, not a use of the
environment's libraries (it imports ``importlib-metadata``, which would
otherwise be counted at every run).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from typing import Any, Callable, NoReturn

import popcon_site
from popcon_site import __version__, _attribute, _hooks, _index, _report, _select

EXIT_OK, EXIT_EMPTY, EXIT_ERROR = 0, 1, 2
LIBRARY_METRIC = "python_popcon_library_used"
REPORTS_METRIC = "python_popcon_reports"


class CommandError(Exception):
    """A bad input or an unreachable server: one line to stderr, exit status 2."""

    status = EXIT_ERROR


class NothingToShow(CommandError):
    """The question was fine but has no answer (no reports in the window): exit status 1."""

    status = EXIT_EMPTY


def run(argv: list[str]) -> int:
    session = popcon_site.current()
    if session is not None:
        session.reported = True  # the admin's tool is not a use of the environment
    args = _parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except CommandError as exc:
        print(f"popcon-site: {_one_line(str(exc))}", file=sys.stderr)
        return exc.status
    except KeyboardInterrupt:
        print("popcon-site: interrupted", file=sys.stderr)
        return 130


def _one_line(text: str) -> str:
    return " ".join(text.split())


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (the usage stays available with --help)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_ERROR, f"{self.prog}: {_one_line(message)} (see --help)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="popcon-site",
        description="Which installed distributions do this environment's processes import?",
        epilog="Exit status: 0 done, 1 nothing found, 2 bad input or unreachable server; "
        "watch exits with the command's status.",
    )
    parser.add_argument("--version", action="version", version=f"popcon-site {__version__}")
    commands = parser.add_subparsers(
        required=True, metavar="COMMAND", dest="command_name", parser_class=_Parser
    )

    def command(name: str, handler: Callable[[argparse.Namespace], int], text: str) -> Any:
        sub = commands.add_parser(name, help=text, description=text)
        sub.add_argument("--json", action="store_true", help="machine-readable output")
        sub.set_defaults(handler=handler)
        return sub

    command("status", cmd_status, "start-up hook, configuration and index of this environment")

    which = command(
        "which", cmd_which, "the distribution each module would be credited to, and why"
    )
    which.add_argument("modules", nargs="+", metavar="MODULE", help="e.g. yaml, google.protobuf")

    watch = command(
        "watch",
        cmd_watch,
        "run a command with reporting pointed at a local listener; print what its processes sent",
    )
    watch.add_argument(
        "-o",
        "--output",
        metavar="FILE",
        help="write the report to FILE, apart from the command's own output",
    )
    watch.add_argument("command", nargs=argparse.REMAINDER, metavar="-- COMMAND...")

    index = command("index", cmd_index, "build the module -> distribution index now")
    index.add_argument(
        "--system",
        action="store_true",
        help="write it into the environment for all users (run after installing packages)",
    )

    for name, handler, text in (
        (
            "unused",
            cmd_unused,
            "installed distributions no process imported in the window, largest first",
        ),
        ("top", cmd_top, "libraries by number of processes that imported them"),
    ):
        sub = command(name, handler, text)
        sub.add_argument(
            "--prometheus",
            required=True,
            metavar="URL",
            help="Prometheus base URL, e.g. http://prometheus:9090",
        )
        sub.add_argument(
            "--window", default="30d", help="PromQL duration to look back (default: 30d)"
        )
        sub.add_argument(
            "--selector",
            default="",
            metavar="MATCHERS",
            help="label matchers added to both metrics, e.g. 'namespace=\"x\"'",
        )
        sub.add_argument(
            "--at",
            metavar="TIME",
            help="evaluate at this time (Unix seconds or RFC 3339) instead of now",
        )
        sub.add_argument(
            "--timeout",
            type=float,
            default=10.0,
            metavar="SECONDS",
            help="HTTP timeout per query (default: 10)",
        )
        if name == "top":
            sub.add_argument(
                "--limit", type=int, default=20, metavar="N", help="rows to show (default: 20)"
            )
    return parser


def _print_json(data: object) -> None:
    print(json.dumps(data, indent=2))


def _table(rows: list[list[str]], right: set[int] | None = None, indent: str = "  ") -> str:
    """Columns padded to their widest cell; ``right`` are right-aligned column numbers."""
    right = right or set()
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [
            cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
            for i, cell in enumerate(row)
        ]
        lines.append((indent + "  ".join(cells)).rstrip())
    return "\n".join(lines)


def _age(seconds: float) -> str:
    seconds = max(0.0, seconds)
    for unit, size in (("day", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            value = int(seconds // size)
            return f"{value} {unit}{'s' if unit == 'day' and value > 1 else ''} ago"
    return f"{int(seconds)} s ago"


def _size(n: int | None) -> str:
    if n is None:
        return "?"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _user_site() -> str | None:
    try:
        import site

        return os.path.normpath(site.getusersitepackages())
    except Exception:
        return None


def _environment_site_dirs() -> list[str]:
    """This environment's site directories (and the base's when visible), not the user's."""
    user = _user_site()
    return [d for d in _attribute.site_dirs() if d != user]


# -- status -------------------------------------------------------------------

IPYTHON_STARTUP = os.path.join("etc", "ipython", "startup", "00-popcon-site.py")


def cmd_status(args: argparse.Namespace) -> int:
    site_dirs = _attribute.site_dirs()
    user_site = _user_site()
    hook = _hooks.state(site_dirs)
    hooks = hook["files"]
    ipython = os.path.join(sys.prefix, IPYTHON_STARTUP)
    if os.path.isfile(ipython):
        hooks.append({"file": ipython, "role": "IPython start-up file, for Jupyter kernels"})
    hook_file, hook_installed = hook["used_by_this_python"], hook["installed"]

    raw_enable = os.environ.get(_report.ENV_ENABLE)
    enabled = _report.is_true(raw_enable)
    active = popcon_site.current() is not None
    try:
        config: _report.Config | None = _report.config_from_environ()
        config_error = None
    except _report.ConfigError as exc:
        config, config_error = None, str(exc)
    resolution = None if config is None else _resolution(config.host)

    cache_dir = _index.user_cache_dir()
    now = time.time()
    indexes = [_index_state(d, cache_dir, now, d == user_site) for d in site_dirs]

    data = {
        "python": {
            "executable": sys.executable,
            "version": sys.version.split()[0],
            "prefix": sys.prefix,
        },
        "popcon_site": {"version": __version__, "module": os.path.dirname(popcon_site.__file__)},
        "hook": hook,
        "enabled_in_this_shell": enabled,
        "enable_variable": raw_enable,
        "hook_ran_in_this_process": active,
        "config": None
        if config is None
        else {
            "host": config.host,
            "port": config.port,
            "protocol": config.protocol,
            "prefix": config.prefix,
            "reports_metric": config.reports_name,
            "include": list(config.include),
            "exclude": list(config.exclude),
            "rank0_only": config.rank0_only,
            "debug": config.debug,
        },
        "config_error": config_error,
        "host_resolves": None if resolution is None else resolution[0],
        "host_resolution": None if resolution is None else resolution[1],
        "user_cache_dir": cache_dir,
        "system_index_dirs": _index.system_index_dirs(),
        "indexes": indexes,
    }
    if args.json:
        _print_json(data)
        return EXIT_OK

    rows: list[list[str]] = []

    def row(key: str, value: str) -> None:
        rows.append([key, value])

    row("python", f"{sys.executable} {sys.version.split()[0]}, prefix {sys.prefix}")
    row("popcon-site", f"{__version__} in {os.path.dirname(popcon_site.__file__)}")
    if hook_installed:
        row("hook", f"installed ({hook_file} is the one this Python runs)")
    else:
        row("hook", f"NOT INSTALLED: no {hook_file} in any site directory of this Python")
    for entry in hooks:
        row("", f"{entry['file']}  [{entry['role']}]")
    row("", f"why: {hook['why']}")
    if enabled:
        state = "yes" + (
            ", and the hook ran in this process"
            if active
            else ", but the hook did NOT run in this process"
        )
    elif raw_enable is None:
        state = f"no ({_report.ENV_ENABLE} is not set)"
    else:
        state = f"no ({_report.ENV_ENABLE}={raw_enable!r})"
    row("enabled", state)
    if config is None:
        row("config", f"INVALID, nothing is sent: {config_error}")
    else:
        assert resolution is not None
        row("statsd", f"{config.host}:{config.port} over {config.protocol}")
        row("host", resolution[1])
        row("metrics", f"{config.prefix}.<distribution>:1|c, {config.reports_name}:1|c")
        filters = []
        if config.include:
            filters.append("only " + ",".join(config.include))
        if config.exclude:
            filters.append("never " + ",".join(config.exclude))
        if config.rank0_only:
            filters.append("only rank 0 of MPI/Slurm jobs")
        row("filters", "; ".join(filters) if filters else "none (every distribution is counted)")
    row("user cache", cache_dir or "none usable (indexes are built in memory)")
    for entry in indexes:
        row("index", f"{entry['site_dir']}{' (user site)' if entry['user_site'] else ''}")
        row("", str(entry["summary"]))
    print(_table(rows, indent=""))
    return EXIT_OK


def _resolution(host: str) -> tuple[bool, str]:
    """Whether the statsd host resolves, looked up like a reporting process does (max 2 s)."""
    from popcon_site import _resolve

    if host == "localhost":
        return True, "localhost = 127.0.0.1 (no lookup, as the statsd client does)"
    if _report.literal_address(host, 0) is not None:
        return True, "an IP address (no lookup)"
    found = _resolve.Resolution(host).wait(2.0)
    if found is None:
        return False, (
            f"{host!r} does NOT resolve (or not within 2 s): processes send nothing; "
            "an IP address avoids the lookup"
        )
    return True, f"resolves to {found[1][0]} (looked up in each process; an IP address is faster)"


def _index_state(
    site_dir: str, cache_dir: str | None, now: float, user_site: bool
) -> dict[str, object]:
    """Which index a process would use for this site directory, and any stale ones."""
    stamp = _index.stamp_of(site_dir)
    places = [(d, "system") for d in _index.system_index_dirs()]
    if cache_dir is not None:
        places.append((cache_dir, "user cache"))
    used: dict[str, object] | None = None
    stale = []
    for directory, scope in places:
        path = os.path.join(directory, _index.file_name(site_dir))
        try:
            built_at = os.stat(path).st_mtime
        except OSError:
            continue
        found = None
        if stamp is not None:
            found = _index.load(directory, site_dir, stamp, shared=scope == "system")
        if found is None:
            stale.append(
                {
                    "file": path,
                    "scope": scope,
                    "built_at": built_at,
                    "reason": _why_not_used(path, site_dir, stamp),
                }
            )
        elif used is None:
            used = {
                "file": path,
                "scope": scope,
                "built_at": built_at,
                "age_seconds": round(now - built_at, 1),
                "distributions": len(set(found.owners.values()) | set(found.roots.values())),
            }
    if used is not None:
        summary = (
            f"fresh {used['scope']} index, {used['distributions']} distributions, "
            f"built {_age(float(str(used['age_seconds'])))}: {used['file']}"
        )
    else:
        summary = "no fresh index: the next reporting process builds one (or run popcon-site index)"
    for old in stale:
        summary += f"; ignored {old['scope']} index ({old['reason']}): {old['file']}"
    return {
        "site_dir": site_dir,
        "user_site": user_site,
        "fresh": used,
        "stale": stale,
        "summary": summary,
    }


def _why_not_used(path: str, site_dir: str, stamp: str | None) -> str:
    """Why ``_index.load`` refused an index file that exists."""
    try:
        with open(path, encoding="utf-8", errors="replace") as stream:
            head = [stream.readline().rstrip("\n") for _ in range(3)]
    except OSError as exc:
        return f"unreadable: {exc.strerror or exc}"
    if head[0] != _index.FORMAT or head[1] != site_dir:
        return "not an index of this site directory"
    if head[2] != stamp:
        return "STALE: built before the last install or uninstall"
    return "refused: a symlink, or owned by another user"


# -- which --------------------------------------------------------------------

BASELINE_NOTE = (
    "not applicable outside a running process: a module already loaded when a process "
    "starts reporting (start-up, or an IPython kernel's own modules) is not counted in that "
    "process. `popcon-site watch -- COMMAND` shows what a real process sends."
)


def cmd_which(args: argparse.Namespace) -> int:
    attributor = _attribute.Attributor.for_this_process()
    try:
        config: _report.Config | None = _report.config_from_environ()
    except _report.ConfigError:
        config = None
    rows = []
    missing = []
    for name in args.modules:
        try:
            row = _which_one(name, attributor, config)
        except LookupError as exc:
            missing.append(f"{name}: {exc}")
            row = {
                "module": name,
                "found": False,
                "file": None,
                "distribution": None,
                "counted": False,
                "reason": str(exc),
                "evidence": None,
            }
        rows.append(row)
    if args.json:
        _print_json({"modules": rows, "baseline": BASELINE_NOTE})
    else:
        for row in rows:
            if not row["found"]:
                continue
            verdict = f"{row['distribution']} (counted)" if row["counted"] else "not counted"
            print(f"{row['module']}: {verdict}")
            print(f"    file:  {row['file'] or '-'}")
            print(f"    why:   {row['reason']}")
            if row["evidence"]:
                print(f"    proof: {row['evidence']}")
        if len(missing) < len(rows):
            print(f"baseline: {BASELINE_NOTE}")
    for line in missing:
        print(f"popcon-site: which {line}", file=sys.stderr)
    return EXIT_EMPTY if missing else EXIT_OK


def _find_spec(name: str) -> Any:
    """The module's spec without importing anything (not even its parent packages)."""
    import importlib.machinery
    import importlib.util

    parts = name.split(".")
    if not all(part.isidentifier() for part in parts):
        raise LookupError("not a module name")
    try:
        spec = importlib.util.find_spec(parts[0])  # meta path: editable finders too
    except (ImportError, ValueError) as exc:
        raise LookupError(f"cannot be looked up ({exc})") from None
    for depth in range(1, len(parts)):
        if spec is None or not spec.submodule_search_locations:
            spec = None  # the parent is a plain module, or missing
            break
        try:
            spec = importlib.machinery.PathFinder.find_spec(
                ".".join(parts[: depth + 1]), list(spec.submodule_search_locations)
            )
        except (ImportError, ValueError) as exc:
            raise LookupError(f"cannot be looked up ({exc})") from None
    if spec is not None:
        return spec
    raise LookupError("no such module on this Python's path")


def _which_one(
    name: str, attributor: _attribute.Attributor, config: _report.Config | None
) -> dict[str, object]:
    spec = _find_spec(name)
    row: dict[str, object] = {
        "module": name,
        "found": True,
        "file": None,
        "distribution": None,
        "counted": False,
        "reason": "",
        "evidence": None,
    }
    origin = spec.origin if spec.has_location and isinstance(spec.origin, str) else None
    if origin is None:
        locations = [str(p) for p in spec.submodule_search_locations or ()]
        if locations:
            owners = _namespace_owners(locations, attributor)
            row["file"] = ", ".join(locations)
            row["reason"] = (
                "namespace package: nothing to count itself; each submodule is credited to "
                "the distribution that installed it"
            )
            if owners:
                row["evidence"] = "submodules installed by " + ", ".join(sorted(owners))
        elif spec.origin == "frozen":
            row["reason"] = "standard library (frozen into the interpreter): never counted"
        else:
            row["reason"] = "standard library (built into the interpreter): never counted"
        return row
    row["file"] = origin
    owner, decided = attributor.owner_in_site_dir(origin)
    editable = False
    if owner is None and not decided:
        owner = _attribute.owner_by_root(origin, attributor.editable_roots())
        editable = owner is not None
    site_dir = attributor.site_dir_of(origin)
    if owner == _attribute.OWN_DISTRIBUTION:
        row["reason"] = "popcon-site itself: never counted"
        return row
    if owner is None:
        if site_dir is None and attributor.in_stdlib(origin):
            row["reason"] = "standard library: never counted"
        elif site_dir is not None:
            row["reason"] = (
                f"in site directory {site_dir}, but no installed distribution's RECORD lists "
                "it (or several do): never counted"
            )
        else:
            row["reason"] = (
                "outside every site directory and editable install (a script directory, "
                "PYTHONPATH or pip --target): never counted"
            )
        return row
    row["distribution"] = owner
    if not _report.is_safe_name(owner):
        row["reason"] = "the distribution's name is not a safe metric name: never sent"
        return row
    if config is not None and not config.allows(owner):
        row["reason"] = (
            f"installed by {owner}, but {_report.ENV_INCLUDE}/{_report.ENV_EXCLUDE} "
            "in this shell leave it out: not counted"
        )
        return row
    row["counted"] = True
    if editable:
        row["reason"] = f"in the source tree of an editable install of {owner}"
        return row
    assert site_dir is not None
    relative = os.path.relpath(origin, site_dir).replace(os.sep, "/")
    row["reason"] = f"installed file of {owner} in {site_dir}"
    row["evidence"] = _record_evidence(site_dir, relative, owner, attributor)
    return row


def _namespace_owners(locations: list[str], attributor: _attribute.Attributor) -> set[str]:
    owners = set()
    for location in locations:
        site_dir = attributor.site_dir_of(location)
        index = attributor.index(site_dir) if site_dir else None
        if index is None or site_dir is None:
            continue
        key = os.path.relpath(location, site_dir).replace(os.sep, "/") + "/"
        owners |= {owner for path, owner in index.owners.items() if path.startswith(key)}
    owners.discard(_attribute.OWN_DISTRIBUTION)
    return owners


def _record_evidence(
    site_dir: str, relative: str, owner: str, attributor: _attribute.Attributor
) -> str:
    """The RECORD line that credits the file, and the index entry that made the decision."""
    from importlib_metadata import distributions

    index = attributor.index(site_dir)
    key = None
    if index is not None:
        parts = relative.split("/")
        for depth in range(1, len(parts) + 1):
            if "/".join(parts[:depth]) in index.owners:
                key = "/".join(parts[:depth])
                break
    entry = f"index entry {key!r} -> {owner}" if key else f"index -> {owner}"
    for dist in distributions(path=[site_dir]):
        try:
            if _select.normalize_name(dist.metadata["Name"] or "") != owner:
                continue
            label = f"{dist.metadata['Name']} {dist.version}"
            files = dist.files
            if files and any(str(f).replace("\\", "/") == relative for f in files):
                record = "RECORD" if dist.read_text("RECORD") is not None else "file list"
                return f"{record} of {label} lists {relative}; {entry}"
            if files:
                return f"{relative} is under a path only {label} installed; {entry}"
            return f"top_level.txt of {label} (it has no RECORD); {entry}"
        except Exception:
            continue
    return entry


# -- watch --------------------------------------------------------------------


class _Listener:
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
        self.lines: list[str] = []
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
        self.lines += packet.decode("ascii", "replace").split("\n")
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


_COUNTER = re.compile(r"^([A-Za-z0-9_.\-]+):(\d+)\|c$")


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
    output = None
    if args.output:
        try:
            output = open(args.output, "w", encoding="utf-8")  # noqa: SIM115
        except OSError as exc:
            raise CommandError(f"cannot write {args.output}: {exc.strerror or exc}") from None
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
    status = _run_command(command, env, listener)
    listener.stop()
    reports_name = _report.reports_name_for(prefix)
    counts: Counter[str] = Counter()
    other = []
    for line in listener.lines:
        match = _COUNTER.match(line)
        if match:
            counts[match.group(1)] += int(match.group(2))
        elif line:
            other.append(line)
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


def _run_command(command: list[str], env: dict[str, str], listener: _Listener) -> int:
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


# -- index --------------------------------------------------------------------


def cmd_index(args: argparse.Namespace) -> int:
    from popcon_site._build import build

    if args.system:
        target = _index.system_index_dirs()[0]
        # A fresh venv has no {prefix}/share; the index saver creates only the last two levels.
        share = os.path.dirname(os.path.dirname(target))
        try:
            os.makedirs(share, mode=0o755, exist_ok=True)
        except OSError as exc:
            raise CommandError(
                f"cannot create {share}: {exc.strerror or exc} "
                "(run index --system as the owner of the environment)"
            ) from None
        site_dirs = _environment_site_dirs()
    else:
        cache = _index.user_cache_dir()
        if cache is None:
            raise CommandError("no usable cache directory (set PYTHON_POPCONTEST_CACHE_DIR)")
        target = cache
        site_dirs = _attribute.site_dirs()
    results: list[dict[str, object]] = []
    for site_dir in site_dirs:
        started = time.perf_counter()
        built = build(site_dir)
        elapsed = time.perf_counter() - started
        if not _index.save(built, target, shared=args.system):
            how = (
                "run index --system as the owner of the environment"
                if args.system
                else "it must be a directory of yours, not writable by others"
            )
            raise CommandError(f"cannot write the index into {target} ({how})")
        results.append(
            {
                "site_dir": site_dir,
                "distributions": len(set(built.owners.values()) | set(built.roots.values())),
                "seconds": round(elapsed, 4),
                "file": os.path.join(target, _index.file_name(site_dir)),
                "scope": "system" if args.system else "user cache",
            }
        )
    if args.json:
        _print_json(results)
        return EXIT_OK
    for result in results:
        print(
            f"{result['site_dir']}: {result['distributions']} distributions "
            f"indexed in {float(str(result['seconds'])) * 1000:.0f} ms"
        )
        print(f"  -> {result['file']}")
    if args.system:
        print(
            "System index: readable by all users, used by every process until the next "
            "install or uninstall makes it stale (then run this again)."
        )
    return EXIT_OK


# -- Prometheus: unused, top ----------------------------------------------------

_DURATION = re.compile(r"^(?:[0-9]+(?:ms|s|m|h|d|w|y))+$")
_FORBIDDEN_LABEL = re.compile(r"(?:^|[,{\s])(library|__name__)\s*(?:=|!=|=~|!~)")
_MAX_RESPONSE = 64 * 1024 * 1024


class _Query:
    """The window, selector and evaluation time shared by unused and top."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.url, self.shown_url, self.authorization = _base_url(args.prometheus)
        if not _DURATION.match(args.window):
            raise CommandError(
                f"--window {args.window!r} is not a Prometheus duration (e.g. 30d, 12h, 1w)"
            )
        self.window = args.window
        selector = args.selector.strip()
        if selector.startswith("{") and selector.endswith("}"):
            selector = selector[1:-1].strip()
        if _FORBIDDEN_LABEL.search(selector):
            raise CommandError(
                "--selector must not match on library or __name__: "
                "it is added to the reports metric too"
            )
        self.selector = selector
        self.at = time.time() if args.at is None else _parse_time(args.at)
        if not args.timeout > 0:
            raise CommandError("--timeout must be positive")
        self.timeout = args.timeout

    def matchers(self) -> str:
        return f"{{{self.selector}}}" if self.selector else ""

    def libraries(self) -> dict[str, float]:
        """Processes that imported each library in the window (normalized names)."""
        expr = f"sum by (library) (increase({LIBRARY_METRIC}{self.matchers()}[{self.window}]))"
        result: dict[str, float] = {}
        for sample in self.vector(expr):
            name = _select.normalize_name(str(sample["metric"].get("library", "")))
            if name:
                result[name] = result.get(name, 0.0) + _value(sample)
        return result

    def reports(self) -> float:
        expr = f"sum(increase({REPORTS_METRIC}{self.matchers()}[{self.window}]))"
        return sum(_value(sample) for sample in self.vector(expr))

    def vector(self, expr: str) -> list[dict[str, Any]]:
        from urllib.parse import urlencode

        data = _http_json(
            f"{self.url}/api/v1/query?{urlencode({'query': expr, 'time': f'{self.at:.3f}'})}",
            self.timeout,
            self.shown_url,
            self.authorization,
        )
        if data.get("status") != "success":
            raise CommandError(
                f"Prometheus rejected the query {expr!r}: "
                f"{data.get('errorType', 'error')}: {data.get('error', 'no reason given')}"
            )
        result = data.get("data", {})
        if not isinstance(result, dict) or result.get("resultType") != "vector":
            raise CommandError(f"unexpected answer from Prometheus to {expr!r}")
        samples = result.get("result", [])
        return [s for s in samples if isinstance(s, dict) and isinstance(s.get("metric"), dict)]

    def describe(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.at))
        where = f" where {self.selector}" if self.selector else ""
        return f"in the {self.window} before {when}{where}"

    def no_reports(self) -> NoReturn:
        raise NothingToShow(
            f"no process reported {self.describe()} ({REPORTS_METRIC} has no increase there): "
            "check --window, --at and --selector, and that Prometheus scrapes the exporter"
        )

    def as_json(self) -> dict[str, object]:
        return {
            "prometheus": self.shown_url,
            "window": self.window,
            "selector": self.selector,
            "time": self.at,
        }


def _base_url(raw: str) -> tuple[str, str, str | None]:
    """(URL to query, URL to show, Authorization header): ``user:password@`` becomes Basic auth."""
    import base64
    from urllib.parse import unquote, urlsplit, urlunsplit

    url = raw.strip().rstrip("/")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises on a bad port)
    except ValueError as exc:
        raise CommandError(f"--prometheus is not a URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise CommandError("--prometheus must be an http:// or https:// URL")
    if parts.query or parts.fragment:
        raise CommandError("--prometheus must be a base URL, without ? or #")
    authorization = None
    if parts.username is not None:
        pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        authorization = "Basic " + base64.b64encode(pair.encode()).decode("ascii")
        netloc = parts.netloc.rpartition("@")[2]
        url = urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    return url, url, authorization


def _parse_time(raw: str) -> float:
    text = raw.strip()
    try:
        return float(text)
    except ValueError:
        pass
    from datetime import datetime, timezone

    try:
        parsed = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)
    except ValueError:
        raise CommandError(
            f"--at {raw!r} is neither Unix seconds nor an RFC 3339 time (e.g. 2024-05-01T00:00:00Z)"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.timestamp()


def _value(sample: dict[str, Any]) -> float:
    try:
        value = float(sample["value"][1])
    except (KeyError, IndexError, TypeError, ValueError):
        return 0.0
    return value if value == value and value not in (float("inf"), float("-inf")) else 0.0


def _http_json(url: str, timeout: float, base: str, authorization: str | None) -> dict[str, Any]:
    """GET a Prometheus API URL; its JSON, also from an error status (400/422/503)."""
    from urllib.error import HTTPError, URLError
    from urllib.request import Request, urlopen

    headers = {"Accept": "application/json", "User-Agent": f"popcon-site/{__version__}"}
    if authorization:
        headers["Authorization"] = authorization
    request = Request(url, headers=headers)
    status = 200
    try:
        with urlopen(request, timeout=timeout) as response:
            body = response.read(_MAX_RESPONSE)
    except HTTPError as exc:
        status = exc.code
        try:
            body = exc.read(_MAX_RESPONSE)
        except OSError:
            body = b""
        finally:
            exc.close()
    except URLError as exc:
        reason = exc.reason
        text = reason.strerror if isinstance(reason, OSError) and reason.strerror else reason
        raise CommandError(f"cannot reach Prometheus at {base}: {text}") from None
    except (OSError, ValueError) as exc:  # timeouts, resets, bad URLs
        text = "timed out" if isinstance(exc, socket.timeout) else (str(exc) or type(exc).__name__)
        raise CommandError(f"cannot reach Prometheus at {base}: {text}") from None
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if status in (401, 403):
        raise CommandError(f"Prometheus at {base} refused access (HTTP {status})")
    if not isinstance(data, dict) or "status" not in data:
        raise CommandError(
            f"{base} did not answer like the Prometheus HTTP API (HTTP {status}): "
            "is this the Prometheus base URL?"
        )
    return data


class _Installed:
    """One installed distribution: name, version, size on disk, what it requires."""

    def __init__(self, name: str, display: str, version: str, site_dir: str) -> None:
        self.name = name
        self.display = display
        self.version = version
        self.site_dir = site_dir
        self.size: int | None = None
        self.has_modules = True
        self.requires: set[str] = set()
        self.required_by: set[str] = set()


# The distribution name at the start of a Requires-Dist value (PEP 508).
_REQUIREMENT_NAME = re.compile(r"^\s*([A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)")
_EXTRA_MARKER = re.compile(r"\bextra\b")
_OR_MARKER = re.compile(r"\bor\b")


def required_name(requirement: str) -> str | None:
    """The normalized name a Requires-Dist line needs, or None if only an extra needs it.

    Markers are not evaluated (that needs ``packaging``, which is not a
    dependency): a requirement limited to some Python version or platform is
    taken as required, the safe side for "removing it is not safe".  A
    requirement that only an extra asks for (``; extra == "x"``) is ignored,
    as ``pip check`` does: nothing records which extras were installed.
    """
    match = _REQUIREMENT_NAME.match(requirement)
    if match is None:
        return None
    _, _, marker = requirement.partition(";")
    if _EXTRA_MARKER.search(marker) and not _OR_MARKER.search(marker):
        return None
    return _select.normalize_name(match.group(1))


def installed_distributions(site_dirs: list[str]) -> dict[str, _Installed]:
    """Distributions visible in these site directories; the first of a name wins, as imports."""
    from importlib_metadata import distributions

    found: dict[str, _Installed] = {}
    for site_dir in site_dirs:
        for dist in distributions(path=[site_dir]):
            try:
                display = dist.metadata["Name"] or ""
                name = _select.normalize_name(display)
                if not name or name in found:
                    continue
                item = _Installed(name, display, dist.version or "", site_dir)
                item.size, item.has_modules = _disk_usage(dist)
                for requirement in dist.requires or ():
                    needed = required_name(requirement)
                    if needed and needed != name:
                        item.requires.add(needed)
            except Exception:
                continue
            found[name] = item
    for item in found.values():
        for needed in item.requires:
            if needed in found:
                found[needed].required_by.add(item.name)
    return found


_MODULE_SUFFIXES = (".py", ".pyc", ".so", ".pyd")


def _disk_usage(dist: Any) -> tuple[int | None, bool]:
    """Bytes on disk of every file in RECORD (stat, else RECORD's size) and any modules?"""
    files = dist.files
    if not files:
        return None, True
    total = 0
    has_modules = False
    for file in files:
        path = str(file).replace("\\", "/")
        top = path.split("/", 1)[0]
        if (
            path.endswith(_MODULE_SUFFIXES)
            and ".." not in path.split("/")
            and not top.endswith((".dist-info", ".egg-info", ".data"))
        ):
            has_modules = True
        try:
            total += os.lstat(file.locate()).st_size
        except (OSError, ValueError):
            total += file.size or 0
    return total, has_modules


def cmd_unused(args: argparse.Namespace) -> int:
    query = _Query(args)
    reports = query.reports()
    if reports <= 0:
        query.no_reports()
    used = query.libraries()
    if not used:
        print(
            f"popcon-site: warning: processes reported, but {LIBRARY_METRIC} has no series "
            f"{query.describe()}: check the statsd_exporter mapping (README)",
            file=sys.stderr,
        )
    site_dirs = _environment_site_dirs()
    installed = installed_distributions(site_dirs)
    unused = [
        item
        for name, item in installed.items()
        if used.get(name, 0.0) <= 0 and name != _attribute.OWN_DISTRIBUTION
    ]
    unused.sort(key=lambda item: (-(item.size or 0), item.name))
    rows = []
    notes: dict[str, str] = {}
    for item in unused:
        said = []
        if item.required_by:
            said.append("required by " + ", ".join(sorted(item.required_by)))
        if not item.has_modules:
            said.append("no importable modules: imports cannot show its use")
        notes[item.name] = "; ".join(said)
        rows.append(
            {
                "distribution": item.name,
                "name": item.display,
                "version": item.version,
                "size_bytes": item.size,
                "required_by": sorted(item.required_by),
                "safe_to_remove": not item.required_by,
                "has_modules": item.has_modules,
                "site_dir": item.site_dir,
                "notes": said,
            }
        )
    total = sum(item.size or 0 for item in unused)
    if args.json:
        _print_json(
            {
                **query.as_json(),
                "reports": round(reports, 3),
                "installed": len(installed),
                "site_dirs": site_dirs,
                "unused": rows,
                "unused_bytes": total,
            }
        )
        return EXIT_OK
    print(
        f"{len(unused)} of {len(installed)} installed distributions were imported by no "
        f"process {query.describe()} ({round(reports):,} processes reported)"
    )
    if rows:
        table = [["SIZE", "DISTRIBUTION", "VERSION", "NOTE"]]
        table += [[_size(item.size), item.name, item.version, notes[item.name]] for item in unused]
        print(_table(table, right={0}))
        required = sum(1 for item in unused if item.required_by)
        print(
            f"Total {_size(total)}. {required} of them are required by other installed "
            "distributions: removing those alone is not safe."
        )
    print(f"Scanned: {', '.join(site_dirs)} (popcon-site itself never reports, so it is left out)")
    return EXIT_OK


BAR_WIDTH = 30
_EIGHTHS = " ▏▎▍▌▋▊▉█"


def _bar(fraction: float, width: int = BAR_WIDTH, blocks: bool = True) -> str:
    """A horizontal bar in eighths of a character, or in ``#`` without ``blocks``."""
    fraction = min(max(fraction, 0.0), 1.0)
    if not blocks:
        return "#" * round(fraction * width)
    eighths = round(fraction * width * 8)
    return "█" * (eighths // 8) + (_EIGHTHS[eighths % 8] if eighths % 8 else "")


def _can_draw_blocks() -> bool:
    """Whether stdout can encode the block characters (not with LANG=C on old Pythons)."""
    try:
        "█▏".encode(getattr(sys.stdout, "encoding", None) or "ascii")
    except (UnicodeEncodeError, LookupError):
        return False
    return True


def cmd_top(args: argparse.Namespace) -> int:
    if args.limit < 1:
        raise CommandError("--limit must be at least 1")
    query = _Query(args)
    reports = query.reports()
    if reports <= 0:
        query.no_reports()
    used = query.libraries()
    ranked = sorted(
        ((name, n) for name, n in used.items() if n > 0), key=lambda item: (-item[1], item[0])
    )
    shown = ranked[: args.limit]
    rows = [
        {
            "rank": i,
            "library": name,
            "processes": round(n, 3),
            "share": round(n / reports, 6),
        }
        for i, (name, n) in enumerate(shown, 1)
    ]
    if args.json:
        _print_json(
            {**query.as_json(), "reports": round(reports, 3), "libraries": len(ranked), "top": rows}
        )
        return EXIT_OK
    print(
        f"Libraries by processes that imported them {query.describe()} "
        f"({round(reports):,} processes reported)"
    )
    if rows:
        peak = float(str(rows[0]["processes"]))
        blocks = _can_draw_blocks()
        table = [["#", "LIBRARY", "PROCESSES", "SHARE", ""]]
        table += [
            [
                str(row["rank"]),
                str(row["library"]),
                f"{round(float(str(row['processes']))):,}",
                f"{float(str(row['share'])) * 100:.1f}%",
                _bar(float(str(row["processes"])) / peak if peak else 0.0, blocks=blocks),
            ]
            for row in rows
        ]
        print(_table(table, right={0, 2, 3}))
    more = len(ranked) - len(shown)
    print(
        f"{len(ranked)} libraries imported; share = processes / all reporting processes"
        + (f"; {more} more not shown (--limit)" if more else "")
    )
    return EXIT_OK
