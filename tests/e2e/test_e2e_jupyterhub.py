"""A real JupyterHub with the shipped recipe: what the users' processes count, and the servers.

One hub per run (a few minutes): jupyterhub from PyPI in a venv of Debian's
/usr/bin/python3 (processes of other Unix users cannot read pyenv's, under /root),
configurable-http-proxy from npm (`nox -s e2e` installs it), LocalProcessSpawner with
real Unix users made with `useradd -m`, DummyAuthenticator, and an admin service token
driving it over the REST API. The hub is started by hand, without any PYTHON_POPCONTEST_*
in its environment: the settings come from an env file that the shipped snippet
(deploy/vm/jupyterhub_config.d/popcon-site.py, included with `load_subconfig` as plain
JupyterHub does) reads. Kernels run cells through the server's REST API and kernel
websocket; a terminal runs a script. What arrives is compared with an oracle that runs
the same imports in a plain process and maps the files it loaded to distributions by
their RECORD files, never importing popcon_site.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from servers import DEPLOY

from support.ports import free_port
from support.sinks import UdpSink
from support.wire import PREFIX, REPORTS_NAME, counters

SNIPPET = DEPLOY / "vm" / "jupyterhub_config.d" / "popcon-site.py"
SYSTEM_PYTHON = "/usr/bin/python3"
# Pinned: what each import pulls in stays what the oracle measured.
HUB_PACKAGES = [
    "jupyterhub==6.1.1",
    "jupyterlab==4.6.6",
    "ipykernel==7.4.0",
    "six==1.17.0",
    "attrs==26.1.0",
    "pyyaml==6.0.4",
    "arrow==1.4.0",
]
USERS = ("popconann", "popconbob")
TOKEN = uuid.uuid4().hex
# What each user's kernel runs (one cell each), and what a terminal of ann's runs.
CELLS = {"popconann": "import yaml, six\nx = 1", "popconbob": "import arrow\nx = 2"}
TERMINAL_IMPORTS = "import attr"

ORACLE = r"""
import json, os, sys
before = set(sys.modules)
exec(sys.argv[1])
files = []
for name in set(sys.modules) - before:
    path = getattr(sys.modules[name], "__file__", None)
    if path:
        files.append(os.path.realpath(path))
print(json.dumps(files))
"""


def chp_binary() -> str:
    prefix = os.environ.get("POPCON_E2E_NODE_PREFIX", "")
    path = Path(prefix) / "node_modules" / ".bin" / "configurable-http-proxy"
    if not prefix or not path.is_file():
        pytest.fail("configurable-http-proxy is not installed: run `nox -s e2e`, which installs it")
    return str(path)


def record_owners(site_packages: Path) -> dict[str, str]:
    """Installed file (real path) -> normalized distribution name, from RECORD files."""
    owners = {}
    for dist_info in site_packages.glob("*.dist-info"):
        name = ""
        for line in (dist_info / "METADATA").read_text(errors="replace").splitlines():
            if line.startswith("Name:"):
                name = line.split(":", 1)[1].strip().lower().replace("_", "-").replace(".", "-")
                break
        record = dist_info / "RECORD"
        if not record.is_file():
            continue
        for line in record.read_text().splitlines():
            rel = line.rsplit(",", 2)[0]
            owners[os.path.realpath(site_packages / rel)] = name
    return owners


@dataclass
class Hub:
    root: Path
    venv: Path
    url: str
    sink: UdpSink
    process: subprocess.Popen[str]
    log: Path

    def api(self, method: str, path: str, body: object = None) -> object:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.url + path,
            data=data,
            method=method,
            headers={"Authorization": f"token {TOKEN}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            raw = response.read()
        return json.loads(raw) if raw.strip() else None

    def expected(self, code: str) -> set[str]:
        """The distributions a plain process running ``code`` loads (the oracle)."""
        python = self.venv / "bin" / "python"
        proc = subprocess.run(
            [str(python), "-c", ORACLE, code],
            capture_output=True,
            text=True,
            env={"PATH": "/usr/bin:/bin", "HOME": str(self.root)},
            timeout=60,
        )
        assert proc.returncode == 0, proc.stderr
        site = next((self.venv / "lib").glob("python3*/site-packages"))
        owners = record_owners(site)
        return {owners[path] for path in json.loads(proc.stdout) if path in owners}


@pytest.fixture(scope="module")
def hub(wheel: Path) -> Iterator[Hub]:
    if os.geteuid() != 0:  # useradd, and the spawner's setuid
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("the JupyterHub test needs root (useradd, LocalProcessSpawner)")
        pytest.skip("needs root: useradd, LocalProcessSpawner")
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        pytest.fail(f"{SYSTEM_PYTHON} is needed (Debian's python3 and python3-venv)")
    chp = chp_binary()
    root = Path(tempfile.mkdtemp(prefix="popcon-hub-", dir="/var/tmp"))
    root.chmod(0o755)
    venv = root / "venv"
    subprocess.run([SYSTEM_PYTHON, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    subprocess.run([*pip, str(wheel), *HUB_PACKAGES], check=True)
    subprocess.run(["chmod", "-R", "a+rX", str(root)], check=True)
    for user in USERS:
        subprocess.run(["userdel", "-r", user], capture_output=True)
        subprocess.run(["useradd", "-m", "-s", "/bin/bash", user], check=True)
    sink = UdpSink()
    env_file = root / "popcon-site.env"
    env_file.write_text(
        "PYTHON_POPCONTEST_ENABLE=1\n"
        "PYTHON_POPCONTEST_STATSD_HOST=127.0.0.1\n"
        f"PYTHON_POPCONTEST_STATSD_PORT={sink.port}\n"
    )
    proxy_port, hub_port, api_port = free_port(), free_port(), free_port()
    config = root / "jupyterhub_config.py"
    config.write_text(
        f"""c = get_config()
c.JupyterHub.ip = "127.0.0.1"
c.JupyterHub.port = {proxy_port}
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = {hub_port}
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{api_port}"
c.ConfigurableHTTPProxy.command = [{chp!r}]
c.ConfigurableHTTPProxy.pid_file = {str(root / "proxy.pid")!r}
c.JupyterHub.authenticator_class = "dummy"
c.Authenticator.allowed_users = {set(USERS)!r}
c.JupyterHub.spawner_class = "localprocess"
c.Spawner.cmd = [{str(venv / "bin" / "jupyterhub-singleuser")!r}]
c.Spawner.start_timeout = 120
c.Spawner.http_timeout = 120
c.JupyterHub.db_url = "sqlite:///{root / "jupyterhub.sqlite"}"
c.JupyterHub.cookie_secret_file = {str(root / "cookie_secret")!r}
c.JupyterHub.services = [{{"name": "popcon-test", "api_token": {TOKEN!r}}}]
c.JupyterHub.load_roles = [{{
    "name": "popcon-test",
    "scopes": ["admin:users", "admin:servers", "access:servers"],
    "services": ["popcon-test"],
}}]
load_subconfig({str(SNIPPET)!r})
"""
    )
    log = root / "hub.log"
    environ = {
        "PATH": f"{venv / 'bin'}:/usr/local/bin:/usr/bin:/bin",
        "HOME": str(root),
        "LANG": "C.UTF-8",
        "POPCON_SITE_ENV_FILE": str(env_file),
    }
    with log.open("w") as out:
        process = subprocess.Popen(
            [str(venv / "bin" / "jupyterhub"), "-f", str(config)],
            cwd=root,
            env=environ,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
    hub = Hub(root, venv, f"http://127.0.0.1:{proxy_port}", sink, process, log)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                hub.api("GET", "/hub/api/")
                break
            except (urllib.error.URLError, ConnectionError):
                assert process.poll() is None, log.read_text()
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.3)
        yield hub
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        # What is left runs as the test users, all of it started here: kernels outlive a
        # server stopped with SIGINT (jupyter_server does not shut them down).
        _kill_processes_of({pwd.getpwnam(user).pw_uid for user in USERS})
        for user in USERS:
            subprocess.run(["userdel", "-r", user], capture_output=True)
        sink.close()
        shutil.rmtree(root, ignore_errors=True)


def _kill_processes_of(uids: set[int]) -> None:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if entry.stat().st_uid in uids:
                    os.kill(int(entry.name), signal.SIGKILL)
            except OSError:
                continue
    time.sleep(0.5)


def _start_server(hub: Hub, user: str) -> None:
    # The hub made the user at start (Authenticator.allowed_users).
    hub.api("POST", f"/hub/api/users/{user}/server")
    deadline = time.monotonic() + 120
    while True:
        model = hub.api("GET", f"/hub/api/users/{user}")
        assert isinstance(model, dict)
        server = model.get("servers", {}).get("")
        if server and server.get("ready"):
            return
        assert time.monotonic() < deadline, hub.log.read_text()
        time.sleep(0.5)


def _stop_server(hub: Hub, user: str) -> None:
    hub.api("DELETE", f"/hub/api/users/{user}/server")
    deadline = time.monotonic() + 60
    while True:
        model = hub.api("GET", f"/hub/api/users/{user}")
        assert isinstance(model, dict)
        if not model.get("servers"):
            return
        assert time.monotonic() < deadline, hub.log.read_text()
        time.sleep(0.5)


def _websocket(hub: Hub, path: str) -> object:
    import websocket  # websocket-client

    url = hub.url.replace("http://", "ws://") + path
    return websocket.create_connection(url, header=[f"Authorization: token {TOKEN}"], timeout=60)


def _run_cell(hub: Hub, user: str, code: str) -> list[dict[str, object]]:
    """Runs ``code`` in a new kernel of ``user``; returns what the cell put on iopub."""
    kernel = hub.api("POST", f"/user/{user}/api/kernels", {"name": "python3"})
    assert isinstance(kernel, dict)
    ws = _websocket(hub, f"/user/{user}/api/kernels/{kernel['id']}/channels")
    msg_id = uuid.uuid4().hex
    ws.send(  # type: ignore[attr-defined]
        json.dumps(
            {
                "header": {
                    "msg_id": msg_id,
                    "username": user,
                    "session": uuid.uuid4().hex,
                    "msg_type": "execute_request",
                    "version": "5.3",
                },
                "parent_header": {},
                "metadata": {},
                "content": {
                    "code": code,
                    "silent": False,
                    "store_history": True,
                    "user_expressions": {},
                    "allow_stdin": False,
                    "stop_on_error": True,
                },
                "channel": "shell",
                "buffers": [],
            }
        )
    )
    outputs: list[dict[str, object]] = []
    reply: dict[str, object] = {}
    idle = False
    while not (reply and idle):
        message = json.loads(ws.recv())  # type: ignore[attr-defined]
        if message.get("parent_header", {}).get("msg_id") != msg_id:
            continue
        kind = message["header"]["msg_type"]
        if message["channel"] == "shell" and kind == "execute_reply":
            reply = message["content"]
        elif kind == "status":
            idle = message["content"]["execution_state"] == "idle"
        elif kind not in ("execute_input",):
            outputs.append(message)
    ws.close()  # type: ignore[attr-defined]
    assert reply["status"] == "ok", reply
    return outputs


def _run_in_terminal(hub: Hub, user: str, command: str) -> str:
    """Types ``command`` into a new terminal of ``user``; returns what the terminal showed."""
    terminal = hub.api("POST", f"/user/{user}/api/terminals")
    assert isinstance(terminal, dict)
    ws = _websocket(hub, f"/user/{user}/terminals/websocket/{terminal['name']}")
    # The marker appears only when the shell runs the echo, not when it echoes the input.
    ws.send(json.dumps(["stdin", f"{command}; echo popcon-done-$((40 + 2))\r"]))  # type: ignore[attr-defined]
    shown = ""
    deadline = time.monotonic() + 60
    while "popcon-done-42" not in shown:
        assert time.monotonic() < deadline, shown
        message = json.loads(ws.recv())  # type: ignore[attr-defined]
        if message[0] == "stdout":
            shown += message[1]
    ws.close()  # type: ignore[attr-defined]
    return shown


def _counts_until(hub: Hub, expected: Counter[str], timeout: float = 30) -> Counter[str]:
    packets: list[bytes] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        packets += hub.sink.drain(wait=0.5)
        if Counter(counters(packets)) == expected:
            break
    return Counter(counters(packets))


def test_users_code_counts_exactly_and_the_servers_nothing(hub: Hub) -> None:
    python = hub.venv / "bin" / "python"
    expected: Counter[str] = Counter()
    for user in USERS:
        _start_server(hub, user)
    started = time.monotonic()
    for user, code in CELLS.items():
        outputs = _run_cell(hub, user, code)
        assert outputs == [], outputs  # nothing printed into the notebook
        expected.update(PREFIX + name for name in hub.expected(code))
        expected[REPORTS_NAME] += 1
    shown = _run_in_terminal(hub, USERS[0], f"{python} -c {TERMINAL_IMPORTS!r}")
    assert "popcon-site" not in shown and "Traceback" not in shown, shown
    expected.update(PREFIX + name for name in hub.expected(TERMINAL_IMPORTS))
    expected[REPORTS_NAME] += 1
    # Distinct users (on by default): each real user once per library they imported this
    # month, and once for themselves; their homes are new, so nothing was claimed before.
    per_user: dict[str, set[str]] = {}
    for user, code in CELLS.items():
        per_user.setdefault(user, set()).update(hub.expected(code))
    per_user[USERS[0]].update(hub.expected(TERMINAL_IMPORTS))
    for names in per_user.values():
        expected.update(f"python_popcon.library_users.{name}" for name in names)
        expected["python_popcon.users"] += 1
    # The oracle's sets, so that a reader sees what the hub counts.
    assert hub.expected(CELLS["popconann"]) == {"pyyaml", "six"}
    assert hub.expected(CELLS["popconbob"]) >= {"arrow", "python-dateutil"}
    assert hub.expected(TERMINAL_IMPORTS) == {"attrs"}
    counts = _counts_until(hub, expected)
    assert counts == expected
    # Past the servers' first checkpoint (10 s after start) and their exit: still nothing
    # from them (without the server extension each sent ~60 distributions).
    time.sleep(max(0.0, started + 11 - time.monotonic()))
    for user in USERS:
        _stop_server(hub, user)
    counts += Counter(counters(hub.sink.drain(wait=1.5)))
    assert counts == expected
    log = hub.log.read_text()
    assert "popcon-site:" not in log and "Traceback" not in log, log
