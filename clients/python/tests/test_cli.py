"""busgate-cli in scripts (run as a subprocess against the real gateway): one exit code per failure
kind, each error printed once on stderr and nothing on stdout, --version, contexts, bench."""
from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import threading

import pytest

from conftest import CLI, TOKEN, free_port, python_env

# busgate.cli_exit
NO_RESPONDERS, TIMEOUT, AUTH, PERMISSION_DENIED, SERVICE_ERROR, CONNECTION = 3, 4, 5, 6, 7, 8

DENY_CONFIG = f"""
tenants:
  - name: demo
    tokens: [{TOKEN}]
    permissions:
      publish:   {{allow: [">"], deny: ["secret.>"]}}
      subscribe: {{allow: [">"], deny: ["secret.>"]}}
      request:   {{allow: [">"], deny: ["secret.>"]}}
"""


@pytest.fixture
def cli_env(tmp_path):
    """The environment of every CLI run: no BUSGATE_* settings from outside, a private contexts file."""
    env = {k: v for k, v in python_env().items() if not k.startswith("BUSGATE_")}
    env["BUSGATE_CONTEXTS_FILE"] = str(tmp_path / "cfg" / "contexts.json")
    return env


def cli(env, *args, extra_env=None, timeout=20, input=None):
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, input=input,
                          env={**env, **(extra_env or {})})


def start(env, *args, ready=("Subscribed", "Listening")):
    p = subprocess.Popen([*CLI, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    line = p.stderr.readline()  # the status line: the gateway confirmed the subscription
    if not line.startswith(ready):
        p.kill()
        raise AssertionError(line + p.stderr.read())
    return p


def assert_one_error(r, code: int, *needles: str) -> str:
    """Exit code `code`, nothing on stdout, exactly one stderr line: 'busgate-cli: NAME ...: message'."""
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    assert r.stdout == "", r.stdout
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("busgate-cli: "), r.stderr
    for n in needles:
        assert r.stderr.count(n) == 1, (n, r.stderr)
    return lines[0]


# ------------------------------------------------------------------ exit codes, one per failure kind

def test_no_responders_and_timeout(gateway, cli_env):
    u = ["--url", gateway.url, "--token", TOKEN]
    r = cli(cli_env, *u, "req", "cli.nobody", "x", "--timeout", "2")
    assert_one_error(r, NO_RESPONDERS, "NO_RESPONDERS (500)")
    silent = start(cli_env, *u, "sub", "cli.silent")  # takes the request, never answers
    try:
        r = cli(cli_env, *u, "req", "cli.silent", "x", "--timeout", "0.5")
        assert_one_error(r, TIMEOUT, "REQUEST_TIMEOUT (501)")
    finally:
        silent.kill()
        silent.wait()


def test_auth_failed_is_printed_once(gateway, cli_env):
    for cmd in (["pub", "a", "b"], ["req", "a", "b"], ["sub", "a"]):
        r = cli(cli_env, "--url", gateway.url, "--token", "wrong-token", *cmd)
        assert_one_error(r, AUTH, "AUTH_FAILED (201)")


def test_auth_revoked_ends_a_subscriber_with_the_auth_code(start_gateway, cli_env):
    g = start_gateway(DENY_CONFIG)
    sub = start(cli_env, "--url", g.url, "--token", TOKEN, "sub", "news")
    try:
        g.config_path.write_text(DENY_CONFIG.replace(TOKEN, "another-token"))
        g.signal(signal.SIGHUP)  # the reload removes the token: its connections get AUTH_REVOKED
        out, err = sub.communicate(timeout=15)
    finally:
        sub.kill()
    assert sub.returncode == AUTH, err
    assert out == "" and err.count("AUTH_REVOKED (202)") == 1 and len(err.splitlines()) == 1, err


def test_permission_denied(start_gateway, cli_env):
    g = start_gateway(DENY_CONFIG)
    u = ["--url", g.url, "--token", TOKEN]
    assert_one_error(cli(cli_env, *u, "req", "secret.plans", "x", "--timeout", "2"), PERMISSION_DENIED,
                     "PERMISSION_DENIED (306)")
    # a PUB without --ack is refused by an ERR after the fact: the closing flush finds it
    r = cli(cli_env, *u, "pub", "secret.plans", "x")
    assert_one_error(r, PERMISSION_DENIED, "PERMISSION_DENIED (306)")
    assert "Published" not in r.stderr
    assert_one_error(cli(cli_env, *u, "pub", "secret.plans", "x", "--ack"), PERMISSION_DENIED,
                     "PERMISSION_DENIED (306)")
    assert_one_error(cli(cli_env, *u, "sub", "secret.>"), PERMISSION_DENIED, "PERMISSION_DENIED (306)")
    r = cli(cli_env, *u, "pub", "open.plans", "x")  # the same tenant may publish elsewhere
    assert r.returncode == 0 and "Published 1 message(s)" in r.stderr, r.stderr


SERVICE = textwrap.dedent("""
    from busgate.program import Program

    program = Program("failing")

    @program.service("calc.sqrt", command="serve")
    async def sqrt(msg, ctx):
        n = float(msg.data)
        if n < 0:
            raise ValueError("negative input " + msg.data.decode())
        return str(n ** 0.5)

    if __name__ == "__main__":
        program.main()
""")


def wait_event(proc, event: str, timeout: float = 40.0) -> None:
    """Read the program's JSON log lines until `event` (bounded by `timeout`)."""
    found = threading.Event()
    seen: list[str] = []

    def pump():
        for line in proc.stderr:
            seen.append(line.rstrip())
            try:
                if json.loads(line).get("event") == event:
                    found.set()
            except ValueError:
                pass

    threading.Thread(target=pump, daemon=True).start()
    assert found.wait(timeout), f"{event} was not logged (exit {proc.poll()}): " + "\n".join(seen[-10:])


def test_service_error_header(gateway, cli_env, tmp_path):
    (tmp_path / "failing.py").write_text(SERVICE)
    svc = subprocess.Popen([sys.executable, str(tmp_path / "failing.py"), "serve", "--url", gateway.url,
                            "--token", TOKEN], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                           env=cli_env)
    try:
        wait_event(svc, "program.ready")
        u = ["--url", gateway.url, "--token", TOKEN]
        r = cli(cli_env, *u, "req", "calc.sqrt", "9")
        assert r.returncode == 0 and r.stdout == "3.0\n", r.stderr
        for fmt in ([], ["--json"], ["--raw"]):
            r = cli(cli_env, *u, "req", "calc.sqrt", "-4", *fmt)
            line = assert_one_error(r, SERVICE_ERROR, "ValueError: negative input -4")
            assert line.startswith("busgate-cli: SERVICE_ERROR: ") and "'calc.sqrt'" in line
    finally:
        svc.kill()
        svc.wait()


def test_connection_failure(cli_env):
    port = free_port()
    for cmd in (["req", "a", "b"], ["pub", "a", "b"], ["bench", "b", "--msgs", "10", "--requests", "1"]):
        r = cli(cli_env, "--url", f"busgate://127.0.0.1:{port}", "--token", TOKEN, *cmd)
        assert_one_error(r, CONNECTION, "NO_SERVERS")


def test_usage_and_signals(gateway, cli_env):
    u = ["--url", gateway.url, "--token", TOKEN]
    assert cli(cli_env, "frobnicate").returncode == 2
    assert_one_error(cli(cli_env, *u, "pub", "a", "b", "-H", "no-equals-sign"), 2, "KEY=VALUE")
    assert cli(cli_env, *u, "bench", "b", "--pubs", "0").returncode == 2
    for sig, code in ((signal.SIGINT, 130), (signal.SIGTERM, 143)):
        p = start(cli_env, *u, "sub", "cli.>")
        p.send_signal(sig)
        out, err = p.communicate(timeout=15)
        assert p.returncode == code and out == "" and err == "", (p.returncode, err)


def test_closed_stdout_ends_quietly(gateway, cli_env):
    from busgate.sync import connect
    p = start(cli_env, "--url", gateway.url, "--token", TOKEN, "sub", "piped", "--raw")  # as in `| head -1`
    try:
        with connect(gateway.url, token=TOKEN) as bg:
            bg.publish("piped", b"first")
            bg.flush()
            assert p.stdout.readline() == "first\n"
            p.stdout.close()  # the reader went away
            for i in range(5):
                bg.publish("piped", b"more")
            bg.flush()
            assert p.wait(15) == 141
        assert p.stderr.read() == ""
    finally:
        p.kill()
        p.wait()


# ------------------------------------------------------------------ --version, --help

def test_version_and_help(cli_env):
    from importlib.metadata import PackageNotFoundError, version
    import busgate
    try:
        expected = version("busgate")
    except PackageNotFoundError:
        expected = busgate.__version__
    r = cli(cli_env, "--version")
    assert r.returncode == 0 and r.stdout == f"busgate-cli {expected}\n" and r.stderr == ""
    r = cli(cli_env, "--help")
    assert r.returncode == 0 and "exit codes:" in r.stdout
    for row in ("3  NO_RESPONDERS", "4  TIMEOUT", "5  AUTH", "6  PERMISSION_DENIED", "7  SERVICE_ERROR",
                "8  CONNECTION", "130  INTERRUPTED", "141  BROKEN_PIPE"):
        assert row in r.stdout, row
    for sub in ("context", "bench"):
        assert sub in r.stdout


# ------------------------------------------------------------------ contexts

def test_contexts_end_to_end(gateway, cli_env, tmp_path):
    path = tmp_path / "cfg" / "contexts.json"
    closed = f"busgate://127.0.0.1:{free_port()}"
    echo = start(cli_env, "--url", gateway.url, "--token", TOKEN, "reply", "ctx.echo")
    try:
        r = cli(cli_env, "context", "add", "dev", "--url", gateway.url, "--token", TOKEN, "--select")
        assert r.returncode == 0, r.stderr
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        r = cli(cli_env, "context", "add", "other", "--url", gateway.url, "--token-env", "OTHER_TOKEN")
        assert r.returncode == 0, r.stderr
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert json.loads(path.read_text())["contexts"]["other"] == {"url": gateway.url, "token_env": "OTHER_TOKEN"}

        r = cli(cli_env, "context", "ls")
        assert r.returncode == 0 and TOKEN not in r.stdout, r.stdout
        rows = r.stdout.splitlines()
        assert rows[0].startswith("* dev ") and rows[1].startswith("  other ") and "$OTHER_TOKEN" in rows[1]
        r = cli(cli_env, "context", "show")
        assert r.returncode == 0 and "name:     dev  (selected)" in r.stdout and gateway.url in r.stdout
        assert TOKEN not in r.stdout and "de******" in r.stdout

        # the selected context gives URL and token
        r = cli(cli_env, "req", "ctx.echo", "via-selected")
        assert r.returncode == 0 and r.stdout == "via-selected\n", r.stderr
        # --context / $BUSGATE_CONTEXT pick another; its token comes from $OTHER_TOKEN at use time
        r = cli(cli_env, "--context", "other", "req", "ctx.echo", "x")
        assert_one_error(r, 2, "$OTHER_TOKEN")
        r = cli(cli_env, "--context", "other", "req", "ctx.echo", "x", extra_env={"OTHER_TOKEN": "wrong-token"})
        assert_one_error(r, AUTH, "AUTH_FAILED (201)")
        r = cli(cli_env, "req", "ctx.echo", "x", extra_env={"BUSGATE_CONTEXT": "other", "OTHER_TOKEN": "wrong-token"})
        assert_one_error(r, AUTH, "AUTH_FAILED (201)")
        r = cli(cli_env, "req", "ctx.echo", "env-ctx", extra_env={"BUSGATE_CONTEXT": "other", "OTHER_TOKEN": TOKEN})
        assert r.returncode == 0 and r.stdout == "env-ctx\n", r.stderr

        # precedence: --url/--token > $BUSGATE_URL/$BUSGATE_TOKEN > the context
        r = cli(cli_env, "--context", "other", "--token", TOKEN, "req", "ctx.echo", "flag-token",
                extra_env={"OTHER_TOKEN": "wrong-token", "BUSGATE_TOKEN": "wrong-token"})
        assert r.returncode == 0 and r.stdout == "flag-token\n", r.stderr
        r = cli(cli_env, "--context", "other", "req", "ctx.echo", "env-token",
                extra_env={"OTHER_TOKEN": "wrong-token", "BUSGATE_TOKEN": TOKEN})
        assert r.returncode == 0 and r.stdout == "env-token\n", r.stderr
        r = cli(cli_env, "req", "ctx.echo", "x", extra_env={"BUSGATE_URL": closed})
        assert_one_error(r, CONNECTION, "NO_SERVERS")
        r = cli(cli_env, "--url", gateway.url, "req", "ctx.echo", "flag-url", extra_env={"BUSGATE_URL": closed})
        assert r.returncode == 0 and r.stdout == "flag-url\n", r.stderr

        # unknown names are usage errors that name them
        for args, env in ((["--context", "nope", "req", "a"], None), (["req", "a"], {"BUSGATE_CONTEXT": "nope"}),
                          (["context", "select", "nope"], None), (["context", "rm", "nope"], None),
                          (["context", "show", "nope"], None)):
            assert_one_error(cli(cli_env, *args, extra_env=env), 2, "unknown context 'nope'")

        assert cli(cli_env, "context", "select", "other").returncode == 0
        assert cli(cli_env, "context", "select").stdout == "other\n"
        r = cli(cli_env, "req", "ctx.echo", "selected-other", extra_env={"OTHER_TOKEN": TOKEN})
        assert r.returncode == 0 and r.stdout == "selected-other\n", r.stderr
        assert cli(cli_env, "context", "rm", "other").returncode == 0  # removing the selected one unselects it
        assert cli(cli_env, "context", "select").stdout == ""
        assert_one_error(cli(cli_env, "context", "show"), 2, "no context is selected")
        r = cli(cli_env, "context", "ls")
        assert r.stdout.splitlines() == [f"  dev   {gateway.url}  token de******"], r.stdout
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    finally:
        echo.kill()
        echo.wait()


def test_contexts_default_path_is_under_xdg_config_home(gateway, cli_env, tmp_path):
    env = {k: v for k, v in cli_env.items() if k != "BUSGATE_CONTEXTS_FILE"}
    env["XDG_CONFIG_HOME"] = str(tmp_path / "xdg")
    r = cli(env, "context", "add", "local", "--url", gateway.url, "--token", TOKEN, "--select")
    assert r.returncode == 0, r.stderr
    path = tmp_path / "xdg" / "busgate" / "contexts.json"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
    r = cli(env, "req", "nobody.here", "x")  # reaches the gateway through the context
    assert_one_error(r, NO_RESPONDERS, "NO_RESPONDERS (500)")


# ------------------------------------------------------------------ bench

def test_bench(gateway, cli_env):
    u = ["--url", gateway.url, "--token", TOKEN]
    r = cli(cli_env, *u, "bench", "bench.json", "--msgs", "3000", "--size", "64", "--pubs", "2", "--subs", "2",
            "--requests", "200", "--json", timeout=60)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    res = json.loads(r.stdout)
    ps, rq = res["pubsub"], res["request"]
    assert ps["publish"]["count"] == 3000 and ps["publish"]["msgs_per_s"] > 0 and ps["publish"]["mb_per_s"] > 0
    assert ps["receive"]["expected"] == 6000 and ps["receive"]["count"] == 6000 and ps["receive"]["lost"] == 0
    assert ps["receive"]["msgs_per_s"] > 0 and ps["receive"]["mb_per_s"] > 0
    assert rq["requests"] == 200 and rq["req_per_s"] > 0 and 0 < rq["p50_ms"] <= rq["p99_ms"] <= rq["max_ms"]

    r = cli(cli_env, *u, "bench", "bench.text", timeout=60)  # the defaults finish in a few seconds
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    pub = next(x for x in lines if x.strip().startswith("publish"))
    rec = next(x for x in lines if x.strip().startswith("receive"))
    req = next(x for x in lines if x.strip().startswith("request"))
    for line in (pub, rec):
        assert "msgs/s" in line and "MB/s" in line and float(line.split()[1].replace(",", "")) > 0
    assert "req/s" in req and "p50" in req and "p99" in req and float(req.split()[1].replace(",", "")) > 0


def test_bench_reports_a_repeated_error_once_and_still_prints_results(start_gateway, cli_env):
    g = start_gateway(f"""
tenants:
  - name: demo
    tokens: [{TOKEN}]
    limits: {{publish_msgs_per_sec: 100}}
""")
    r = cli(cli_env, "--url", g.url, "--token", TOKEN, "bench", "limited", "--msgs", "600", "--requests", "0",
            "--idle", "0.5", "--json", timeout=60)
    assert r.returncode == 1, r.stderr
    assert r.stderr.count("RATE_LIMITED (402)") == 1 and len(r.stderr.splitlines()) == 1, r.stderr
    res = json.loads(r.stdout)["pubsub"]
    assert res["publish"]["count"] == 600 and 0 < res["receive"]["count"] < 600 and res["receive"]["lost"] > 0
