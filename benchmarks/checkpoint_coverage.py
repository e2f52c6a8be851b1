"""Which program shapes reach their first checkpoint within 15 s (README, Reliability).

    python benchmarks/checkpoint_coverage.py WHEEL PYTHON...

For each interpreter: a venv with the wheel, pyyaml and numpy; each shape runs with the
default delay (10 s) and reporting to a real UDP socket; "yes" when its reports counter
arrives within 15 s of the start, while it still runs.  Then it is killed.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHAPES = {
    "loop that accumulates": "keep = []\nwhile True:\n    keep.append([1])\n",
    "loop that frees what it allocates": "while True:\n    d = {'a': [1]}\n",
    "float arithmetic": "x = 0.0\nwhile True:\n    x = x * 0.5 + 1.0\n",
    "numpy loop": "import numpy as np\na = np.ones(1000)\nwhile True:\n    a = a * 1.0001 + 1\n",
    "loop that sleeps": "import time\nwhile True:\n    time.sleep(0.5)\n",
    "loop that polls a file": (
        "import os, time\nwhile True:\n    os.stat('/')\n    time.sleep(0.1)\n"
    ),
    "file I/O": "while True:\n    with open('/etc/hostname', 'rb') as f:\n        f.read()\n",
    "socket I/O": (
        "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "while True:\n    s.sendto(b'x', ('127.0.0.1', 9))\n"
    ),
    "idle web server": (
        "import http.server\n"
        "http.server.HTTPServer(('127.0.0.1', 0), http.server.BaseHTTPRequestHandler)"
        ".serve_forever()\n"
    ),
}


def venv(python: str, wheel: str, root: Path) -> Path:
    subprocess.run([python, "-m", "venv", "--without-pip", str(root)], check=True)
    uv = Path(sys.executable).with_name("uv")
    subprocess.run(
        [
            str(uv),
            "pip",
            "install",
            "-q",
            "--python",
            str(root / "bin/python"),
            wheel,
            "pyyaml",
            "numpy",
        ],
        check=True,
    )
    return root / "bin/python"


def measure(python: Path, home: Path) -> dict[str, str]:
    procs = {}
    for shape, body in SHAPES.items():
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
        env = dict(
            os.environ,
            PYTHON_POPCONTEST_ENABLE="1",
            PYTHON_POPCONTEST_STATSD_HOST="127.0.0.1",
            PYTHON_POPCONTEST_STATSD_PORT=str(sock.getsockname()[1]),
            HOME=str(home),
        )
        code = "import yaml\n" + body
        procs[shape] = (subprocess.Popen([str(python), "-c", code], env=env), sock)
    end = time.monotonic() + 15
    result = {shape: "no" for shape in SHAPES}
    while time.monotonic() < end:
        for shape, (_proc, sock) in procs.items():
            try:
                if b"reports" in sock.recv(9999):
                    result[shape] = "yes"
            except BlockingIOError:
                pass
        time.sleep(0.05)
    for proc, sock in procs.values():
        proc.kill()
        proc.wait()
        sock.close()
    return result


def main() -> None:
    wheel, pythons = sys.argv[1], sys.argv[2:]
    with tempfile.TemporaryDirectory() as tmp:
        table = {}
        for python in pythons:
            root = Path(tmp, Path(python).name)
            interpreter = venv(python, wheel, root)
            home = Path(tmp, "home")
            home.mkdir(exist_ok=True)
            # Warm the index: a checkpoint never builds one (the exit report does).
            subprocess.run(
                [str(interpreter), "-c", "import yaml, numpy"],
                check=True,
                env=dict(
                    os.environ,
                    PYTHON_POPCONTEST_ENABLE="1",
                    HOME=str(home),
                    PYTHON_POPCONTEST_STATSD_PORT="9",
                ),
            )
            version = subprocess.run(
                [str(interpreter), "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                capture_output=True,
                text=True,
            ).stdout.strip()
            table[version] = measure(interpreter, home)
    print("| program shape | " + " | ".join(table) + " |")
    print("|---|" + "---|" * len(table))
    for shape in SHAPES:
        print(f"| {shape} | " + " | ".join(table[v][shape] for v in table) + " |")


if __name__ == "__main__":
    main()
