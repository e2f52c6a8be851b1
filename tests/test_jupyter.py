"""Jupyter kernels and IPython: only what cells import counts, never the kernel itself.

A real kernel (ipykernel from PyPI) is started by a real ``jupyter_client``
KernelManager running in a subprocess with the environment's own python, so
the kernel is that environment's interpreter.  The driver runs with reporting
off; only the kernel gets the ``PYTHON_POPCONTEST_*`` variables.
"""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest

from support.envs import Env, base_environ, enabled, make_env, uv
from support.sinks import UdpSink
from support.wire import PREFIX, REPORTS, REPORTS_NAME, counters, libraries, per_process

pytestmark = pytest.mark.slow

STARTUP_FILE = Path("etc", "ipython", "startup", "00-popcon-site.py")

DRIVER = textwrap.dedent("""\
    import json, sys
    from jupyter_client import KernelManager

    kernel_env, code = json.loads(sys.argv[1]), sys.argv[2]
    km = KernelManager(kernel_name="python3")
    km.start_kernel(env=kernel_env)
    process = km.provisioner.process
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=60)
        msg_id = kc.execute(code)
        while True:
            reply = kc.get_shell_msg(timeout=60)
            if reply["parent_header"].get("msg_id") == msg_id:
                break
        # What the cell printed (stdout, stderr, warnings) reaches the client on iopub.
        output = []
        while True:
            message = kc.get_iopub_msg(timeout=60)
            if message["parent_header"].get("msg_id") != msg_id:
                continue
            if message["msg_type"] == "stream":
                output.append(message["content"]["text"])
            if message["msg_type"] == "status" and message["content"]["execution_state"] == "idle":
                break
    finally:
        kc.stop_channels()
    km.shutdown_wait_time = 60.0  # graceful exit even on a loaded machine (default 5 s)
    km.shutdown_kernel(now=False)
    process.wait(timeout=30)
    print(json.dumps({
        "status": reply["content"]["status"],
        "error": reply["content"].get("evalue"),
        "kernel": process.args,
        "returncode": process.returncode,
        "output": "".join(output),
    }))
    """)


@pytest.fixture(scope="module")
def jupyter(tmp_path_factory: pytest.TempPathFactory, wheel: Path) -> Env:
    env = make_env(tmp_path_factory.mktemp("jupyter") / "venv")
    env.install(str(wheel), "ipykernel", "jupyter_client", "pyyaml", "arrow")
    return env


@pytest.fixture(scope="module")
def optional(tmp_path_factory: pytest.TempPathFactory, wheel: Path) -> Env:
    """With msgpack and orjson: jupyter_client imports each, when installed, as the kernel
    starts, though neither is a requirement of the machinery."""
    env = make_env(tmp_path_factory.mktemp("optional") / "venv")
    env.install(str(wheel), "ipykernel", "jupyter_client", "pyyaml", "msgpack", "orjson")
    return env


def private_dirs(tmp_path: Path, home: Path) -> dict[str, str]:
    """Everything IPython and Jupyter write goes under tmp_path, never to the real HOME."""
    return {
        "HOME": str(home),
        "IPYTHONDIR": str(tmp_path / "ipython"),
        "JUPYTER_RUNTIME_DIR": str(tmp_path / "jupyter-runtime"),
        "JUPYTER_CONFIG_DIR": str(tmp_path / "jupyter-config"),
        "JUPYTER_DATA_DIR": str(tmp_path / "jupyter-data"),
        "JUPYTER_PLATFORM_DIRS": "1",
    }


def run_cell_in_kernel(
    jupyter: Env,
    sink: UdpSink,
    home: Path,
    tmp_path: Path,
    code: str,
    ipython_dir: Path | None = None,
    debug: bool = False,
) -> dict[str, object]:
    dirs = private_dirs(tmp_path, home)
    if ipython_dir is not None:
        dirs["IPYTHONDIR"] = str(ipython_dir)
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    kernel_env = enabled(sink, home, **dirs)
    if debug:
        kernel_env["PYTHON_POPCONTEST_DEBUG"] = "1"  # the kernel's stderr is the driver's
    proc = jupyter.run(
        str(driver),
        json.dumps(kernel_env),
        code,
        env=base_environ(**dirs),
        cwd=tmp_path,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr
    result: dict[str, object] = json.loads(proc.stdout.splitlines()[-1])
    assert result["status"] == "ok", result
    assert result["kernel"][0] == str(jupyter.python), result  # type: ignore[index]
    # A graceful exit (not the SIGKILL that follows a shutdown timeout): atexit has run.
    assert result["returncode"] == 0, (result, proc.stderr)
    # The driver's own jupyter_client may complain at its shutdown (3.9); the kernel's
    # stderr is not ours to see here, but nothing may come from popcon-site.
    assert debug or "popcon" not in proc.stderr, proc.stderr
    result["stderr"] = proc.stderr
    return result


def test_kernel_counts_only_what_cells_import(
    jupyter: Env, sink: UdpSink, home: Path, tmp_path: Path
) -> None:
    assert (jupyter.root / STARTUP_FILE).exists()
    run_cell_in_kernel(jupyter, sink, home, tmp_path, "import yaml")
    # Not ipython, ipykernel, pyzmq, tornado, traitlets, jupyter-client, debugpy, comm...
    assert per_process(sink.drain()) == [{"pyyaml"}]


def test_kernel_cell_importing_nothing_sends_only_reports(
    jupyter: Env, sink: UdpSink, home: Path, tmp_path: Path
) -> None:
    run_cell_in_kernel(jupyter, sink, home, tmp_path, "x = 1 + 1")
    assert per_process(sink.drain()) == [set()]


@pytest.mark.parametrize(
    ("cell", "wanted"),
    [
        ("x = 1 + 1", set()),
        ("import yaml", {"pyyaml"}),
        ("import msgpack", {"msgpack"}),
        ("from orjson import dumps", {"orjson"}),
    ],
)
def test_the_machinerys_optional_imports_count_only_when_a_cell_imports_them(
    optional: Env, sink: UdpSink, home: Path, tmp_path: Path, cell: str, wanted: set[str]
) -> None:
    # Loaded before our startup file ran, by the machinery: machinery, unless named.
    run_cell_in_kernel(optional, sink, home, tmp_path, cell)
    assert per_process(sink.drain()) == [wanted]
    assert wanted == counted_by_a_script(optional, sink, home, tmp_path, cell)


def test_the_machinerys_optional_imports_when_our_startup_file_never_ran(
    optional: Env,
    sink: UdpSink,
    home: Path,
    tmp_path_factory: pytest.TempPathFactory,
    tmp_path: Path,
) -> None:
    """Known and documented: when our startup file never ran, what the machinery loaded
    before the first cell cannot be told from the user's imports, so jupyter_client's
    optional imports count (jupyter_client 8.6, the last for Python 3.9, has none)."""
    code = "import jupyter_client.session, sys\nprint(*{'msgpack', 'orjson'} & set(sys.modules))"
    loaded = optional.run("-c", code, env=base_environ()).stdout.split()
    ipython_dir = user_startup_file_that_raises(tmp_path_factory)
    run_cell_in_kernel(optional, sink, home, tmp_path, "import yaml", ipython_dir)
    assert per_process(sink.drain()) == [{"pyyaml", *loaded}]


@pytest.mark.skipif(sys.version_info < (3, 12), reason="an invalid escape warns from 3.12 on")
def test_a_cell_is_parsed_without_a_second_syntax_warning(
    jupyter: Env, sink: UdpSink, home: Path, tmp_path: Path
) -> None:
    """The cell's imports are read from its source: that parse must not show the
    SyntaxWarning IPython's own compile of the cell already showed."""
    cell = 'import psutil\npattern = "\\d"\nprint("ran")'
    result = run_cell_in_kernel(jupyter, sink, home, tmp_path, cell)
    output = str(result["output"])
    assert "ran" in output, result
    # IPython's own warnings name the cell ("<>", its file); ast.parse's say "<unknown>".
    assert "SyntaxWarning" in output and "<unknown>" not in output, output
    assert counted_once(sink.drain()) == {"psutil"}


def counted_once(packets: list[bytes]) -> set[str]:
    """The distributions one process sent, over any number of datagrams: each once."""
    counts = counters(packets)
    assert set(counts.values()) == {1} and REPORTS_NAME in counts, counts
    return {name[len(PREFIX) :] for name in counts if name.startswith(PREFIX)}


def counted_by_a_script(env: Env, sink: UdpSink, home: Path, tmp_path: Path, code: str) -> set[str]:
    """What ``python -c code`` counts in that environment: what a kernel should count."""
    proc = env.run("-c", code, env=enabled(sink, home), cwd=tmp_path)
    assert (proc.returncode, proc.stderr) == (0, ""), proc.stderr
    return counted_once(sink.drain())


@pytest.mark.parametrize(
    ("cell", "script", "wanted"),
    [
        # psutil and packaging are ipykernel's requirements, loaded before any cell.
        ("import psutil", None, {"psutil"}),
        ("if True:\n    from packaging import version", None, {"packaging"}),
        # jupyter_client loaded python-dateutil; arrow needs it: both count, as in a
        # script (and six, which python-dateutil 2 imports, on Python 3.9).
        ("import arrow", None, {"arrow", "python-dateutil"}),
        ("from dateutil import parser", None, {"python-dateutil"}),
        # IPython syntax around the import, or a cell magic whose body is a string.
        ("here = %pwd\nimport psutil", "import psutil", {"psutil"}),
        ("%%time\nimport psutil", "import psutil", {"psutil"}),
        # Named only in a string, or a relative import: nothing of the machinery counts.
        (
            "s = 'import psutil'\ntry:\n    from .psutil import x\nexcept ImportError: pass",
            None,
            set(),
        ),
    ],
    ids=["psutil", "nested", "arrow", "dateutil", "magic", "cell-magic", "not-an-import"],
)
def test_a_cell_importing_a_library_the_kernel_had_loaded_counts_it(
    jupyter: Env,
    sink: UdpSink,
    home: Path,
    tmp_path: Path,
    cell: str,
    script: str | None,
    wanted: set[str],
) -> None:
    run_cell_in_kernel(jupyter, sink, home, tmp_path, cell)
    counted = counted_once(sink.drain())
    assert wanted <= counted
    assert counted == counted_by_a_script(jupyter, sink, home, tmp_path, script or cell)


def test_a_cell_naming_ipython_counts_it_and_the_loaded_libraries_it_declares(
    jupyter: Env, sink: UdpSink, home: Path, tmp_path: Path
) -> None:
    """What a script loads for the import, and possibly more: a declared requirement the
    kernel loaded for itself (psutil, typing-extensions for IPython 9) counts too."""
    cell = "from IPython.display import display"
    run_cell_in_kernel(jupyter, sink, home, tmp_path, cell)
    counted = counted_once(sink.drain())
    like_a_script = counted_by_a_script(jupyter, sink, home, tmp_path, cell)
    assert {"ipython", "traitlets"} <= like_a_script <= counted
    code = "from popcon_site._ipython import machinery_closure as c; print(*c(['ipython']))"
    declared = set(jupyter.run("-c", code, env=base_environ()).stdout.split())
    assert {"ipython", "traitlets", "jedi"} <= declared and "ipykernel" not in declared
    assert counted <= like_a_script | declared


def user_ipython_dir(
    tmp_path_factory: pytest.TempPathFactory, files: dict[str, str | bytes], before_ours: bool
) -> Path:
    """An IPYTHONDIR whose profile_default/startup/ holds ``files``.  IPython runs every
    startup directory's files sorted by full path: "a-..." sorts before the environment's
    directory (".../jupyter0/venv"), "z-..." after."""
    ipython_dir = tmp_path_factory.mktemp("a-ipython" if before_ours else "z-ipython")
    startup = ipython_dir / "profile_default" / "startup"
    startup.mkdir(parents=True)
    for name, content in files.items():
        if isinstance(content, bytes):
            (startup / name).write_bytes(content)
        else:
            (startup / name).write_text(content)
    return ipython_dir


def ours_ran_check(marker: Path) -> str:
    """Code that writes to ``marker`` whether our startup file had run before it."""
    ran = "str('popcon_site._ipython' in sys.modules)"
    return f"import sys; open({str(marker)!r}, 'w').write({ran})"


@pytest.mark.parametrize("order", ["before", "after"])
def test_the_users_startup_files_are_the_users_imports(
    jupyter: Env,
    sink: UdpSink,
    home: Path,
    tmp_path_factory: pytest.TempPathFactory,
    tmp_path: Path,
    order: str,
) -> None:
    """~/.ipython/profile_default/startup/ runs before or after our startup file:
    IPython runs every startup directory's files sorted by their full path."""
    marker = tmp_path / "ours-ran-first"
    files: dict[str, str | bytes] = {
        "00-user.py": f"import arrow\n{ours_ran_check(marker)}\n",
        "01-user.ipy": "here = %pwd\nfrom psutil import cpu_count\n",
    }
    ipython_dir = user_ipython_dir(tmp_path_factory, files, before_ours=order == "before")
    run_cell_in_kernel(jupyter, sink, home, tmp_path, "x = 1", ipython_dir)
    assert marker.read_text() == str(order == "after")
    # Not ipython, ipykernel, pyzmq, tornado, traitlets, jupyter-client...
    counted = counted_once(sink.drain())
    assert {"arrow", "python-dateutil", "psutil"} <= counted
    assert counted == counted_by_a_script(
        jupyter, sink, home, tmp_path, "import arrow\nfrom psutil import cpu_count"
    )


@pytest.mark.parametrize("order", ["before", "after"])
def test_a_user_startup_file_import_without_an_import_line(
    jupyter: Env,
    sink: UdpSink,
    home: Path,
    tmp_path_factory: pytest.TempPathFactory,
    tmp_path: Path,
    order: str,
) -> None:
    """What the kernel loaded before our startup file is machinery unless an import line
    of the user's code names it, so ``__import__`` in a file sorted before ours is not
    seen; after ours, what it loads counts like a cell's imports."""
    files: dict[str, str | bytes] = {"00-user.py": "__import__('yaml')\n"}
    ipython_dir = user_ipython_dir(tmp_path_factory, files, before_ours=order == "before")
    run_cell_in_kernel(jupyter, sink, home, tmp_path, "x = 1", ipython_dir)
    assert per_process(sink.drain()) == [set() if order == "before" else {"pyyaml"}]


def test_a_startup_file_in_its_declared_encoding_is_read(
    jupyter: Env,
    sink: UdpSink,
    home: Path,
    tmp_path_factory: pytest.TempPathFactory,
    tmp_path: Path,
) -> None:
    """A PEP 263 coding cookie (latin-1 here) is honoured, as Python itself does."""
    latin1 = b"# -*- coding: latin-1 -*-\n# caf\xe9\nfrom psutil import cpu_count\n"
    ipython_dir = user_ipython_dir(tmp_path_factory, {"00-user.py": latin1}, before_ours=False)
    run_cell_in_kernel(jupyter, sink, home, tmp_path, "x = 1", ipython_dir)
    assert counted_once(sink.drain()) == {"psutil"}


def user_startup_file_that_raises(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An IPYTHONDIR whose startup file raises, sorted before ours: ours never runs."""
    broken = {"00-user.py": "raise RuntimeError('a broken startup file')\n"}
    return user_ipython_dir(tmp_path_factory, broken, before_ours=True)


@pytest.mark.parametrize("cell", ["import yaml", "import arrow"])
def test_a_user_startup_file_that_raises_still_keeps_the_machinery_out(
    jupyter: Env,
    sink: UdpSink,
    home: Path,
    tmp_path_factory: pytest.TempPathFactory,
    tmp_path: Path,
    cell: str,
) -> None:
    """IPython stops at the first startup file that raises, so ours never ran: the
    exit report tells the machinery apart all the same."""
    ipython_dir = user_startup_file_that_raises(tmp_path_factory)
    marker = tmp_path / "ours-ran"
    code = f"{ours_ran_check(marker)}\n{cell}"
    run_cell_in_kernel(jupyter, sink, home, tmp_path, code, ipython_dir)
    assert marker.read_text() == "False"  # our startup file did not run
    counted = counted_once(sink.drain())
    # Not ipython, ipykernel, pyzmq, tornado, traitlets, jupyter-client, psutil...
    assert counted == counted_by_a_script(jupyter, sink, home, tmp_path, cell)


def test_without_the_machinerys_metadata_what_was_loaded_first_is_the_machinery(
    wheel: Path, sink: UdpSink, home: Path, tmp_path: Path
) -> None:
    """IPython's METADATA unreadable: the closure of its requirements is unknown, so
    everything loaded when our startup file runs is the machinery, as before."""
    env = make_env(tmp_path / "venv")
    env.install(str(wheel), "ipykernel", "jupyter_client", "arrow")
    (metadata,) = env.site_packages.glob("ipython-*.dist-info/METADATA")
    metadata.rename(metadata.with_name("METADATA.hidden"))
    result = run_cell_in_kernel(env, sink, home, tmp_path, "import arrow, psutil", debug=True)
    # python-dateutil and psutil were loaded before: machinery, even when named.
    assert counted_once(sink.drain()) == {"arrow"}
    lines = [line for line in str(result["stderr"]).splitlines() if "popcon-site" in line]
    assert lines[0] == "popcon-site: no metadata for IPython: its machinery is what it loaded"
    assert lines[1:] == ["popcon-site: nothing new; at checkpoints: arrow + reports"], lines


def test_a_kernels_fork_child_counts_only_its_own_imports(
    jupyter: Env,
    sink: UdpSink,
    home: Path,
    tmp_path_factory: pytest.TempPathFactory,
    tmp_path: Path,
) -> None:
    """What the kernel's user code imported (startup file, cells) is the child's baseline."""
    files: dict[str, str | bytes] = {"00-user.py": "import arrow, psutil\n"}
    ipython_dir = user_ipython_dir(tmp_path_factory, files, before_ours=True)
    cell = textwrap.dedent("""\
        import multiprocessing

        def child():
            import yaml

        process = multiprocessing.get_context("fork").Process(target=child)
        process.start()
        process.join()
        assert process.exitcode == 0
        """)
    run_cell_in_kernel(jupyter, sink, home, tmp_path, cell, ipython_dir)
    counts = counters(sink.drain())
    # Two processes; each distribution once: the child's pyyaml, the kernel's others.
    kernel = counted_by_a_script(jupyter, sink, home, tmp_path, "import arrow, psutil")
    assert {"arrow", "python-dateutil", "psutil"} <= kernel
    wanted = {REPORTS_NAME: 2} | {PREFIX + name: 1 for name in kernel | {"pyyaml"}}
    assert counts == wanted


def test_package_installed_from_a_running_kernel_counts(
    wheel: Path, sink: UdpSink, home: Path, tmp_path: Path
) -> None:
    """The ``%pip install X`` then ``import X`` notebook pattern.

    jupyter_client tries ``import msgpack`` while the kernel starts; when it is
    not installed that failed attempt must not make a later, real import of it
    part of the kernel's machinery.  A separate environment: this one changes.
    """
    env = make_env(tmp_path / "venv")
    env.install(str(wheel), "ipykernel", "jupyter_client")
    code = textwrap.dedent(f"""\
        import os, subprocess, sys
        quiet = {{k: v for k, v in os.environ.items() if not k.startswith("PYTHON_POPCONTEST_")}}
        install = [{uv()!r}, "pip", "install", "--quiet", "--python", sys.executable, "msgpack"]
        subprocess.run(install, check=True, env=quiet)  # uv runs this python: keep it quiet
        import msgpack
        """)
    run_cell_in_kernel(env, sink, home, tmp_path, code)
    assert per_process(sink.drain()) == [{"msgpack"}]


def test_terminal_ipython_counts_only_what_the_code_imports(
    jupyter: Env, sink: UdpSink, home: Path, tmp_path: Path
) -> None:
    """``ipython -c`` runs the same startup file before the code."""
    variables = enabled(sink, home, **private_dirs(tmp_path, home))
    proc = jupyter.run("-m", "IPython", "-c", "import yaml", env=variables, cwd=tmp_path)
    assert (proc.returncode, proc.stderr) == (0, ""), proc.stderr
    assert per_process(sink.drain()) == [{"pyyaml"}]


def test_plain_python_is_unaffected_by_the_startup_file(
    jupyter: Env, sink: UdpSink, home: Path, tmp_path: Path
) -> None:
    """The startup file runs in IPython only: a plain process counts IPython like any library."""
    variables = enabled(sink, home, **private_dirs(tmp_path, home))
    code = "import sys, yaml; print('popcon_site._ipython' in sys.modules)"
    proc = jupyter.run("-c", code, env=variables, cwd=tmp_path)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "False\n", "")
    assert per_process(sink.drain()) == [{"pyyaml"}]

    proc = jupyter.run("-c", "import IPython, yaml", env=variables, cwd=tmp_path)
    assert (proc.returncode, proc.stderr) == (0, "")
    used = libraries(sink.lines())
    assert {"ipython", "pyyaml", "traitlets"} <= used


def test_startup_file_does_nothing_when_reporting_is_off(
    jupyter: Env, sink: UdpSink, home: Path, tmp_path: Path
) -> None:
    code = (
        "import runpy, sys; finders = list(sys.meta_path); runpy.run_path(sys.argv[1]); "
        "print(sys.meta_path == finders)"
    )
    variables = base_environ(**private_dirs(tmp_path, home))
    proc = jupyter.run("-c", code, str(jupyter.root / STARTUP_FILE), env=variables)
    # No import watcher, nothing sent at exit, no index written.
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "True\n", "")
    assert sink.drain() == []
    assert not (home / ".cache").exists()


KILL_DRIVER = textwrap.dedent("""\
    import json, os, signal, sys
    from jupyter_client import KernelManager

    kernel_env = json.loads(sys.argv[1])
    km = KernelManager(kernel_name="python3")
    km.start_kernel(env=kernel_env)
    process = km.provisioner.process
    kc = km.client()
    kc.start_channels()
    kc.wait_for_ready(timeout=60)
    for code in sys.stdin:  # one cell per line; the test reads the sink in between
        msg_id = kc.execute(code.strip())
        while kc.get_shell_msg(timeout=60)["parent_header"].get("msg_id") != msg_id:
            pass
        print("done", flush=True)
        if code.strip() == "import yaml":
            break
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    kc.stop_channels()
    print(json.dumps({"returncode": process.returncode}), flush=True)
    """)


def test_a_cell_import_arrives_while_the_kernel_runs_and_survives_sigkill(
    jupyter: Env, sink: UdpSink, home: Path, tmp_path: Path
) -> None:
    cells = [("x = 1", {REPORTS}), ("import yaml", {REPORTS, f"{PREFIX}pyyaml:1|c"})]
    run_cells_then_kill(jupyter, sink, home, tmp_path, cells)


def test_checkpoints_run_even_when_a_user_startup_file_raised(
    jupyter: Env,
    sink: UdpSink,
    home: Path,
    tmp_path_factory: pytest.TempPathFactory,
    tmp_path: Path,
) -> None:
    """Our startup file never ran: once a cell has run, the next checkpoint (here a
    collection) tells the machinery apart, and from then on every cell sends."""
    ipython_dir = user_startup_file_that_raises(tmp_path_factory)
    cells = [
        ("x = 1", set()),  # before its first cell, ours might still have run
        ("import time, gc; time.sleep(1.2); gc.collect()", {REPORTS}),
        ("import yaml", {REPORTS, f"{PREFIX}pyyaml:1|c"}),
    ]
    extra = {"IPYTHONDIR": str(ipython_dir), "PYTHON_POPCONTEST_CHECKPOINT": "1"}
    run_cells_then_kill(jupyter, sink, home, tmp_path, cells, extra)


def run_cells_then_kill(
    jupyter: Env,
    sink: UdpSink,
    home: Path,
    tmp_path: Path,
    cells: list[tuple[str, set[str]]],
    extra: dict[str, str] | None = None,
) -> None:
    """Runs each cell, checks what has arrived within a second of it, then SIGKILLs
    the kernel (the last cell is ``import yaml``): nothing lost, nothing twice."""
    import subprocess
    import time

    dirs = private_dirs(tmp_path, home) | (extra or {})
    driver = tmp_path / "kill_driver.py"
    driver.write_text(KILL_DRIVER)
    proc = subprocess.Popen(
        [str(jupyter.python), str(driver), json.dumps(enabled(sink, home, **dirs))],
        env=base_environ(**dirs),
        cwd=tmp_path,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        for cell, wanted in cells:
            proc.stdin.write(cell + "\n")
            proc.stdin.flush()
            assert proc.stdout.readline() == "done\n"
            started = time.monotonic()
            lines: list[str] = []
            while time.monotonic() - started < 1.0 and not wanted <= set(lines):
                lines += sink.lines(0.1)
            # Within a second of the cell, while the kernel still runs.
            assert set(sink_lines(sink)) == wanted, (cell, sink.packets)
        result = json.loads(proc.stdout.readline())
        proc.wait(timeout=60)
    finally:
        proc.kill()
    assert result["returncode"] == -9
    # The SIGKILL lost nothing, and nothing came twice.
    all_lines = sink_lines(sink)
    assert sorted(all_lines) == sorted([REPORTS, f"{PREFIX}pyyaml:1|c"]), all_lines


def sink_lines(sink: UdpSink) -> list[str]:
    sink.drain(0.3)
    return [line for packet in sink.packets for line in packet.decode("ascii").split("\n")]


KILL_MID_CELL_DRIVER = textwrap.dedent("""\
    import json, os, signal, sys, time
    from jupyter_client import KernelManager

    kernel_env, code = json.loads(sys.argv[1]), sys.argv[2]
    km = KernelManager(kernel_name="python3")
    km.start_kernel(env=kernel_env)
    process = km.provisioner.process
    kc = km.client()
    kc.start_channels()
    kc.wait_for_ready(timeout=60)
    kc.execute(code)
    while kc.get_iopub_msg(timeout=60)["msg_type"] != "stream":
        pass  # the cell's first print: it has imported and is looping
    time.sleep(3.0)  # checkpoints at 1 s, 3 s after activation, from collections
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    kc.stop_channels()
    print(json.dumps({"returncode": process.returncode}), flush=True)
    """)


def test_a_collection_checkpoint_in_the_first_cell_counts_what_a_library_requires(
    jupyter: Env, sink: UdpSink, home: Path, tmp_path: Path
) -> None:
    """A checkpoint in a collection may not read metadata through importlib.metadata;
    it reads the counted library's METADATA file itself, so a kernel killed in its
    first cell has sent what the same cell sends when it ends: arrow brings the
    python-dateutil the kernel had loaded, as a script's import does (a script runs
    first, so the index is warm: a checkpoint in a collection never builds one)."""
    like_a_script = counted_by_a_script(jupyter, sink, home, tmp_path, "import arrow")
    assert {"arrow", "python-dateutil"} <= like_a_script
    run_cell_in_kernel(jupyter, sink, home, tmp_path, "import arrow")
    when_it_ends = counted_once(sink.drain())
    assert like_a_script <= when_it_ends  # and six on 3.9, which the kernel had loaded
    cell = "import arrow\nprint('looping', flush=True)\n" + LOOP_FOREVER
    dirs = private_dirs(tmp_path, home)
    driver = tmp_path / "kill_mid_cell.py"
    driver.write_text(KILL_MID_CELL_DRIVER)
    kernel_env = enabled(sink, home, PYTHON_POPCONTEST_CHECKPOINT="1", **dirs)
    proc = jupyter.run(
        str(driver), json.dumps(kernel_env), cell, env=base_environ(**dirs), cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.splitlines()[-1]) == {"returncode": -9}
    assert counted_once(sink.drain()) == when_it_ends


LOOP_FOREVER = """\
keep = []
while True:
    keep.append([len(keep)])
    if len(keep) > 100000:
        keep = []
"""


def test_requirements_read_from_the_files_agree_with_importlib_metadata(jupyter: Env) -> None:
    """What a checkpoint inside the program's work reads itself, for every distribution
    installed here, is what importlib.metadata gives after a cell or at exit."""
    code = textwrap.dedent("""\
        import importlib.metadata, json, sys
        from popcon_site import normalize_name
        from popcon_site._attribution import site_dirs
        from popcon_site._ipython import declared_requirements, requirements_on_disk
        names = {normalize_name(d.metadata["Name"]) for d in importlib.metadata.distributions()}
        listings = {}
        print(json.dumps({
            name: [declared_requirements(name), requirements_on_disk(name, site_dirs(), listings)]
            for name in sorted(names)
        }))
        """)
    proc = jupyter.run("-c", code, env=base_environ())
    assert proc.returncode == 0, proc.stderr
    found = json.loads(proc.stdout)
    assert len(found) > 30 and "python-dateutil" in found["arrow"][0]
    assert {name: pair for name, pair in found.items() if pair[0] != pair[1]} == {}
