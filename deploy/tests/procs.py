"""Starting the real gateway and program runners for the deploy tests, and reading their HTTP."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request

from conftest import ROOT

EXAMPLES = ROOT / "clients" / "python" / "examples"


def http_get(url: str, token: str | None = None) -> tuple[int, str]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError as e:
        return 0, str(e)


def wait_for(pred, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def start_gateway(busgate_bin: str, args: list[str], log_path) -> tuple[subprocess.Popen, str, str]:
    """Runs `busgate ARGS --tcp 127.0.0.1:0 --http 127.0.0.1:0`; returns it with its TCP and HTTP addresses."""
    with open(log_path, "w") as f:
        proc = subprocess.Popen([busgate_bin, *args, "--tcp", "127.0.0.1:0", "--http", "127.0.0.1:0",
                                 "--log-format", "text"], stdout=f, stderr=subprocess.STDOUT)

    def ready():
        t = log_path.read_text()
        assert proc.poll() is None, t
        return t if "ready (bus" in t else None
    text = wait_for(ready, 20, "the gateway")
    tcp = re.search(r"tcp listening on ([\d.]+:\d+)", text).group(1)
    http = re.search(r"http listening on ([\d.]+:\d+)", text).group(1)
    return proc, tcp, http


def start_program(args: list[str], env: dict[str, str], log_path) -> tuple[subprocess.Popen, str]:
    """Runs `python ARGS` in clients/python/examples with ENV on top of this environment and an HTTP
    server on a free port; returns it with the address it serves /healthz, /readyz, /metrics on."""
    full = dict(os.environ)
    full.update(env)
    full["BUSGATE_PROGRAM_HTTP"] = "127.0.0.1:0"
    f = open(log_path, "w")
    proc = subprocess.Popen([sys.executable, *args], cwd=EXAMPLES, env=full, stdout=f, stderr=subprocess.STDOUT)

    def address():
        for line in log_path.read_text().splitlines():
            if '"program.http"' in line:
                return json.loads(line)["address"]
        assert proc.poll() is None, log_path.read_text()
        return None
    return proc, wait_for(address, 20, f"the HTTP address of python {' '.join(args)}")


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=40)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
