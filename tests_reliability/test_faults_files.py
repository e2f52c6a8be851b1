"""Fault matrix, file-system half: the cache, the index file, HOME and site-packages.

Root is the victim in the two-user cases (the worst one: a root process must
never write through a link or trust a file another user planted); ``nobody``
is the other user.  Every case: exit status unchanged, nothing printed, the
exit hook's time within bounds, and the right counters on the wire.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

import pytest
from reliability_support import install_exit_timer

from conftest import FEW_MS_BOUND, NO_CACHE_BOUND, exit_delay
from support.envs import Env, enabled, make_env
from support.sinks import UdpSink
from support.users import AS_NOBODY, NOBODY
from support.wire import check_wire

pytestmark = pytest.mark.fault

CODE = "import six, sys; sys.exit(3)"
SIX = ["python_popcon.library_used.six:1|c", "python_popcon.reports:1|c"]
RUNS = 5


def assert_counts(sink: UdpSink, runs: int = RUNS, expected: list[str] = SIX) -> None:
    packets = sink.drain()
    assert len(packets) == runs, packets
    for packet in packets:
        assert check_wire([packet]) == expected


def ro_prefix(paths: list[Path]) -> list[str]:
    """Run the program with ``paths`` read-only, in a mount namespace of its own."""
    binds = " && ".join(
        f"mount --bind {shlex.quote(str(p))} {shlex.quote(str(p))} && "
        f"mount -o remount,ro,bind {shlex.quote(str(p))}"
        for p in paths
    )
    return [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        f'{binds} && exec "$@"',
        "sh",
    ]


def cache_of(home: Path) -> Path:
    return home / ".cache" / "popcon-site"


def real_index(env: Env, sink: UdpSink, home: Path) -> Path:
    """Let the environment build its index once; returns the file."""
    proc = env.run("-c", "import six", env=enabled(sink, home))
    assert (proc.returncode, proc.stderr) == (0, "")
    sink.drain()
    (index,) = cache_of(home).glob("*.idx")
    return index


# -- the user's cache directory ---------------------------------------------------------


def test_cache_directory_read_only(relenv: Env, sink: UdpSink, home: Path, tmp_path: Path) -> None:
    cache = cache_of(home)
    cache.mkdir(parents=True, mode=0o700)
    delay = exit_delay(
        relenv, CODE, enabled(sink, home), tmp_path / "t", status=3, prefix=ro_prefix([cache])
    )
    assert delay <= NO_CACHE_BOUND, delay
    assert_counts(sink)
    assert list(cache.iterdir()) == []


def test_cache_directory_read_only_with_a_warm_index(
    relenv: Env, sink: UdpSink, home: Path, tmp_path: Path
) -> None:
    real_index(relenv, sink, home)
    delay = exit_delay(
        relenv,
        CODE,
        enabled(sink, home),
        tmp_path / "t",
        status=3,
        prefix=ro_prefix([cache_of(home)]),
    )
    assert delay <= FEW_MS_BOUND, delay
    assert_counts(sink)


def test_cache_directory_full(relenv: Env, sink: UdpSink, home: Path, tmp_path: Path) -> None:
    """A 64 KiB tmpfs filled to the last block: the write fails, no temp file is left."""
    cache = cache_of(home)
    cache.mkdir(parents=True, mode=0o700)
    listing = tmp_path / "listing"
    script = (
        f"mount -t tmpfs -o size=64k,mode=0700 tmpfs {cache} && "
        f"(dd if=/dev/zero of={cache}/fill bs=4k >/dev/null 2>&1; true) && "
        f'df -k {cache} | tail -1 > {listing}.df; "$@"; rc=$?; ls -a {cache} > {listing}; exit $rc'
    )
    prefix = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh"]
    delay = exit_delay(relenv, CODE, enabled(sink, home), tmp_path / "t", status=3, prefix=prefix)
    assert delay <= NO_CACHE_BOUND, delay
    assert_counts(sink)
    assert listing.with_suffix(".df").read_text().split()[3] == "0", "the tmpfs was full"
    assert listing.read_text().split() == [".", "..", "fill"], "no temp file left behind"


def test_cache_directory_owned_by_another_user(
    relenv: Env, sink: UdpSink, home: Path, tmp_path: Path
) -> None:
    """Another user's directory, with an index file of theirs that lies: neither is used."""
    index = real_index(relenv, sink, home)
    index.write_text(index.read_text().replace("\nsix.py\nsix\n", "\nsix.py\nattrs\n"))
    for path in (index, index.parent):
        os.chown(path, NOBODY, NOBODY)
    before = index.read_bytes()
    delay = exit_delay(relenv, CODE, enabled(sink, home), tmp_path / "t", status=3)
    assert delay <= NO_CACHE_BOUND, delay
    assert_counts(sink)
    assert [p.name for p in index.parent.iterdir()] == [index.name]
    assert index.read_bytes() == before


def test_symlinked_cache_directory_planted_by_another_user(
    relenv: Env, sink: UdpSink, home: Path, tmp_path: Path, world_tmp: Path
) -> None:
    """PYTHON_POPCONTEST_CACHE_DIR in a shared sticky directory, pre-empted by a symlink."""
    shared = world_tmp / "scratch"
    shared.mkdir()
    shared.chmod(0o1777)
    victim = world_tmp / "victim"
    victim.mkdir(mode=0o700)
    (victim / "precious").write_text("keep me\n")
    link = shared / "popcon-cache"
    link.symlink_to(victim)
    os.lchown(link, NOBODY, NOBODY)
    variables = enabled(sink, home, PYTHON_POPCONTEST_CACHE_DIR=str(link))
    delay = exit_delay(relenv, CODE, variables, tmp_path / "t", status=3)
    assert delay <= NO_CACHE_BOUND, delay
    assert_counts(sink)
    assert [p.name for p in victim.iterdir()] == ["precious"]
    assert link.is_symlink()


@pytest.fixture
def shared_cache(world_tmp: Path, relenv: Env, sink: UdpSink, home: Path) -> tuple[Path, str]:
    """An admin-made world-writable sticky cache directory (like /tmp); returns it and the
    index file name that the environment's processes look for in it."""
    scratch = home / "scratch"
    scratch.mkdir()
    index = real_index(relenv, sink, scratch)
    shared = world_tmp / "popcon-cache"
    shared.mkdir()
    shared.chmod(0o1777)
    return shared, index.name


def test_index_symlink_planted_in_a_shared_cache(
    relenv: Env, sink: UdpSink, home: Path, tmp_path: Path, world_tmp: Path, shared_cache
) -> None:
    shared, name = shared_cache
    victim = world_tmp / "victim-file"
    victim.write_text("keep me\n")
    victim.chmod(0o600)
    link = shared / name
    link.symlink_to(victim)
    os.lchown(link, NOBODY, NOBODY)
    variables = enabled(sink, home, PYTHON_POPCONTEST_CACHE_DIR=str(shared))
    delay = exit_delay(relenv, CODE, variables, tmp_path / "t", status=3)
    assert delay <= NO_CACHE_BOUND, delay
    assert_counts(sink)
    assert victim.read_text() == "keep me\n"
    assert link.is_symlink() and sorted(p.name for p in shared.iterdir()) == [name]


def test_hostile_index_planted_in_a_shared_cache(
    relenv: Env, sink: UdpSink, home: Path, tmp_path: Path, shared_cache
) -> None:
    """Another user's well-formed index that credits six to someone else is never trusted."""
    shared, name = shared_cache
    good = (home / "scratch" / ".cache" / "popcon-site" / name).read_text()
    planted = shared / name
    planted.write_text(good.replace("\nsix.py\nsix\n", "\nsix.py\nattrs\n"))
    os.chown(planted, NOBODY, NOBODY)
    variables = enabled(sink, home, PYTHON_POPCONTEST_CACHE_DIR=str(shared))
    delay = exit_delay(relenv, CODE, variables, tmp_path / "t", status=3)
    assert delay <= NO_CACHE_BOUND, delay
    assert_counts(sink)


def test_fifo_planted_in_a_shared_cache(
    relenv: Env, sink: UdpSink, home: Path, shared_cache
) -> None:
    shared, name = shared_cache
    fifo = shared / name
    os.mkfifo(fifo)
    os.chown(fifo, NOBODY, NOBODY)
    variables = enabled(sink, home, PYTHON_POPCONTEST_CACHE_DIR=str(shared))
    try:
        proc = relenv.run("-c", CODE, env=variables, timeout=5)
    except subprocess.TimeoutExpired:
        pytest.fail("the process never exited: it is blocked opening the FIFO")
    assert (proc.returncode, proc.stdout, proc.stderr) == (3, "", "")
    assert_counts(sink, runs=1)


def test_fifo_in_own_cache(relenv: Env, sink: UdpSink, home: Path) -> None:
    index = real_index(relenv, sink, home)
    index.unlink()
    os.mkfifo(index, 0o600)
    try:
        proc = relenv.run("-c", CODE, env=enabled(sink, home), timeout=5)
    except subprocess.TimeoutExpired:
        pytest.fail("the process never exited: it is blocked opening the FIFO")
    assert (proc.returncode, proc.stdout, proc.stderr) == (3, "", "")


CORRUPTIONS = {
    "empty": lambda good: b"",
    "truncated": lambda good: good[: len(good) // 2],
    "truncated-at-a-line": lambda good: good[: good.rindex(b"\n", 0, len(good) - 1) + 1],
    "garbage": lambda good: os.urandom(4096),
    "not-utf8": lambda good: good.replace(b"popcon-site-index", b"popcon-site-\xff\xfeindex", 1),
    "other-format-version": lambda good: good.replace(b"index 1\n", b"index 9\n", 1),
    "lying-root-count": lambda good: good.replace(b"\n0\n", b"\n99999999999999999999\n", 1),
    "huge-root-count": lambda good: good.replace(b"\n0\n", b"\n" + b"9" * 5000 + b"\n", 1),
    "unicode-digit-count": lambda good: good.replace(b"\n0\n", "\n\u00b2\n".encode(), 1),
    "nul-bytes": lambda good: good.replace(b"\n", b"\n\x00", 3),
    "pickle": lambda good: b"cos\nsystem\n(S'touch /tmp/popcon-pwned'\ntR.",
    "python-code": lambda good: b"__import__('os').system('touch /tmp/popcon-pwned')\n",
}


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_corrupt_index_in_own_cache(
    relenv: Env, sink: UdpSink, home: Path, tmp_path: Path, corruption: str
) -> None:
    """Refused, rebuilt and replaced by a good one; no code from it ever runs."""
    index = real_index(relenv, sink, home)
    good = index.read_bytes()
    index.write_bytes(CORRUPTIONS[corruption](good))
    delay = exit_delay(relenv, CODE, enabled(sink, home), tmp_path / "t", status=3, runs=1)
    assert delay <= NO_CACHE_BOUND, delay
    assert_counts(sink, runs=1)
    assert index.read_bytes() == good, "the bad file is replaced by a rebuilt one"
    assert not Path("/tmp/popcon-pwned").exists()


@pytest.mark.parametrize("kind", ["directory", "sparse-64MiB+1", "dangling-symlink", "dev-zero"])
def test_index_path_is_not_a_small_regular_file(
    relenv: Env, sink: UdpSink, home: Path, tmp_path: Path, kind: str
) -> None:
    index = real_index(relenv, sink, home)
    index.unlink()
    if kind == "directory":
        index.mkdir()
    elif kind == "sparse-64MiB+1":
        with index.open("wb") as stream:
            stream.truncate(64 * 1024 * 1024 + 1)
    elif kind == "dangling-symlink":
        index.symlink_to(tmp_path / "nowhere")
    else:
        index.symlink_to("/dev/zero")
    delay = exit_delay(relenv, CODE, enabled(sink, home), tmp_path / "t", status=3, runs=1)
    assert delay <= NO_CACHE_BOUND, delay
    assert_counts(sink, runs=1)


# -- HOME and site-packages ---------------------------------------------------------------


def test_home_unwritable_for_an_ordinary_user(
    world_env: Env, sink: UdpSink, world_tmp: Path, tmp_path: Path
) -> None:
    """HOME belongs to root (0755): ``nobody`` cannot create ~/.cache, builds in memory."""
    home = world_tmp / "root-owned-home"
    home.mkdir(mode=0o755)
    variables = enabled(sink, home)
    del variables["XDG_CACHE_HOME"]
    timer = world_tmp / "times"
    delay = exit_delay(world_env, CODE, variables, timer, status=3, prefix=AS_NOBODY)
    assert delay <= NO_CACHE_BOUND, delay
    assert_counts(sink)
    assert list(home.iterdir()) == []


def test_another_users_cache_is_not_trusted_by_an_ordinary_user(
    world_env: Env, sink: UdpSink, world_tmp: Path
) -> None:
    """nobody's XDG cache holds a root-owned index that lies: ignored, nothing written."""
    home = world_tmp / "nobody-home"
    home.mkdir()
    os.chown(home, NOBODY, NOBODY)
    scratch = world_tmp / "scratch"
    scratch.mkdir()
    index = real_index(world_env, sink, scratch)
    cache = home / ".cache" / "popcon-site"
    cache.mkdir(parents=True, mode=0o755)
    os.chown(home / ".cache", NOBODY, NOBODY)  # the user's own ~/.cache, root's popcon-site
    planted = cache / index.name
    planted.write_text(index.read_text().replace("\nsix.py\nsix\n", "\nsix.py\nattrs\n"))
    timer = world_tmp / "times"
    delay = exit_delay(world_env, CODE, enabled(sink, home), timer, status=3, prefix=AS_NOBODY)
    assert delay <= NO_CACHE_BOUND, delay
    assert_counts(sink)
    assert [p.name for p in cache.iterdir()] == [index.name]


def test_site_packages_read_only(relenv: Env, sink: UdpSink, home: Path, tmp_path: Path) -> None:
    prefix = ro_prefix([relenv.site_packages])
    delay = exit_delay(relenv, CODE, enabled(sink, home), tmp_path / "t", status=3, prefix=prefix)
    assert delay <= FEW_MS_BOUND, delay  # the first run wrote the user cache; the median is warm
    assert_counts(sink)


def test_system_index_serves_read_only_homes(
    tmp_path: Path, wheel: Path, sink: UdpSink, home: Path
) -> None:
    """The README's deployment: ``popcon-site index --system``, then nothing is built or written."""
    env = make_env(tmp_path / "venv")
    env.install(str(wheel), "six")
    install_exit_timer(env.site_packages)
    index_cmd = subprocess.run(
        [str(env.root / "bin" / "popcon-site"), "index", "--system"],
        capture_output=True,
        text=True,
    )
    assert index_cmd.returncode == 0, index_cmd
    read_only = [home, env.site_packages, env.root / "share"]
    delay = exit_delay(
        env, CODE, enabled(sink, home), tmp_path / "t", status=3, prefix=ro_prefix(read_only)
    )
    assert delay <= FEW_MS_BOUND, delay
    assert_counts(sink)
    assert list(home.iterdir()) == []
