"""Programs and commands: a small runner for the Python programs that live on the bus.

A *program* is a Python package with several *commands* (``train``, ``score``, ``serve``), run as
``python -m myprogram score``::

    # myprogram/__main__.py
    from busgate.program import Program

    program = Program("myprogram")

    @program.consumer("exports.finished", queue="scorers", concurrency=4)
    async def score(msg, ctx):
        result = model.score(msg.json())
        await ctx.publish("forecasts.scored", result)      # dict -> JSON

    @program.service("forecasts.query", queue="forecasters")
    async def serve(msg, ctx):
        return {"forecast": ...}                            # the reply

    @program.command()
    def train(ctx):
        ...

    if __name__ == "__main__":
        program.main()

Every handler is registered under a command (by default the function's name; pass ``command=`` to put
several handlers under one command). ``python -m myprogram <command> [--url URL] [--token TOKEN]``
connects (``--url``/``--token`` default to BUSGATE_URL/BUSGATE_TOKEN), runs every handler of the
command until SIGTERM or SIGINT, then drains.

Consumers and bounded concurrency
    ``@program.consumer(subject, queue=..., concurrency=N, prefetch=P)`` never runs more than N
    handlers at once and never reads more work than it can run: it takes a message from its
    subscription only when one of its N slots is free, and the subscription's local queue holds at
    most P messages (default P = N). When that queue is full the client stops reading the consumer's
    connection, so the backlog stays in the gateway (and on the bus side of it), not in this process.
    Each consumer has its own connection, so a busy consumer never stalls the others, the services or
    the replies. The gateway's outbound queue toward one connection is bounded (``max_pending``, 8 MiB
    by default): a consumer that stays stalled long enough to fill it first gets
    SLOW_CONSUMER_WARNING, then SLOW_CONSUMER and is disconnected; the runner's client reconnects and
    resubscribes, and the messages that were queued in the gateway for the old connection are lost
    (delivery is at most once). Use a queue group and more replicas when the work does not keep up.

Durable consumers: at least once
    ``@program.consumer(subject, durable="scorers", concurrency=N)`` consumes the durable consumer
    ``scorers`` (docs/protocol.md section 16) instead of a plain subscription:

    - at most N handlers run at once in this process, and the process never holds more than N
      deliveries: the subscription's window is N, and the client grants the gateway one credit per
      free place. The backlog stays stored on the bus. The consumer's own cap (``max_inflight`` in
      the gateway's configuration) bounds all the replicas together.
    - a handler that returns is acknowledged (ACK); one that raises is nakked (NAK), and the message
      comes back as the next attempt after the consumer's configured backoff (``backoff_ms``), or,
      with ``retry_backoff=(base, cap)``, after ``min(cap, base * 2 ** (attempt - 1))`` seconds; one
      that raises :class:`Terminate` is terminated (TERM: dead-lettered at once, not retried). After
      the consumer's ``max_deliveries`` attempts the gateway dead-letters it. A handler may also
      settle ``msg`` itself (``await msg.ack()``, ...); the runner then does nothing more with it.
    - while a handler runs, the runner sends PROGRESS every ``progress_interval`` seconds (default
      10 s, a third of the default 30 s ack wait), so a long job is not redelivered while it runs.
    - a process that dies (kill -9, OOM, a lost node) loses nothing: the gateway releases what its
      connection held at once when the connection closes (after the ack wait if the node vanished
      without closing it), and another replica gets it. Work can therefore run more than once:
      handlers should be idempotent, or dedupe on their own key (``msg.attempt`` > 1 says it is a
      redelivery).
    - after a reconnect the subscription is made again and the deliveries taken from the old
      connection are stale (the gateway released them; they come back as the next attempt). Their
      handlers still run to the end; settling them is a no-op counted as ``stale``.
    - drain (SIGTERM): take nothing more, grant no more credits, let the running handlers finish and
      settle (bounded by ``--drain-timeout``), then end the subscription, which releases at once
      what was received but not started, and what still runs at the deadline (those handlers are
      cancelled). Released messages are redelivered to the other replicas (or to this program's
      next run); nothing is lost. ``prefetch`` does not apply: the window is the concurrency.

Services
    ``@program.service(subject, queue=..., concurrency=N)`` answers requests: the handler's return value
    is the reply (bytes, str, or anything JSON-serialisable). If the handler raises, the reply is
    empty with the header ``error`` set to ``<ExceptionType>: <message>``.

Drain (SIGTERM, SIGINT)
    Stop taking work (UNSUB every subscription), wait until the gateway has sent everything it sent
    before the UNSUB (PING/PONG barrier), run the messages already received (still N at a time),
    wait for every in-flight handler, flush what they published, close. Every message a handler
    took is finished and its results are published. ``--drain-timeout`` (30 s) bounds the running of
    already-received messages: at the deadline nothing more is started, what is still queued locally
    (at most ``prefetch`` per consumer, plus what the gateway had queued for the connection before the
    UNSUB) is dropped and counted (``dropped`` in ``program.stop``), and the running handlers are still
    waited for. A second signal stops waiting and exits.

Logs
    One JSON object per line on stderr: ``ts``, ``level``, ``program``, ``command``, ``event`` and
    event fields (``program.start``, ``consumer.start``, ``message.failed``, ``program.draining``,
    ``program.stop`` with counters, ...). Handlers log through ``ctx.log(event, **fields)``.
"""
from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from . import errors as E
from .client import Client, Msg, Subscription, connect

__all__ = ["Program", "Context", "ConsumerStats", "JsonFormatter", "Terminate"]


class Terminate(Exception):
    """Raised by a durable consumer's handler: do not retry this message. The runner sends TERM with
    the exception's message as the reason; the message goes to the consumer's dead-letter subject."""


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ts, level, logger fields, message as ``event``, and ``extra`` fields
    passed as ``fields=``."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
        }
        out.update(getattr(record, "ctx", {}))
        out["event"] = record.getMessage()
        out.update(getattr(record, "fields", {}))
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


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
    structured ``log``, the parsed ``args`` and the ``program``."""

    def __init__(self, program: "Program", command: str, client: Client | None, args: argparse.Namespace,
                 logger: logging.LoggerAdapter) -> None:
        self.program = program
        self.command = command
        self._client = client
        self.args = args
        self._log = logger

    @property
    def client(self) -> Client:
        if self._client is None:
            raise E.ClientError("this command runs without a connection; call `await ctx.connect()` first")
        return self._client

    async def connect(self) -> Client:
        """For plain commands: connect with the program's URL and token (closed when the command ends)."""
        if self._client is None:
            self._client = await self.program._connect(self.args, name=f"{self.program.name}:{self.command}")
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


class Program:
    """A program: commands made of consumers, services and plain commands. See the module doc."""

    def __init__(self, name: str, *, description: str | None = None, url: str | None = None,
                 token: str | None = None) -> None:
        self.name = name
        self.description = description
        self.url = url
        self.token = token
        self.handlers: list[_Handler] = []
        self.logger = logging.getLogger(f"busgate.program.{name}")
        self._stop: asyncio.Event | None = None
        self.running: dict[str, _Handler] = {}

    # ------------------------------------------------------------------ decorators
    def consumer(self, subject: str, *, queue: str | None = None, concurrency: int = 1,
                 prefetch: int | None = None, command: str | None = None, durable: str | None = None,
                 deliver: str | None = None, progress_interval: float = 10.0,
                 retry_backoff: tuple[float, float] | None = None) -> Callable:
        """Consume ``subject`` with at most ``concurrency`` handlers at once. The handler is
        ``async def h(msg, ctx)`` (or ``h(msg)``; a plain function runs in a worker thread).

        With ``durable=NAME`` the consumer is at least once (see the module doc): ACK when the
        handler returns, NAK when it raises (after the consumer's backoff, or ``retry_backoff=(base,
        cap)`` seconds, exponential), TERM when it raises :class:`Terminate`, PROGRESS every
        ``progress_interval`` seconds while it runs. ``deliver`` (``"all"`` or ``"new"``) applies when
        the SUB creates the consumer. ``queue`` and ``prefetch`` do not apply to durable consumers."""
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if progress_interval <= 0:
            raise ValueError("progress_interval must be positive")
        if retry_backoff is not None and (len(retry_backoff) != 2 or not 0 < retry_backoff[0] <= retry_backoff[1]):
            raise ValueError("retry_backoff must be (base, cap) seconds with 0 < base <= cap")
        if durable is None and (deliver is not None or retry_backoff is not None):
            raise ValueError("deliver and retry_backoff need durable=")

        def deco(fn: Callable) -> Callable:
            self.handlers.append(_Handler("consumer", fn, command or fn.__name__, subject,
                                          None if durable else queue, concurrency, prefetch, durable, deliver,
                                          progress_interval, tuple(retry_backoff) if retry_backoff else None))
            return fn
        return deco

    def service(self, subject: str, *, queue: str | None = None, concurrency: int = 16,
                command: str | None = None) -> Callable:
        """Answer requests on ``subject``; the handler's return value is the reply."""
        def deco(fn: Callable) -> Callable:
            self.handlers.append(_Handler("service", fn, command or fn.__name__, subject, queue, concurrency))
            return fn
        return deco

    def command(self, name: str | None = None) -> Callable:
        """A plain one-shot command: ``def train(ctx)`` or ``async def train(ctx)``; ``ctx.args.argv``
        holds the arguments after the command name. Its return value is the exit code (None: 0)."""
        def deco(fn: Callable) -> Callable:
            self.handlers.append(_Handler("command", fn, name or fn.__name__))
            return fn
        return deco

    @property
    def commands(self) -> dict[str, list[_Handler]]:
        out: dict[str, list[_Handler]] = {}
        for h in self.handlers:
            out.setdefault(h.command, []).append(h)
        return out

    # ------------------------------------------------------------------ entry point
    def parser(self) -> argparse.ArgumentParser:
        p = argparse.ArgumentParser(prog=f"python -m {self.name}", description=self.description)
        common = argparse.ArgumentParser(add_help=False)
        common.add_argument("--url", default=None, help="gateway URL, or several separated by commas (default: $BUSGATE_URL or "
                                 "busgate://127.0.0.1:7422)")
        common.add_argument("--token", default=None, help="tenant token (default: $BUSGATE_TOKEN)")
        common.add_argument("--log-level", default=os.environ.get("BUSGATE_LOG_LEVEL", "info"))
        common.add_argument("--drain-timeout", type=float, default=30.0, help="seconds a drain may take")
        sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
        for name, hs in self.commands.items():
            kinds = ", ".join(sorted({h.kind for h in hs}))
            doc = (inspect.getdoc(hs[0].fn) or "").split("\n")[0]
            sp = sub.add_parser(name, parents=[common], help=f"{doc} ({kinds})" if doc else kinds)
            if any(h.kind == "consumer" for h in hs):
                sp.add_argument("--concurrency", type=int, default=None,
                                help="override the consumers' concurrency")
            if any(h.kind == "command" for h in hs):
                sp.add_argument("argv", nargs=argparse.REMAINDER, help="arguments of the command")
        return p

    def main(self, argv: list[str] | None = None, *, exit: bool = True) -> int:
        """Parse argv, run the command, return (or exit with) its exit code."""
        args = self.parser().parse_args(argv)
        self._setup_logging(args)
        try:
            code = asyncio.run(self.run(args))
        except KeyboardInterrupt:
            code = 130
        if exit:
            sys.exit(code)
        return code

    def _setup_logging(self, args: argparse.Namespace) -> None:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
        root = logging.getLogger()
        for h in list(root.handlers):
            root.removeHandler(h)
        root.addHandler(handler)
        root.setLevel(getattr(logging, str(args.log_level).upper(), logging.INFO))

    def _adapter(self, command: str) -> logging.LoggerAdapter:
        ctx = {"program": self.name, "command": command, "pid": os.getpid()}

        class _A(logging.LoggerAdapter):
            def process(self, msg: Any, kwargs: Any) -> Any:
                extra = kwargs.setdefault("extra", {})
                extra["ctx"] = ctx
                return msg, kwargs
        return _A(self.logger, {})

    async def _connect(self, args: argparse.Namespace, name: str) -> Client:
        url = args.url or self.url or os.environ.get("BUSGATE_URL", "busgate://127.0.0.1:7422")
        token = args.token or self.token or os.environ.get("BUSGATE_TOKEN", "")
        log = self._adapter(getattr(args, "command", ""))

        def on_error(err: BaseException) -> None:
            log.warning("client.error", extra={"fields": {"error": str(err), "code": getattr(err, "code", None)}})

        def on_disconnect(err: BaseException) -> None:
            log.warning("client.disconnected", extra={"fields": {"error": str(err)}})

        def on_reconnect() -> None:
            log.info("client.reconnected", extra={"fields": {}})

        # "URL1,URL2,...": several gateway nodes; the client reconnects to the next when one goes away.
        urls = [u.strip() for u in url.split(",") if u.strip()]
        return await connect(urls if len(urls) > 1 else url, token=token, name=name, on_error=on_error,
                             on_disconnect=on_disconnect, on_reconnect=on_reconnect)

    def stop(self) -> None:
        """Begin the drain (what SIGTERM does)."""
        if self._stop is not None:
            self._stop.set()

    async def run(self, args: argparse.Namespace) -> int:
        command = args.command
        handlers = self.commands[command]
        log = self._adapter(command)
        plain = [h for h in handlers if h.kind == "command"]
        if plain:
            return await self._run_plain(plain[0], args, log)
        self._stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        signals = 0

        def on_signal(sig: signal.Signals) -> None:
            nonlocal signals
            signals += 1
            log.info("program.signal", extra={"fields": {"signal": sig.name, "count": signals}})
            self._stop.set()  # type: ignore[union-attr]
            if signals > 1:
                hard.set()

        hard = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, on_signal, sig)
            except (NotImplementedError, RuntimeError):  # not the main thread, or not Unix
                pass
        log.info("program.start", extra={"fields": {"handlers": [
            {"kind": h.kind, "subject": h.subject, "queue": h.queue, "durable": h.durable,
             "concurrency": h.concurrency} for h in handlers]}})
        runners: list[_Runner] = []
        try:
            service_client = None
            for h in handlers:
                if args_concurrency := getattr(args, "concurrency", None):
                    if h.kind == "consumer":
                        h.concurrency = args_concurrency
                if h.kind == "consumer":
                    client = await self._connect(args, f"{self.name}:{command}:{h.fn.__name__}")
                else:
                    if service_client is None:
                        service_client = await self._connect(args, f"{self.name}:{command}:services")
                    client = service_client
                ctx = Context(self, command, client, args, log)
                r = _Runner(h, client, ctx, log)
                await r.start()
                runners.append(r)
                self.running[h.fn.__name__] = h
            log.info("program.ready", extra={"fields": {}})
            await self._stop.wait()
            log.info("program.draining", extra={"fields": {
                "in_flight": sum(r.h.stats.in_flight for r in runners)}})
            drain = asyncio.gather(*(r.drain(args.drain_timeout) for r in runners))
            hard_wait = loop.create_task(hard.wait())
            # the drain bounds its own taking of work by --drain-timeout, then waits for the running
            # handlers; only a second signal stops waiting for them
            done, _ = await asyncio.wait([drain, hard_wait], return_when=asyncio.FIRST_COMPLETED)
            hard_wait.cancel()
            if drain not in done:
                log.warning("program.drain_cut_short", extra={"fields": {}})
        finally:
            clients = {id(r.client): r.client for r in runners}
            for c in clients.values():
                try:
                    await c.drain(timeout=5.0) if not c.is_closed else None
                except Exception:
                    await c.close()
            log.info("program.stop", extra={"fields": {r.h.fn.__name__: r.h.stats.__dict__ for r in runners}})
        return 0

    async def _run_plain(self, h: _Handler, args: argparse.Namespace, log: logging.LoggerAdapter) -> int:
        ctx = Context(self, h.command, None, args, log)
        log.info("command.start", extra={"fields": {"argv": getattr(args, "argv", [])}})
        try:
            r = h.call(ctx)
            if inspect.isawaitable(r):
                r = await r
        except Exception as e:
            log.error("command.failed", exc_info=True, extra={"fields": {"error": str(e)}})
            return 1
        finally:
            if ctx._client is not None:
                await ctx._client.drain(timeout=10.0)
        log.info("command.done", extra={"fields": {}})
        return int(r or 0) if isinstance(r, (int, bool)) or r is None else 0


class _Runner:
    """Runs one consumer or service: a subscription, N slots, the take loop."""

    def __init__(self, h: _Handler, client: Client, ctx: Context, log: logging.LoggerAdapter) -> None:
        self.h = h
        self.client = client
        self.ctx = ctx
        self.log = log
        self.sub: Subscription | None = None
        self.tasks: set[asyncio.Task] = set()
        self.loop_task: asyncio.Task | None = None
        self.stopping = False
        self.is_coro = inspect.iscoroutinefunction(h.fn)

    async def start(self) -> None:
        h = self.h
        if h.durable is not None:
            self.sub = await self.client.subscribe(h.subject, durable=h.durable, max_inflight=h.concurrency,  # type: ignore[arg-type]
                                                   deliver=h.deliver)
            self.log.info(f"{h.kind}.start", extra={"fields": {
                "handler": h.fn.__name__, "subject": h.subject, "durable": h.durable, "concurrency": h.concurrency,
                "progress_interval": h.progress_interval}})
        else:
            prefetch = h.prefetch or h.concurrency
            self.sub = await self.client.subscribe(h.subject, h.queue, pending_msgs_limit=prefetch)  # type: ignore[arg-type]
            self.log.info(f"{h.kind}.start", extra={"fields": {
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
        if self.is_coro:
            return await self.h.call(msg, self.ctx)
        result = await asyncio.to_thread(self.h.call, msg, self.ctx)
        if inspect.isawaitable(result):
            result = await result
        return result

    async def _run_one(self, msg: Msg, slots: asyncio.Semaphore) -> None:
        h, st = self.h, self.h.stats
        t0 = time.perf_counter()
        durable = h.durable is not None and msg.delivery_id is not None
        ticker = asyncio.get_running_loop().create_task(self._keep_alive(msg)) if durable else None
        try:
            try:
                result = await self._call(msg)
            finally:
                if ticker is not None:
                    ticker.cancel()
            if h.kind == "service" and msg.reply_to:
                await msg.respond(_encode(result))
            st.done += 1
            if durable and not msg.settled:
                self._count_settled(msg, await msg.ack(), "acked")
        except asyncio.CancelledError:
            st.failed += 1
            raise
        except Terminate as e:
            st.failed += 1
            self.log.warning("message.terminated", extra={"fields": {
                "handler": h.fn.__name__, "subject": msg.subject, "delivery_id": msg.delivery_id,
                "attempt": msg.attempt, "reason": str(e)}})
            if durable and not msg.settled:
                self._count_settled(msg, await msg.term(str(e) or None), "terminated")
        except Exception as e:
            st.failed += 1
            self.log.error("message.failed", exc_info=True, extra={"fields": {
                "handler": h.fn.__name__, "subject": msg.subject, "error": f"{type(e).__name__}: {e}",
                **({"delivery_id": msg.delivery_id, "attempt": msg.attempt} if durable else {})}})
            if durable and not msg.settled:
                self._count_settled(msg, await msg.nak(self._retry_delay(msg)), "nakked")
            if h.kind == "service" and msg.reply_to:
                try:
                    await msg.respond(b"", headers={"error": f"{type(e).__name__}: {e}"[:4000].replace("\n", " ")})
                except E.BusgateError:
                    pass
        finally:
            st.in_flight -= 1
            slots.release()
            if self.log.isEnabledFor(logging.DEBUG):
                self.log.debug("message.done", extra={"fields": {
                    "handler": h.fn.__name__, "subject": msg.subject, "ms": round((time.perf_counter() - t0) * 1000, 3)}})

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
