"""bus.creds_file against a real nats-server: nkey authentication (a user seed alone), decentralised
JWT authentication (operator mode, a full .creds file), refusals, and creds files that cannot work.

The keys and JWTs are made here with the `openssl` CLI (Ed25519) and a few lines of Python for the
nkey encoding, so that no nkeys/pynacl/cryptography package is needed."""
from __future__ import annotations

import base64
import hashlib
import json
import pathlib
import subprocess
import time

import pytest

from natsfix import free_port, gateway_config
from rawgw import BINARY, MSG

# ---------------------------------------------------------------------------------------- nkeys

PREFIX_SEED = 18 << 3  # 'S'
PREFIX = {"O": 14 << 3, "A": 0, "U": 20 << 3}  # operator, account, user


def crc16(data: bytes) -> int:
    """CRC-16/XMODEM, as nkeys use."""
    crc = 0
    for b in data:
        crc ^= b << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


def b32(raw: bytes) -> str:
    return base64.b32encode(raw).decode().rstrip("=")


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def with_crc(raw: bytes) -> bytes:
    return raw + crc16(raw).to_bytes(2, "little")


def openssl(*args) -> bytes:
    return subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=20).stdout


class NKey:
    """An Ed25519 key pair as a NATS nkey: seed "S<kind>..." and public key "<kind>..."."""
    _n = 0

    def __init__(self, kind: str, directory: pathlib.Path):
        NKey._n += 1
        self.pem = directory / f"nkey-{kind}-{NKey._n}.pem"
        openssl("genpkey", "-algorithm", "ed25519", "-out", str(self.pem))
        raw_seed = openssl("pkey", "-in", str(self.pem), "-outform", "DER")[-32:]
        raw_pub = openssl("pkey", "-in", str(self.pem), "-pubout", "-outform", "DER")[-32:]
        p = PREFIX[kind]
        self.seed = b32(with_crc(bytes([PREFIX_SEED | (p >> 5), (p & 31) << 3]) + raw_seed))
        self.public = b32(with_crc(bytes([p]) + raw_pub))
        assert self.seed.startswith("S" + kind) and self.public.startswith(kind)

    def sign(self, data: bytes) -> bytes:
        inp, out = self.pem.with_suffix(".in"), self.pem.with_suffix(".sig")
        inp.write_bytes(data)
        openssl("pkeyutl", "-sign", "-rawin", "-inkey", str(self.pem), "-in", str(inp), "-out", str(out))
        sig = out.read_bytes()
        assert len(sig) == 64
        return sig


def make_jwt(issuer: NKey, subject: str, name: str, nats_claims: dict) -> str:
    claims = {"iat": int(time.time()), "iss": issuer.public, "name": name, "sub": subject, "nats": nats_claims}
    # As nats-io/jwt does: the jti is base32 of SHA-512/256 of the claims. (nats-server 2.9.10 accepts
    # any jti; this keeps the tokens faithful anyway.)
    claims["jti"] = b32(hashlib.new("sha512_256", json.dumps(claims, separators=(",", ":")).encode()).digest())
    head = b64url(json.dumps({"typ": "JWT", "alg": "ed25519-nkey"}, separators=(",", ":")).encode())
    body = b64url(json.dumps(claims, separators=(",", ":")).encode())
    return f"{head}.{body}.{b64url(issuer.sign(f'{head}.{body}'.encode()))}"


def account_jwt(operator: NKey, account: NKey) -> str:
    return make_jwt(operator, account.public, "busgate-account", {
        "limits": {"subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1, "wildcards": True,
                   "conn": -1, "leaf": -1},
        "default_permissions": {"pub": {}, "sub": {}},
        "type": "account", "version": 2})


def user_jwt(account: NKey, user: NKey) -> str:
    return make_jwt(account, user.public, "busgate-user", {
        "pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1, "type": "user", "version": 2})


def creds_text(jwt: str, seed: str) -> str:
    """The layout `nsc generate creds` writes."""
    return (f"-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n"
            "************************* IMPORTANT *************************\n"
            "NKEY Seed printed below can be used to sign and prove identity.\n"
            "NKEYs are sensitive and should be treated as secrets.\n\n"
            f"-----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n\n"
            "*************************************************************\n")


# ---------------------------------------------------------------------------------------- helpers

def creds_config(url: str, node_id: str, creds_path: pathlib.Path) -> str:
    cfg = gateway_config([url], node_id)
    out = cfg.replace("bus: {kind: nats,", f'bus: {{kind: nats, creds_file: "{creds_path}",')
    assert out != cfg
    return out


def nkey_server(nats, tmp_path, user: NKey):
    conf = tmp_path / "nats-nkey.conf"
    conf.write_text(f'authorization {{\n  users = [\n    {{ nkey: "{user.public}" }}\n  ]\n}}\n')
    return nats(extra=["-c", str(conf)])


@pytest.fixture
def operator_server(nats, tmp_path):
    """nats-server in operator mode (memory resolver, one preloaded account). Returns (server, account)."""
    operator, account = NKey("O", tmp_path), NKey("A", tmp_path)
    op_jwt = make_jwt(operator, operator.public, "busgate-operator", {"type": "operator", "version": 2})
    conf = tmp_path / "nats-operator.conf"
    conf.write_text(f"operator: {op_jwt}\nresolver: MEMORY\n"
                    f"resolver_preload: {{\n  {account.public}: {account_jwt(operator, account)}\n}}\n")
    return nats(extra=["-c", str(conf)]), account


def wait_readyz(g, status, timeout=5.0):
    deadline = time.monotonic() + timeout
    while True:
        got = g.http_get("/readyz")
        if got[0] == status:
            return got
        assert time.monotonic() < deadline, f"/readyz stayed {got}, wanted {status}:\n" + "\n".join(g.log_lines[-20:])
        time.sleep(0.05)


def gateway_conn(ns):
    """The gateway's connection as the server's monitor sees it (with its authentication)."""
    conns = [c for c in ns.monitor("/connz?auth=1")["connections"] if (c.get("name") or "").startswith("busgate-")]
    assert len(conns) == 1, conns
    return conns[0]


def assert_relays(g, clients, subject):
    a = clients(g.client())
    b = clients(g.client())
    a.sub(1, subject)
    b.pub(subject, b"signed")
    m = a.expect(MSG)
    assert m[2:4] == [subject, b"signed"]


# ---------------------------------------------------------------------------------------- tests

@pytest.mark.parametrize("eol", ["\n", "\r\n", ""])
def test_nkey_seed_file(nats, start_gateway, clients, tmp_path, eol):
    user = NKey("U", tmp_path)
    ns = nkey_server(nats, tmp_path, user)
    seed_file = tmp_path / "user.nk"
    seed_file.write_text(user.seed + eol)
    g = start_gateway(creds_config(ns.url, "gw-nkey", seed_file))
    wait_readyz(g, 200)
    assert_relays(g, clients, "nkey.relay")
    conn = gateway_conn(ns)
    assert conn.get("authorized_user") == user.public, conn


def test_nkey_reconnect_signs_the_new_nonce(nats, start_gateway, clients, tmp_path):
    user = NKey("U", tmp_path)
    ns = nkey_server(nats, tmp_path, user)
    seed_file = tmp_path / "user.nk"
    seed_file.write_text(user.seed + "\n")
    g = start_gateway(creds_config(ns.url, "gw-nkey-re", seed_file))
    wait_readyz(g, 200)
    sub = clients(g.client())
    sub.sub(1, "nkey.again")
    ns.stop()
    wait_readyz(g, 503)
    ns.start()  # same port, same authorization; a fresh nonce in its INFO
    wait_readyz(g, 200)
    pub = clients(g.client())
    deadline = time.monotonic() + 5
    while True:  # the subscription is restored on the new connection
        pub.pub("nkey.again", b"after")
        try:
            if sub.expect(MSG, timeout=0.2)[3] == b"after":
                break
        except TimeoutError:
            assert time.monotonic() < deadline, "no delivery after the reconnect"
    assert gateway_conn(ns).get("authorized_user") == user.public
    assert not any("refused" in line for line in g.log_lines), g.log_lines


def test_jwt_creds_operator_mode(operator_server, start_gateway, clients, tmp_path):
    ns, account = operator_server
    user = NKey("U", tmp_path)
    creds = tmp_path / "user.creds"
    creds.write_text(creds_text(user_jwt(account, user), user.seed))
    g = start_gateway(creds_config(ns.url, "gw-jwt", creds))
    wait_readyz(g, 200)
    assert_relays(g, clients, "jwt.relay")
    conn = gateway_conn(ns)
    assert conn.get("authorized_user") == user.public, conn
    assert conn.get("account") == account.public, conn


def test_jwt_creds_crlf(operator_server, start_gateway, clients, tmp_path):
    ns, account = operator_server
    user = NKey("U", tmp_path)
    creds = tmp_path / "user.creds"
    creds.write_bytes(creds_text(user_jwt(account, user), user.seed).replace("\n", "\r\n").encode())
    g = start_gateway(creds_config(ns.url, "gw-jwt-crlf", creds))
    wait_readyz(g, 200)
    assert_relays(g, clients, "jwt.crlf")


@pytest.mark.parametrize("case", ["nkey-unknown-seed", "jwt-unknown-account", "jwt-seed-of-another-user"])
def test_refused_credentials_keep_the_gateway_up_but_not_ready(request, nats, start_gateway, clients, tmp_path,
                                                               case):
    creds = tmp_path / "refused.creds"
    if case == "nkey-unknown-seed":
        ns = nkey_server(nats, tmp_path, NKey("U", tmp_path))
        creds.write_text(NKey("U", tmp_path).seed + "\n")  # a valid seed, of a key the server does not know
    else:
        ns, account = request.getfixturevalue("operator_server")
        user = NKey("U", tmp_path)
        if case == "jwt-unknown-account":  # well-formed and self-consistent, issued by a stranger
            creds.write_text(creds_text(user_jwt(NKey("A", tmp_path), user), user.seed))
        else:  # the right JWT, but the nonce signed with another key than the JWT's subject
            creds.write_text(creds_text(user_jwt(account, user), NKey("U", tmp_path).seed))
    g = start_gateway(creds_config(ns.url, "gw-refused", creds))
    line = g.wait_log(r"nats: .*the server refused the connection: .*Authorization Violation", timeout=5)
    assert ns.url in line, line
    # it keeps retrying in the background and stays not ready; clients may still connect
    time.sleep(1.0)
    assert g.proc.poll() is None
    assert g.http_get("/readyz") == (503, "bus unavailable\n")
    assert g.http_get("/healthz")[0] == 200
    clients(g.client())
    assert not any(c.get("name", "").startswith("busgate-") for c in ns.monitor("/connz")["connections"])
    server_log = (pathlib.Path(ns.tmp.name) / "nats.log").read_text()
    assert ':busgate-gw-refused" - authentication error' in server_log, server_log[-2000:]


def _bad_creds(tmp_path):
    u = NKey("U", tmp_path)
    a = NKey("A", tmp_path)
    jwt = user_jwt(a, u)
    bad_crc = u.seed[:20] + ("A" if u.seed[20] != "A" else "B") + u.seed[21:]  # a seed byte changed
    return {
        "missing-file": (None, "cannot read"),
        "empty-file": ("", "holds no user nkey seed"),
        "garbage": ("this is not a creds file\n", "holds no user nkey seed"),
        "jwt-without-seed": (f"-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n",
                             "holds no user nkey seed"),
        "seed-bad-checksum": (bad_crc + "\n", "checksum"),
        "seed-bad-base32": (creds_text(jwt, "SU" + "1" * 56), "base32"),
        "account-seed-in-creds": (creds_text(jwt, a.seed), "not a user nkey seed"),
        "empty-jwt-block": (creds_text("", u.seed), "empty JWT block"),
    }


@pytest.mark.parametrize("case", ["missing-file", "empty-file", "garbage", "jwt-without-seed", "seed-bad-checksum",
                                  "seed-bad-base32", "account-seed-in-creds", "empty-jwt-block"])
def test_malformed_creds_file_refuses_to_start(tmp_path, case):
    content, why = _bad_creds(tmp_path)[case]
    creds = tmp_path / "bad.creds"
    if content is not None:
        creds.write_text(content)
    cfg = tmp_path / "gateway.yaml"
    cfg.write_text(creds_config(f"nats://127.0.0.1:{free_port()}", "gw-bad", creds))
    r = subprocess.run([str(BINARY), "--config", str(cfg), "--tcp", "127.0.0.1:0", "--http", "127.0.0.1:0"],
                       capture_output=True, text=True, timeout=15)
    assert r.returncode == 2, r.stderr  # a configuration error
    assert "bus.creds_file" in r.stderr and why in r.stderr, r.stderr
    assert "ready (bus:" not in r.stderr, r.stderr
    # --check-config finds the same problem without starting anything
    chk = subprocess.run([str(BINARY), "--check-config", str(cfg)], capture_output=True, text=True, timeout=15)
    assert chk.returncode == 2 and "bus.creds_file" in chk.stderr + chk.stdout, (chk.stdout, chk.stderr)
