#!/usr/bin/env python3
"""Side-by-side benchmark: nats-server directly (cnats), the gateway on the NATS bus, and the gateway
on its memory bus, in interleaved rounds on this machine. Prints a table, the headline ratios as
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
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


def start_gateway(binary, nats_url=None, max_pending=67108864, durable=False, cross=False):
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
timeouts: {{goaway_delay_ms: 0, drain_ms: 1000}}
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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="the short version (under a minute)")
    ap.add_argument("--build", default="build")
    ap.add_argument("--rounds", type=int, default=0)
    ap.add_argument("--gateway", help="the gateway binary (default: BUILD/bin/busgate)")
    ap.add_argument("--bench", help="the busgate-bench binary (default: BUILD/bin/busgate-bench)")
    ap.add_argument("--durable-only", action="store_true", help="only the durable work-queue workloads")
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

    nats_port = free_port()
    js_dir = tempfile.mkdtemp(prefix="busgate-bench-js-")
    nats = Proc(["nats-server", "-a", "127.0.0.1", "-p", str(nats_port), "-js", "-sd", js_dir],
                ready_port=nats_port)
    nats_url = f"nats://127.0.0.1:{nats_port}"
    gw_nats, t_nats = start_gateway(gw_bin, nats_url, durable=True)
    gw_mem, t_mem = start_gateway(gw_bin, durable=True)
    sides = {"direct": nats_url, "relay": t_nats, "mem": t_mem}
    results = []
    table = {}
    extra = []

    def record(side, key, value):
        table.setdefault(key, {}).setdefault(side, []).append(value)

    try:
        for rnd in range(rounds):
            for size in ([] if a.durable_only else sizes):
                for side, target in sides.items():  # interleaved: each round runs all three sides
                    r = bench(bench_bin, target, "pubsub", size=size, count=counts[size])
                    results.append({**r, "side": side, "round": rnd})
                    record(side, f"pubsub {size}B msgs/s", r["delivered_per_sec"])
                    r = bench(bench_bin, target, "pub", size=size, count=counts[size])
                    results.append({**r, "side": side, "round": rnd})
                    record(side, f"publish {size}B msgs/s", r["msgs_per_sec"])
            for side, target in ({} if a.durable_only else sides).items():
                r = bench(bench_bin, target, "fanout", size=128, subs=64, count=fan_count)
                results.append({**r, "side": side, "round": rnd})
                record(side, "fanout 1->64 128B delivered/s", r["delivered_per_sec"])
                # request/reply: the responder is a NATS-side service for direct and relay
                kw = {"responder": nats_url} if side != "mem" else {}
                r = bench(bench_bin, target, "reqrep", size=128, seconds=secs, **kw)
                results.append({**r, "side": side, "round": rnd})
                record(side, "reqrep p50 us", r["p50_us"])
                record(side, "reqrep p99 us", r["p99_us"])
                record(side, "reqrep req/s", r["per_sec"])
                r = bench(bench_bin, target, "openloop", size=128, seconds=secs, rate=2000, **kw)
                results.append({**r, "side": side, "round": rnd})
                record(side, "open loop 2000/s p50 us", r["p50_us"])
                record(side, "open loop 2000/s p99 us", r["p99_us"])
            # Durable work queues: store N messages (window of WINDOW unacknowledged), then consume
            # and acknowledge exactly those N (the stream is empty again after each pair). The quick
            # run repeats its short pairs three times (the median), as one short pair is too noisy.
            for side, target in [kv for _ in range(durable_reps) for kv in sides.items()]:
                r = bench(bench_bin, target, "stored", size=128, count=durable_count, window=WINDOW)
                results.append({**r, "side": side, "round": rnd})
                record(side, "stored publish 128B msgs/s", r["msgs_per_sec"])
                r = bench(bench_bin, target, "consume", size=128, count=durable_count, window=WINDOW,
                          prefill=0)
                results.append({**r, "side": side, "round": rnd})
                record(side, "consume+ack 128B msgs/s", r["msgs_per_sec"])
        if a.durable_only:
            return report(a, rounds, sizes, table, results, None, None)
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
        # Slow-consumer isolation on gateways with the default outbound bound: a stalled subscriber
        # costs the others until it passes the bound and is cut off.
        gw_iso_mem, t_iso_mem = start_gateway(gw_bin, max_pending=8388608)
        gw_iso_nats, t_iso_nats = start_gateway(gw_bin, nats_url, max_pending=8388608)
        extra.extend([gw_iso_mem, gw_iso_nats])
        iso_count = 500_000 if quick else 2_000_000
        iso = {}
        for side, target in (("direct", nats_url), ("relay", t_iso_nats), ("mem", t_iso_mem)):
            pairs = 3 if quick else 5
            runs = [bench(bench_bin, target, "isolation", size=128, count=iso_count) for _ in range(pairs)]
            runs.sort(key=lambda r: r["isolation"])
            iso[side] = runs[pairs // 2]  # the median pair (each run is one pair: without, then with)
        results += [{**v, "side": k} for k, v in iso.items()]
        cross = cross_isolation(bench_bin, gw_bin, nats_url, quick, extra, results)
    finally:
        for p in (gw_mem, gw_nats, *extra, nats):
            p.stop()
        shutil.rmtree(js_dir, ignore_errors=True)
    return report(a, rounds, sizes, table, results, idle, iso, cross)


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


def report(a, rounds, sizes, table, results, idle, iso, cross=None):
    quick = a.quick

    def m(key, side):
        return median(table[key][side])

    print(f"\nbusgate benchmark ({'quick' if quick else 'full'}, {rounds} round(s), medians) on {os.cpu_count()} cores\n")
    print(f"{'measure':34} {'direct NATS':>14} {'gw on NATS':>14} {'gw memory':>14}")
    for key in table:
        print(f"{key:34} {m(key, 'direct'):14.1f} {m(key, 'relay'):14.1f} {m(key, 'mem'):14.1f}")
    headline = {}
    if idle and iso:
        print(f"{'idle KiB/connection':34} {idle['nats-server']['kib_per_conn']:14.1f} {'':>14} {idle['gateway']['kib_per_conn']:14.1f}")
        print(f"{'isolation (healthy w/ stalled / w/o)':34} {iso['direct']['isolation']:14.2f} "
              f"{iso['relay']['isolation']:14.2f} {iso['mem']['isolation']:14.2f}")
        headline = core_headline(m, sizes, idle, iso)
    if cross:
        for mode in CROSS_MODES:
            print(f"{'cross-tenant A w/ B ' + mode + ' / healthy':34} {'-':>14} "
                  f"{cross['relay'][mode]:14.2f} {cross['mem'][mode]:14.2f}")
        print(f"{'cross-tenant A w/ B healthy / w/o':34} {'-':>14} "
              f"{cross['relay']['healthy']:14.2f} {cross['mem']['healthy']:14.2f}")
        for mode in CROSS_MODES:
            headline[f"I_cross_{mode}"] = min(cross[side][mode] for side in ("relay", "mem"))
        headline["I_cross"] = min(headline[f"I_cross_{mode}"] for mode in CROSS_MODES)
    headline["D_pub"] = m("stored publish 128B msgs/s", "relay") / m("stored publish 128B msgs/s", "direct")
    headline["D_consume"] = m("consume+ack 128B msgs/s", "relay") / m("consume+ack 128B msgs/s", "direct")
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
    t_mem_ratio = gmean([m(f"pubsub {s}B msgs/s", "mem") / m(f"pubsub {s}B msgs/s", "direct") for s in sizes])
    t_relay_ratio = gmean([m(f"pubsub {s}B msgs/s", "relay") / m(f"pubsub {s}B msgs/s", "direct") for s in sizes])
    fan = "fanout 1->64 128B delivered/s"
    return {
        "T_mem": t_mem_ratio,
        "T_relay": t_relay_ratio,
        "FANOUT_relay": m(fan, "relay") / m(fan, "direct"),
        "FANOUT_mem": m(fan, "mem") / m(fan, "direct"),
        "DP50_us": m("reqrep p50 us", "relay") - m("reqrep p50 us", "direct"),
        "DP99_us": m("reqrep p99 us", "relay") - m("reqrep p99 us", "direct"),
        "KIB_PER_CONN_gateway": idle["gateway"]["kib_per_conn"],
        "KIB_PER_CONN_nats": idle["nats-server"]["kib_per_conn"],
        "I": min(iso["mem"]["isolation"], iso["relay"]["isolation"]),
    }


if __name__ == "__main__":
    sys.exit(main())
