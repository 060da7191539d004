#!/usr/bin/env python3
"""Side-by-side throughput of the busgate Python client and nats-py, in one run on this machine.

Targets (each started by this script on 127.0.0.1, random ports):
  nats-py -> nats-server                    direct NATS, the baseline
  busgate -> gateway (memory bus)           the gateway alone (dev mode)
  busgate -> gateway (NATS bus) -> nats-server   when the gateway binary supports --nats

Measures, per payload size:
  publish  msgs/s  one client publishes N messages then flushes (PING/PONG); N / elapsed
  receive  msgs/s  one client receives N messages sent by a publisher of the same library in another
                   process; counted from the first to the N-th message (a callback counts them)
  request  req/s   sequential request/reply round trips through a responder in another process

    python3 bench/python/client_bench.py                   # defaults
    python3 bench/python/client_bench.py --n 100000 --sizes 16,1024 --markdown

Requires: the busgate package (pip install -e clients/python), nats-py (pip install nats-py), the
nats-server binary, and the gateway binary (BUSGATE_BIN, default build/bin/busgate). The gateway gets
a config with limits.max_pending_bytes = 256 MiB so that a receive burst is measured rather than cut
off by the slow-consumer policy (nats-server's own slow-consumer limit is 64 MiB by default).
"""
from __future__ import annotations

import argparse
import asyncio
import os
import pathlib
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "clients" / "python"))

SUBJECT = "bench.data"
TOKEN = "bench-token-1"
CONFIG = f"""
limits: {{max_pending_bytes: 268435456}}
tenants:
  - name: bench
    tokens: [{TOKEN}]
    limits: {{max_inflight_requests: 100000}}
"""


# ------------------------------------------------------------------ processes

class Proc:
    def __init__(self, args: list[str], ready: str, addr: str) -> None:
        self.lines: list[str] = []
        self.p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.ready = threading.Event()
        self.addr_rx = re.compile(addr)
        self.port = 0
        self.ready_rx = re.compile(ready)
        threading.Thread(target=self._pump, daemon=True).start()
        if not self.ready.wait(15):
            self.stop()
            raise RuntimeError(f"{args[0]} did not start:\n" + "\n".join(self.lines[-20:]))

    def _pump(self) -> None:
        for line in self.p.stderr:  # type: ignore[union-attr]
            self.lines.append(line.rstrip())
            m = self.addr_rx.search(line)
            if m and not self.port:
                self.port = int(m.group(1))
            if self.ready_rx.search(line):
                self.ready.set()

    def stop(self) -> None:
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait()


def start_nats() -> Proc:
    exe = shutil.which("nats-server") or "/usr/sbin/nats-server"
    return Proc([exe, "-a", "127.0.0.1", "-p", "-1"], r"Server is ready",
                r"Listening for client connections on \S+:(\d+)")


def start_gateway(binary: str, config: pathlib.Path, nats_url: str | None) -> Proc:
    args = [binary, "--tcp", "127.0.0.1:0", "--http", "127.0.0.1:0", "--config", str(config),
            "--threads", "2"]
    if nats_url:
        args += ["--nats", nats_url]
    return Proc(args, r"ready \(bus:", r"tcp listening on \S+:(\d+)")


# ------------------------------------------------------------------ clients behind one interface

class NatsPy:
    name = "nats-py"

    def __init__(self, url: str) -> None:
        self.url = url

    async def connect(self):
        import nats
        return await nats.connect(self.url, pending_size=512 * 1024 * 1024)

    async def publish(self, nc, data: bytes) -> None:
        await nc.publish(SUBJECT, data)

    async def flush(self, nc) -> None:
        await nc.flush(timeout=60)

    async def subscribe(self, nc, cb):
        return await nc.subscribe(SUBJECT, cb=cb, pending_msgs_limit=10_000_000, pending_bytes_limit=2**31)

    async def serve(self, nc, subject):
        async def echo(m):
            await m.respond(m.data)
        await nc.subscribe(subject, cb=echo)

    async def request(self, nc, subject, data):
        return await nc.request(subject, data, timeout=10)

    async def close(self, nc) -> None:
        await nc.close()


class Busgate:
    name = "busgate"

    def __init__(self, url: str) -> None:
        self.url = url

    async def connect(self):
        import busgate
        return await busgate.connect(self.url, token=TOKEN, pending_msgs_limit=10_000_000,
                                     pending_bytes_limit=2**31)

    async def publish(self, c, data: bytes) -> None:
        await c.publish(SUBJECT, data)

    async def flush(self, c) -> None:
        await c.flush(timeout=60)

    async def subscribe(self, c, cb):
        return await c.subscribe(SUBJECT, cb=cb)

    async def serve(self, c, subject):
        async def echo(m):
            await m.respond(m.data)
        await c.subscribe(subject, cb=echo)

    async def request(self, c, subject, data):
        return await c.request(subject, data, timeout=10)

    async def close(self, c) -> None:
        await c.close()


def make(lib: str, url: str):
    return NatsPy(url) if lib == "nats-py" else Busgate(url)


# ------------------------------------------------------------------ measurements

async def bench_publish(lib, n: int, size: int) -> float:
    c = await lib.connect()
    data = b"x" * size
    for _ in range(1000):  # warm up
        await lib.publish(c, data)
    await lib.flush(c)
    t0 = time.perf_counter()
    for _ in range(n):
        await lib.publish(c, data)
    await lib.flush(c)
    dt = time.perf_counter() - t0
    await lib.close(c)
    return n / dt


async def bench_receive(lib_name: str, url: str, n: int, size: int) -> tuple[float, int]:
    lib = make(lib_name, url)
    c = await lib.connect()
    got = 0
    first = last = 0.0
    done = asyncio.Event()

    def cb(msg):
        nonlocal got, first, last
        got += 1
        if got == 1:
            first = time.perf_counter()
        if got == n:
            last = time.perf_counter()
            done.set()

    async def acb(msg):
        cb(msg)

    await lib.subscribe(c, acb)
    await lib.flush(c)
    pub = subprocess.Popen([sys.executable, __file__, "--role", "pub", "--lib", lib_name, "--url", url,
                            "--n", str(n), "--size", str(size)], stdout=subprocess.DEVNULL)
    try:
        await asyncio.wait_for(done.wait(), 120)
    except asyncio.TimeoutError:
        pass
    pub.wait(30)
    await lib.close(c)
    if got < n:
        return float("nan"), got
    return (n - 1) / (last - first), got


async def bench_request(lib_name: str, url: str, n: int, size: int) -> float:
    lib = make(lib_name, url)
    srv = subprocess.Popen([sys.executable, __file__, "--role", "serve", "--lib", lib_name, "--url", url],
                           stdout=subprocess.PIPE, text=True)
    try:
        assert srv.stdout is not None and srv.stdout.readline().strip() == "ready"
        c = await lib.connect()
        data = b"x" * size
        for _ in range(200):
            await lib.request(c, "bench.echo", data)
        t0 = time.perf_counter()
        for _ in range(n):
            await lib.request(c, "bench.echo", data)
        dt = time.perf_counter() - t0
        await lib.close(c)
        return n / dt
    finally:
        srv.kill()
        srv.wait()


# ------------------------------------------------------------------ helper roles (subprocesses)

async def role_pub(lib_name: str, url: str, n: int, size: int) -> None:
    lib = make(lib_name, url)
    c = await lib.connect()
    data = b"x" * size
    for _ in range(n):
        await lib.publish(c, data)
    await lib.flush(c)
    await lib.close(c)


async def role_serve(lib_name: str, url: str) -> None:
    lib = make(lib_name, url)
    c = await lib.connect()
    await lib.serve(c, "bench.echo")
    await lib.flush(c)
    print("ready", flush=True)
    await asyncio.Event().wait()


# ------------------------------------------------------------------ main

def fmt(x: float) -> str:
    return "n/a" if x != x else f"{x:,.0f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--role", default="main", choices=["main", "pub", "serve"])
    ap.add_argument("--lib", default="busgate")
    ap.add_argument("--url", default="")
    ap.add_argument("--n", type=int, default=200_000, help="messages per publish/receive run")
    ap.add_argument("--size", type=int, default=16)
    ap.add_argument("--sizes", default="16,1024", help="payload sizes for the main run")
    ap.add_argument("--requests", type=int, default=5000, help="round trips per request run")
    ap.add_argument("--repeat", type=int, default=3, help="runs per cell; the best is reported")
    ap.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    args = ap.parse_args()
    if args.role == "pub":
        asyncio.run(role_pub(args.lib, args.url, args.n, args.size))
        return 0
    if args.role == "serve":
        asyncio.run(role_serve(args.lib, args.url))
        return 0

    binary = os.environ.get("BUSGATE_BIN", str(ROOT / "build" / "bin" / "busgate"))
    tmp = tempfile.TemporaryDirectory()
    bin_copy = pathlib.Path(tmp.name) / "busgate"
    shutil.copy2(binary, bin_copy)
    cfg = pathlib.Path(tmp.name) / "bench.yaml"
    cfg.write_text(CONFIG)
    procs: list[Proc] = []
    try:
        nats = start_nats()
        procs.append(nats)
        nats_url = f"nats://127.0.0.1:{nats.port}"
        gw_mem = start_gateway(str(bin_copy), cfg, None)
        procs.append(gw_mem)
        targets = [("nats-py -> nats-server", "nats-py", nats_url),
                   ("busgate -> gateway (memory bus)", "busgate", f"busgate://127.0.0.1:{gw_mem.port}")]
        try:
            gw_nats = start_gateway(str(bin_copy), cfg, nats_url)
            procs.append(gw_nats)
            targets.append(("busgate -> gateway (NATS bus) -> nats-server", "busgate",
                            f"busgate://127.0.0.1:{gw_nats.port}"))
        except RuntimeError as e:
            print(f"# gateway on NATS skipped: {str(e).splitlines()[0]}", file=sys.stderr)

        sizes = [int(s) for s in args.sizes.split(",")]
        rows = []
        for size in sizes:
            n = args.n if size <= 128 else max(10_000, args.n // 4)
            for label, lib_name, url in targets:
                pub = max(asyncio.run(bench_publish(make(lib_name, url), n, size)) for _ in range(args.repeat))
                recvs = [asyncio.run(bench_receive(lib_name, url, n, size)) for _ in range(args.repeat)]
                ok = [r for r, got in recvs if r == r]
                recv = max(ok) if ok else float("nan")
                req = max(asyncio.run(bench_request(lib_name, url, args.requests, size)) for _ in range(args.repeat))
                rows.append((size, label, pub, recv, req))
                print(f"# {size:>5} B  {label:<48} publish {fmt(pub):>10}/s  receive {fmt(recv):>10}/s  "
                      f"request {fmt(req):>8}/s", file=sys.stderr, flush=True)
    finally:
        for p in procs:
            p.stop()
        tmp.cleanup()

    from importlib.metadata import version
    import busgate
    nats_server = subprocess.run([shutil.which("nats-server") or "/usr/sbin/nats-server", "--version"],
                                 capture_output=True, text=True).stdout.strip()
    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"busgate {busgate.__version__}, nats-py {version('nats-py')}, msgpack {version('msgpack')}, "
          f"{nats_server}; n={args.n} (1 KiB: n/4), best of {args.repeat}")
    head = ["payload", "target", "publish msgs/s", "receive msgs/s", "request req/s",
            "publish vs nats-py", "receive vs nats-py", "request vs nats-py"]
    base = {size: (pub, recv, req) for size, label, pub, recv, req in rows if label.startswith("nats-py")}
    lines = []
    for size, label, pub, recv, req in rows:
        b = base[size]
        ratio = lambda x, y: "1.00" if label.startswith("nats-py") else ("n/a" if x != x or y != y else f"{x / y:.2f}")
        lines.append([f"{size} B", label, fmt(pub), fmt(recv), fmt(req), ratio(pub, b[0]), ratio(recv, b[1]),
                      ratio(req, b[2])])
    if args.markdown:
        print("| " + " | ".join(head) + " |")
        print("|" + "---|" * len(head))
        for ln in lines:
            print("| " + " | ".join(ln) + " |")
    else:
        widths = [max(len(h), *(len(ln[i]) for ln in lines)) for i, h in enumerate(head)]
        print("  ".join(h.ljust(w) for h, w in zip(head, widths)))
        for ln in lines:
            print("  ".join(c.ljust(w) for c, w in zip(ln, widths)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
