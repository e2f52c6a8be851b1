# Exit half of popcon-site: read the configuration, find the files of the imported
# modules, send counters.  Also the one home of the wire format: counter_lines() and
# datagrams() write it, parse_lines() reads it back (``watch``, the inventory script
# and the tests use these, never a parser of their own).
#
# Imported once per process, at exit, after the imported names were
# snapshotted, so its own imports (``_socket``, and ``importlib_metadata`` or
# ``statsd`` when it needs them) are never counted.  This module holds only what
# every report needs, in one file: a process that imported nothing from outside
# the standard library loads nothing else (each module import costs ~0.2 ms here,
# plus ~10 us per KB of bytecode).  Attribution (``_attribution``), the admin's
# selections (``_select``) and TCP (``_tcp``) load only when needed.
# No ``from __future__`` import: that alone would cost another module import.

import os
import sys

# Loaded already: the hook imported it.
import popcon_site
from popcon_site import (
    DEFAULT_HOST,
    DEFAULT_PORT,
    DEFAULT_PREFIX,
    DEFAULT_PROTOCOL,
    ENV_DEBUG,
    ENV_EXCLUDE,
    ENV_HOST,
    ENV_INCLUDE,
    ENV_PORT,
    ENV_PREFIX,
    ENV_PROTOCOL,
    ENV_RANK0_ONLY,
    FALSE_WORDS,
    TRUE_WORDS,
    is_literal_host,
    is_safe_name,
    is_true,
    split_host_port,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from popcon_site import Session
    from popcon_site._resolve import Address

# -- configuration --------------------------------------------------------------

_PREFIX_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")
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
        from popcon_site._select import matches_any

        if self.include and not matches_any(name, self.include):
            return False
        return not matches_any(name, self.exclude)


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


def parse_host(raw: str) -> "tuple[str, int | None]":
    # (host, port when written as host:port, [v6]:port).
    host, port_text = split_host_port(raw)
    port = None
    if port_text is not None:
        try:
            port = parse_port(port_text)
        except ConfigError:
            raise ConfigError(f"{ENV_HOST}={_shorten(raw)} has a bad port") from None
    if (
        not host
        or len(host) > _MAX_HOST
        or not host.isascii()
        or not host.isprintable()
        or any(c in host for c in " /\\#@")
    ):
        raise ConfigError(f"{ENV_HOST}={_shorten(raw)} is not a host name or IP address")
    return host, port


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
    # Comma-separated distribution names or fnmatch patterns (see _select).
    if not raw.strip():
        return ()
    from popcon_site import _select

    try:
        return _select.parse_patterns(raw)
    except ValueError as exc:
        item = _shorten(str(exc.args[0]))
        raise ConfigError(f"{name}: {item} is not a distribution name or pattern") from None


def config_from_environ(environ: "Mapping[str, str] | None" = None) -> Config:
    # Read the configuration; raises ConfigError (only) on an invalid value.
    env = os.environ if environ is None else environ
    try:
        host, host_port = parse_host(env.get(ENV_HOST, DEFAULT_HOST))
        port = parse_port(env.get(ENV_PORT, str(DEFAULT_PORT)))
        if host_port is not None:
            if ENV_PORT in env and port != host_port:
                raise ConfigError(f"{ENV_HOST} says port {host_port}, {ENV_PORT} says {port}")
            port = host_port
        return Config(
            host=host,
            port=port,
            prefix=parse_prefix(env.get(ENV_PREFIX, DEFAULT_PREFIX)),
            protocol=parse_protocol(env.get(ENV_PROTOCOL, DEFAULT_PROTOCOL)),
            # Debug output is a diagnosis, never a reason to stop counting: an unknown
            # word leaves it off (``status`` says so, see debug_problem()).
            debug=is_true(env.get(ENV_DEBUG)),
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


# -- which imported modules came from files -------------------------------------


def module_file(module: object) -> "str | None":
    # The file a module object was loaded from, read without triggering lazy loaders.
    # ``sys.modules`` may hold lazy modules or arbitrary objects; reading the
    # instance dictionary directly runs no ``__getattr__`` of theirs.
    try:
        path = object.__getattribute__(module, "__dict__").get("__file__")
    except Exception:
        return None
    return path if isinstance(path, str) and os.path.isabs(path) else None


def module_files(names: "Iterable[str]", seen: "Iterable[str]" = ()) -> "set[str]":
    # The files of these modules; blocked (None) entries and the stdlib have none.
    # ``seen``: names the watcher saw an import ask for (never a mere find_spec()).  An
    # entry the program replaced after importing it (by None, or by an object that is
    # not a module) is looked up again.
    modules = sys.modules
    looked_up = set(seen)
    stdlib_names: frozenset[str] = getattr(sys, "stdlib_module_names", frozenset())
    listings: list[object] | None = None
    files = set()
    for name in names:
        top = name.partition(".")[0]
        if top in stdlib_names:
            continue
        module = modules.get(name)
        if module is not None:
            path = module_file(module)
            if path is None and not isinstance(module, type(sys)) and name in looked_up:
                listings = listings if listings is not None else _path_listings()
                if _listed_in(top, listings):  # imported, then replaced by another object
                    from popcon_site._attribution import locate_unloaded

                    path = locate_unloaded(name)
        elif name in modules and name not in looked_up:
            continue  # set to None before any import: blocked, never loaded
        else:
            listings = listings if listings is not None else _path_listings()
            if _listed_in(top, listings):  # imported, then deleted (or set to None)
                from popcon_site._attribution import locate_unloaded

                path = locate_unloaded(name)
            else:
                continue  # a failed import (an optional dependency probed)
        if path is not None:
            files.add(path)
    return files


def _path_listings() -> "list[object]":
    # What the import system last listed of each sys.path directory; None where it
    # cannot tell (a directory never searched, or whose finder keeps no listing).
    # Entries nothing can come from are left out: nonexistent ones, which the import
    # system caches as None, and non-directories (zip files, path-hook placeholders).
    cache = sys.path_importer_cache
    listings: list[object] = []
    for entry in sys.path:
        if not isinstance(entry, str):
            continue  # the import system skips these too
        if entry == "":
            try:
                entry = os.getcwd()
            except OSError:
                continue
        finder = cache.get(entry)
        if entry in cache and finder is None:
            continue
        listing = getattr(finder, "_path_cache", None)
        if listing is not None:
            listings.append(listing)
        elif os.path.isdir(entry):  # one stat per entry, not per name
            listings.append(None)
    return listings


def _listed_in(top: str, listings: "list[object]") -> bool:
    # Could ``top`` be loaded from a directory on sys.path?
    #
    # Most names seen but no longer loaded are failed imports; looking each one up
    # again would cost a burst of stat calls.  A few set lookups per name instead,
    # whatever the size of the directories.
    import _imp

    candidates = [top, top + ".py", top + ".pyc", *(top + s for s in _imp.extension_suffixes())]
    for entries in listings:
        if not isinstance(entries, (set, frozenset)):
            return True  # no listing to ask: look it up properly
        if any(candidate in entries for candidate in candidates):
            return True
    return False


# -- the wire -------------------------------------------------------------------

# The statsd client's pipeline default: a payload that fits any sane MTU.
MAX_DATAGRAM = 512


def counter_lines(
    prefix: str, reports_name: str, names: "Iterable[str]", with_reports: bool = True
) -> "list[str]":
    # One ``+1`` counter per distribution (sorted), then the per-process ``reports``.
    lines = [f"{prefix}.{name}:1|c" for name in sorted(set(names)) if is_safe_name(name)]
    if with_reports:
        lines.append(f"{reports_name}:1|c")
    return lines


def _is_metric_name(name: str) -> bool:
    return bool(name) and set(name) <= _METRIC_CHARS


_METRIC_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")


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


def installed_gauge_lines(prefix: str, names: "Iterable[str]") -> "list[str]":
    # deploy/inventory's ``<PARENT>.library_installed.<name>:1|g``, PARENT as for reports.
    base = reports_name_for(prefix)[: -len("reports")] + "library_installed"
    return [f"{base}.{name}:1|g" for name in sorted(set(names)) if is_safe_name(name)]


def parse_lines(payloads: "Iterable[bytes]") -> "tuple[dict[str, int], list[str]]":
    # Read datagrams back: (counter name -> sum of its values, lines that are not
    # counters).  The reader of what counter_lines() and datagrams() write.
    counts: dict[str, int] = {}
    other: list[str] = []
    for payload in payloads:
        for line in payload.decode("ascii", "replace").split("\n"):
            name, colon, rest = line.rpartition(":")
            value, bar, kind = rest.partition("|")
            if colon and bar and kind == "c" and value.isdigit() and _is_metric_name(name):
                counts[name] = counts.get(name, 0) + int(value)
            elif line:
                other.append(line)
    return counts, other


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


# -- the report -------------------------------------------------------------------

# Longest the report may wait on the network (resolver, TCP connect and send).
NETWORK_BUDGET = 0.15  # the host process may exit at most 0.25 s late


def attribute_and_send(session: "Session", names: "set[str]") -> str:
    # Attribute and send; returns the one-line summary shown in debug mode.
    try:
        config = config_from_environ()
    except ConfigError as exc:
        return f"not reporting: {exc}"
    if config.rank0_only:
        from popcon_site._select import rank

        job_rank = rank(os.environ)
        if job_rank:
            return f"not reporting: rank {job_rank} of a job ({ENV_RANK0_ONLY}: rank 0 reports)"
    used = used_distributions(module_files(names, session.watcher.seen), session)
    if config.include or config.exclude:
        used = {name for name in used if config.allows(name)}
    used -= session.sent  # sent by a checkpoint (popcon_site._checkpoint) already
    # A subinterpreter sends what it imported; the process is counted once, by the main one.
    with_reports = in_main_interpreter() and not session.reports_sent
    lines = counter_lines(config.prefix, config.reports_name, used, with_reports)
    earlier = _sent_earlier(session)
    if not lines:
        return f"nothing new{earlier}" if earlier else "nothing imported in this subinterpreter"
    summary = ", ".join(sorted(used)) or "no distributions"
    plus = " + reports" if with_reports else ""
    deadline, why = None, ""
    address = literal_address(config.host, config.port)
    if address is None and not is_literal_host(config.host):
        import time

        deadline = time.monotonic() + NETWORK_BUDGET
        # Cached, or looked up by a child process within the budget (_resolve).
        resolve = popcon_site._sibling("_resolve")
        found, why = resolve.address_for(config.host, True, NETWORK_BUDGET)
        if found is not None:
            address = resolve.with_port(found, config.port)
    if address is None:
        return f"not sent ({summary}): cannot resolve {config.host!r}" + (why and f": {why}")
    lines += popcon_site._sibling("_users").extra_lines(config, lines)  # issue 23 (users)
    target = f"{_format_address(address)} over {config.protocol}"
    if config.protocol == "tcp":
        import time

        from popcon_site._tcp import send_tcp

        remaining = NETWORK_BUDGET if deadline is None else deadline - time.monotonic()
        try:
            send_tcp(address, lines, remaining)
        except Exception as exc:
            return f"not sent ({summary}) to {target}: {type(exc).__name__}: {exc}"
        return f"sent {summary}{plus} to {target}{earlier}"
    payloads = datagrams(lines)
    sent = send_udp(address, payloads)
    if sent != len(payloads):
        return f"sent {sent} of {len(payloads)} datagrams ({summary}{plus}) to {target}{earlier}"
    return f"sent {summary}{plus} to {target} in {sent} datagram(s){earlier}"


def _sent_earlier(session: "Session") -> str:
    # For the debug line: what checkpoints sent before the exit report.
    if not session.reports_sent and not session.sent:
        return ""
    names = ", ".join(sorted(session.sent)) or "no distributions"
    return f"; at checkpoints: {names}" + (" + reports" if session.reports_sent else "")


def used_distributions(files: "set[str]", session: "Session") -> "set[str]":
    # The distributions owning these files, less an IPython kernel's own machinery.
    kernel = session.kernel
    if kernel is None and not session.host_modules and "IPython.core.application" in sys.modules:
        # In IPython, the startup files may have stopped before ours (_ipython.late_kernel).
        kernel = session.kernel = popcon_site._sibling("_ipython").late_kernel(at_exit=True)
    if not files and kernel is None:
        return set()  # only the standard library: the attribution code never loads
    from popcon_site._attribution import Attributor

    attributor = Attributor.for_this_process()
    used = attributor.owners(files)
    if kernel is None:
        return used - attributor.owners(module_files(session.host_modules))
    return kernel.counted(used, session.sent, attributor, module_files)


def _format_address(address: "Address") -> str:
    host, port = address[1][0], address[1][1]
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


# -- process life cycle (called from popcon_site) ----------------------------------


def at_exit(session: "Session", names: "set[str]") -> None:
    # Report, print the debug line if asked, and keep an unhandled Ctrl-C's exit.
    try:
        summary = attribute_and_send(session, names)
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
