"""Exact attribution with real PyPI packages: each test asserts the exact set sent."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from support.envs import Env, base_environ, enabled
from support.sinks import UdpSink
from support.wire import libraries, per_process

pytestmark = pytest.mark.slow


# An independent, slow oracle: match every new module's real file against every
# file of every installed distribution (the brute force the index avoids).
ORACLE = """
import sys, os, json, re
_before = set(sys.modules)
exec(compile({code!r}, "<test>", "exec"))
_new = set(sys.modules) - _before
import importlib.metadata as md
owners = {{}}
for dist in md.distributions():
    name = re.sub(r"[-_.]+", "-", dist.metadata["Name"]).lower()
    for f in dist.files or ():
        owners.setdefault(os.path.realpath(dist.locate_file(f)), name)
used = set()
for mod in _new:
    path = getattr(sys.modules.get(mod), "__file__", None)
    if path and os.path.realpath(path) in owners:
        used.add(owners[os.path.realpath(path)])
used.discard("popcon-site")
print(json.dumps(sorted(used)))
"""


def sent(zoo: Env, sink: UdpSink, home: Path, code: str, **extra: str) -> set[str]:
    proc = zoo.run("-c", code, env=enabled(sink, home, **extra))
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    (report,) = per_process(sink.drain())
    return set(report)


def oracle(zoo: Env, home: Path, code: str) -> set[str]:
    proc = zoo.run("-c", ORACLE.format(code=code), env=base_environ(HOME=str(home)))
    assert proc.returncode == 0, proc.stderr
    return set(json.loads(proc.stdout))


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("import yaml", {"pyyaml"}),
        ("import PIL.Image", {"pillow"}),
        ("import bs4", {"beautifulsoup4", "soupsieve"}),
        ("import dateutil.parser", {"python-dateutil"}),
        ("import google.protobuf.message", {"protobuf"}),
        ("import google.api.annotations_pb2", {"googleapis-common-protos", "protobuf"}),
        ("import zope.interface", {"zope-interface"}),
        ("import ruamel.yaml", {"ruamel-yaml"}),
        ("import _ruamel_yaml", {"ruamel-yaml-clib"}),
        ("import six", {"six"}),
        ("import typing_extensions", {"typing-extensions"}),
        ("import msgpack._cmsgpack", {"msgpack"}),
        ("import attr, attrs", {"attrs"}),
        ("import requests", {"requests", "urllib3", "idna", "certifi", "charset-normalizer"}),
        ("import json, csv, sqlite3, decimal", set()),
    ],
    ids=lambda value: value if isinstance(value, str) else None,
)
def test_exact_distributions(
    zoo: Env, sink: UdpSink, home: Path, code: str, expected: set[str]
) -> None:
    """What is sent is exactly what brute force finds, and includes the named ones."""
    reported = sent(zoo, sink, home, code)
    assert expected <= reported
    assert reported == oracle(zoo, home, code)


def test_second_run_uses_the_index_and_agrees(zoo: Env, sink: UdpSink, home: Path) -> None:
    code = "import yaml, bs4, google.protobuf"
    first = sent(zoo, sink, home, code)
    cache = list((home / ".cache" / "popcon-site").glob("*.idx"))
    assert len(cache) == 1
    stamp = cache[0].stat().st_mtime_ns
    second = sent(zoo, sink, home, code)
    assert first == second == oracle(zoo, home, code)
    assert {"pyyaml", "beautifulsoup4", "protobuf"} <= first
    assert cache[0].stat().st_mtime_ns == stamp, "a fresh index must not be rebuilt"


def test_script_directory_and_unowned_paths_never_count(
    zoo: Env, sink: UdpSink, home: Path, tmp_path: Path
) -> None:
    (tmp_path / "helper.py").write_text("import yaml\n")
    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / "stray.py").write_text("X = 1\n")
    script = tmp_path / "main.py"
    script.write_text(f"import sys; sys.path.append({str(extra)!r})\nimport helper, stray\n")
    proc = zoo.run(str(script), env=enabled(sink, home))
    assert proc.returncode == 0, proc.stderr
    assert libraries(sink.lines()) == {"pyyaml"}


def test_program_that_imports_statsd_counts_it(zoo: Env, sink: UdpSink, home: Path) -> None:
    assert sent(zoo, sink, home, "import statsd") == {"statsd"}


def test_reporter_machinery_is_not_counted(zoo: Env, sink: UdpSink, home: Path) -> None:
    # A cold index makes the reporter import importlib_metadata at exit.
    assert sent(zoo, sink, home, "import popcon_site, six") == {"six"}


def test_module_deleted_before_exit_still_counts(zoo: Env, sink: UdpSink, home: Path) -> None:
    code = (
        "import sys, six, yaml\n"
        "for name in [n for n in sys.modules if n in ('six', 'yaml') or n.startswith('yaml.')]:\n"
        "    del sys.modules[name]\n"
    )
    assert sent(zoo, sink, home, code) == {"six", "pyyaml"}


def test_sys_modules_junk_does_not_break_the_report(zoo: Env, sink: UdpSink, home: Path) -> None:
    code = (
        "import sys, six\n"
        "class Weird:\n"
        "    def __getattr__(self, name): raise RuntimeError('touched ' + name)\n"
        "sys.modules['weird'] = Weird()\n"
        "sys.modules['blocked'] = None\n"
        "sys.modules['number'] = 42\n"
    )
    assert sent(zoo, sink, home, code) == {"six"}


def test_host_distributions_exclusion_keeps_namespace_siblings(
    zoo: Env, sink: UdpSink, home: Path
) -> None:
    """What an IPython kernel does: the host's distributions (protobuf) never count, even
    through new submodules, but other portions of a namespace (google.api) do."""
    code = (
        "import google.protobuf, popcon_site\n"
        "popcon_site.current().exclude_host_distributions()\n"
        "import google.protobuf.json_format, google.api.http_pb2\n"
    )
    assert sent(zoo, sink, home, code) == {"googleapis-common-protos"}
