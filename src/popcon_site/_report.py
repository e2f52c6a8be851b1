# Exit half of popcon-site: read the configuration, attribute imports, send counters.
#
# Imported once per process, at exit, after the imported names were
# snapshotted, so its own imports (``_socket``, and ``importlib_metadata`` or
# ``statsd`` when it needs them) are never counted.  Configuration, attribution
# and the wire format share this one module because each extra module import
# costs every reporting process ~0.2 ms; the index file (``_index``) and its
# builder (``_build``) load only when a process imported something installed.
# No ``from __future__`` import: that alone would cost another module import.

import os
import sys
import time

from popcon_site import TRUE_WORDS  # loaded already: the hook imported it

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping

    from popcon_site import Session
    from popcon_site._index import SiteIndex
    from popcon_site._resolve import Address

# -- configuration --------------------------------------------------------------

ENV_ENABLE = "PYTHON_POPCONTEST_ENABLE"
ENV_DEBUG = "PYTHON_POPCONTEST_DEBUG"
ENV_HOST = "PYTHON_POPCONTEST_STATSD_HOST"
ENV_PORT = "PYTHON_POPCONTEST_STATSD_PORT"
ENV_PREFIX = "PYTHON_POPCONTEST_STATSD_PREFIX"
ENV_PROTOCOL = "PYTHON_POPCONTEST_STATSD_PROTOCOL"
ENV_INCLUDE = "PYTHON_POPCONTEST_INCLUDE"
ENV_EXCLUDE = "PYTHON_POPCONTEST_EXCLUDE"
ENV_RANK0_ONLY = "PYTHON_POPCONTEST_RANK0_ONLY"

# Set by Slurm, PMI/PMIx-based launchers, Open MPI and MVAPICH for every rank.
RANK_VARIABLES = (
    "SLURM_PROCID",
    "PMI_RANK",
    "PMIX_RANK",
    "OMPI_COMM_WORLD_RANK",
    "MV2_COMM_WORLD_RANK",
)

DEFAULT_HOST = "localhost"
DEFAULT_PORT = 8125
DEFAULT_PREFIX = "python_popcon.library_used"
DEFAULT_PROTOCOL = "udp"

FALSE_WORDS = ("", "0", "false", "no", "off")

_PREFIX_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")
_PATTERN_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-*?[]!")
_MAX_PREFIX = 200
_MAX_HOST = 253


class ConfigError(ValueError):
    # A ``PYTHON_POPCONTEST_*`` value that cannot be used; the message is one line.
    pass


class Config:
    # Where and under which names this process reports.

    __slots__ = (
        "debug",
        "exclude",
        "host",
        "include",
        "port",
        "prefix",
        "protocol",
        "rank0_only",
        "reports_name",
    )

    def __init__(
        self,
        host: str,
        port: int,
        prefix: str,
        protocol: str,
        debug: bool = False,
        include: "tuple[str, ...]" = (),
        exclude: "tuple[str, ...]" = (),
        rank0_only: bool = False,
    ) -> None:
        self.host = host
        self.port = port
        self.prefix = prefix
        self.protocol = protocol
        self.debug = debug
        self.include = include
        self.exclude = exclude
        self.rank0_only = rank0_only
        self.reports_name = reports_name_for(prefix)

    def allows(self, name: str) -> bool:
        # INCLUDE (when set) must match and EXCLUDE must not.
        if self.include and not matches_any(name, self.include):
            return False
        return not matches_any(name, self.exclude)


def is_true(value: "str | None") -> bool:
    return value is not None and value.strip().lower() in TRUE_WORDS


def reports_name_for(prefix: str) -> str:
    # The per-process counter is a sibling of the prefix's last segment.
    #
    # ``python_popcon.library_used`` -> ``python_popcon.reports``;
    # ``python_popcon.namespace.X.library_used`` -> ``python_popcon.namespace.X.reports``;
    # a one-segment prefix such as ``popcon`` -> ``reports``.
    parent, dot, _last = prefix.rpartition(".")
    return parent + dot + "reports"


def parse_port(raw: str) -> int:
    text = raw.strip()
    if not (text.isascii() and text.isdigit()) or len(text) > 5:
        raise ConfigError(f"{ENV_PORT}={_shorten(raw)} is not a port number")
    port = int(text)
    if not 0 < port < 65536:
        raise ConfigError(f"{ENV_PORT}={_shorten(raw)} is outside 1-65535")
    return port


def parse_prefix(raw: str) -> str:
    prefix = raw.strip()
    if (
        not prefix
        or len(prefix) > _MAX_PREFIX
        or any(not segment for segment in prefix.split("."))
        or not set(prefix.replace(".", "")) <= _PREFIX_CHARS
    ):
        raise ConfigError(
            f"{ENV_PREFIX}={_shorten(raw)} must be dot-separated segments of "
            "letters, digits, '_' or '-'"
        )
    return prefix


def parse_host(raw: str) -> str:
    host = raw.strip()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]  # "[::1]" as written in URLs
    if (
        not host
        or len(host) > _MAX_HOST
        or not host.isascii()
        or not host.isprintable()
        or any(c in host for c in " /\\#@")
    ):
        raise ConfigError(f"{ENV_HOST}={_shorten(raw)} is not a host name or IP address")
    return host


def parse_protocol(raw: str) -> str:
    protocol = raw.strip().lower()
    if protocol not in ("udp", "tcp"):
        raise ConfigError(f"{ENV_PROTOCOL}={_shorten(raw)} must be udp or tcp")
    return protocol


def parse_flag(name: str, raw: str) -> bool:
    word = raw.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise ConfigError(f"{name}={_shorten(raw)} must be one of 1/true/yes/on or 0/false/no/off")


def parse_patterns(name: str, raw: str) -> "tuple[str, ...]":
    # Comma-separated distribution names (normalized here) or fnmatch patterns.
    patterns = []
    for item in raw.split(","):
        pattern = normalize_name(item.strip())
        if not pattern:
            continue
        if not set(pattern) <= _PATTERN_CHARS or len(pattern) > MAX_NAME:
            raise ConfigError(f"{name}: {_shorten(item)} is not a distribution name or pattern")
        patterns.append(pattern)
    return tuple(patterns)


def normalize_name(name: str) -> str:
    # PEP 503 normalization without ``re`` (not loaded in most processes at exit).
    text = name.lower().replace("_", "-").replace(".", "-")
    while "--" in text:
        text = text.replace("--", "-")
    return text


def matches_any(name: str, patterns: "tuple[str, ...]") -> bool:
    for pattern in patterns:
        if pattern == name:
            return True
        if any(c in pattern for c in "*?["):
            from fnmatch import fnmatchcase  # only for admins who use wildcards

            if fnmatchcase(name, pattern):
                return True
    return False


def rank(environ: "Mapping[str, str]") -> "int | None":
    # This process's MPI/Slurm rank, from the launcher's variables; None outside a job.
    for variable in RANK_VARIABLES:
        value = environ.get(variable, "").strip()
        if value.isascii() and value.isdigit() and len(value) <= 18:  # int() refuses > 4300 digits
            return int(value)
    return None


def config_from_environ(environ: "Mapping[str, str] | None" = None) -> Config:
    # Read the configuration; raises ConfigError (only) on an invalid value.
    env = os.environ if environ is None else environ
    try:
        return Config(
            host=parse_host(env.get(ENV_HOST, DEFAULT_HOST)),
            port=parse_port(env.get(ENV_PORT, str(DEFAULT_PORT))),
            prefix=parse_prefix(env.get(ENV_PREFIX, DEFAULT_PREFIX)),
            protocol=parse_protocol(env.get(ENV_PROTOCOL, DEFAULT_PROTOCOL)),
            debug=parse_flag(ENV_DEBUG, env.get(ENV_DEBUG, "")),
            include=parse_patterns(ENV_INCLUDE, env.get(ENV_INCLUDE, "")),
            exclude=parse_patterns(ENV_EXCLUDE, env.get(ENV_EXCLUDE, "")),
            rank0_only=parse_flag(ENV_RANK0_ONLY, env.get(ENV_RANK0_ONLY, "")),
        )
    except ConfigError:
        raise
    except Exception as exc:  # e.g. surrogates from undecodable bytes
        raise ConfigError(f"unusable PYTHON_POPCONTEST_* value ({type(exc).__name__})") from None


def _shorten(raw: str, limit: int = 40) -> str:
    # ascii() of a value, cut so that one bad variable still gives one short line.
    return ascii(raw if len(raw) <= limit else raw[:limit] + "...")


# -- attribution ----------------------------------------------------------------

OWN_DISTRIBUTION = "popcon-site"


def module_file(module: object) -> "str | None":
    # The file a module object was loaded from, read without triggering lazy loaders.
    #
    # ``sys.modules`` may hold lazy modules or arbitrary objects; reading the
    # instance dictionary directly runs no ``__getattr__`` of theirs.
    try:
        path = object.__getattribute__(module, "__dict__").get("__file__")
    except Exception:
        return None
    return path if isinstance(path, str) and os.path.isabs(path) else None


def locate_unloaded(name: str) -> "str | None":
    # Where a module that left ``sys.modules`` would be loaded from (path-based finders).
    finder = getattr(sys.modules.get("_frozen_importlib_external"), "PathFinder", None)
    if finder is None:
        return None
    search_path = None
    parts = name.split(".")
    for depth in range(1, len(parts) + 1):
        try:
            spec = finder.find_spec(".".join(parts[:depth]), search_path)
        except Exception:
            return None
        if spec is None:
            return None
        is_last = depth == len(parts) or not spec.submodule_search_locations
        if spec.has_location and isinstance(spec.origin, str) and is_last:
            return str(spec.origin)
        search_path = spec.submodule_search_locations
        if search_path is None:
            return None
    return None


def module_files(
    names: "Iterable[str]", site_dirs: "list[str]", seen: "Iterable[str]" = ()
) -> "set[str]":
    # The files of these modules; blocked (None) entries and the stdlib have none.
    #
    # ``seen``: names the watcher saw looked up.  An entry the program replaced after
    # importing it (by None, or by an object that is not a module) is looked up again.
    modules = sys.modules
    looked_up = set(seen)
    stdlib_names: frozenset[str] = getattr(sys, "stdlib_module_names", frozenset())
    files = set()
    for name in names:
        top = name.partition(".")[0]
        if top in stdlib_names:
            continue
        module = modules.get(name)
        if module is not None:
            path = module_file(module)
            replaced = path is None and not isinstance(module, type(sys)) and name in looked_up
            if replaced and _listed_in(top, site_dirs):
                path = locate_unloaded(name)  # imported, then replaced by another object
        elif name in modules and name not in looked_up:
            continue  # set to None before any import: blocked, never loaded
        elif _listed_in(top, site_dirs):
            path = locate_unloaded(name)  # imported, then deleted (or set to None)
        else:
            continue  # a failed import (an optional dependency probed), or not attributable
        if path is not None:
            files.add(path)
    return files


def _listed_in(top: str, site_dirs: "list[str]") -> bool:
    # Could ``top`` live in a site directory?  Asks the import system's cached listings.
    #
    # Most names seen but no longer loaded are failed imports; looking each one up
    # again would cost a burst of stat calls.  A few set lookups per name instead,
    # whatever the size of the directory.
    import _imp

    candidates = [top, top + ".py", top + ".pyc", *(top + s for s in _imp.extension_suffixes())]
    cache = sys.path_importer_cache
    for directory in site_dirs:
        entries = getattr(cache.get(directory), "_path_cache", None)
        if entries is None:
            return True  # no listing to ask: look it up properly
        if any(candidate in entries for candidate in candidates):
            return True
    return False


def site_dirs() -> "list[str]":
    # The site directories of this interpreter (environment, base when visible, user site).
    #
    # Also any ``site-packages`` / ``dist-packages`` directory on ``sys.path``:
    # with ``-S`` or in an embedded interpreter the program adds them itself.
    dirs = [
        entry
        for entry in sys.path
        if isinstance(entry, str) and os.path.basename(entry) in ("site-packages", "dist-packages")
    ]
    try:
        import site

        dirs += site.getsitepackages()
        if site.ENABLE_USER_SITE and not sys.flags.no_user_site:
            dirs.append(site.getusersitepackages())
    except Exception:
        pass
    unique: list[str] = []
    for directory in dirs:
        directory = os.path.normpath(directory)
        if directory not in unique and os.path.isdir(directory):
            unique.append(directory)
    return unique


def stdlib_dir() -> "str | None":
    directory = getattr(sys, "_stdlib_dir", None)
    if not directory:
        os_file = getattr(os, "__file__", None)
        directory = os.path.dirname(os_file) if os_file else None
    return directory


class Attributor:
    # Maps module files to distribution names, loading each site index at most once.

    def __init__(self, site_dirs: "list[str]", stdlib: "str | None") -> None:
        # Longest first, so that a site directory nested in another one wins.
        self.site_dirs = sorted(site_dirs, key=len, reverse=True)
        self.stdlib = stdlib
        self.indexes: dict[str, SiteIndex | None] = {}
        self.built: list[str] = []

    @classmethod
    def for_this_process(cls) -> "Attributor":
        return cls(site_dirs(), stdlib_dir())

    def distributions(self, files: "Iterable[str]") -> "set[str]":
        found: set[str] = set()
        outside: list[str] = []
        for path in files:
            owner, decided = self.owner_in_site_dir(path)
            if owner is not None:
                found.add(owner)
            elif not decided:
                outside.append(path)
        if outside:
            roots = self.editable_roots()
            for path in outside:
                owner = owner_by_root(path, roots)
                if owner is not None:
                    found.add(owner)
        found.discard(OWN_DISTRIBUTION)
        return found

    def site_dir_of(self, path: str) -> "str | None":
        for site_dir in self.site_dirs:
            if path.startswith(site_dir) and path[len(site_dir) : len(site_dir) + 1] == os.sep:
                return site_dir
        return None

    def in_stdlib(self, path: str) -> bool:
        return bool(self.stdlib) and path.startswith(f"{self.stdlib}{os.sep}")

    def owner_in_site_dir(self, path: str) -> "tuple[str | None, bool]":
        # (owner, decided): decided is False when only editable roots can tell.
        site_dir = self.site_dir_of(path)
        if site_dir is not None:
            index = self.index(site_dir)
            if index is None:
                return None, True
            return index.owner_of(path[len(site_dir) + 1 :].split(os.sep)), True
        return None, self.in_stdlib(path)

    def editable_roots(self) -> "list[tuple[str, str]]":
        roots: dict[str, str] = {}
        for site_dir in self.site_dirs:
            index = self.index(site_dir)
            if index is not None:
                for root, owner in index.roots.items():
                    roots.setdefault(root, owner)
        return sorted(roots.items(), key=lambda item: len(item[0]), reverse=True)

    def index(self, site_dir: str) -> "SiteIndex | None":
        if site_dir not in self.indexes:
            from popcon_site import _index

            found, built = _index.fresh_index(site_dir)
            if built:
                self.built.append(site_dir)
            self.indexes[site_dir] = found
        return self.indexes[site_dir]


def owner_by_root(path: str, roots: "list[tuple[str, str]]") -> "str | None":
    for root, owner in roots:
        if path.startswith(root) and path[len(root) : len(root) + 1] == os.sep:
            return owner
    return None


# -- the wire -------------------------------------------------------------------

# The statsd client's pipeline default: a payload that fits any sane MTU.
MAX_DATAGRAM = 512
MAX_NAME = 200  # PyPI has no longer names; caps what one line can cost.
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-")


def is_safe_name(name: str) -> bool:
    # True for a normalized name that can only ever be one metric component.
    #
    # Checked right before sending, whatever the index says, so that metadata
    # can never inject a statsd line.
    return (
        0 < len(name) <= MAX_NAME
        and set(name) <= _NAME_CHARS
        and name[0] != "-"
        and name[-1] != "-"
    )


def counter_lines(
    prefix: str, reports_name: str, names: "Iterable[str]", with_reports: bool = True
) -> "list[str]":
    # One ``+1`` counter per distribution (sorted), then the per-process ``reports``.
    lines = [f"{prefix}.{name}:1|c" for name in sorted(set(names)) if is_safe_name(name)]
    if with_reports:
        lines.append(f"{reports_name}:1|c")
    return lines


def in_main_interpreter() -> bool:
    # False in a subinterpreter (3.12+): it runs the start-up hook too, and reports.
    import _thread

    check = getattr(_thread, "_is_main_interpreter", None)
    return True if check is None else bool(check())


def datagrams(lines: "list[str]", max_size: int = MAX_DATAGRAM) -> "list[bytes]":
    # Join lines into payloads exactly as ``statsd``'s UDP pipeline does.
    #
    # A line starts a new datagram when ``len(data) + 1 + len(line) >= max_size``.
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


def literal_address(host: str, port: int) -> "Address | None":
    # The address of an IP literal or ``localhost``; None when a lookup is needed.
    #
    # ``localhost`` means 127.0.0.1, as the ``statsd`` client (IPv4 by default)
    # and popularity-contest resolved it; skipping the resolver saves ~2 ms.
    import _socket

    if host == "localhost":
        return (_socket.AF_INET, ("127.0.0.1", port))
    for family in (_socket.AF_INET, _socket.AF_INET6):
        try:
            _socket.inet_pton(family, host)
        except (OSError, ValueError):
            continue
        return (family, (host, port) if family == _socket.AF_INET else (host, port, 0, 0))
    return None


def send_udp(address: "Address", payloads: "list[bytes]") -> int:
    # Send each payload; returns how many the kernel accepted.  Never blocks.
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


def send_tcp(address: "Address", lines: "list[str]", timeout: float) -> None:
    # All lines over one TCP connection, with the ``statsd`` package's TCP client.
    #
    # The TCP transport costs the import of ``statsd`` (~15 ms) at exit: the
    # price of a connection-oriented transport, chosen by the admin.  Raises
    # OSError when the server cannot be reached within ``timeout``.
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


# -- the report -------------------------------------------------------------------

# Longest the report may wait on the network (resolver, TCP connect and send).
NETWORK_BUDGET = 0.15  # the host process may exit at most 0.25 s late


def report(session: "Session", names: "set[str]") -> str:
    # Attribute and send; returns the one-line summary shown in debug mode.
    try:
        config = config_from_environ()
    except ConfigError as exc:
        return f"not reporting: {exc}"
    if config.rank0_only:
        job_rank = rank(os.environ)
        if job_rank:
            return f"not reporting: rank {job_rank} of a job ({ENV_RANK0_ONLY}: rank 0 reports)"
    attributor = Attributor.for_this_process()
    used = attributor.distributions(module_files(names, attributor.site_dirs, session.watcher.seen))
    if session.host_modules:  # an IPython kernel: its own distributions never count
        host = module_files(session.host_modules, attributor.site_dirs)
        used -= attributor.distributions(host)
    if config.include or config.exclude:
        used = {name for name in used if config.allows(name)}
    # A subinterpreter sends what it imported; the process is counted once, by the main one.
    lines = counter_lines(config.prefix, config.reports_name, used, in_main_interpreter())
    if not lines:
        return "nothing imported in this subinterpreter"
    summary = ", ".join(sorted(used)) or "no distributions"

    started = time.monotonic()
    address = literal_address(config.host, config.port)
    if address is None and session.resolution is not None:
        found = session.resolution.wait(NETWORK_BUDGET)  # type: ignore[attr-defined]
        if found is not None:
            family, sockaddr = found
            address = (family, (sockaddr[0], config.port, *sockaddr[2:]))
    if address is None:
        return f"not sent ({summary}): cannot resolve {config.host!r}"
    target = f"{_format_address(address)} over {config.protocol}"
    if config.protocol == "tcp":
        remaining = NETWORK_BUDGET - (time.monotonic() - started)
        try:
            send_tcp(address, lines, remaining)
        except Exception as exc:
            return f"not sent ({summary}) to {target}: {type(exc).__name__}: {exc}"
        return f"sent {summary} + reports to {target}"
    payloads = datagrams(lines)
    sent = send_udp(address, payloads)
    if sent != len(payloads):
        return f"sent {sent} of {len(payloads)} datagrams ({summary} + reports) to {target}"
    return f"sent {summary} + reports to {target} in {sent} datagram(s)"


def _format_address(address: "Address") -> str:
    host, port = address[1][0], address[1][1]
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


# -- process life cycle (called from popcon_site) ----------------------------------


def at_exit(session: "Session", names: "set[str]") -> None:
    # Report, print the debug line if asked, and keep an unhandled Ctrl-C's exit.
    try:
        summary = report(session, names)
    except BaseException as exc:  # never let the host process see it
        summary = f"report failed: {type(exc).__name__}: {exc}"
    if is_true(os.environ.get(ENV_DEBUG)):
        try:
            os.write(2, f"popcon-site: {summary}\n".encode("utf-8", "backslashreplace"))
        except BaseException:
            pass
    _keep_sigint_exit(session)


def _keep_sigint_exit(session: "Session") -> None:
    # A process ended by an unhandled Ctrl-C must still die by SIGINT (status 130).
    #
    # CPython remembers the unhandled KeyboardInterrupt in a flag that any exec()
    # of a string clears, and building the index runs one (namedtuple() inside
    # importlib-metadata).  Raising it again through exec() sets the flag again.
    # Not in the REPL or a kernel, where sys.last_value may be an earlier input's.
    try:
        last = getattr(sys, "last_exc", None) or getattr(sys, "last_value", None)
        interactive = hasattr(sys, "ps1") or session.host_modules
        if isinstance(last, KeyboardInterrupt) and not interactive:
            exec("raise KeyboardInterrupt")
    except BaseException:  # the KeyboardInterrupt raised on purpose, or anything else
        pass


def after_fork_in_child(session: "Session", report_hook: "Callable[[], None]") -> None:
    # A lookup still running in the parent is gone; multiprocessing children need a hook.
    resolution = session.resolution
    if resolution is not None:
        session.resolution = resolution.for_child()  # type: ignore[attr-defined]
    # multiprocessing's fork and forkserver children end with os._exit(), which
    # skips atexit; they do run multiprocessing's own exit finalizers.
    mp_util = sys.modules.get("multiprocessing.util")
    if mp_util is not None:
        mp_util.register_after_fork(report_hook, _report_from_multiprocessing_exit)


def _report_from_multiprocessing_exit(callback: object) -> None:
    # Runs in a multiprocessing child after its finalizer registry was reset.
    mp_util = sys.modules.get("multiprocessing.util")
    if mp_util is not None:
        mp_util.Finalize(None, callback, exitpriority=-1000)
