"""The runner's parts below :class:`busgate.program.Program`: the handler's :class:`Context`, the
per-handler counters, and :class:`_Runner`, which runs one consumer, service or triggered command
(a subscription, N slots, the take loop, settling, the drain). See :mod:`busgate.program`."""
from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from . import errors as E
from .client import Client, Msg, Subscription
from .program_metrics import ProgramMetrics

if TYPE_CHECKING:
    from .program import Program



class Terminate(Exception):
    """Raised by a durable consumer's handler: do not retry this message. The runner sends TERM with
    the exception's message as the reason; the message goes to the consumer's dead-letter subject."""


def _encode(value: Any) -> bytes:
    if value is None:
        return b""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8")
    return json.dumps(value, separators=(",", ":"), default=str).encode("utf-8")


@dataclass
class ConsumerStats:
    """Counters of one consumer (also logged at stop)."""

    taken: int = 0        # messages taken from the subscription (each one is run)
    done: int = 0         # handlers that returned
    failed: int = 0       # handlers that raised
    in_flight: int = 0
    max_in_flight: int = 0
    max_pending: int = 0  # the most messages that waited in the local queue
    dropped: int = 0      # received but not started when a drain hit its deadline (plain consumers)
    # durable consumers
    acked: int = 0        # ACK sent after the handler returned
    nakked: int = 0       # NAK sent after the handler raised
    terminated: int = 0   # TERM sent after the handler raised Terminate
    stale: int = 0        # settled after its connection was gone (the gateway had released it)
    redelivered: int = 0  # taken with attempt > 1
    released: int = 0     # given back by the drain: received and not started, or cut off at its deadline


class Context:
    """What a handler gets besides the message: the connected ``client``, ``publish``, ``request``,
    structured ``log``, the parsed ``args`` and the ``program``; for a triggered command, ``trigger``
    (the trigger message with ``--listen``, None when run once)."""

    def __init__(self, program: "Program", command: str, client: Client | None, args: argparse.Namespace,
                 logger: logging.LoggerAdapter, trigger: Msg | None = None) -> None:
        self.program = program
        self.command = command
        self._client = client
        self.args = args
        self._log = logger
        self.trigger = trigger

    @property
    def client(self) -> Client:
        if self._client is None:
            raise E.ClientError("this command runs without a connection; call `await ctx.connect()` first")
        return self._client

    async def connect(self) -> Client:
        """For plain commands: connect with the program's URL and token (closed when the command ends)."""
        if self._client is None:
            self._client = await self.program._connect(self.args, name=f"{self.program.name}:{self.command}")
            self.program._clients.append(self._client)
        return self._client

    async def publish(self, subject: str, data: Any = b"", headers: dict[str, str] | None = None,
                      reply_to: str | None = None) -> None:
        """Publish; ``data`` may be bytes, str or anything JSON-serialisable."""
        await self.client.publish(subject, _encode(data), headers, reply_to)

    async def request(self, subject: str, data: Any = b"", timeout: float | None = None,
                      headers: dict[str, str] | None = None) -> Msg:
        return await self.client.request(subject, _encode(data), timeout, headers)

    def log(self, event: str, level: int = logging.INFO, **fields: Any) -> None:
        self._log.log(level, event, extra={"fields": fields})


@dataclass
class _Handler:
    kind: str  # consumer | service | command
    fn: Callable[..., Any]
    command: str
    subject: str | None = None
    queue: str | None = None
    concurrency: int = 1
    prefetch: int | None = None
    durable: str | None = None
    deliver: str | None = None
    progress_interval: float = 10.0
    retry_backoff: tuple[float, float] | None = None
    stats: ConsumerStats = field(default_factory=ConsumerStats)

    def call(self, *args: Any) -> Any:
        n = len(inspect.signature(self.fn).parameters)
        return self.fn(*args[:n])


def _exit_code(r: Any) -> int:
    """A plain command's return value as an exit code: an int (or bool) is one, anything else is 0."""
    return int(r or 0) if isinstance(r, (int, bool)) or r is None else 0


class CommandFailed(Exception):
    """A triggered run returned a non-zero exit code."""


class _Runner:
    """Runs one consumer or service: a subscription, N slots, the take loop."""

    def __init__(self, h: _Handler, client: Client, ctx: Context, log: logging.LoggerAdapter,
                 metrics: ProgramMetrics | None = None, runs: dict[str, int] | None = None) -> None:
        self.h = h
        self.client = client
        self.ctx = ctx
        self.log = log
        self.metrics = metrics
        self.runs = runs  # a triggered command: its runs by outcome
        self.sub: Subscription | None = None
        self.tasks: set[asyncio.Task] = set()
        self.loop_task: asyncio.Task | None = None
        self.stopping = False
        self.is_coro = inspect.iscoroutinefunction(h.fn)

    def live(self) -> bool:
        """The subscription is made on the current connection (its OK arrived; durable: credits may
        be granted there)."""
        sub, conn = self.sub, self.client._conn
        if sub is None or sub._closed or conn is None or not conn.usable or sub.sid in conn.sub_oks:
            return False
        return sub.durable is None or conn in sub._ready

    async def start(self) -> None:
        h = self.h
        kind = "trigger" if h.kind == "command" else h.kind
        if h.durable is not None:
            self.sub = await self.client.subscribe(h.subject, durable=h.durable, max_inflight=h.concurrency,  # type: ignore[arg-type]
                                                   deliver=h.deliver)
            self.log.info(f"{kind}.start", extra={"fields": {
                "handler": h.fn.__name__, "subject": h.subject, "durable": h.durable, "concurrency": h.concurrency,
                "progress_interval": h.progress_interval}})
        else:
            prefetch = h.prefetch or h.concurrency
            self.sub = await self.client.subscribe(h.subject, h.queue, pending_msgs_limit=prefetch)  # type: ignore[arg-type]
            self.log.info(f"{kind}.start", extra={"fields": {
                "handler": h.fn.__name__, "subject": h.subject, "queue": h.queue, "concurrency": h.concurrency,
                "prefetch": prefetch}})
        self.loop_task = asyncio.get_running_loop().create_task(self._take_loop())

    async def _take_loop(self) -> None:
        h, sub = self.h, self.sub
        assert sub is not None
        slots = asyncio.Semaphore(h.concurrency)
        st = h.stats
        try:
            while True:
                await slots.acquire()  # a free slot first: no message is taken that cannot run now
                if self.stopping:
                    slots.release()
                    break
                try:
                    msg = await sub.next()
                except E.SubscriptionClosed:
                    slots.release()
                    break
                except asyncio.CancelledError:
                    slots.release()
                    raise
                st.taken += 1
                if msg.attempt is not None and msg.attempt > 1:
                    st.redelivered += 1
                st.in_flight += 1
                st.max_in_flight = max(st.max_in_flight, st.in_flight)
                st.max_pending = max(st.max_pending, sub.max_pending_seen)
                t = asyncio.get_running_loop().create_task(self._run_one(msg, slots))
                self.tasks.add(t)
                t.add_done_callback(self.tasks.discard)
        finally:
            if h.durable is None and self.tasks:
                await asyncio.gather(*list(self.tasks), return_exceptions=True)

    async def _call(self, msg: Msg) -> Any:
        if self.h.kind == "command":  # a triggered command: fn(ctx), the trigger in ctx.trigger
            c = self.ctx
            call_args: tuple = (Context(c.program, c.command, c._client, c.args, c._log, trigger=msg),)
        else:
            call_args = (msg, self.ctx)
        if self.is_coro:
            return await self.h.call(*call_args)
        result = await asyncio.to_thread(self.h.call, *call_args)
        if inspect.isawaitable(result):
            result = await result
        return result

    def _reply_body(self, result: Any) -> bytes:
        if self.h.kind != "command":
            return _encode(result)
        try:
            return json.dumps({"ok": True, "result": result}, separators=(",", ":")).encode()
        except (TypeError, ValueError):
            return b'{"ok":true,"result":null}'

    async def _run_one(self, msg: Msg, slots: asyncio.Semaphore) -> None:
        h, st = self.h, self.h.stats
        t0 = time.perf_counter()
        durable = h.durable is not None and msg.delivery_id is not None
        ticker = asyncio.get_running_loop().create_task(self._keep_alive(msg)) if durable else None
        replies = h.kind in ("service", "command") and bool(msg.reply_to)
        counted = False

        def finish(ok: bool) -> None:
            # done/failed, the duration histogram and the command's runs move together
            nonlocal counted
            if counted:
                return
            counted = True
            if ok:
                st.done += 1
            else:
                st.failed += 1
            if self.metrics is not None:
                self.metrics.observe(h.fn.__name__, time.perf_counter() - t0)
            if self.runs is not None:
                self.runs["ok" if ok else "failed"] += 1

        try:
            try:
                result = await self._call(msg)
            finally:
                if ticker is not None:
                    ticker.cancel()
            if h.kind == "command" and (code := _exit_code(result)) != 0:
                raise CommandFailed(f"exit code {code}")
            finish(True)
            if replies:
                try:
                    await msg.respond(self._reply_body(result))
                except E.BusgateError as e:
                    self.log.warning("reply.failed", extra={"fields": {
                        "handler": h.fn.__name__, "subject": msg.subject, "error": str(e)}})
            if durable and not msg.settled:
                self._count_settled(msg, await msg.ack(), "acked")
        except asyncio.CancelledError:
            finish(False)
            raise
        except Terminate as e:
            finish(False)
            self.log.warning("message.terminated", extra={"fields": {
                "handler": h.fn.__name__, "subject": msg.subject, "delivery_id": msg.delivery_id,
                "attempt": msg.attempt, "reason": str(e)}})
            if durable and not msg.settled:
                self._count_settled(msg, await msg.term(str(e) or None), "terminated")
            if replies:
                await self._reply_error(msg, e)
        except Exception as e:
            if counted:  # the handler succeeded; settling it failed (the connection is gone: stale)
                self.log.warning("message.settle_failed", extra={"fields": {
                    "handler": h.fn.__name__, "subject": msg.subject, "error": f"{type(e).__name__}: {e}"}})
                return
            finish(False)
            self.log.error("message.failed", exc_info=True, extra={"fields": {
                "handler": h.fn.__name__, "subject": msg.subject, "error": f"{type(e).__name__}: {e}",
                **({"delivery_id": msg.delivery_id, "attempt": msg.attempt} if durable else {})}})
            if durable and not msg.settled:
                self._count_settled(msg, await msg.nak(self._retry_delay(msg)), "nakked")
            if replies:
                await self._reply_error(msg, e)
        finally:
            st.in_flight -= 1
            slots.release()
            if self.log.isEnabledFor(logging.DEBUG):
                self.log.debug("message.done", extra={"fields": {
                    "handler": h.fn.__name__, "subject": msg.subject, "ms": round((time.perf_counter() - t0) * 1000, 3)}})

    @staticmethod
    async def _reply_error(msg: Msg, e: BaseException) -> None:
        try:
            await msg.respond(b"", headers={"error": f"{type(e).__name__}: {e}"[:4000].replace("\n", " ")})
        except E.BusgateError:
            pass

    def _retry_delay(self, msg: Msg) -> float | None:
        """None: NAK without a delay, the consumer's configured backoff applies."""
        if self.h.retry_backoff is None:
            return None
        base, cap = self.h.retry_backoff
        return min(cap, base * 2 ** min(max(0, (msg.attempt or 1) - 1), 30))

    def _count_settled(self, msg: Msg, sent: bool, what: str) -> None:
        st = self.h.stats
        if sent:
            setattr(st, what, getattr(st, what) + 1)
        else:
            st.stale += 1
            self.log.warning("message.stale", extra={"fields": {
                "handler": self.h.fn.__name__, "subject": msg.subject, "delivery_id": msg.delivery_id,
                "attempt": msg.attempt, "outcome": what}})

    async def _keep_alive(self, msg: Msg) -> None:
        """PROGRESS every progress_interval while the handler runs."""
        while True:
            await asyncio.sleep(self.h.progress_interval)
            if msg.settled or not await msg.in_progress():
                return

    async def drain(self, timeout: float) -> None:
        """Stop taking new work (UNSUB), run what had already been received until ``timeout``, then
        take nothing more; always wait for the handlers that are running; flush what they published.
        Durable consumers: :meth:`_drain_durable`."""
        if self.h.durable is not None:
            await self._drain_durable(timeout)
            return
        assert self.sub is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            await asyncio.wait_for(self.sub.drain(timeout), timeout)
        except asyncio.TimeoutError:
            pass
        if self.loop_task is not None and not self.loop_task.done():
            remaining = deadline - loop.time()
            if remaining > 0:
                try:
                    await asyncio.wait_for(asyncio.shield(self._queue_done()), remaining)
                except asyncio.TimeoutError:
                    pass
            # the deadline: take nothing more; what is still queued locally is dropped (it was never
            # started); the handlers already running are accepted work and are waited for
            self.stopping = True
            dropped = self.sub.pending_msgs
            self.sub._end(None, discard=True)
            self.h.stats.dropped += dropped
            if dropped:
                self.log.warning("drain.deadline", extra={"fields": {
                    "handler": self.h.fn.__name__, "dropped": dropped, "in_flight": self.h.stats.in_flight}})
            await asyncio.shield(self.loop_task)
        try:
            await self.client.flush(timeout=10.0)
        except E.BusgateError:
            pass

    async def _drain_durable(self, timeout: float) -> None:
        """Take nothing more and grant no more credits; let the running handlers finish and settle
        until ``timeout``; then end the subscription: the gateway releases at once what was received
        and not started, and what is still running (those handlers are cancelled)."""
        sub = self.sub
        assert sub is not None
        self.stopping = True
        sub._granting = False
        if self.loop_task is not None and not self.loop_task.done():
            self.loop_task.cancel()
            try:
                await self.loop_task
            except (asyncio.CancelledError, Exception):
                pass
        pending: set[asyncio.Task] = set()
        if self.tasks:
            _, pending = await asyncio.wait(list(self.tasks), timeout=timeout)
        queued = sub.pending_msgs
        await sub.unsubscribe()  # releases what this process holds and has not settled
        released = queued + len(pending)
        self.h.stats.released += released
        if pending:
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if released:
            self.log.warning("drain.released", extra={"fields": {
                "handler": self.h.fn.__name__, "not_started": queued, "cut_off": len(pending)}})
        try:
            await self.client.flush(timeout=10.0)
        except E.BusgateError:
            pass

    async def _queue_done(self) -> None:
        assert self.sub is not None and self.loop_task is not None
        await self.sub._empty.wait()
        await asyncio.shield(self.loop_task)
