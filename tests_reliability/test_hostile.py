"""Hostile input: every variable fuzzed (in-process and in real processes), distribution
metadata that tries to inject statsd lines, and hostile index files.

Figures: "inputs fuzzed" counts every generated input that went through, "lines
injected" every line on the wire that is not exactly ``<prefix>.<name>:1|c`` (must be 0).
"""

from __future__ import annotations

import ast
import shutil
import stat
import subprocess
from collections import Counter
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from reliability_support import StatsdDaemon, encode_env, run_in_netns  # noqa: E402

from popcon_site import _index, _report, _select  # noqa: E402
from support.distinfo import write_dist_info  # noqa: E402
from support.envs import Env, base_environ, enabled, make_env  # noqa: E402
from support.sinks import UdpSink  # noqa: E402
from support.users import AS_NOBODY  # noqa: E402
from support.wire import (  # noqa: E402
    LINE,
    PREFIX,
    REPORTS_NAME,
    check_wire,
    counters,
    per_process,
)

VARIABLES = [
    "PYTHON_POPCONTEST_ENABLE",
    "PYTHON_POPCONTEST_STATSD_HOST",
    "PYTHON_POPCONTEST_STATSD_PORT",
    "PYTHON_POPCONTEST_STATSD_PREFIX",
    "PYTHON_POPCONTEST_STATSD_PROTOCOL",
    "PYTHON_POPCONTEST_DEBUG",
    "PYTHON_POPCONTEST_CACHE_DIR",
    "PYTHON_POPCONTEST_INCLUDE",
    "PYTHON_POPCONTEST_EXCLUDE",
    "PYTHON_POPCONTEST_RANK0_ONLY",
]
RANKS = list(_select.RANK_VARIABLES)

# Values as a process sees them: any text, undecodable bytes (surrogateescape), huge ones,
# and the near-valid spellings that reach the deeper code paths.
near_valid = st.sampled_from(
    [
        "1",
        "0",
        "on",
        " TRUE ",
        "udp",
        "tcp",
        "TCP",
        "127.0.0.1",
        "[::1]",
        "::1",
        "localhost",
        "8125",
        "65535",
        "0",
        "65536",
        "python_popcon.library_used",
        "a.b.c",
        "six,attrs",
        "ruamel*",
        "a?c",
        "[!x]*",
        "",
        " ",
        "\t",
        "-",
        ".",
        "..",
    ]
)
undecodable = st.binary(max_size=64).map(lambda b: b.decode("utf-8", "surrogateescape"))
huge = st.builds(lambda s, n: (s or "x") * n, st.text(max_size=8), st.integers(1000, 200_000))
value = st.one_of(near_valid, st.text(max_size=64), undecodable, huge)
environments = st.dictionaries(st.sampled_from(VARIABLES), value)


def check_config(config: _report.Config) -> None:
    """A config that was accepted can only ever produce well-formed statsd lines."""
    assert 0 < config.port < 65536 and config.protocol in ("udp", "tcp")
    assert config.host and config.host.isascii() and config.host.isprintable()
    lines = _report.counter_lines(config.prefix, config.reports_name, ["six", "zope-interface"])
    for payload in _report.datagrams(lines):
        for line in payload.split(b"\n"):
            assert LINE.fullmatch(line), line


@settings(max_examples=1000)
@given(environ=environments)
@example(environ={"PYTHON_POPCONTEST_STATSD_PORT": "9" * 5000})
@example(environ={"PYTHON_POPCONTEST_INCLUDE": "-" * 100_000 + "a"})
@example(environ={"PYTHON_POPCONTEST_STATSD_HOST": "\udcff" * 10})
def test_every_variable_gives_a_config_or_reporting_off(
    environ: dict[str, str], figures: Counter[str]
) -> None:
    figures["inputs fuzzed"] += 1
    try:
        config = _report.config_from_environ(environ)
    except _report.ConfigError as exc:
        assert "\n" not in str(exc) and len(str(exc)) < 1000  # one line, even for astral chars
        return
    check_config(config)
    for name in ("six", "numpy", "a" * 300, "x:1|c"):
        config.allows(name)
    _index.user_cache_dir(environ)


@settings(max_examples=300)
@given(
    ranks=st.dictionaries(
        st.sampled_from(RANKS),
        st.one_of(st.text(max_size=40), undecodable, st.from_regex(r"\d{1,4000}", fullmatch=True)),
    )
)
def test_rank_variables_never_raise(ranks: dict[str, str], figures: Counter[str]) -> None:
    figures["inputs fuzzed"] += 1
    found = _select.rank(ranks)
    assert found is None or found >= 0
    # Only the first variable set (the innermost launcher's) is ever read.
    first = next((ranks[v].strip() for v in RANKS if ranks.get(v, "").strip()), None)
    assert found is None or found == int(first or "-1")


@pytest.mark.fault
def test_huge_rank_value() -> None:
    assert _select.rank({"SLURM_PROCID": "1" * 5000}) is None  # garbage: no rank, reports


# -- real processes, every variable fuzzed, in a network namespace -----------------------------

process_value = st.one_of(
    near_valid,
    st.sampled_from(["statsd.test", "8125"]),
    st.binary(max_size=48).filter(lambda b: b"\x00" not in b),
    st.text(max_size=48).filter(lambda t: "\x00" not in t),
    st.builds(lambda n: b"y" * n, st.integers(1000, 100_000)),
)
process_environments = st.dictionaries(st.sampled_from(VARIABLES[1:]), process_value)


@pytest.mark.netns
@pytest.mark.usefixtures("netns")
@settings(max_examples=4)
@given(batch=st.lists(process_environments, min_size=25, max_size=25))
def test_fuzzed_variables_in_real_processes(
    relenv: Env,
    home: Path,
    tmp_path_factory: pytest.TempPathFactory,
    batch: list,
    figures: Counter[str],
) -> None:
    """Random bytes (not UTF-8), huge values, random host names (the namespace's own name
    server answers statsd.test and nothing else): status 3, at most one debug line, and
    only well-formed lines on the wire."""
    workdir = tmp_path_factory.mktemp("fuzz")
    jobs = []
    for number, fuzzed in enumerate(batch):
        variables: dict[str, str | bytes] = dict(
            base_environ(HOME=str(home), PYTHON_POPCONTEST_ENABLE="1")
        )
        variables.update(fuzzed)
        code = "import six, attr, sys; sys.exit(3)"
        jobs.append(
            {
                "name": str(number),
                "argv": [str(relenv.python), "-c", code],
                "env": encode_env(variables),
                "timeout": 10,
            }
        )
    dns = {"mode": "answer", "records": {"statsd.test": {"A": ["127.0.0.1"], "AAAA": ["::1"]}}}
    result = run_in_netns({"dns": dns, "jobs": jobs}, workdir)
    for number in range(len(batch)):
        (outcome,) = result["jobs"][str(number)]
        figures["inputs fuzzed"] += 1
        assert outcome["rc"] == 3 and outcome["stdout"] == "", (batch[number], outcome)
        assert outcome["seconds"] < 3, (batch[number], outcome)
        stderr = outcome["stderr"]
        assert stderr == "" or (stderr.startswith("popcon-site: ") and stderr.count("\n") == 1), (
            batch[number],
            stderr,
        )
        for packets in outcome["packets"].values():
            for packet in packets:
                for line in bytes.fromhex(packet).split(b"\n"):
                    if not LINE.fullmatch(line):
                        figures["lines injected"] += 1
                    assert LINE.fullmatch(line), (batch[number], line)


# -- hostile distribution metadata --------------------------------------------------------------

HOSTILE_NAMES = {
    "statsd-colon": "evil:1|c",
    "statsd-pipe": "a|b",
    "statsd-at": "x@y",
    "statsd-hash": "tag#1",
    "statsd-sample": "s:1|c|@0.1",
    "newline-new-header": "a\ninjected.metric:100|c",
    "newline-folded": "evil\n :1|c",
    "carriage-return": "cr\r:1|c",
    "tab": "tab\tname",
    "space": "two words",
    "non-ascii-latin": "café",
    "non-ascii-cjk": "数据",
    "fullwidth": "\uff46\uff55\uff4c\uff4c\uff57\uff49\uff44\uff54\uff48",
    "huge": "h" * 10_000,
    "empty": "",
    "leading-dash": "-lead",
    "only-separators": "._-",
    "twin-dotted": "Foo.Bar",
    "twin-underscore": "foo_bar",
    "dotted-ok": "Ruamel.YAML.Like",
    "plain-ok": "plain-ok",
}
# The metadata parser keeps only the first line of a header ("evil", "cr", "a"): a harmless
# name is left, never a second statsd line.
SENT = {"a", "evil", "cr", "foo-bar", "ruamel-yaml-like", "plain-ok"}


@pytest.fixture(scope="module")
def hostile_env(tmp_path_factory: pytest.TempPathFactory, wheel: Path) -> Env:
    env = make_env(tmp_path_factory.mktemp("hostile") / "venv")
    env.install(str(wheel), "six")
    site = env.site_packages
    for number, (_case, name) in enumerate(sorted(HOSTILE_NAMES.items())):
        write_dist_info(
            site, f"hostile_{number:02d}-1.0.dist-info", name, {f"hmod_{number:02d}.py": "X = 1\n"}
        )
    # RECORD lines that point outside, at another distribution's file, or hold a newline.
    write_dist_info(
        site,
        "grabber-1.0.dist-info",
        "grabber",
        {"grabber_mod.py": "X = 1\n"},
        record_extra=["../../../../etc/passwd,,", "/etc/shadow,,", '"multi\nline.py",,'],
    )
    return env


HOSTILE_CODE = (
    "import sys\n"
    + "".join(f"import hmod_{n:02d}\n" for n in range(len(HOSTILE_NAMES)))
    + "import grabber_mod, six\nsys.exit(3)\n"
)


def test_hostile_names_never_reach_the_wire(
    hostile_env: Env, sink: UdpSink, home: Path, figures: Counter[str]
) -> None:
    proc = hostile_env.run("-c", HOSTILE_CODE, env=enabled(sink, home))
    assert (proc.returncode, proc.stdout, proc.stderr) == (3, "", "")
    packets = sink.drain()
    raw = [line for packet in packets for line in packet.split(b"\n")]
    injected = [line for line in raw if not LINE.fullmatch(line)]
    figures["hostile distribution names tried"] += len(HOSTILE_NAMES)
    figures["lines injected"] += len(injected)
    assert injected == []
    check_wire(packets)
    # Exact totals: the two twins are one counter, sent once.
    expected = {PREFIX + name: 1 for name in SENT | {"grabber", "six"}}
    assert counters(packets) == {**expected, REPORTS_NAME: 1}


def test_hostile_names_into_the_reference_daemon(
    hostile_env: Env, statsd: StatsdDaemon, home: Path
) -> None:
    variables = base_environ(
        HOME=str(home),
        PYTHON_POPCONTEST_ENABLE="1",
        PYTHON_POPCONTEST_STATSD_HOST="127.0.0.1",
        PYTHON_POPCONTEST_STATSD_PORT=str(statsd.port),
    )
    proc = hostile_env.run("-c", HOSTILE_CODE, env=variables)
    assert (proc.returncode, proc.stdout, proc.stderr) == (3, "", "")
    counters = statsd.wait_for("python_popcon.reports", 1)
    assert counters.get("statsd.bad_lines_seen") == 0
    ours = {k: v for k, v in counters.items() if not k.startswith("statsd.")}
    expected = {f"python_popcon.library_used.{n}": 1 for n in SENT | {"grabber", "six"}}
    assert ours == {**expected, "python_popcon.reports": 1}


def test_a_distribution_claiming_another_ones_file_only_costs_that_count(
    hostile_env: Env, sink: UdpSink, home: Path, tmp_path: Path
) -> None:
    """A RECORD that lists six.py makes six.py contested: six goes uncounted, nothing else."""
    site = hostile_env.site_packages
    write_dist_info(
        site, "claimer-1.0.dist-info", "claimer", {"claimer_mod.py": "X = 1\n"}, ["six.py,,"]
    )
    try:
        proc = hostile_env.run(
            "-c", "import six, claimer_mod, sys; sys.exit(3)", env=enabled(sink, home)
        )
        assert (proc.returncode, proc.stdout, proc.stderr) == (3, "", "")
        lines = check_wire(sink.drain())
        assert lines == ["python_popcon.library_used.claimer:1|c", "python_popcon.reports:1|c"]
    finally:
        shutil.rmtree(site / "claimer-1.0.dist-info")
        (site / "claimer_mod.py").unlink()


# -- the index file: data only, private, atomic ----------------------------------------------


def test_index_code_is_data_only() -> None:
    """No pickle, marshal, eval, exec or import machinery on the index's read path."""
    import popcon_site._index as module

    tree = ast.parse(Path(module.__file__).read_text())
    imported = {
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    }
    imported |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert imported <= {"os", "stat", "sys", "collections.abc", "popcon_site"}, imported
    called = {
        node.func.id
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
    }
    assert not called & {"eval", "exec", "compile", "__import__", "loads", "load_module"}, called
    text = Path(module.__file__).read_text()
    assert not any(word in text for word in ("pickle", "marshal", "shelve", "literal_eval")), text


index_lines = st.one_of(
    st.text(max_size=30).map(lambda t: t.replace("\n", "")),
    st.sampled_from(
        ["six.py", "six", "yaml", "pyyaml", "/", "", "..", "a/b/c", "evil:1|c", "x\r", "\udcff"]
    ),
)


@settings(max_examples=800)
@given(
    roots=st.lists(st.tuples(index_lines, index_lines), max_size=5),
    owners=st.lists(st.tuples(index_lines, index_lines), max_size=30),
    count=st.one_of(st.none(), st.text(max_size=6)),
    tail=st.sampled_from(["\n", "", "\n\n", "\nextra\n"]),
    probe=st.lists(index_lines, min_size=1, max_size=4),
)
def test_hostile_index_text_at_worst_gives_wrong_names(
    roots: list, owners: list, count: str | None, tail: str, probe: list, figures: Counter[str]
) -> None:
    """Whatever the file holds: parse never raises beyond what load() catches, lookups never
    raise, and the names it yields never make a malformed line."""
    figures["inputs fuzzed"] += 1
    body = [_index.FORMAT, "/site", "1:2:3", str(len(roots)) if count is None else count]
    for pair in roots + owners:
        body += list(pair)
    text = "\n".join(body) + tail
    try:
        parsed = _index.parse(text, "/site", "1:2:3")
    except (ValueError, MemoryError):
        return  # load() turns these into "no index"
    if parsed is None:
        return
    owner = parsed.owner_of(probe)
    names = [owner] if owner else []
    names += [v for v in parsed.roots.values()]
    for payload in _report.datagrams(_report.counter_lines("p.l", "p.reports", names)):
        for line in payload.split(b"\n"):
            assert LINE.fullmatch(line), line


@pytest.mark.parametrize(
    ("case", "mapping", "expected"),
    [
        ("credits-six-to-numpy", ("six.py", "numpy"), {"numpy"}),
        ("statsd-syntax-owner", ("six.py", "evil:100|c|@0.01"), set()),
        ("newline-in-owner", ("six.py", "evil\npython_popcon.reports"), {"six"}),  # refused
        ("non-utf8-owner", ("six.py", "s\udcffx"), set()),
        ("huge-owner", ("six.py", "o" * 100_000), set()),
        ("root-of-everything", None, {"six"}),
    ],
)
def test_hostile_index_file_in_a_real_process(
    relenv: Env,
    sink: UdpSink,
    home: Path,
    case: str,
    mapping,
    expected: set[str],
    figures: Counter[str],
) -> None:
    """A well-formed, fresh index that lies: wrong or missing counts at most, never harm."""
    proc = relenv.run("-c", "import six", env=enabled(sink, home))
    assert proc.returncode == 0
    sink.drain()
    (index,) = (home / ".cache" / "popcon-site").glob("*.idx")
    text = index.read_bytes().decode("utf-8", "surrogateescape")
    lines = text.split("\n")
    if mapping is None:
        lines[3] = "1"
        lines[4:4] = ["/", "everything"]
    else:
        position = lines.index(mapping[0], 4)
        lines[position + 1] = mapping[1]
    index.write_bytes("\n".join(lines).encode("utf-8", "surrogateescape"))
    proc = relenv.run("-c", "import six, sys; sys.exit(3)", env=enabled(sink, home))
    assert (proc.returncode, proc.stdout, proc.stderr) == (3, "", "")
    packets = sink.drain()
    raw = [line for packet in packets for line in packet.split(b"\n")]
    figures["lines injected"] += sum(1 for line in raw if not LINE.fullmatch(line))
    assert per_process(packets) == [expected]


@pytest.mark.parametrize("umask", [0o000, 0o022, 0o077])
def test_cache_is_private_whatever_the_umask(
    relenv: Env, sink: UdpSink, home: Path, umask: int
) -> None:
    code = f"import os, six; os.umask({umask})"
    proc = relenv.run("-c", code, env=enabled(sink, home))
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "")
    cache = home / ".cache" / "popcon-site"
    (index,) = cache.iterdir()
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700
    assert stat.S_IMODE(index.stat().st_mode) == 0o600
    assert stat.S_IMODE((home / ".cache").stat().st_mode) & 0o077 == 0


@pytest.mark.fault
def test_system_index_is_readable_by_everyone_whatever_the_umask(
    world_env: Env, sink: UdpSink, world_tmp: Path
) -> None:
    """``popcon-site index --system`` under umask 077, then used by another user."""
    cli = world_env.root / "bin" / "popcon-site"
    proc = subprocess.run(
        ["sh", "-c", f"umask 077 && exec {cli} index --system"],
        capture_output=True,
        text=True,
        env=base_environ(),
    )
    assert proc.returncode == 0, proc
    shared = world_env.root / "share" / "popcon-site" / "index"
    for path in [shared, *shared.iterdir()]:
        assert stat.S_IMODE(path.stat().st_mode) & 0o044 == 0o044, path
    home = world_tmp / "nobody-home"
    home.mkdir()
    home.chmod(0o555)  # nothing can be written: only the system index can serve
    proc = subprocess.run(
        [*AS_NOBODY, str(world_env.python), "-c", "import six"],
        capture_output=True,
        text=True,
        env=enabled(sink, home),
    )
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "")
    assert check_wire(sink.drain()) == [
        "python_popcon.library_used.six:1|c",
        "python_popcon.reports:1|c",
    ]
