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

Triggered commands
    ``@program.command(trigger="models.train")`` is a plain command that can also be started by a
    message. ``python -m myprogram train`` runs it once and exits with its exit code (a Kubernetes
    CronJob); ``python -m myprogram train --listen`` stays connected, subscribes to the trigger
    subject and runs the command once per trigger message, one run at a time (a trigger that arrives
    while a run is under way waits its turn, in order). The trigger is ``ctx.trigger`` (a
    :class:`Msg`; None when run once). A run that raises, or returns a non-zero int (its exit code),
    failed. When the trigger is a request, the reply is ``{"ok": true, "result": <the return value,
    or null when it is not JSON-serialisable>}``, or, when the run failed, empty with the header
    ``error`` as services do. ``queue=`` puts the listeners in a queue group (one of them runs each
    trigger); ``durable="NAME"`` takes the triggers from a durable consumer instead (at least once:
    ACK when the run succeeds, NAK when it fails, PROGRESS while it runs). SIGTERM drains as for
    consumers: the running run finishes. ``--listen`` on a command without a trigger is a usage
    error (exit 2).

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

Connecting
    A command that runs until stopped (consumers, services, ``--listen``) retries its first
    connection until it succeeds (``client.connect_failed`` with the attempt and the error, backoff
    up to 5 s; a rejected token is final), and the client reconnects on its own afterwards, so the
    program can start before the gateway and outlive a gateway restart. SIGTERM while connecting
    exits 0.

Health and metrics
    ``--http HOST:PORT`` (default: $BUSGATE_PROGRAM_HTTP; unset: none) serves, on the program's own
    event loop (so a wedged loop fails the probes), ``GET /healthz`` (200 ``ok``), ``GET /readyz``
    (200 ``ready`` when every connection of the command is connected and every subscription is
    live; 503 with the reason, ``starting``, ``connecting``, ``reconnecting``, ``subscribing
    SUBJECT`` or ``draining``, otherwise) and ``GET /metrics`` (Prometheus text format; the series
    are listed in :mod:`busgate.program_metrics`). Port 0 picks a free port; the address is logged
    as ``program.http`` with ``address``. A plain command serves while it runs. The metrics need
    ``prometheus_client`` (``pip install 'busgate[program]'``); without it ``--http`` exits 2.
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
from typing import Any, Callable

from . import __version__
from . import errors as E
from .client import Client, connect
from .program_http import HealthServer, parse_address
from .program_metrics import MetricsUnavailable, ProgramMetrics
from .program_runner import CommandFailed, ConsumerStats, Context, Terminate, _exit_code, _Handler, _Runner

__all__ = ["Program", "Context", "ConsumerStats", "JsonFormatter", "Terminate", "CommandFailed"]


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
        # the running command: starting, connecting, running, draining, stopped (see readiness())
        self._phase = "idle"
        self._clients: list[Client] = []
        self._runners: list[_Runner] = []
        self._runs: dict[str, int] | None = None  # runs of a plain or triggered command, by outcome
        self.metrics: ProgramMetrics | None = None  # with --http

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

    def command(self, name: str | None = None, *, trigger: str | None = None, queue: str | None = None,
                durable: str | None = None, progress_interval: float = 10.0) -> Callable:
        """A plain one-shot command: ``def train(ctx)`` or ``async def train(ctx)``; ``ctx.args.argv``
        holds the arguments after the command name. Its return value is the exit code (None: 0).

        With ``trigger=SUBJECT`` the command can also run once per message on SUBJECT with
        ``--listen`` (see "Triggered commands" in the module doc); ``durable=NAME`` takes the triggers
        from that durable consumer, ``queue=`` shares them among the listeners of a queue group."""
        if trigger is None and (queue is not None or durable is not None):
            raise ValueError("queue and durable need trigger=")
        if progress_interval <= 0:
            raise ValueError("progress_interval must be positive")

        def deco(fn: Callable) -> Callable:
            self.handlers.append(_Handler("command", fn, name or fn.__name__, trigger,
                                          None if durable else queue, 1, None, durable, None, progress_interval))
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
        common.add_argument("--http", type=parse_address, default=os.environ.get("BUSGATE_PROGRAM_HTTP") or None,
                            metavar="HOST:PORT", help="serve /healthz, /readyz and /metrics there (port 0: any "
                            "free port; default: $BUSGATE_PROGRAM_HTTP, unset: no server)")
        common.add_argument("--listen", action="store_true",
                            help="a command with a trigger: stay connected and run once per trigger message")
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
        parser = self.parser()
        args = parser.parse_args(argv)
        if args.listen and not self._trigger_of(args.command):
            parser.error(f"--listen: the command {args.command!r} has no trigger")
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

    def _trigger_of(self, command: str) -> _Handler | None:
        """The command's plain handler when it has a trigger."""
        for h in self.commands.get(command, []):
            if h.kind == "command":
                return h if h.subject is not None else None
        return None

    # ------------------------------------------------------------------ health
    def readiness(self) -> tuple[bool, str]:
        """(ready, reason) of the running command: what ``GET /readyz`` answers."""
        if self._phase != "running":
            return False, self._phase
        for c in self._clients:
            if c.is_closed:
                return False, "closed"
            if not c.is_connected:
                return False, "reconnecting"
        for r in self._runners:
            if not r.live():
                return False, f"subscribing {r.h.subject}"
        return True, "ready"

    def _all_connected(self) -> bool:
        return bool(self._clients) and all(c.is_connected for c in self._clients)

    async def _start_http(self, args: argparse.Namespace, command: str, active: list[_Handler],
                          log: logging.LoggerAdapter) -> HealthServer | int | None:
        """The --http server (None without --http), or an exit code when it cannot start."""
        http = getattr(args, "http", None)
        if http is None:
            return None
        host, port = parse_address(http) if isinstance(http, str) else http
        try:
            self.metrics = ProgramMetrics(
                self.name, command, __version__,
                handlers=lambda: [(h.fn.__name__, h.stats) for h in active],
                runs=lambda: self._runs, ready=lambda: self.readiness()[0], connected=self._all_connected)
        except MetricsUnavailable as e:
            print(f"python -m {self.name}: error: {e}", file=sys.stderr)
            return 2
        server = HealthServer(host, port, self.readiness, self.metrics.exposition)
        try:
            address = await server.start()
        except OSError as e:
            log.error("program.http_failed", extra={"fields": {"address": f"{host}:{port}", "error": str(e)}})
            return 1
        log.info("program.http", extra={"fields": {"address": address}})
        return server

    # ------------------------------------------------------------------ running
    async def run(self, args: argparse.Namespace) -> int:
        command = args.command
        handlers = self.commands[command]
        log = self._adapter(command)
        plain = [h for h in handlers if h.kind == "command"]
        listen = bool(getattr(args, "listen", False))
        if listen and self._trigger_of(command) is None:
            print(f"python -m {self.name}: error: --listen: the command {command!r} has no trigger", file=sys.stderr)
            return 2
        self._phase = "starting"
        self._clients = []
        self._runners = []
        self._runs = {"ok": 0, "failed": 0} if plain else None
        active = plain[:1] if listen else [] if plain else handlers
        server = await self._start_http(args, command, active, log)
        if isinstance(server, int):
            return server
        try:
            if plain and not listen:
                return await self._run_plain(plain[0], args, log, threaded=server is not None)
            return await self._run_handlers(args, command, active, log)
        finally:
            self._phase = "stopped"
            if server is not None:
                await server.close()

    async def _connect_retrying(self, args: argparse.Namespace, name: str, log: logging.LoggerAdapter) -> Client | None:
        """Connect, retrying until it succeeds; None when the program was stopped meanwhile."""
        assert self._stop is not None
        delay, attempt = 0.1, 0
        stop = asyncio.ensure_future(self._stop.wait())
        try:
            while True:
                attempt += 1
                conn = asyncio.ensure_future(self._connect(args, name))
                await asyncio.wait([conn, stop], return_when=asyncio.FIRST_COMPLETED)
                if not conn.done():
                    conn.cancel()
                    await asyncio.gather(conn, return_exceptions=True)
                    return None
                try:
                    return conn.result()
                except (E.AuthError, E.UnsupportedVersion, E.InvalidURL):
                    raise
                except (OSError, asyncio.TimeoutError, E.BusgateError) as e:
                    log.warning("client.connect_failed", extra={"fields": {
                        "attempt": attempt, "error": str(e) or type(e).__name__, "retry_in": delay}})
                await asyncio.wait([stop], timeout=delay)
                if stop.done():
                    return None
                delay = min(delay * 2, 5.0)
        finally:
            stop.cancel()

    async def _run_handlers(self, args: argparse.Namespace, command: str, handlers: list[_Handler],
                            log: logging.LoggerAdapter) -> int:
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
            {"kind": "trigger" if h.kind == "command" else h.kind, "subject": h.subject, "queue": h.queue,
             "durable": h.durable, "concurrency": h.concurrency} for h in handlers]}})
        runners = self._runners
        self._phase = "connecting"
        try:
            service_client = None
            for h in handlers:
                if args_concurrency := getattr(args, "concurrency", None):
                    if h.kind == "consumer":
                        h.concurrency = args_concurrency
                if h.kind == "consumer":
                    client = await self._connect_retrying(args, f"{self.name}:{command}:{h.fn.__name__}", log)
                elif service_client is None:
                    client = service_client = await self._connect_retrying(
                        args, f"{self.name}:{command}:services", log)
                else:
                    client = service_client
                if client is None:
                    break  # stopped while connecting
                if client not in self._clients:
                    self._clients.append(client)
                ctx = Context(self, command, client, args, log)
                r = _Runner(h, client, ctx, log, self.metrics, self._runs if h.kind == "command" else None)
                await r.start()
                runners.append(r)
                self.running[h.fn.__name__] = h
            if not self._stop.is_set():
                self._phase = "running"
                log.info("program.ready", extra={"fields": {}})
                await self._stop.wait()
            self._phase = "draining"
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
            self._phase = "draining"
            for c in self._clients:
                try:
                    await c.drain(timeout=5.0) if not c.is_closed else None
                except Exception:
                    await c.close()
            log.info("program.stop", extra={"fields": {r.h.fn.__name__: r.h.stats.__dict__ for r in runners}})
        return 0

    async def _run_plain(self, h: _Handler, args: argparse.Namespace, log: logging.LoggerAdapter,
                         threaded: bool = False) -> int:
        """Run a plain command once. ``threaded``: a plain function runs in a worker thread, so the
        event loop keeps answering /healthz meanwhile."""
        ctx = Context(self, h.command, None, args, log)
        log.info("command.start", extra={"fields": {"argv": getattr(args, "argv", [])}})
        self._phase = "running"
        runs = self._runs if self._runs is not None else {"ok": 0, "failed": 0}
        try:
            if threaded and not inspect.iscoroutinefunction(h.fn):
                r = await asyncio.to_thread(h.call, ctx)
            else:
                r = h.call(ctx)
            if inspect.isawaitable(r):
                r = await r
        except Exception as e:
            runs["failed"] += 1
            log.error("command.failed", exc_info=True, extra={"fields": {"error": str(e)}})
            return 1
        finally:
            self._phase = "draining"
            if ctx._client is not None:
                await ctx._client.drain(timeout=10.0)
        code = _exit_code(r)
        runs["ok" if code == 0 else "failed"] += 1
        log.info("command.done", extra={"fields": {"exit_code": code}})
        return code
