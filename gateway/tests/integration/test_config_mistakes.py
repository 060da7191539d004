"""Configurations that would let a client reach another tenant's subjects (docs/protocol.md section 9)
are refused, with the key named (docs/configuration.md, "Rules that keep tenants apart"); every
configuration the repository ships or its suites write still loads."""
from __future__ import annotations

import importlib
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import threading

import pytest

from rawgw import BINARY, HELLO, ROOT, RawClient

NODE_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def check(tmp_path: pathlib.Path, text: str) -> tuple[subprocess.CompletedProcess, pathlib.Path]:
    path = tmp_path / "gateway.yaml"
    path.write_text(text)
    r = subprocess.run([str(BINARY), "--check-config", str(path)], capture_output=True, text=True, timeout=30)
    return r, path


def assert_valid(tmp_path, text, what):
    r, _ = check(tmp_path, text)
    assert r.returncode == 0 and "valid" in r.stdout, f"{what} no longer loads:\n{r.stderr}"


def tenant(name, prefix=None, imports=()):
    parts = [f"name: {name}", f"tokens: [{name}-token-1]"]
    if prefix is not None:
        parts.append(f"prefix: {json.dumps(prefix)}")
    if imports:
        parts.append("imports: [" + ", ".join(imports) + "]")
    return "  - {" + ", ".join(parts) + "}\n"


def imp(to, frm=None, kind="service"):
    frm = frm if frm is not None else ("x.>" if to.endswith(">") else "x")
    return f"{{kind: {kind}, from: {json.dumps(frm)}, to: {json.dumps(to)}}}"


def config(*tenants, node_id="gw-test-1"):
    head = f"node_id: {json.dumps(node_id)}\n" if node_id is not None else ""
    return head + "tenants:\n" + "".join(tenants)


ACME, GLOBEX = tenant("acme"), tenant("globex")

# (configuration, the key the error names, text the message must also carry)
MISTAKES = [
    # Namespaces that nest, or that lie in the bus's own subjects.
    pytest.param(config(ACME, tenant("x", "t.acme.x.")), "tenants[1].prefix", "tenants[0].prefix 't.acme.'",
                 id="prefix-inside-another"),
    pytest.param(config(ACME, GLOBEX, tenant("all", "t.")), "tenants[2].prefix", "tenants[0].prefix 't.acme.'",
                 id="prefix-covering-the-others"),
    pytest.param(config(tenant("all", "t."), ACME), "tenants[1].prefix", "tenants[0].prefix 't.'",
                 id="default-prefix-inside-an-earlier-one"),
    pytest.param(config(ACME, tenant("x", "t.acme.")), "tenants[1].prefix", "t.acme.", id="prefix-shared"),
    pytest.param(config(ACME, tenant("root", "")), "tenants[1].prefix", "tenants[0].prefix",
                 id="empty-prefix-beside-another"),
    pytest.param(config(tenant("root", ""), ACME), "tenants[1].prefix", "tenants[0].prefix ''",
                 id="empty-prefix-before-another"),
    pytest.param(config(tenant("x", "_INBOX.")), "tenants[0].prefix", "reserved", id="prefix-inbox"),
    pytest.param(config(ACME, tenant("x", "_INBOX.x.")), "tenants[1].prefix", "reserved", id="prefix-inside-inbox"),
    pytest.param(config(tenant("x", "$SYS.")), "tenants[0].prefix", "reserved", id="prefix-sys"),
    pytest.param(config(tenant("x", "$acme.")), "tenants[0].prefix", "reserved", id="prefix-dollar"),
    pytest.param(config(tenant("x", "_BUSGATE.")), "tenants[0].prefix", "reserved", id="prefix-busgate"),
    pytest.param(config(tenant("x", "_BUSGATE_x.")), "tenants[0].prefix", "reserved", id="prefix-busgate-token"),
    # A namespace that is, holds or lies in an import target: the import is refused, naming the prefix.
    pytest.param(config(tenant("acme", imports=[imp("svc.data.>")]), tenant("datasvc", "svc.data.")),
                 "tenants[0].imports[0].to", "tenants[1].prefix 'svc.data.'", id="prefix-equal-to-import-target"),
    pytest.param(config(tenant("acme", imports=[imp("svc.data.>")]), tenant("eu", "svc.data.eu.")),
                 "tenants[0].imports[0].to", "tenants[1].prefix 'svc.data.eu.'", id="prefix-inside-import-target"),
    pytest.param(config(tenant("acme", imports=[imp("svc.data.>")]), tenant("svc", "svc.")),
                 "tenants[0].imports[0].to", "tenants[1].prefix 'svc.'", id="prefix-containing-import-target"),
    pytest.param(config(tenant("svc", "svc."), tenant("acme", imports=[imp("svc.data.query")])),
                 "tenants[1].imports[0].to", "tenants[0].prefix 'svc.'", id="prefix-containing-exact-import-target"),
    # Imports that reach another tenant, every tenant, or the bus's own subjects.
    pytest.param(config(tenant("acme", imports=[imp("t.globex.>")]), GLOBEX), "tenants[0].imports[0].to",
                 "tenants[1].prefix 't.globex.'", id="import-into-another-tenant"),
    pytest.param(config(tenant("acme", imports=[imp("t.globex.orders")]), GLOBEX), "tenants[0].imports[0].to",
                 "tenants[1].prefix", id="exact-import-into-another-tenant"),
    pytest.param(config(tenant("acme", imports=[imp("t.globex.orders.>", kind="stream")]), GLOBEX),
                 "tenants[0].imports[0].to", "tenants[1].prefix", id="stream-import-from-another-tenant"),
    pytest.param(config(tenant("globex", "ext.globex."), tenant("acme", imports=[imp("x.>"), imp("ext.globex.>")])),
                 "tenants[1].imports[1].to", "tenants[0].prefix 'ext.globex.'", id="import-into-explicit-prefix"),
    pytest.param(config(tenant("acme", imports=[imp("t.>")]), GLOBEX), "tenants[0].imports[0].to",
                 "tenants[0].prefix", id="import-covering-tenants"),
    pytest.param(config(tenant("acme", imports=[imp("t.acme.alias.>")])), "tenants[0].imports[0].to",
                 "tenants[0].prefix", id="import-into-own-namespace"),
    pytest.param(config(tenant("root", "", imports=[imp("svc.data.>")])), "tenants[0].imports[0].to",
                 "tenants[0].prefix ''", id="import-of-a-root-tenant"),
    pytest.param(config(ACME, tenant("globex", imports=[imp(">", ">")])), "tenants[1].imports[0].to", "whole bus",
                 id="import-whole-bus"),
    pytest.param(config(tenant("acme", imports=[imp(">", ">", kind="stream")])), "tenants[0].imports[0].to",
                 "whole bus", id="stream-import-whole-bus"),
    pytest.param(config(tenant("acme", imports=[imp("_INBOX.>", kind="stream")])), "tenants[0].imports[0].to",
                 "reserved", id="import-inbox"),
    pytest.param(config(tenant("acme", imports=[imp("_INBOX.gw-test-1.abc")])), "tenants[0].imports[0].to",
                 "reserved", id="import-exact-inbox"),
    pytest.param(config(tenant("acme", imports=[imp("$JS.API.>")])), "tenants[0].imports[0].to", "reserved",
                 id="import-jetstream-api"),
    pytest.param(config(tenant("acme", imports=[imp("$SYS.REQ.SERVER.PING")])), "tenants[0].imports[0].to",
                 "reserved", id="import-exact-sys"),
    pytest.param(config(tenant("acme", imports=[imp("_BUSGATE.>")])), "tenants[0].imports[0].to", "reserved",
                 id="import-busgate"),
    pytest.param(config(tenant("acme", imports=[imp("svc.x.>", "$SYS.>")])), "tenants[0].imports[0].from",
                 "reserved", id="import-from-dollar"),
    pytest.param(config(tenant("acme", imports=[imp("svc.x.>", "_INBOX.>", kind="stream")])),
                 "tenants[0].imports[0].from", "reserved", id="import-from-inbox"),
] + [
    # node_id is a token of bus subjects: [A-Za-z0-9_-]{1,64}.
    pytest.param(config(ACME, node_id=bad), "node_id", None, id=f"node-id-{name}")
    for name, bad in [("space", "gw 1"), ("crlf", "gw-1\r\n"), ("lf", "gw\n1"), ("tab", "gw\t1"),
                      ("control", "gw\u0001"), ("del", "gw\u007f"), ("star", "gw*"), ("gt", ">"),
                      ("wildcard-token", "gw.>"), ("dot", "gw.1"), ("tilde", "gw~1"), ("slash", "gw/1"),
                      ("dollar", "$gw"), ("non-ascii", "gw\u00e9"), ("too-long", "a" * 65), ("empty", "")]
]


@pytest.mark.parametrize("text,key,also", MISTAKES)
def test_unsafe_configuration_is_refused_with_the_key_named(tmp_path, text, key, also):
    r, path = check(tmp_path, text)
    assert r.returncode == 2, f"accepted:\n{text}\n{r.stdout}"
    assert f"{path}: {key}: " in r.stderr, r.stderr
    if also:
        assert also in r.stderr, r.stderr


def test_the_gateway_does_not_start_on_an_unsafe_configuration(tmp_path):
    path = tmp_path / "gateway.yaml"
    path.write_text(config(ACME, tenant("x", "t.acme.x.")))
    r = subprocess.run([str(BINARY), "--config", str(path), "--tcp", "127.0.0.1:0", "--http", "off"],
                       capture_output=True, text=True, timeout=20)
    assert r.returncode == 2 and "tenants[1].prefix" in r.stderr


SAFE = """\
node_id: Gw_node-1
tenants:
  - name: acme                       # t.acme.
    tokens: [acme-token-1]
    imports:
      - {kind: service, from: "data.>", to: "svc.data.>"}
      - {kind: stream, from: "news.>", to: "shared.news.>"}
  - name: globex
    tokens: [globex-token-1]
    prefix: "t.ac."                  # whole tokens: apart from t.acme.
    imports:
      - {kind: service, from: "query", to: "svc.data.query"}
  - name: datasvc
    tokens: [datasvc-token-1]
    prefix: "services.data."
    imports:
      - {kind: stream, from: "serve.>", to: "svc.data.>"}
      - {kind: service, from: "news.>", to: "shared.news.>"}
"""


def test_a_safe_three_tenant_configuration_with_shared_imports_loads(tmp_path):
    assert_valid(tmp_path, SAFE, "the safe three-tenant configuration")
    assert_valid(tmp_path, config(tenant("root", "")), "a single tenant on the bus root")
    assert_valid(tmp_path, config(ACME, node_id="a" * 64), "a 64-character node_id")
    # The subject t.acme is not in t.acme.> (prefixes are whole tokens).
    assert_valid(tmp_path, config(tenant("globex", imports=[imp("t.acme")]), ACME), "an import next to a namespace")


def shipped_configs():
    found = []
    for folder in ("conformance", "deploy", "examples"):
        for p in sorted((ROOT / folder).rglob("*.y*ml")) if (ROOT / folder).is_dir() else ():
            if "helm" in p.relative_to(ROOT).parts:
                continue  # chart values, not gateway files: deploy/tests renders and checks them
            if re.search(r"^tenants:", p.read_text(), re.M):
                found.append(p)
    return found


def test_every_shipped_configuration_loads(tmp_path):
    shipped = shipped_configs()
    names = {p.relative_to(ROOT).as_posix() for p in shipped}
    assert {"conformance/gateway.yaml", "deploy/gateway.example.yaml"} <= names
    for p in shipped:
        assert_valid(tmp_path, p.read_text(), p.relative_to(ROOT))


def test_the_compose_nodes_each_run_the_example_with_their_own_node_id(tmp_path):
    compose = (ROOT / "deploy/compose.yaml").read_text()
    ids = re.findall(r'"--node-id", "([^"]+)"', compose)
    assert len(ids) == 2 and len(set(ids)) == 2, ids
    example = (ROOT / "deploy/gateway.example.yaml").read_text()
    assert not re.search(r"^node_id:", example, re.M), "the example would give every node the same id"
    for node in ids:
        # what `busgate --config gateway.example.yaml --node-id <node>` loads
        assert_valid(tmp_path, f"node_id: {node}\n" + example, f"the example as compose node {node} runs it")


def test_the_configurations_the_suites_write_load(tmp_path):
    sys.path.insert(0, str(ROOT / "gateway/tests/nats"))
    try:
        natsfix = importlib.import_module("natsfix")
        durable_nats = importlib.import_module("test_durable_nats")
    finally:
        sys.path.remove(str(ROOT / "gateway/tests/nats"))
    written = {
        "test_request.SVC_CONFIG": importlib.import_module("test_request").SVC_CONFIG,
        "test_tenancy.TWO_TENANTS": importlib.import_module("test_tenancy").TWO_TENANTS,
        "test_durable.CONFIG": importlib.import_module("test_durable").CONFIG,
        "natsfix.gateway_config": natsfix.gateway_config(["nats://127.0.0.1:4222"], "gw-a"),
        "test_durable_nats.config": durable_nats.config(["nats://127.0.0.1:4222"], "js-cap-a"),
    }
    for what, text in written.items():
        assert_valid(tmp_path, text, what)


def start_and_welcome(cmd, token, cfg_path):
    """Starts the gateway with `cmd` (ending in the binary), returns (WELCOME node_id, process pid)."""
    proc = subprocess.Popen(cmd + ["--config", str(cfg_path), "--tcp", "127.0.0.1:0", "--http", "off",
                                   "--threads", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    found = {}
    ready = threading.Event()

    def pump():
        for line in proc.stderr:
            if m := re.search(r"tcp listening on (\S+):(\d+)", line):
                found["tcp"] = (m.group(1).strip("[]"), int(m.group(2)))
            if "ready (bus:" in line:
                ready.set()
        ready.set()

    threading.Thread(target=pump, daemon=True).start()
    try:
        assert ready.wait(15) and "tcp" in found, "the gateway did not start"
        c = RawClient(found["tcp"])
        try:
            return c.hello(token)[3], proc.pid
        finally:
            c.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_the_default_node_id_follows_the_grammar(tmp_path):
    cfg = tmp_path / "gateway.yaml"
    cfg.write_text(config(ACME, node_id=None))
    node, pid = start_and_welcome([str(BINARY)], "acme-token-1", cfg)
    assert NODE_ID.fullmatch(node) and node.endswith(f"-{pid}"), node


def test_the_default_node_id_cleans_an_unusual_hostname(tmp_path):
    """In a UTS namespace of its own the gateway gets a 64-byte hostname with dots, spaces, wildcards,
    `~` and a control character; its node_id is still in the grammar, the pid whole at the end."""
    unshare = shutil.which("unshare")
    if os.geteuid() != 0 or not unshare:
        pytest.skip("needs root and unshare(1) for a hostname of its own")
    host = "gw a.b*c>d~e\x01" + "x" * 51
    assert len(host) == 64
    setter = "import os, socket, sys; socket.sethostname(sys.argv[1]); os.execv(sys.argv[2], sys.argv[2:])"
    cfg = tmp_path / "gateway.yaml"
    cfg.write_text(config(ACME, node_id=None))
    node, pid = start_and_welcome([unshare, "--uts", sys.executable, "-c", setter, host, str(BINARY)],
                                  "acme-token-1", cfg)
    assert NODE_ID.fullmatch(node), node
    assert node.endswith(f"-{pid}") and node.startswith("gw-a-b-c-d-e-xxx"), node


def test_a_reload_that_breaks_isolation_keeps_the_running_tenants(start_gateway):
    g = start_gateway(SAFE)
    g.config_path.write_text(SAFE + tenant("intruder", "t.acme.orders."))
    g.signal(signal.SIGHUP)
    g.wait_log(r"reload failed.*tenants\[3\]\.prefix")
    c = RawClient(g.tcp)
    try:
        assert c.hello("acme-token-1")[4] == "acme"
    finally:
        c.close()
    r = RawClient(g.tcp)  # the refused tenant was never added
    try:
        r.send(HELLO, [1], {"method": "token", "token": "intruder-token-1"}, "test")
        r.expect_err("AUTH_FAILED")
    finally:
        r.close()
