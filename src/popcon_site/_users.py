# Distinct users (issue 23): once per user, calendar month (UTC) and distribution a
# process also sends ``<PARENT>.library_users.<name>:1|c``, and once per user and month
# ``<PARENT>.users:1|c`` with its reports.  Summed over a month they count people, and
# nothing that names a user leaves the machine: the memory of what was sent stays in
# the user's own cache directory.
#
# Layout: ``<cache>/users/YYYY-MM/`` (0700) holds one empty file per name sent this
# month, plus USER_MARKER for the user (normalized names never start with "-").  At the
# point of sending, once per process and month: one lstat and one listdir of that
# directory; a name new this month is claimed with O_CREAT|O_EXCL (through a checked
# descriptor of the directory) before its line goes out, so two processes sharing a
# home (two nodes) send it once.  A claim that fails (read-only or missing home, a
# directory not ours) sends nothing.
#
# Loaded by popcon_site._sibling from the exit report and from checkpoints (no import
# lock), only when something is about to be sent.  Loads _index only to make this
# month's directory (a stdlib-only process has not loaded it: ~0.2 ms saved).

import os
import sys
import time

import popcon_site

TYPE_CHECKING = False
if TYPE_CHECKING:
    from popcon_site._report import Config

ENV_USERS = "PYTHON_POPCONTEST_USERS"  # default on; a false word turns user counters off
USER_MARKER = "-user"
USERS_SUBDIR = "users"

# What this process knows was claimed: (euid, month directory) -> names.
_known: "dict[tuple[int, str], set[str]]" = {}


def names_for(prefix: str) -> "tuple[str, str] | None":
    # (library_users base, users counter) for this prefix; None when they would
    # collide with the prefix's own lines (its last segment is one of ours).
    parent, dot, last = prefix.rpartition(".")
    if last in ("users", "library_users"):
        return None
    return parent + dot + "library_users", parent + dot + "users"


def disabled_reason() -> str:
    # Why user counters are off by configuration; "" when they are on.
    raw = os.environ.get(ENV_USERS)
    if raw is not None and raw.strip().lower() in popcon_site.FALSE_WORDS and raw.strip():
        return f"{ENV_USERS}={raw.strip()}"
    return ""


def month_dir(cache_dir: str, now: "float | None" = None) -> str:
    return os.path.join(cache_dir, USERS_SUBDIR, time.strftime("%Y-%m", time.gmtime(now)))


def extra_lines(config: "Config", lines: "list[str]") -> "list[str]":
    # The user lines to send along with ``lines`` (counter_lines' output), each
    # claimed first.  Never raises.
    try:
        if disabled_reason():
            return []
        bases = names_for(config.prefix)
        if bases is None:
            return []
        start = len(config.prefix) + 1
        wanted = [
            line[start:-4]
            for line in lines
            if line.startswith(config.prefix + ".") and line.endswith(":1|c")
        ]
        if f"{config.reports_name}:1|c" in lines:
            wanted.append(USER_MARKER)
        if not wanted:
            return []
        claimed = claim(wanted)
    except Exception:
        return []
    library_base, users_name = bases
    return [
        f"{users_name}:1|c" if name == USER_MARKER else f"{library_base}.{name}:1|c"
        for name in claimed
        if name == USER_MARKER or popcon_site.is_safe_name(name)
    ]


def cache_dir() -> "str | None":
    # popcon_site._index.user_cache_dir(), without loading _index when it is not loaded
    # yet (tests/test_users.py keeps the two equal).
    index = sys.modules.get("popcon_site._index")
    if index is not None:
        found: str | None = index.user_cache_dir()
        return found
    env = os.environ
    explicit = env.get(popcon_site.ENV_CACHE_DIR)
    if explicit:
        return explicit if os.path.isabs(explicit) else None
    xdg = env.get("XDG_CACHE_HOME")
    if xdg and os.path.isabs(xdg):
        return os.path.join(xdg, "popcon-site")
    try:
        home = os.path.expanduser("~")
    except Exception:
        return None
    if not os.path.isabs(home) or home == "/":
        return None
    return os.path.join(home, ".cache", "popcon-site")


def claim(names: "list[str]") -> "list[str]":
    # The names this call claimed for this month (new to the user this month).
    cache = cache_dir()
    if cache is None:
        return []
    directory = month_dir(cache)
    key = (os.geteuid(), directory)
    known = _known.get(key)
    if known is None:
        listing = _listing(directory)  # the one small read: lstat + listdir
        if listing is None:
            index = popcon_site._sibling("_index")  # once a month: make the directory
            if not (index.private_dir(cache) and index.private_dir(directory)):
                return []
            _remove_other_months(os.path.dirname(directory), os.path.basename(directory))
            listing = _listing(directory)
            if listing is None:
                return []
        known = _known[key] = listing
    new = [
        name
        for name in names
        if name not in known and (name == USER_MARKER or popcon_site.is_safe_name(name))
    ]
    if not new:
        return []  # nothing new this month: no write
    fd = _open_dir(directory)  # claims go through a checked descriptor, never the path
    if fd is None:
        return []
    try:
        claimed = []
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        for name in new:
            try:
                os.close(os.open(name, flags, 0o600, dir_fd=fd))
            except FileExistsError:
                known.add(name)  # another process of this user sent it
                continue
            except OSError:
                break  # not writable: send no user counters
            known.add(name)
            claimed.append(name)
        return claimed
    finally:
        os.close(fd)


def _listing(directory: str) -> "set[str] | None":
    # The month directory's names when it is a real directory of ours that nobody else
    # may write to (lstat: a symlink is refused); None otherwise.
    try:
        info = os.lstat(directory)
        if (info.st_mode & 0o170000) != 0o040000 or info.st_uid != os.geteuid():
            return None
        if info.st_mode & 0o022:
            return None
        return set(os.listdir(directory))
    except (OSError, ValueError):
        return None


def _open_dir(directory: str) -> "int | None":
    # An fd on the month directory when it is a real directory of ours that nobody else
    # may write to; None otherwise (missing, a symlink, someone else's).
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except (OSError, ValueError):
        return None
    try:
        info = os.fstat(fd)
    except OSError:
        os.close(fd)
        return None
    if info.st_uid != os.geteuid() or info.st_mode & 0o022:
        os.close(fd)
        return None
    return fd


def _remove_other_months(users_dir: str, keep: str) -> None:
    # Older months' markers go when a new month's directory is made.  Only directories
    # named YYYY-MM, not symlinks; files inside are unlinked (a symlink only loses itself).
    try:
        entries = os.listdir(users_dir)
    except OSError:
        return
    for entry in entries:
        if entry == keep or len(entry) != 7 or entry[4] != "-":
            continue
        path = os.path.join(users_dir, entry)
        fd = _open_dir(path)
        if fd is None:
            continue
        try:
            for name in os.listdir(fd):
                try:
                    os.unlink(name, dir_fd=fd)
                except OSError:
                    pass
        except OSError:
            pass
        finally:
            os.close(fd)
        try:
            os.rmdir(path)
        except OSError:
            pass


def status(prefix: str) -> "tuple[bool, str]":
    # (counted, why) for ``popcon-site status``: one line's worth.
    why = disabled_reason()
    if why:
        return False, f"not counted: turned off ({why})"
    if names_for(prefix) is None:
        return False, f"not counted: the prefix {prefix} ends in a name of the user counters"
    index = popcon_site._sibling("_index")
    cache_dir = index.user_cache_dir()
    if cache_dir is None:
        return False, "not counted: no cache directory (no home)"
    directory = month_dir(cache_dir)
    fd = _open_dir(directory)
    if fd is None and not (index.private_dir(cache_dir) and index.private_dir(directory)):
        return False, f"not counted: {directory} cannot be made ours (read-only or not ours)"
    if fd is None:
        _remove_other_months(os.path.dirname(directory), os.path.basename(directory))
        fd = _open_dir(directory)
        if fd is None:
            return False, f"not counted: {directory} is not a private directory of ours"
    try:
        writable = os.access(directory, os.W_OK)
        count = len(os.listdir(fd))
    finally:
        os.close(fd)
    if not writable:
        return False, f"not counted: {directory} is not writable"
    return True, f"counted: once a month per library ({count} sent this month, {directory})"
