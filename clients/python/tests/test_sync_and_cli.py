"""The blocking facade (busgate.sync) and busgate-cli (run as a subprocess), against the real gateway."""
from __future__ import annotations

import json
import subprocess
import threading

import pytest

from busgate import errors
from busgate.sync import connect

from conftest import CLI, TOKEN, python_env


def test_sync_pub_sub_request_respond(url):
    with connect(url, token=TOKEN, name="sync-test") as bg:
        assert bg.is_connected and bg.welcome.tenant == "demo"
        sub = bg.subscribe("s.>")
        bg.publish("s.a", b"one", headers={"k": "v"})
        m = sub.next(timeout=2)
        assert (m.subject, m.data, m.headers["k"], m.tenant) == ("s.a", b"one", "v", "demo")
        with pytest.raises(errors.Timeout):
            sub.next(timeout=0.05)

        served = []

        def echo(msg):  # runs in its own thread, may block and call the client
            served.append(threading.current_thread().name)
            msg.respond(b"echo:" + msg.data)

        bg.subscribe("svc.echo", cb=echo)
        assert bg.request("svc.echo", b"hi", timeout=2).data == b"echo:hi"
        assert served and served[0].startswith("busgate-sub-")
        with pytest.raises(errors.NoResponders):
            bg.request("nobody", b"", timeout=1)
        bg.publish("s.b", b"acked", ack=True)
        bg.flush()
        sub.unsubscribe()
        with pytest.raises(errors.SubscriptionClosed):
            sub.next(timeout=0.5)
    assert bg.is_closed


def test_sync_iteration_and_drain(url):
    bg = connect(url, token=TOKEN)
    pub = connect(url, token=TOKEN)
    sub = bg.subscribe("it")
    for i in range(5):
        pub.publish("it", str(i))
    pub.flush()
    got = []
    for m in sub:
        got.append(m.data)
        if len(got) == 5:
            break
    assert got == [b"0", b"1", b"2", b"3", b"4"]
    bg.drain(timeout=5)
    assert bg.is_closed
    pub.close()


def test_sync_errors(url):
    with pytest.raises(errors.AuthFailed):
        connect(url, token="nope-nope")


def run_cli(url, *args, input=None, timeout=20):
    return subprocess.run([*CLI, "--url", url, "--token", TOKEN, *args], capture_output=True, text=True,
                          input=input, timeout=timeout, env=python_env())


def start_cli(url, *args):
    p = subprocess.Popen([*CLI, "--url", url, "--token", TOKEN, *args], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=python_env())
    line = p.stderr.readline()  # "Subscribed to ..." / "Listening on ...": the SUB was confirmed
    assert line.startswith(("Subscribed", "Listening")), line + p.stderr.read()
    return p


def test_cli_pub_and_sub(url):
    sub = start_cli(url, "sub", "cli.>", "--count", "3", "--json")
    try:
        r = run_cli(url, "pub", "cli.a", "hello", "-H", "trace-id=t1", "--count", "2")
        assert r.returncode == 0, r.stderr
        r = run_cli(url, "pub", "cli.b", "-", input="from stdin")
        assert r.returncode == 0, r.stderr
        out, err = sub.communicate(timeout=20)
    finally:
        sub.kill()
    assert sub.returncode == 0, err
    msgs = [json.loads(line) for line in out.splitlines()]
    assert [m["subject"] for m in msgs] == ["cli.a", "cli.a", "cli.b"]
    assert msgs[0]["data"] == "hello" and msgs[0]["headers"]["trace-id"] == "t1"
    assert msgs[2]["data"] == "from stdin" and msgs[2]["headers"]["busgate-tenant"] == "demo"


def test_cli_req_and_reply(url):
    rep = start_cli(url, "reply", "cli.svc", "--count", "2")  # echo
    fixed = start_cli(url, "reply", "cli.fixed", "pong", "--count", "1")
    try:
        r = run_cli(url, "req", "cli.svc", "ping", "--timeout", "5")
        assert r.returncode == 0 and r.stdout == "ping\n", r.stderr
        r = run_cli(url, "req", "cli.svc", "again", "--json")
        assert json.loads(r.stdout)["data"] == "again"
        r = run_cli(url, "req", "cli.fixed", "anything")
        assert r.stdout == "pong\n"
        assert rep.wait(10) == 0 and fixed.wait(10) == 0
    finally:
        rep.kill()
        fixed.kill()


def test_cli_errors_and_usage(url):
    # exit codes (busgate.cli_exit): 3 no responders, 5 auth, 1 any other busgate error; each error once
    r = run_cli(url, "req", "cli.nobody", "x", "--timeout", "2")
    assert r.returncode == 3 and r.stderr.count("NO_RESPONDERS (500)") == 1 and r.stdout == ""
    r = run_cli(url, "pub", "bad..subject", "x")
    assert r.returncode == 1 and r.stderr.count("INVALID_SUBJECT") == 1
    r = subprocess.run([*CLI, "--url", url, "--token", "wrong-token", "pub", "a", "b"], capture_output=True,
                       text=True, env=python_env(), timeout=20)
    assert r.returncode == 5 and r.stderr == "busgate-cli: AUTH_FAILED (201): the token was not accepted\n"
    r = subprocess.run([*CLI, "frobnicate"], capture_output=True, text=True, env=python_env(), timeout=20)
    assert r.returncode == 2


def test_cli_console_script_is_installed():
    import shutil
    exe = shutil.which("busgate-cli")
    if exe is None:
        pytest.skip("busgate-cli is not on PATH (the package is not pip-installed in this environment)")
    r = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=20)
    assert r.returncode == 0 and "pub" in r.stdout and "reply" in r.stdout
