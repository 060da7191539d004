"""Secrets from files and the environment (docs/configuration.md, "Secrets"): the real binary takes
a tenant's tokens from a file and the admin token from a variable, names the key and the source
without the secret when one cannot be read, and re-reads token files on reload, so a rotated file
applies new tokens and revokes the old ones."""
from __future__ import annotations

import http.client
import json
import os
import pathlib
import signal
import subprocess

import pytest

from rawgw import BINARY, ERR, HELLO, E, RawClient

ADMIN_ENV = "BUSGATE_TEST_ADMIN_TOKEN"
ADMIN_TOKEN = "admin-from-env-7f3a"


def config(token_file: pathlib.Path, admin=f"{{env: {ADMIN_ENV}}}") -> str:
    return f"""
node_id: gw-secrets-1
admin: {{token: {admin}}}
tenants:
  - name: acme
    tokens: [{{file: "{token_file}"}}]
  - name: globex
    tokens: [globex-plain-token-1]
"""


def refused(g, token: str) -> int:
    """The ERR code a HELLO with `token` gets (the connection is then closed)."""
    c = RawClient(g.tcp)
    try:
        c.send(HELLO, [1], {"method": "token", "token": token}, "test")
        return c.expect(ERR)[1]
    finally:
        c.close()


def admin(g, method: str, path: str, token: str | None = ADMIN_TOKEN) -> tuple[int, dict]:
    conn = http.client.HTTPConnection(*g.http, timeout=10)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    conn.request(method, path, body=b"" if method == "POST" else None, headers=headers)
    r = conn.getresponse()
    return r.status, json.loads(r.read() or b"{}")


def check(path: pathlib.Path, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([str(BINARY), "--check-config", str(path)], capture_output=True, text=True, timeout=30,
                          env={**os.environ, **(env or {})})


def test_a_token_from_a_file_and_the_admin_token_from_the_environment(tmp_path, start_gateway, clients):
    tokens = tmp_path / "acme-tokens"
    tokens.write_text("acme-file-token-1\n")
    g = start_gateway(config(tokens), env={ADMIN_ENV: ADMIN_TOKEN})
    welcome = clients(g.client("acme-file-token-1")).welcome
    assert welcome[4] == "acme"
    assert clients(g.client("globex-plain-token-1")).welcome[4] == "globex"
    # The file's name, the variable's name or a trailing newline are not tokens.
    assert refused(g, str(tokens)) == E["AUTH_FAILED"]
    assert refused(g, "acme-file-token-1\n") == E["AUTH_FAILED"]
    # The admin API takes the variable's value, and only that.
    assert admin(g, "GET", "/admin/connections")[0] == 200
    assert admin(g, "GET", "/admin/connections", token=ADMIN_ENV)[0] == 401
    assert admin(g, "GET", "/admin/connections", token=None)[0] == 401
    assert not any("acme-file-token-1" in line or ADMIN_TOKEN in line for line in g.log_lines)


def test_check_config_names_the_key_and_the_source_but_not_the_secret(tmp_path):
    good = tmp_path / "acme-tokens"
    good.write_text("acme-file-token-1\n")
    missing = tmp_path / "not-there"
    cfg = tmp_path / "gateway.yaml"
    cfg.write_text(config(good).replace(f'tokens: [{{file: "{good}"}}]',
                                        f'tokens: [{{file: "{good}"}}, {{file: "{missing}"}}]'))
    env = {ADMIN_ENV: ADMIN_TOKEN}
    r = check(cfg, env)
    assert r.returncode == 2, r.stdout + r.stderr
    assert f"tenants[0].tokens[1]: file '{missing}' cannot be read: No such file or directory" in r.stderr
    for secret in ("acme-file-token-1", ADMIN_TOKEN):
        assert secret not in r.stderr and secret not in r.stdout

    # Once the file exists, the same file is valid; without the variable it is not.
    missing.write_text("acme-second-token\n")
    r = check(cfg, env)
    assert r.returncode == 0 and "valid (2 tenants" in r.stdout, r.stderr
    r = check(cfg)
    assert r.returncode == 2
    assert f"admin.token: environment variable {ADMIN_ENV} is not set" in r.stderr

    # A value that fails a later check is named by file and line, without the value.
    missing.write_text("acme-second-token\nshort\n")
    r = check(cfg, env)
    assert r.returncode == 2
    assert f"tenants[0].tokens[1]: file '{missing}' line 2: tokens must be at least 8 characters" in r.stderr
    assert "short" not in r.stderr and "acme-second-token" not in r.stderr


def test_rotating_the_token_file_and_reloading_revokes_the_old_token(tmp_path, start_gateway, clients):
    tokens = tmp_path / "acme-tokens"
    tokens.write_text("acme-old-token-1\n")
    g = start_gateway(config(tokens), env={ADMIN_ENV: ADMIN_TOKEN})
    old = clients(g.client("acme-old-token-1"))
    assert refused(g, "acme-new-token-2") == E["AUTH_FAILED"]

    # Step 1: the file holds both tokens (one per line); after SIGHUP both work, nothing is revoked.
    tokens.write_text("acme-old-token-1\nacme-new-token-2\n")
    g.signal(signal.SIGHUP)
    g.wait_log("reloaded 2 tenants")
    new = clients(g.client("acme-new-token-2"))
    assert new.welcome[4] == "acme"
    assert old.flush()

    # Step 2: the old line is removed; the reload (through the admin API this time) closes the old
    # token's connection with AUTH_REVOKED, the new token's connection stays.
    tokens.write_text("acme-new-token-2\n")
    assert admin(g, "POST", "/admin/reload") == (200, {"reloaded": True})
    old.expect_err("AUTH_REVOKED")
    old.expect_closed()
    assert new.flush()
    assert refused(g, "acme-old-token-1") == E["AUTH_FAILED"]

    # A reload that cannot read the file is refused, names the key, and the running tokens stay.
    tokens.unlink()
    status, body = admin(g, "POST", "/admin/reload")
    assert status == 422
    assert body["error"] == f"tenants[0].tokens[0]: file '{tokens}' cannot be read: No such file or directory"
    g.signal(signal.SIGHUP)
    g.wait_log(r"reload failed.*tenants\[0\]\.tokens\[0\]: file '.*' cannot be read")
    assert new.flush()
    assert clients(g.client("acme-new-token-2")).welcome[4] == "acme"
    assert not any("acme-new-token-2" in line or "acme-old-token-1" in line for line in g.log_lines)


@pytest.mark.parametrize("content", ["", "\n  \n"])
def test_an_empty_token_file_stops_the_gateway_at_start(tmp_path, content):
    tokens = tmp_path / "acme-tokens"
    tokens.write_text(content)
    cfg = tmp_path / "gateway.yaml"
    cfg.write_text(config(tokens, admin="plain-admin-token"))
    r = subprocess.run([str(BINARY), "--config", str(cfg), "--tcp", "127.0.0.1:0", "--http", "off"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2
    assert f"tenants[0].tokens[0]: file '{tokens}' is empty" in r.stderr
    assert "listening" not in r.stderr
