"""``busgate-cli bench SUBJECT``: a quick publish/subscribe and request/reply measurement, like
``nats bench``, from one process.

Phase 1 (``--msgs`` > 0): ``--subs`` connections subscribe to SUBJECT, then ``--pubs`` connections
publish ``--msgs`` messages of ``--size`` bytes between them (as fast as the connection takes them,
then a flush). It reports the publish rate (messages published / time until the last publisher's
flush returned) and the receipt rate (messages received by all subscribers / time until the last
one arrived), in messages/s and MB/s (10^6 bytes). Delivery is at most once: a subscriber that falls
behind may lose messages (SLOW_CONSUMER); what was lost is reported. A subscriber that receives
nothing for ``--idle`` seconds after the publishers finished stops waiting.

Phase 2 (``--requests`` > 0): a replier on its own connection answers on SUBJECT (echo), and one
requester sends ``--requests`` requests one after the other: the rate and the p50/p99 round-trip
latency.

Everything runs in this process on one event loop (publishers yield to the subscribers every 128
messages), so the figures include the Python client's own cost; the defaults finish in a few
seconds on a small machine. Errors met on the way (SLOW_CONSUMER, RATE_LIMITED, ...) go to the
``on_error`` given, once per kind; the results are still printed.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any, Callable

from . import errors as E
from .client import Client, Msg, connect


def add_parser(sp: Any) -> None:
    b = sp.add_parser("bench", help="measure publish, receipt and request/reply rates on SUBJECT",
                      description="Publish/subscribe rate (messages/s, MB/s) and request/reply rate with p50/p99 "
                                  "latency, measured from this process (a replier runs on a second connection).")
    b.add_argument("subject")
    b.add_argument("--msgs", type=int, default=20000, help="messages to publish, 0 skips pub/sub (default %(default)s)")
    b.add_argument("--size", type=int, default=128, help="payload bytes (default %(default)s)")
    b.add_argument("--pubs", type=int, default=1, help="publishing connections (default %(default)s)")
    b.add_argument("--subs", type=int, default=1, help="subscribing connections (default %(default)s)")
    b.add_argument("--requests", type=int, default=1000,
                   help="sequential requests, 0 skips request/reply (default %(default)s)")
    b.add_argument("--timeout", type=float, default=5.0, help="seconds per request (default %(default)s)")
    b.add_argument("--idle", type=float, default=2.0,
                   help="seconds without a message before a subscriber stops waiting (default %(default)s)")
    b.add_argument("--json", action="store_true", help="print the results as one JSON object")


def check(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.msgs < 0 or args.requests < 0 or args.size < 0 or args.subs < 0:
        p.error("bench: --msgs, --requests, --size and --subs must not be negative")
    if args.pubs < 1:
        p.error("bench: --pubs must be at least 1")
    if args.timeout <= 0 or args.idle <= 0:
        p.error("bench: --timeout and --idle must be positive")
    if args.msgs == 0 and args.requests == 0:
        p.error("bench: nothing to measure (--msgs 0 and --requests 0)")


def _pct(sorted_values: list[float], p: float) -> float:
    if not sorted_values:
        return 0.0
    k = min(len(sorted_values) - 1, max(0, int(round(p / 100.0 * len(sorted_values) + 0.5)) - 1))
    return sorted_values[k]


async def _clients(url: str, n: int, opts: dict[str, Any], role: str) -> list[Client]:
    out: list[Client] = []
    try:
        for i in range(n):
            out.append(await connect(url, **{**opts, "name": f"busgate-cli bench {role} {i + 1}"}))
    except BaseException:
        await asyncio.gather(*(c.close() for c in out), return_exceptions=True)
        raise
    return out


async def _pubsub(url: str, opts: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    subject, n, size = args.subject, args.msgs, args.size
    payload = b"x" * size
    subs_c = await _clients(url, args.subs, opts, "sub")
    pubs_c: list[Client] = []
    try:
        subs = [await c.subscribe(subject, pending_msgs_limit=max(65536, n)) for c in subs_c]
        for c in subs_c:
            await c.flush()
        pubs_c = await _clients(url, args.pubs, opts, "pub")
        received = [0] * len(subs)
        last = [0.0] * len(subs)

        async def drain(i: int) -> None:
            sub = subs[i]
            while received[i] < n:
                try:
                    await sub.next()
                except E.SubscriptionClosed:  # e.g. SLOW_CONSUMER (reported): count the rest as lost
                    return
                received[i] += 1
                last[i] = time.perf_counter()

        shares = [n // args.pubs + (1 if i < n % args.pubs else 0) for i in range(args.pubs)]

        async def publish(c: Client, count: int) -> float:
            for i in range(count):
                await c.publish(subject, payload)
                if i % 128 == 127:
                    await asyncio.sleep(0)  # let the subscribers of this process read their sockets
            await c.flush(timeout=60)
            return time.perf_counter()

        readers = [asyncio.ensure_future(drain(i)) for i in range(len(subs))]
        t0 = time.perf_counter()
        try:
            ends = await asyncio.gather(*(publish(c, k) for c, k in zip(pubs_c, shares)))
            pub_s = max(ends) - t0
            # wait for the subscribers while they make progress
            seen = -1
            while readers and not all(r.done() for r in readers):
                total = sum(received)
                if total == seen:
                    break  # nothing arrived for --idle seconds
                seen = total
                await asyncio.wait(readers, timeout=args.idle)
            for r in readers:
                if r.done() and not r.cancelled() and r.exception() is not None:
                    raise r.exception()  # type: ignore[misc]
        finally:
            for r in readers:
                r.cancel()
            await asyncio.gather(*readers, return_exceptions=True)
        got = sum(received)
        sub_s = (max(last) - t0) if got else 0.0
        return {
            "msgs": n, "size": size, "pubs": args.pubs, "subs": args.subs,
            "publish": _rates(n, size, pub_s),
            "receive": {**_rates(got, size, sub_s), "expected": n * len(subs), "lost": n * len(subs) - got},
        }
    finally:
        await asyncio.gather(*(c.close() for c in subs_c + pubs_c), return_exceptions=True)


def _rates(count: int, size: int, seconds: float) -> dict[str, Any]:
    if count == 0 or seconds <= 0:
        return {"count": count, "seconds": round(seconds, 6), "msgs_per_s": 0.0, "mb_per_s": 0.0}
    return {"count": count, "seconds": round(seconds, 6), "msgs_per_s": round(count / seconds, 1),
            "mb_per_s": round(count * size / seconds / 1e6, 3)}


async def _reqrep(url: str, opts: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    subject, n = args.subject, args.requests
    payload = b"x" * args.size
    replier, requester = await _clients(url, 2, opts, "req")
    try:
        sub = await replier.subscribe(subject)
        await replier.flush()

        async def answer() -> None:
            async for m in sub:
                await m.respond(m.data)

        task = asyncio.ensure_future(answer())
        lat: list[float] = []
        try:
            t0 = time.perf_counter()
            for _ in range(n):
                s = time.perf_counter()
                reply: Msg = await requester.request(subject, payload, timeout=args.timeout)
                lat.append(time.perf_counter() - s)
                if len(reply.data) != len(payload):
                    raise RuntimeError(f"the reply has {len(reply.data)} bytes, the request {len(payload)}")
            total = time.perf_counter() - t0
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        lat.sort()
        return {"requests": n, "size": args.size, "seconds": round(total, 6),
                "req_per_s": round(n / total, 1) if total > 0 else 0.0,
                "p50_ms": round(_pct(lat, 50) * 1000, 3), "p99_ms": round(_pct(lat, 99) * 1000, 3),
                "max_ms": round(lat[-1] * 1000, 3)}
    finally:
        await asyncio.gather(replier.close(), requester.close(), return_exceptions=True)


def _print_text(url: str, args: argparse.Namespace, res: dict[str, Any]) -> None:
    out = sys.stdout
    if "pubsub" in res:
        r = res["pubsub"]
        print(f"Pub/sub on {args.subject!r} at {url}: {r['msgs']} msgs of {r['size']} B, "
              f"{r['pubs']} publisher(s), {r['subs']} subscriber(s)", file=out)
        p = r["publish"]
        print(f"  publish  {p['msgs_per_s']:>12,.0f} msgs/s  {p['mb_per_s']:>9.2f} MB/s  "
              f"({p['count']} msgs in {p['seconds']:.3f} s)", file=out)
        if r["subs"]:
            s = r["receive"]
            print(f"  receive  {s['msgs_per_s']:>12,.0f} msgs/s  {s['mb_per_s']:>9.2f} MB/s  "
                  f"({s['count']} of {s['expected']} msgs in {s['seconds']:.3f} s, {s['lost']} lost)", file=out)
    if "request" in res:
        q = res["request"]
        print(f"Request/reply on {args.subject!r}: {q['requests']} requests of {q['size']} B, one at a time",
              file=out)
        print(f"  request  {q['req_per_s']:>12,.0f} req/s   p50 {q['p50_ms']:.3f} ms  p99 {q['p99_ms']:.3f} ms  "
              f"max {q['max_ms']:.3f} ms", file=out)
    out.flush()


async def run(url: str, opts: dict[str, Any], args: argparse.Namespace,
              on_error: Callable[[BaseException], None]) -> int:
    # The same error (RATE_LIMITED, SLOW_CONSUMER_WARNING) may come thousands of times: pass each
    # kind on once.
    kinds: set[tuple[type, Any]] = set()

    def once(err: BaseException) -> None:
        key = (type(err), getattr(err, "code", None))
        if key not in kinds:
            kinds.add(key)
            on_error(err)

    opts = {**opts, "on_error": once, "reconnect": False}
    res: dict[str, Any] = {"subject": args.subject}
    if args.msgs:
        res["pubsub"] = await _pubsub(url, opts, args)
    if args.requests:
        res["request"] = await _reqrep(url, opts, args)
    if args.json:
        print(json.dumps(res), flush=True)
    else:
        _print_text(url, args, res)
    return 0
