# The persistent module -> distribution index, one file per site directory.
#
# An index maps paths relative to a site directory to the normalized name of
# the distribution that installed them, using the shortest path prefix that
# only one distribution owns (``yaml`` -> pyyaml, ``google/protobuf`` ->
# protobuf, ``six.py`` -> six).  It also lists the source directories of
# editable installs.  It is stamped with the site directory's modification
# time, which changes whenever an installer adds or removes a distribution, so
# a stale index is detected with one ``stat``.
#
# The file is plain text, one value per line, read without any parser that
# could run code.  Loading happens at exit, so this module imports nothing that
# the interpreter has not loaded already (and no ``from __future__``).

import os
import stat
import sys

from popcon_site import ENV_CACHE_DIR  # loaded already: the hook imported it

FORMAT = "popcon-site-index 1"
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping

MAX_INDEX_BYTES = 64 * 1024 * 1024  # far above any real environment; bounds a hostile file
SYSTEM_INDEX_SUBDIR = os.path.join("share", "popcon-site", "index")


class SiteIndex:
    # Who owns which path inside one site directory.

    __slots__ = ("complete", "fallback", "owners", "roots", "site_dir", "stamp")

    def __init__(
        self, site_dir: str, stamp: str, owners: "dict[str, str]", roots: "dict[str, str]"
    ) -> None:
        self.site_dir = site_dir
        self.stamp = stamp
        self.owners = owners  # "yaml" / "google/protobuf" / "six.py" -> "pyyaml"
        self.roots = roots  # source directory of an editable install -> distribution
        self.fallback: dict[str, str] = {}  # owners of the stale index this one replaced
        self.complete = True  # False: built while some distributions could not be read

    def owner_of(self, relative_parts: "list[str]") -> "str | None":
        # The distribution owning a path inside the site directory, if any.
        for owners in (self.owners, self.fallback):
            key = ""
            for part in relative_parts:
                key = f"{key}/{part}" if key else part
                owner = owners.get(key)
                if owner is not None:
                    return owner
        return None

    def to_text(self) -> str:
        lines = [FORMAT, self.site_dir, self.stamp, str(len(self.roots))]
        for mapping in (self.roots, self.owners):
            for key in sorted(mapping):
                lines += (key, mapping[key])
        return "\n".join(lines) + "\n"


def parse(text: str, site_dir: str, stamp: "str | None") -> "SiteIndex | None":
    # The index in ``text`` if it is well formed and fresh for ``site_dir``, else None.
    #
    # ``stamp=None`` accepts an index of any age (the fallback for removed distributions).
    return _parse(text, site_dir, stamp)[0]


def _parse(text: str, site_dir: str, stamp: "str | None") -> "tuple[SiteIndex | None, str]":
    # (index, "") or (None, why it was refused).
    lines = text.split("\n")
    if len(lines) < 5 or lines[0] != FORMAT or lines[1] != site_dir:
        return None, "not an index of this site directory"
    if stamp is not None and lines[2] != stamp:
        return None, "STALE: built before the last install or uninstall"
    if lines.pop() != "" or not lines[3].isdigit():
        return None, "malformed"
    end_of_roots = 4 + 2 * int(lines[3])
    if end_of_roots > len(lines) or (len(lines) - end_of_roots) % 2:
        return None, "malformed"
    roots = lines[4:end_of_roots]
    owners = lines[end_of_roots:]
    index = SiteIndex(
        site_dir,
        lines[2],
        dict(zip(owners[::2], owners[1::2])),
        dict(zip(roots[::2], roots[1::2])),
    )
    return index, ""


def stamp_of(site_dir: str) -> "str | None":
    # Changes whenever an entry is added to or removed from the directory.
    try:
        st = os.stat(site_dir)
    except (OSError, ValueError):
        return None
    return f"{st.st_mtime_ns}:{st.st_ino}:{st.st_dev}"


def file_name(site_dir: str) -> str:
    # A stable file name for a site directory (FNV-1a: no hashlib import at exit).
    value = 0xCBF29CE484222325
    for byte in os.fsencode(site_dir):
        value = ((value ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return f"{value:016x}.idx"


def user_cache_dir(environ: "Mapping[str, str] | None" = None) -> "str | None":
    # ``$PYTHON_POPCONTEST_CACHE_DIR``, else ``$XDG_CACHE_HOME/popcon-site``, else ~/.cache.
    env = os.environ if environ is None else environ
    explicit = env.get(ENV_CACHE_DIR)
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


def system_index_dirs() -> "list[str]":
    # Where ``popcon-site index --system`` writes (the first), then where earlier
    # releases wrote: under the prefix popcon-site is installed in, which pip chose
    # for this interpreter (``/usr/local`` for Debian's system Python, not dpkg's
    # ``/usr``), then ``sys.prefix`` and the base prefix.
    dirs = []
    for prefix in (install_prefix(), sys.prefix, sys.base_prefix):
        if prefix is not None and os.path.join(prefix, SYSTEM_INDEX_SUBDIR) not in dirs:
            dirs.append(os.path.join(prefix, SYSTEM_INDEX_SUBDIR))
    return dirs


def install_prefix() -> "str | None":
    # PREFIX of PREFIX/lib/pythonX.Y/site-packages/popcon_site/, the installed layout;
    # None for an editable install or any other layout.
    package = os.path.dirname(getattr(sys.modules.get("popcon_site"), "__file__", None) or "")
    site_dir = os.path.dirname(package)
    version_dir = os.path.dirname(site_dir)
    lib = os.path.dirname(version_dir)
    if (
        os.path.basename(site_dir) in ("site-packages", "dist-packages")
        and os.path.basename(version_dir).startswith("python")
        and os.path.basename(lib) in ("lib", "lib64")
    ):
        return os.path.dirname(lib)
    return None


def load(directory: str, site_dir: str, stamp: "str | None", shared: bool) -> "SiteIndex | None":
    # Read a fresh index for ``site_dir`` from ``directory``; None if absent, stale or bad.
    return read(directory, site_dir, stamp, shared)[0]


def read(
    directory: str, site_dir: str, stamp: "str | None", shared: bool
) -> "tuple[SiteIndex | None, str]":
    # (index, "") or (None, why not): ``status`` shows the reason a process has.
    #
    # A user cache file must belong to this user; a shared (system) one to root,
    # this user or the owner of the directory it sits in.  Symlinks are refused.
    trusted = {os.geteuid()}
    if shared:
        try:
            trusted.update((0, os.stat(directory).st_uid))
        except (OSError, ValueError) as exc:
            return None, f"unreadable: {getattr(exc, 'strerror', None) or exc}"
    data, why = read_trusted(os.path.join(directory, file_name(site_dir)), trusted, MAX_INDEX_BYTES)
    if data is None:
        return None, why
    text = data.decode("utf-8", "surrogateescape")
    try:
        return _parse(text, site_dir, stamp)
    except (ValueError, MemoryError):
        return None, "malformed"


def read_trusted(path: str, trusted: "set[int]", limit: int) -> "tuple[bytes | None, str]":
    # (contents, "") of a regular file owned by a trusted uid, at most ``limit`` bytes;
    # else (None, why not).  Symlinks are refused, a FIFO planted there is not waited on.
    try:
        flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOFOLLOW", 0)
        fd = os.open(path, flags | getattr(os, "O_CLOEXEC", 0))
    except (OSError, ValueError) as exc:
        if os.path.islink(path):
            return None, "refused: a symbolic link"
        return None, f"unreadable: {getattr(exc, 'strerror', None) or exc}"
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return None, "refused: not a regular file"
        if info.st_uid not in trusted:
            return None, f"refused: owned by uid {info.st_uid}, whom this user does not trust"
        if info.st_size > limit:
            return None, f"refused: larger than {_size_text(limit)}"
        chunks = []
        remaining = info.st_size + 1
        while remaining > 0:
            chunk = os.read(fd, remaining)
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
        return b"".join(chunks), ""
    except (OSError, ValueError) as exc:
        return None, f"unreadable: {getattr(exc, 'strerror', None) or exc}"
    finally:
        os.close(fd)


def _size_text(size: int) -> str:
    return f"{size // 1024 // 1024} MiB" if size >= 1024 * 1024 else f"{size} bytes"


def save(index: "SiteIndex", directory: str, shared: bool = False) -> bool:
    # Write atomically (temp file + rename) so concurrent writers never leave a torn file.
    #
    # User caches are private (0700 directory, 0600 file) and must be a real
    # directory owned by this user; shared ones are readable by everyone.
    if not shared:
        if not private_dir(directory):
            return False
        return write_atomically(directory, file_name(index.site_dir), _index_bytes(index))
    try:  # inside the environment: create it all (a venv has no share/)
        os.makedirs(directory, 0o755, exist_ok=True)
        # makedirs obeys the umask (0o755 is 0o700 under umask 077): every user of
        # the environment must be able to reach the index (index/, popcon-site/, share/).
        parent = os.path.dirname(directory)
        for path in (directory, parent, os.path.dirname(parent)):
            info = os.stat(path)
            if info.st_uid == os.geteuid() and info.st_mode & 0o055 != 0o055:
                os.chmod(path, stat.S_IMODE(info.st_mode) | 0o055)
        info = os.lstat(directory)
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
            return False
    except (OSError, ValueError):
        return False
    return write_atomically(directory, file_name(index.site_dir), _index_bytes(index), 0o644, True)


def _index_bytes(index: "SiteIndex") -> bytes:
    return index.to_text().encode("utf-8", "surrogateescape")


def private_dir(directory: str) -> bool:
    # Creates ``directory`` (0700, and at most its parent); True when it is a real
    # directory of this user's that nobody else may write to.
    try:
        _make_dirs(directory, 0o700)
        info = os.lstat(directory)
    except (OSError, ValueError):
        return False
    return stat.S_ISDIR(info.st_mode) and info.st_uid == os.geteuid() and not info.st_mode & 0o022


def write_atomically(
    directory: str, name: str, data: bytes, file_mode: int = 0o600, chmod: bool = False
) -> bool:
    # Temp file + rename: concurrent writers and readers never see a torn file.
    final = os.path.join(directory, name)
    temp = f"{final}.{os.getpid()}.{os.urandom(4).hex()}.tmp"
    try:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
        fd = os.open(temp, flags | getattr(os, "O_CLOEXEC", 0), file_mode)
    except (OSError, ValueError):
        return False
    try:
        with os.fdopen(fd, "wb") as stream:
            stream.write(data)
        if chmod:
            os.chmod(temp, file_mode)  # the umask may have narrowed it
        os.replace(temp, final)
        return True
    except (OSError, ValueError):
        try:
            os.unlink(temp)
        except OSError:
            pass
        return False


def remove_system_indexes(directory: str) -> "list[str]":
    # Delete the index files in ``directory`` and the folders index --system created
    # there, when empty; returns what was removed.  Raises OSError on a refusal.
    removed = []
    if os.path.isdir(directory):
        for name in sorted(os.listdir(directory)):
            if name.endswith(".idx"):
                os.unlink(os.path.join(directory, name))
                removed.append(os.path.join(directory, name))
    path = directory
    for _level in range(3):  # index/, popcon-site/, share/: only if nothing else is there
        try:
            os.rmdir(path)
        except OSError:
            break
        removed.append(path)
        path = os.path.dirname(path)
    return removed


def _make_dirs(directory: str, mode: int) -> None:
    # Create the directory and at most its parent (``~/.cache``), never a missing home.
    parent = os.path.dirname(directory)
    if not os.path.isdir(os.path.dirname(parent)):
        raise FileNotFoundError(directory)
    for path in (parent, directory):
        try:
            os.mkdir(path, mode)
        except FileExistsError:
            pass
