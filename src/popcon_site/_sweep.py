# The sweeper (issue 22): sends what dead processes' records (popcon_site._record) say,
# as their exit reports would have, and removes them.  Run by `popcon-site sweep` and,
# loaded by _sibling() at exit, by a process that recorded, after its own report.
# A record whose os.lockf() lock can be taken belongs to a dead process; the lock is
# held from that check to the unlink, and the unlink comes before the send: two
# sweepers never both send a record, and a sweeper killed mid-way loses it, never
# sends it twice.  What cannot be a record of this user's is refused (Refused).

import os

import popcon_site
from popcon_site._record import (
    LOOK_AT_EXIT,
    MAGIC,
    MAX_SIZE,
    SUFFIX,
    SWEEP_AT_EXIT,
    directories,
    unquote,
    usable,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Any

    from popcon_site._attribution import Attributor


class Dead:
    # What a dead process's record says.
    __slots__ = ("env", "main", "names", "path", "reports_sent", "sent", "stdlib", "suffixes")

    def __init__(self) -> None:
        self.names: set[str] = set()
        self.sent: set[str] = set()
        self.path: list[str] = []
        self.suffixes: list[str] = []
        self.env: dict[str, str] = {}
        self.stdlib = ""
        self.main = True
        self.reports_sent = False


def parse(data: bytes) -> "Dead | None":
    # None for anything that is not a record this version wrote.
    text = data.partition(b"\0")[0].decode("utf-8", "replace")
    if not text.startswith(MAGIC):
        return None
    dead = Dead()
    lines = text.split("\n")
    for line in lines[1:-1]:  # the last one is empty, or cut short by the kill
        key, _, value = line.partition(" ")
        if key == "!path":
            dead.path.append(unquote(value))
        elif key == "!suffix":
            dead.suffixes.append(value)
        elif key == "!env":
            name, _, raw = value.partition("=")
            dead.env[unquote(name)] = unquote(raw)
        elif key == "!stdlib":
            dead.stdlib = value
        elif key == "!main":
            dead.main = value == "1"
        elif key == "!sent":
            dead.sent.add(value)
        elif key == "!reports":
            dead.reports_sent = True
        elif not line.startswith("!") and line.isidentifier():
            dead.names.add(line)
    return dead


def locate(name: str, dead: Dead) -> "str | None":
    # The file the dead process imported top-level `name` from, as its path finder
    # would have found it (packages, modules, extensions, sourceless); a namespace
    # package has none, as for the exit report.
    for entry in dead.path:
        base = os.path.join(entry, name)
        init = os.path.join(base, "__init__.py")
        if os.path.isfile(init):
            return init
        for suffix in (*dead.suffixes, ".py", ".pyc"):
            if os.path.isfile(base + suffix):
                return base + suffix
    return None


def site_dirs_of(dead: Dead) -> "list[str]":
    # The dead process's counted directories, as _attribution.site_dirs() finds them.
    found: list[str] = []
    for entry in dead.path:
        directory = os.path.normpath(entry)
        if directory in found or directory == dead.stdlib or not os.path.isdir(directory):
            continue
        if os.path.basename(directory) in ("site-packages", "dist-packages"):
            found.append(directory)
            continue
        try:
            listing = os.listdir(directory)
        except OSError:
            continue
        if any(item.endswith((".dist-info", ".egg-info")) for item in listing):
            found.append(directory)
    return found


class Refused(Exception):
    pass


def claim(path: str, build: bool) -> "tuple[str, list[str]] | None":
    # Send a dead process's record and remove it; None when it belongs to a live process
    # (or another sweeper has it).  Raises Refused (one line) for a planted or
    # malformed record.  The lock is held from the check to the unlink: two sweepers
    # never both read a record that is still linked.
    st = _checked(path)
    if st is None:
        return None
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        try:
            os.lockf(fd, os.F_TLOCK, 0)
        except OSError:
            return None  # its process is alive
        opened = os.fstat(fd)
        if opened.st_nlink == 0 or (opened.st_ino, opened.st_dev) != (st.st_ino, st.st_dev):
            return None  # sent and removed by another sweeper meanwhile
        data = os.pread(fd, MAX_SIZE, 0)
        dead = parse(data)
        if dead is None:
            _unlink(path)
            raise Refused(f"{path}: not a record; removed")
        lines, summary = lines_for(dead, build)
        _unlink(path)  # before sending: a sweeper killed now loses it, never sends twice
    finally:
        os.close(fd)
    if lines is None:
        return summary, []
    return send(dead, lines, summary)


def _checked(path: str) -> "os.stat_result | None":
    # The record's lstat(), None when it is gone; Refused when it cannot be a record.
    try:
        st = os.lstat(path)
    except OSError:
        return None
    if (st.st_mode & 0o170000) != 0o100000:
        raise Refused(f"{path}: not a regular file")
    if st.st_uid != os.geteuid() or st.st_mode & 0o077:
        raise Refused(f"{path}: not this user's, or readable by others")
    if st.st_size > MAX_SIZE:
        raise Refused(f"{path}: {st.st_size} bytes, over {MAX_SIZE}")
    return st


def survey(dirs: "list[str] | None" = None) -> "list[tuple[str, str]]":
    # (path, "live" / "dead" / "refused: why") for each record, sending nothing.
    found = []
    for path in records(directories() if dirs is None else dirs):
        try:
            if _checked(path) is None:
                continue
            fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        except Refused as exc:
            found.append((path, f"refused: {exc}"))
            continue
        except OSError:
            continue
        try:
            os.lockf(fd, os.F_TLOCK, 0)
            dead = parse(os.pread(fd, MAX_SIZE, 0))
            found.append((path, "dead" if dead is not None else "refused: not a record"))
        except OSError:
            found.append((path, "live"))
        finally:
            os.close(fd)  # releases the lock taken here, if any
    return found


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def lines_for(dead: Dead, build: bool) -> "tuple[list[str] | None, str]":
    # The lines the dead process's exit report would have sent (less what its
    # checkpoints sent).  Raises NotBuilt when an index is missing and build is False.
    report = popcon_site._sibling("_report")
    try:
        config = report.config_from_environ(dead.env)
    except report.ConfigError as exc:
        return None, f"not sent: {exc}"
    if config.rank0_only and popcon_site._sibling("_select").rank(dead.env):
        return None, "not sent: a rank other than 0"
    if "IPython" in dead.names:
        return None, "not sent: an IPython kernel or shell (its cells' checkpoints report)"
    attributor = _attributor(dead, build)
    files = [path for path in (locate(name, dead) for name in sorted(dead.names)) if path]
    used = attributor.owners(files)
    if config.include or config.exclude:
        used = {name for name in used if config.allows(name)}
    used -= dead.sent
    with_reports = dead.main and not dead.reports_sent
    lines = report.counter_lines(config.prefix, config.reports_name, used, with_reports)
    return lines, ", ".join(sorted(used)) or "no distributions"


def _attributor(dead: Dead, build: bool) -> "Attributor":
    attribution: Any = popcon_site._sibling("_attribution")

    class Reading(attribution.Attributor):  # type: ignore[misc]
        def index(self, site_dir: str) -> "Any":
            if site_dir not in self.indexes:
                self.indexes[site_dir] = attribution.fresh_index(site_dir, build=build)
            return self.indexes[site_dir]

    return Reading(site_dirs_of(dead), dead.stdlib or None)


def is_off(raw: "str | None") -> bool:
    # A false word, as _users reads PYTHON_POPCONTEST_USERS (empty leaves it on).
    return raw is not None and bool(raw.strip()) and raw.strip().lower() in popcon_site.FALSE_WORDS


def send(dead: Dead, lines: "list[str]", summary: str) -> "tuple[str, list[str]]":
    report = popcon_site._sibling("_report")
    config = report.config_from_environ(dead.env)
    if not lines:
        return "nothing to send", []
    address = report.literal_address(config.host, config.port)
    if address is None and not popcon_site.is_literal_host(config.host):
        resolve = popcon_site._sibling("_resolve")
        found = resolve.address_for(config.host, True, report.NETWORK_BUDGET)[0]
        if found is not None:
            address = resolve.with_port(found, config.port)
    if address is None:
        return f"not sent ({summary}): cannot resolve {config.host!r}", []
    # Distinct users (issue 23): a sweeper sweeps only its own user's records, so its
    # cache holds the dead process's user's markers; none if that process had them off.
    users = popcon_site._sibling("_users")
    if not is_off(dead.env.get(users.ENV_USERS)):
        lines = lines + users.extra_lines(config, lines)
    if config.protocol == "tcp":
        from popcon_site._tcp import send_tcp

        try:
            send_tcp(address, lines, report.NETWORK_BUDGET)
        except Exception as exc:
            return f"not sent ({summary}): {type(exc).__name__}", []
        return f"sent {summary}", lines
    payloads = report.datagrams(lines)
    sent = report.send_udp(address, payloads)
    return f"sent {summary} in {sent} of {len(payloads)} datagram(s)", lines


def records(dirs: "list[str]") -> "Iterator[str]":
    # The record files in these directories (the usable ones only).
    for directory in dirs:
        if not usable(directory, create=False):
            continue
        try:
            names = sorted(os.listdir(directory))
        except OSError:
            continue
        for name in names:
            if name.endswith(SUFFIX):
                yield os.path.join(directory, name)


def sweep(build: bool, limit: int, look: int, dirs: "list[str] | None" = None) -> "list[str]":
    # Send and remove dead processes' records; one line per record looked at that was
    # dead or refused.  Raises nothing.
    said: list[str] = []
    sent = 0
    own = f"{os.getpid()}-"  # this process's locks are its own to take again: never swept
    for index, path in enumerate(records(directories() if dirs is None else dirs)):
        if index >= look or sent >= limit:
            break
        if os.path.basename(path).startswith(own):
            continue
        try:
            found = claim(path, build)
        except Refused as exc:
            said.append(f"refused {exc}")
            continue
        except Exception as exc:  # an index to build, a network error: left for later
            said.append(f"{path}: left for later ({type(exc).__name__})")
            continue
        if found is not None:
            sent += 1
            said.append(f"{os.path.basename(path)}: {found[0]}")
    return said


def sweep_at_exit(directory: str) -> None:
    # After the exit report of a process that recorded (a stdlib-only exit pays nothing):
    # send up to SWEEP_AT_EXIT dead records of this user's; never builds an index.
    said = sweep(build=False, limit=SWEEP_AT_EXIT, look=LOOK_AT_EXIT, dirs=[directory])
    if said and popcon_site.is_true(os.environ.get(popcon_site.ENV_DEBUG)):
        try:
            os.write(2, "".join(f"popcon-site: sweep: {line}\n" for line in said).encode())
        except OSError:
            pass
