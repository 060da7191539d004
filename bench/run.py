#!/usr/bin/env python3
"""Side-by-side benchmark: nats-server directly through three clients (cnats, a raw NATS-protocol
client built like the gateway-side generator, nats.go), the gateway on the NATS bus, and the gateway
on its memory bus, in interleaved rounds on this machine. Every ratio is taken against the best
direct figure of the run for that workload. Each run also records the CPU time (user + system, from
/proc) that the gateway and nats-server spent per message. Prints a table, the headline figures as
`NAME=value` lines, and writes the raw results to bench/results/.

  python3 bench/run.py [--quick] [--build build] [--rounds N] [--gateway PATH] [--bench PATH]
                       [--durable-only]

nats-server runs with JetStream (file storage in a temporary directory) for the durable work-queue
workloads (`stored`, `consume`): the gateways' tenant has a workqueue stream `jobs` and a consumer
`workers`; the direct side creates its own stream with the same settings on other subjects.

Cross-tenant isolation (`cross`, bench/cross_bench.cpp) runs on two more gateways (NATS bus and memory
bus) with a second tenant, `other`, and two I/O threads; it prints `I_cross` (the lower of the two
buses and of B stalled and B slow, each relative to B healthy) with `I_cross_stalled` and
`I_cross_slow`.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import random
import re
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]


_handed_out: set[int] = set()


def free_port() -> int:
    """A loopback port for a server started later, below the kernel's ephemeral range (so that no
    outgoing connection takes it first) and never handed out twice by this run."""
    try:
        lo = int(pathlib.Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        lo = 32768
    for _ in range(1000):
        port = random.randrange(10000 if lo > 12000 else 1024, lo)
        if port in _handed_out:
            continue
        with socket.socket() as sk:
            try:
                sk.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError("no free loopback port")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads), from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Proc:
    def __init__(self, args, ready_pattern=None, ready_port=None):
        self.log = []
        self.p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.ready = threading.Event()
        self.pattern = re.compile(ready_pattern) if ready_pattern else None
        threading.Thread(target=self._pump, daemon=True).start()
        if ready_port:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                try:
                    socket.create_connection(("127.0.0.1", ready_port), timeout=0.2).close()
                    return
                except OSError:
                    time.sleep(0.02)
            raise RuntimeError(f"{args[0]} did not listen on {ready_port}")
        if self.pattern and not self.ready.wait(15):
            raise RuntimeError(f"{args[0]} did not start:\n" + "\n".join(self.log[-20:]))

    def _pump(self):
        for line in self.p.stderr:
            self.log.append(line.rstrip())
            if self.pattern and self.pattern.search(line):
                self.ready.set()

    def stop(self):
        if self.p.poll() is None:
            self.p.terminate()
            try:
                self.p.wait(15)
            except subprocess.TimeoutExpired:
                self.p.kill()
        for path in getattr(self, "files", ()):
            pathlib.Path(path).unlink(missing_ok=True)


# Durable work queues: one workqueue stream with file storage and one declared consumer whose cap is
# the window the workloads keep in flight. The direct side's stream (bench/durable_bench.cpp) has the
# same settings.
WINDOW = 256
DURABLE_TENANT = f"""\
   streams:
    - {{name: jobs, subjects: ["jobs.>"], retention: workqueue, storage: file, replicas: 1,
       duplicate_window_ms: 120000}}
   consumers:
    - {{name: workers, stream: jobs, subject: jobs.bench, max_inflight: {WINDOW}, ack_wait_ms: 30000,
       max_deliveries: 5}}
"""


# The cross-tenant isolation run's second tenant (bench/cross_bench.cpp): its own token and namespace.
TENANT_B = "tenant-b-token"
CROSS_TENANT = f"""\
 - name: other
   tokens: [{TENANT_B}]
   limits: {{max_connections: 100000}}
"""


def start_gateway(binary, nats_url=None, max_pending=67108864, durable=False, cross=False, heartbeat_ms=30000):
    tcp, http = free_port(), free_port()
    cfg = tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False)
    bus = f"bus: {{kind: nats, servers: [\"{nats_url}\"]}}\n" if nats_url else ""
    # Throughput runs use outbound queues as large as nats-server's (64 MiB), so they measure delivery,
    # not the slow-consumer policy; the isolation runs use the default bound (8 MiB). The cross-tenant
    # run fixes two I/O threads, so that where its connections land does not depend on the core count.
    cfg.write(f"""node_id: bench-{'nats' if nats_url else 'mem'}-{tcp}
listen: {{tcp: "127.0.0.1:{tcp}", http: "127.0.0.1:{http}"}}
log: {{level: warn}}
limits: {{max_pending_bytes: {max_pending}}}
timeouts: {{goaway_delay_ms: 0, drain_ms: 1000, heartbeat_ms: {heartbeat_ms}}}
{"threads: 2" if cross else ""}
{bus}tenants:
 - name: demo
   tokens: [dev-token]
   limits: {{max_connections: 100000}}
{DURABLE_TENANT if durable else ""}{CROSS_TENANT if cross else ""}""")
    cfg.close()
    g = Proc([str(binary), "--config", cfg.name], ready_port=tcp)
    g.files = [cfg.name]
    g.http = f"http://127.0.0.1:{http}"
    time.sleep(0.2)
    return g, f"busgate://127.0.0.1:{tcp}"


def bench(bin_, target, workload, **kw):
    args = [str(bin_), "--target", target, "--workload", workload]
    for k, v in kw.items():
        args += [f"--{k.replace('_', '-')}", str(v)]
    t0 = time.monotonic()
    r = subprocess.run(args, capture_output=True, text=True, timeout=300)
    if os.environ.get("BENCH_TRACE"):
        print(f"{time.monotonic() - t0:6.2f} s  {workload} {target} {kw}", file=sys.stderr)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed: {r.stderr.strip()}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def gmean(xs):
    xs = [x for x in xs if x > 0]
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else 0.0


def median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2] if xs else 0.0


# The direct baselines: cnats (what the gateway's own tests use), the raw NATS-protocol client of
# bench/raw_nats.hpp (built like the gateway-side generator), and nats.go (bench/go/natsload).
DIRECT = ("cnats", "raw", "natsgo")
SIDES = DIRECT + ("relay", "mem")
HEADERS = {"cnats": "cnats", "raw": "raw NATS", "natsgo": "nats.go", "best": "best direct",
           "relay": "gw on NATS", "mem": "gw memory"}
# Which figure is best: the highest rate, the lowest latency or CPU.
LOWER_IS_BETTER = ("us", "ns/msg")


def build_natsload(build: pathlib.Path):
    """Builds bench/go/natsload (the nats.go baseline) into BUILD/bin; None when Go is missing."""
    go = shutil.which("go")
    if not go:
        print("NOTE: no Go toolchain: the nats.go baseline is left out", file=sys.stderr)
        return None
    out = build / "bin" / "busgate-natsload"
    r = subprocess.run([go, "build", "-o", str(out), "./natsload"], cwd=ROOT / "bench" / "go",
                       capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        print(f"NOTE: the nats.go baseline did not build, left out:\n{r.stderr[-2000:]}", file=sys.stderr)
        return None
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="the short version (about two minutes)")
    ap.add_argument("--build", default="build")
    ap.add_argument("--rounds", type=int, default=0)
    ap.add_argument("--gateway", help="the gateway binary (default: BUILD/bin/busgate)")
    ap.add_argument("--bench", help="the busgate-bench binary (default: BUILD/bin/busgate-bench)")
    ap.add_argument("--natsload", help="the nats.go generator (default: built from bench/go/natsload)")
    ap.add_argument("--durable-only", action="store_true", help="only the durable work-queue workloads")
    ap.add_argument("--no-scale", action="store_true", help="leave out the connection-scale run")
    a = ap.parse_args()
    build = (ROOT / a.build).resolve()
    gw_bin = pathlib.Path(a.gateway).resolve() if a.gateway else build / "bin" / "busgate"
    bench_bin = pathlib.Path(a.bench).resolve() if a.bench else build / "bin" / "busgate-bench"
    quick = a.quick
    rounds = a.rounds or (1 if quick else 3)
    sizes = [128] if quick else [16, 128, 1024]
    counts = {16: 2_000_000, 128: 1_000_000, 1024: 300_000} if not quick else {128: 200_000}
    secs = 1.0 if quick else 4.0
    fan_count = 20_000 if quick else 60_000
    durable_count = 20_000 if quick else 100_000
    durable_reps = 3 if quick and rounds == 1 else 1
    natsload = None
    if not a.durable_only:
        natsload = pathlib.Path(a.natsload).resolve() if a.natsload else build_natsload(build)

    nats_port = free_port()
    js_dir = tempfile.mkdtemp(prefix="busgate-bench-js-")
    nats = Proc(["nats-server", "-a", "127.0.0.1", "-p", str(nats_port), "-js", "-sd", js_dir],
                ready_port=nats_port)
    nats_url = f"nats://127.0.0.1:{nats_port}"
    raw_url = f"natsraw://127.0.0.1:{nats_port}"
    gw_nats, t_nats = start_gateway(gw_bin, nats_url, durable=True)
    gw_mem, t_mem = start_gateway(gw_bin, durable=True)
    # side -> (generator, target, the gateway process or None)
    sides = {"cnats": (bench_bin, nats_url, None), "raw": (bench_bin, raw_url, None),
             "relay": (bench_bin, t_nats, gw_nats), "mem": (bench_bin, t_mem, gw_mem)}
    if natsload:
        sides["natsgo"] = (natsload, nats_url, None)
    sides = {k: sides[k] for k in SIDES if k in sides}
    results = []
    table = {}
    extra = []
    idle = iso = cross = scale = None

    def record(side, key, value):
        table.setdefault(key, {}).setdefault(side, []).append(value)

    def run(side, workload, key=None, messages=None, **kw):
        """One generator run on `side`, with the CPU the gateway and nats-server spent on it."""
        bin_, target, gw = sides[side]
        gw_pid = gw.p.pid if gw else None
        c0 = (cpu_seconds(gw_pid) if gw_pid else 0.0, cpu_seconds(nats.p.pid))
        r = bench(bin_, target, workload, **kw)
        c1 = (cpu_seconds(gw_pid) if gw_pid else 0.0, cpu_seconds(nats.p.pid))
        n = messages(r) if messages else 0
        if n:
            r["cpu_gateway_ns_per_msg"] = (c1[0] - c0[0]) * 1e9 / n if gw_pid else None
            r["cpu_nats_ns_per_msg"] = (c1[1] - c0[1]) * 1e9 / n
            if key:
                if gw_pid:
                    record(side, f"CPU gateway ns/msg, {key}", r["cpu_gateway_ns_per_msg"])
                if side != "mem":
                    record(side, f"CPU nats-server ns/msg, {key}", r["cpu_nats_ns_per_msg"])
        results.append({**r, "side": side, "round": rnd})
        return r

    try:
        for rnd in range(rounds):
            for size in ([] if a.durable_only else sizes):
                for side in sides:  # interleaved: each round runs every side
                    r = run(side, "pubsub", f"pubsub {size}B", lambda r, n=counts[size]: n,
                            size=size, count=counts[size])
                    record(side, f"pubsub {size}B msgs/s", r["delivered_per_sec"])
                    r = run(side, "pub", f"publish {size}B", lambda r, n=counts[size]: n,
                            size=size, count=counts[size])
                    record(side, f"publish {size}B msgs/s", r["msgs_per_sec"])
            for side in ({} if a.durable_only else sides):
                r = run(side, "fanout", "fanout 1->64", lambda r: fan_count * 64,
                        size=128, subs=64, count=fan_count)
                record(side, "fanout 1->64 128B delivered/s", r["delivered_per_sec"])
                # request/reply, client to client: the responder is a client of the same kind on the
                # same side (for the gateways: a busgate client of the same gateway)
                responder = {"relay": t_nats, "mem": t_mem}.get(side)
                kw = {"responder": responder} if responder else {}
                r = run(side, "reqrep", "reqrep", lambda r: r["requests"], size=128, seconds=secs, **kw)
                record(side, "reqrep client<->client p50 us", r["p50_us"])
                record(side, "reqrep client<->client p99 us", r["p99_us"])
                record(side, "reqrep client<->client req/s", r["per_sec"])
                if side == "relay":
                    # the shape of a data query: a busgate client asks a NATS-side service (the raw
                    # client, the fastest responder)
                    r = run(side, "reqrep", None, None, size=128, seconds=secs, responder=raw_url)
                    record(side, "reqrep to NATS service p50 us", r["p50_us"])
                    record(side, "reqrep to NATS service p99 us", r["p99_us"])
                r = run(side, "openloop", None, None, size=128, seconds=secs, rate=2000, **kw)
                record(side, "open loop 2000/s p50 us", r["p50_us"])
                record(side, "open loop 2000/s p99 us", r["p99_us"])
            # Durable work queues: store N messages (window of WINDOW unacknowledged), then consume
            # and acknowledge exactly those N (the stream is empty again after each pair). The quick
            # run repeats its short pairs three times (the median), as one short pair is too noisy.
            # The direct side is cnats's JetStream API.
            for side in [k for _ in range(durable_reps) for k in ("cnats", "relay", "mem")]:
                r = run(side, "stored", None, None, size=128, count=durable_count, window=WINDOW)
                record(side, "stored publish 128B msgs/s", r["msgs_per_sec"])
                r = run(side, "consume", None, None, size=128, count=durable_count, window=WINDOW, prefill=0)
                record(side, "consume+ack 128B msgs/s", r["msgs_per_sec"])
        if a.durable_only:
            return report(a, rounds, sizes, table, results)
        # idle connections and slow-consumer isolation (once)
        # Idle connections on a fresh gateway and a fresh nats-server, so that memory freed by the
        # throughput runs is not reused and hidden.
        conns = 500 if quick else 2000
        gw_idle, t_idle = start_gateway(gw_bin)
        idle_port = free_port()
        nats_idle = Proc(["nats-server", "-a", "127.0.0.1", "-p", str(idle_port)], ready_port=idle_port)
        extra.extend([gw_idle, nats_idle])
        idle = {
            "gateway": bench(bench_bin, t_idle, "idle", conns=conns, server_pid=gw_idle.p.pid),
            "nats-server": bench(bench_bin, f"nats://127.0.0.1:{idle_port}", "idle", conns=conns,
                                 server_pid=nats_idle.p.pid),
        }
        results += [{**v, "side": k} for k, v in idle.items()]
        for p_ in (gw_idle, nats_idle):
            p_.stop()
        # Slow-consumer isolation on gateways with the default outbound bound: a stalled subscriber
        # costs the others until it passes the bound and is cut off.
        gw_iso_mem, t_iso_mem = start_gateway(gw_bin, max_pending=8388608)
        gw_iso_nats, t_iso_nats = start_gateway(gw_bin, nats_url, max_pending=8388608)
        extra.extend([gw_iso_mem, gw_iso_nats])
        iso_count = 500_000 if quick else 2_000_000
        iso = {}
        for side, target in (("cnats", nats_url), ("relay", t_iso_nats), ("mem", t_iso_mem)):
            pairs = 3 if quick else 5
            runs = [bench(bench_bin, target, "isolation", size=128, count=iso_count) for _ in range(pairs)]
            runs.sort(key=lambda r: r["isolation"])
            iso[side] = runs[pairs // 2]  # the median pair (each run is one pair: without, then with)
        results += [{**v, "side": k} for k, v in iso.items()]
        for p_ in (gw_iso_mem, gw_iso_nats):
            p_.stop()
        cross = cross_isolation(bench_bin, gw_bin, nats_url, quick, extra, results)
        if not a.no_scale:
            scale = connection_scale(bench_bin, gw_bin, extra, results)
    finally:
        for p in (gw_mem, gw_nats, *extra, nats):
            p.stop()
        shutil.rmtree(js_dir, ignore_errors=True)
    return report(a, rounds, sizes, table, results, idle, iso, cross, scale)


def connection_scale(bench_bin, gw_bin, extra, results):
    """As many idle, handshaked connections as the descriptor limits allow, on a fresh gateway (memory
    bus) and a fresh nats-server: connections held, handshakes/s, KiB per connection, and a fresh
    client's PING round trip at that level."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    want = min(hard, 1_000_000) - 100  # what the server can hold beside its own descriptors
    out = {}
    gw, target = start_gateway(gw_bin, heartbeat_ms=600000)
    port = free_port()
    ns = Proc(["nats-server", "-a", "127.0.0.1", "-p", str(port)],
              ready_port=port)
    extra.extend([gw, ns])
    for name, proc, tgt in (("gateway", gw, target), ("nats-server", ns, f"nats://127.0.0.1:{port}")):
        out[name] = bench(bench_bin, tgt, "scale", conns=want, server_pid=proc.p.pid)
        proc.stop()
    results += [{**v, "side": k} for k, v in out.items()]
    return out


CROSS_MODES = ("stalled", "slow")


def cross_isolation(bench_bin, gw_bin, nats_url, quick, extra, results):
    """Cross-tenant isolation (bench/cross_bench.cpp) on gateways with two tenants and the default
    outbound bound, on the NATS bus and on the memory bus. Each run is a window of A alone, then one
    with B stalled, one with B slow and one with B healthy. B's traffic costs A a share of the cores
    whatever B's subscriber does, so the isolation figure for B stalled (slow) is A's rate then over
    A's rate with B healthy: what B's *misbehaving* consumer costs A. `healthy` is A's rate with B
    healthy over A alone (the machine's share, for reference). Per bus and figure, the median run.
    Every run goes to `results`."""
    gw_mem, t_mem = start_gateway(gw_bin, max_pending=8388608, cross=True)
    gw_nats, t_nats = start_gateway(gw_bin, nats_url, max_pending=8388608, cross=True)
    extra.extend([gw_mem, gw_nats])
    runs = 3 if quick else 5
    modes = CROSS_MODES + ("healthy",)
    kw = dict(size=128, token_b=TENANT_B, seconds=0.25 if quick else 1.0, drain=1 if quick else 2,
              b_modes=",".join(modes))
    out = {}
    for side, gw, target in (("relay", gw_nats, t_nats), ("mem", gw_mem, t_mem)):
        rs = [bench(bench_bin, target, "cross", metrics=gw.http, **kw) for _ in range(runs)]
        results += [{**r, "side": side, "run": i} for i, r in enumerate(rs)]
        out[side] = {mode: median([r[f"cross_{mode}"] / r["cross_healthy"] if r["cross_healthy"] > 0 else 0
                                   for r in rs]) for mode in CROSS_MODES}
        out[side]["healthy"] = median([r["cross_healthy"] for r in rs])
    return out


def report(a, rounds, sizes, table, results, idle=None, iso=None, cross=None, scale=None):
    quick = a.quick
    lower = lambda key: key.endswith(LOWER_IS_BETTER)  # noqa: E731

    def m(key, side):
        if side == "best":
            vals = [median(table[key][d]) for d in DIRECT if table[key].get(d)]
            return (min(vals) if lower(key) else max(vals)) if vals else None
        vals = table[key].get(side)
        return median(vals) if vals else None

    def cell(v, width=12):
        if v is None:
            return f"{'-':>{width}}"
        return f"{v:{width},.1f}" if abs(v) < 1000 else f"{v:{width},.0f}"

    cols = [c for c in ("cnats", "raw", "natsgo", "best", "relay", "mem")
            if c == "best" or any(table[k].get(c) for k in table)]
    print(f"\nbusgate benchmark ({'quick' if quick else 'full'}, {rounds} round(s), medians) on {os.cpu_count()} cores\n")
    print(f"{'measure':40} " + " ".join(f"{HEADERS[c]:>12}" for c in cols))
    for key in table:
        print(f"{key:40} " + " ".join(cell(m(key, c)) for c in cols))
    headline = {}
    if idle and iso:
        print(f"{'idle KiB/connection (nats-server, gw)':40} {idle['nats-server']['kib_per_conn']:12.1f} "
              f"{idle['gateway']['kib_per_conn']:12.1f}")
        print(f"{'isolation (healthy w/ stalled / w/o)':40} cnats {iso['cnats']['isolation']:.2f}, "
              f"gw on NATS {iso['relay']['isolation']:.2f}, gw memory {iso['mem']['isolation']:.2f}")
        headline = core_headline(m, sizes, idle, iso)
    if cross:
        for mode in CROSS_MODES:
            print(f"{'cross-tenant A w/ B ' + mode + ' / healthy':40} gw on NATS {cross['relay'][mode]:.2f}, "
                  f"gw memory {cross['mem'][mode]:.2f}")
        print(f"{'cross-tenant A w/ B healthy / w/o':40} gw on NATS {cross['relay']['healthy']:.2f}, "
              f"gw memory {cross['mem']['healthy']:.2f}")
        for mode in CROSS_MODES:
            headline[f"I_cross_{mode}"] = min(cross[side][mode] for side in ("relay", "mem"))
        headline["I_cross"] = min(headline[f"I_cross_{mode}"] for mode in CROSS_MODES)
    if scale:
        print()
        for name, r in scale.items():
            print(f"scale {name:12} {r['connections']:,} connections (limit {r['fd_limit']:,}), "
                  f"{r['handshakes_per_sec']:,.0f} handshakes/s, {r['kib_per_conn']:.2f} KiB/connection, "
                  f"fresh client: handshake {r['fresh_handshake_us']:.0f} µs, PING p50 {r['rtt_p50_us']:.0f} µs "
                  f"p99 {r['rtt_p99_us']:.0f} µs" + (f" (stopped: {r['stopped_by']})" if r["stopped_by"] else ""))
        g, n = scale["gateway"], scale["nats-server"]
        headline.update({"SCALE_conns": g["connections"], "SCALE_KIB_PER_CONN": g["kib_per_conn"],
                         "SCALE_KIB_PER_CONN_nats": n["kib_per_conn"],
                         "SCALE_HANDSHAKES_PER_SEC": g["handshakes_per_sec"],
                         "SCALE_HANDSHAKES_PER_SEC_nats": n["handshakes_per_sec"],
                         "SCALE_RTT_P99_us": g["rtt_p99_us"], "SCALE_RTT_P99_us_nats": n["rtt_p99_us"]})
    if "stored publish 128B msgs/s" in table:
        headline["D_pub"] = m("stored publish 128B msgs/s", "relay") / m("stored publish 128B msgs/s", "cnats")
        headline["D_consume"] = m("consume+ack 128B msgs/s", "relay") / m("consume+ack 128B msgs/s", "cnats")
    # A delivery run that lost messages measured something else (a subscriber cut off): say so.
    lossy = [r for r in results if r.get("lost")]
    for r in lossy:
        print(f"WARNING: {r['side']} {r['workload']} {r.get('size', '')}B lost {r['lost']} messages")
    headline["LOSSY_RUNS"] = len(lossy)
    # Cross-tenant runs: tenant A's messages still arriving when the run stopped waiting were held up
    # (the figure reflects it), not lost.
    for r in results:
        if r.get("late"):
            print(f"NOTE: {r['side']} {r['workload']}: {r['late']} of tenant A's messages still on their way "
                  f"when the run stopped waiting for them")
    # A stored-publish run with refused messages, or a consume run with redeliveries, measured
    # something else too.
    for r in results:
        if r.get("errors") or r.get("redelivered"):
            print(f"WARNING: {r['side']} {r['workload']}: {r.get('errors', 0)} not stored, "
                  f"{r.get('redelivered', 0)} redelivered")
    print()
    for k, v in headline.items():
        print(f"{k}={v:.2f}")
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    kind = ("durable-" if a.durable_only else "") + ("quick" if quick else "full")
    (out / f"{kind}-{stamp}.json").write_text(json.dumps({"headline": headline, "results": results}, indent=1))


def core_headline(m, sizes, idle, iso):
    """Ratios against the best direct baseline of the run, per workload."""
    def ratio(key, side):
        return m(key, side) / m(key, "best")

    fan = "fanout 1->64 128B delivered/s"
    cc = "reqrep client<->client"
    h = {
        "T_mem": gmean([ratio(f"pubsub {s}B msgs/s", "mem") for s in sizes]),
        "T_relay": gmean([ratio(f"pubsub {s}B msgs/s", "relay") for s in sizes]),
        "FANOUT_relay": ratio(fan, "relay"),
        "FANOUT_mem": ratio(fan, "mem"),
        "DP50_cc_us": m(f"{cc} p50 us", "relay") - m(f"{cc} p50 us", "best"),
        "DP99_cc_us": m(f"{cc} p99 us", "relay") - m(f"{cc} p99 us", "best"),
        "DP50_svc_us": m("reqrep to NATS service p50 us", "relay") - m(f"{cc} p50 us", "best"),
        "DP99_svc_us": m("reqrep to NATS service p99 us", "relay") - m(f"{cc} p99 us", "best"),
        # the gateway relaying through NATS (two legs) against the nats-server it fronts, same run
        "CPU_ratio": m("CPU gateway ns/msg, pubsub 128B", "relay") / m("CPU nats-server ns/msg, pubsub 128B", "relay"),
        # fan-out: the gateway per delivered message against nats-server per delivered message when
        # the subscribers connect to it directly (through the NATS bus it sends one copy to the gateway)
        "CPU_ratio_fanout": m("CPU gateway ns/msg, fanout 1->64", "relay")
        / m("CPU nats-server ns/msg, fanout 1->64", "best"),
        "KIB_PER_CONN_gateway": idle["gateway"]["kib_per_conn"],
        "KIB_PER_CONN_nats": idle["nats-server"]["kib_per_conn"],
        "I": min(iso["mem"]["isolation"], iso["relay"]["isolation"]),
    }
    return h


if __name__ == "__main__":
    sys.exit(main())
