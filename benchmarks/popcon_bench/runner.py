"""Spawn one benchmarked process and time its phases; interleave variants in rounds."""

from __future__ import annotations

import os
import random
import select
import shutil
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

MARK_TIMEOUT = 300.0


class BenchError(RuntimeError):
    pass


class UdpSink:
    """A real UDP socket on 127.0.0.1 that every variant reports to; drained between runs."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 * 1024 * 1024)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.port: int = self.sock.getsockname()[1]

    def drain(self, wait: float = 0.0) -> list[bytes]:
        packets: list[bytes] = []
        if wait:
            select.select([self.sock], [], [], wait)
        while True:
            try:
                packets.append(self.sock.recv(65535))
            except BlockingIOError:
                return packets

    def close(self) -> None:
        self.sock.close()


@dataclass
class Sample:
    """One run: phase durations in nanoseconds, peak RSS in KiB."""

    start_ns: int
    body_ns: int
    exit_ns: int
    total_ns: int
    cpu_ns: int  # user + system CPU time of the process (wait4): robust to other load
    maxrss_kb: int
    hook_ns: int | None
    datagrams: int


@dataclass
class Variant:
    """One way of running a workload: which environment, which extra variables."""

    name: str
    python: str
    env: dict[str, str]
    rounds: int
    cold: bool = False  # fresh, empty index cache directory for every run
    samples: list[tuple[int, Sample]] = field(default_factory=list)  # (round, sample)


def measure_once(python: str, argv: list[str], env: dict[str, str], stderr_path: Path) -> Sample:
    """Spawn ``python argv``; stdout to /dev/null, stderr to a file, marks on fd 3."""
    read_fd, write_fd = os.pipe()  # both close-on-exec; the dup2 to 3 is inherited
    actions = [
        (os.POSIX_SPAWN_DUP2, write_fd, 3),
        (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
        (os.POSIX_SPAWN_OPEN, 2, str(stderr_path), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644),
    ]
    try:
        started = time.perf_counter_ns()
        pid = os.posix_spawn(python, [python, *argv], env, file_actions=actions)
    finally:
        os.close(write_fd)
    try:
        first, t_start = _read_mark(read_fd, pid)
        second, t_end = _read_mark(read_fd, pid)
        _pid, status, usage = os.wait4(pid, 0)
        ended = time.perf_counter_ns()
        rest = _read_rest(read_fd)
    finally:
        os.close(read_fd)
    marks = first + second
    code = os.waitstatus_to_exitcode(status)
    if code != 0 or marks != b"se":
        tail = stderr_path.read_text(errors="replace")[-2000:]
        raise BenchError(f"{python} {argv} exited {code}, marks {marks!r}:\n{tail}")
    hook_ns = None
    for part in rest.split(b";"):
        if part.startswith(b"h"):
            hook_ns = int(part[1:])
    return Sample(
        start_ns=t_start - started,
        body_ns=t_end - t_start,
        exit_ns=ended - t_end,
        total_ns=ended - started,
        cpu_ns=round((usage.ru_utime + usage.ru_stime) * 1e9),
        maxrss_kb=usage.ru_maxrss,
        hook_ns=hook_ns,
        datagrams=0,
    )


def _read_mark(fd: int, pid: int) -> tuple[bytes, int]:
    """One mark byte and when it arrived (b"" at end of file: the child died early)."""
    ready, _, _ = select.select([fd], [], [], MARK_TIMEOUT)
    if not ready:
        os.kill(pid, 9)
        raise BenchError(f"no mark from pid {pid} within {MARK_TIMEOUT} s")
    data = os.read(fd, 1)
    return data, time.perf_counter_ns()


def _read_rest(fd: int) -> bytes:
    os.set_blocking(fd, False)
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 4096)
        except BlockingIOError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def run_interleaved(
    variants: list[Variant],
    argv: list[str],
    work: Path,
    sink: UdpSink,
    rng: random.Random,
    warmup: int = 1,
    progress: Callable[[str], None] | None = None,
) -> None:
    """Round after round, every variant that still needs runs goes once, in a random order.

    The first ``warmup`` rounds are run and thrown away (page cache, .pyc, index).
    """
    stderr_path = work / "stderr.txt"
    cold_root = work / "cache" / "cold"
    total_rounds = max(v.rounds for v in variants) + warmup
    for round_index in range(total_rounds):
        due = [v for v in variants if round_index < v.rounds + warmup]
        rng.shuffle(due)
        for variant in due:
            env = dict(variant.env)
            cold_dir = None
            if variant.cold:
                cold_dir = cold_root / uuid.uuid4().hex
                cold_dir.mkdir(parents=True)
                env["PYTHON_POPCONTEST_CACHE_DIR"] = str(cold_dir)
            if variant.name == "newusers":  # a user's first process of the month (issue 23)
                users = Path(env["PYTHON_POPCONTEST_CACHE_DIR"]) / "users"
                shutil.rmtree(users, ignore_errors=True)
            sink.drain()
            sample = measure_once(variant.python, argv, env, stderr_path)
            sample.datagrams = len(sink.drain())
            if cold_dir is not None:
                if not any(cold_dir.glob("*.idx")):
                    raise BenchError(f"{variant.name}: the cold run wrote no index")
                shutil.rmtree(cold_dir)
            if round_index >= warmup:
                variant.samples.append((round_index - warmup, sample))
        if progress is not None:
            progress(f"round {round_index + 1}/{total_rounds}")
