"""busgate-cli: publish, subscribe, request and reply from a shell, like the nats CLI.

    busgate-cli --url busgate://127.0.0.1:7422 --token dev-token pub orders.created '{"id": 1}'
    busgate-cli sub 'orders.>' --count 10
    busgate-cli req svc.echo ping --timeout 2
    busgate-cli reply svc.echo --echo
    busgate-cli pub jobs.score '{"id": 7}' --ack --msg-id job-7       # stored once on a stream subject
    busgate-cli sub jobs.score --durable scorers --count 10            # prints and acknowledges
    busgate-cli context add dev --url busgate://127.0.0.1:7422 --token dev-token --select
    busgate-cli bench bench.demo --msgs 20000 --size 128 --requests 1000
    busgate-cli --version

The gateway URL and token come from ``--url``/``--token``, else $BUSGATE_URL/$BUSGATE_TOKEN, else
the context in use (``--context NAME``, else $BUSGATE_CONTEXT, else the selected one; see
:mod:`busgate.cli_context`), else busgate://127.0.0.1:7422 without a token.
DATA ``-`` reads standard input. ``sub``/``req``/``reply`` print one JSON object per message with
``--json``. Status lines ("Subscribed to ...", "Listening on ...") go to standard error once the
gateway has confirmed the subscription, so scripts can wait for them.

Errors are printed once, on standard error, as ``busgate-cli: NAME (code): message`` (no
``(code)`` for errors without a protocol code, such as NO_SERVERS or SERVICE_ERROR), and nothing
misleading goes to standard output. Exit codes (:mod:`busgate.cli_exit`):

    0    success
    1    any other busgate error (INVALID_SUBJECT, NOT_STORED when a stream could not store a
         ``pub --ack``, ...)
    2    usage: bad arguments, an unknown context, a context's token variable not set
    3    NO_RESPONDERS (500): nobody serves the request subject
    4    timeout: REQUEST_TIMEOUT (501), or the client's own timer
    5    auth: AUTH_FAILED (201), AUTH_REVOKED (202), AUTH_METHOD_UNSUPPORTED (200)
    6    PERMISSION_DENIED (306)
    7    SERVICE_ERROR: the reply carried an ``error`` header (the service's handler raised; a
         busgate.program service replies with an empty body and ``error: <Type>: <message>``)
    8    connection: the gateway could not be reached, or the connection was lost mid-call
    130  interrupted (SIGINT); 143 for SIGTERM
    141  standard output was closed by its reader (``| head -1``); nothing is printed

An error not tied to a call (an ERR for a ``pub`` without ``--ack``, found by the flush that ends
``pub``) sets the exit code the same way. ``sub --durable NAME`` reads the durable consumer NAME
(docs/protocol.md section 16) and prints each delivery with its delivery id and attempt, then
settles it: ``--ack`` (the default), ``--nak`` (redeliver, after ``--delay`` seconds or the
consumer's backoff), ``--term`` (dead-letter it, with ``--reason``), or ``--no-ack`` (hold it: a
peek; what is held is released when the command exits, and at most ``--max-inflight`` deliveries,
default 1, are held).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from typing import Any

from . import cli_bench, cli_context
from . import cli_exit as X
from .client import DEFAULT_URL, Client, Msg, connect


def version() -> str:
    try:
        from importlib.metadata import version as _v
        return _v("busgate")
    except Exception:  # not installed: the source tree
        from . import __version__
        return __version__


def _data(arg: str | None) -> bytes:
    if arg is None:
        return b""
    if arg == "-":
        return sys.stdin.buffer.read()
    return arg.encode("utf-8")


def _headers(items: list[str] | None) -> dict[str, str] | None:
    if not items:
        return None
    out = {}
    for it in items:
        k, sep, v = it.partition("=")
        if not sep:
            raise X.UsageError(f"--header wants KEY=VALUE, got {it!r}")
        out[k] = v
    return out


def _show(msg: Msg, n: int, as_json: bool, raw: bool) -> None:
    if as_json:
        try:
            data: Any = msg.data.decode("utf-8")
        except UnicodeDecodeError:
            import base64
            data = {"base64": base64.b64encode(msg.data).decode()}
        out = {"subject": msg.subject, "data": data, "headers": msg.headers, "reply_to": msg.reply_to}
        if msg.delivery_id is not None:
            out.update(delivery_id=msg.delivery_id, attempt=msg.attempt)
        print(json.dumps(out, ensure_ascii=False), flush=True)
    elif raw:
        sys.stdout.buffer.write(msg.data + b"\n")
        sys.stdout.flush()
    else:
        print(f'[#{n}] Received on "{msg.subject}"' + (f' with reply "{msg.reply_to}"' if msg.reply_to else "")
              + (f" (delivery {msg.delivery_id}, attempt {msg.attempt})" if msg.delivery_id is not None else ""))
        for k, v in (msg.headers or {}).items():
            print(f"{k}: {v}")
        print()
        print(msg.data.decode("utf-8", "replace"))
        print(flush=True)


def _status(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


class _Signals:
    """SIGINT and SIGTERM stop a long-running command (sub, reply) instead of killing it; installed
    before the status line, so a script may signal as soon as it has read it."""

    def __init__(self) -> None:
        self.got: list[int] = []
        self.stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, self._on, sig)
            except (NotImplementedError, RuntimeError):
                pass

    def _on(self, sig: int) -> None:
        self.got.append(sig)
        self.stop.set()

    async def until(self, work: "asyncio.Future[Any]") -> int:
        """Run ``work`` until it ends (0) or SIGINT (130) / SIGTERM (143) stops it."""
        stopper = asyncio.ensure_future(self.stop.wait())
        await asyncio.wait([work, stopper], return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        if not work.done():
            work.cancel()
            await asyncio.gather(work, return_exceptions=True)
            return X.TERMINATED if self.got and self.got[0] == signal.SIGTERM else X.INTERRUPTED
        work.result()
        return X.OK


async def _run(args: argparse.Namespace, url: str, token: str | None, reporter: X.Reporter) -> int:
    opts: dict[str, Any] = {"token": token, "name": args.name or f"busgate-cli {args.cmd}", "on_error": reporter}
    if args.ws_json:
        opts["ws_json"] = True
    if args.cmd == "bench":
        return await cli_bench.run(url, opts, args, reporter)
    code = X.OK
    headers = _headers(getattr(args, "header", None))  # a usage error before connecting
    async with connect(url, **opts) as bg:
        if args.cmd == "pub":
            data = _data(args.data)
            for i in range(args.count):
                await bg.publish(args.subject, data, headers, args.reply_to, ack=args.ack, msg_id=args.msg_id)
            await bg.flush()  # an ERR for one of the PUBs arrives before the PONG
            if reporter.first is None:
                _status(f"Published {args.count} message(s) of {len(data)} bytes to {args.subject!r}"
                        + (" (stored)" if args.ack else ""))
        elif args.cmd == "req":
            reply = await bg.request(args.subject, _data(args.data), args.timeout, headers)
            failed = X.service_error(args.subject, reply.headers)
            if failed is not None:
                raise failed
            _show(reply, 1, args.json, args.raw or not args.json)
        elif args.cmd == "sub":
            code = await _sub(bg, args, _Signals())
        elif args.cmd == "reply":
            code = await _reply(bg, args, headers, _Signals())
    return code


async def _sub(bg: Client, args: argparse.Namespace, signals: _Signals) -> int:
    if args.durable is None:
        sub = await bg.subscribe(args.subject, args.queue)
        _status(f"Subscribed to {args.subject!r}" + (f" in queue {args.queue!r}" if args.queue else ""))
    else:
        sub = await bg.subscribe(args.subject, durable=args.durable, max_inflight=args.max_inflight,
                                 deliver=args.deliver)
        _status(f"Subscribed to {args.subject!r} as durable {args.durable!r}")

    async def work() -> None:
        n = 0
        async for msg in sub:
            n += 1
            _show(msg, n, args.json, args.raw)
            if msg.delivery_id is not None:
                if args.settle == "ack":
                    await msg.ack()
                elif args.settle == "nak":
                    await msg.nak(args.delay)
                elif args.settle == "term":
                    await msg.term(args.reason)
            if args.count and n >= args.count:
                await bg.flush()
                return

    return await signals.until(asyncio.ensure_future(work()))


async def _reply(bg: Client, args: argparse.Namespace, headers: dict[str, str] | None, signals: _Signals) -> int:
    sub = await bg.subscribe(args.subject, args.queue)
    fixed = _data(args.response) if args.response is not None else None
    _status(f"Listening on {args.subject!r}" + (f" in queue {args.queue!r}" if args.queue else ""))

    async def work() -> None:
        n = 0
        async for msg in sub:
            n += 1
            if args.json or args.verbose:
                _show(msg, n, args.json, False)
            if msg.reply_to:
                await msg.respond(msg.data if fixed is None else fixed, headers)
            if args.count and n >= args.count:
                await bg.flush()
                return

    return await signals.until(asyncio.ensure_future(work()))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="busgate-cli", description="Publish, subscribe, request and reply on a busgate gateway.",
                                epilog=X.epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"busgate-cli {version()}")
    p.add_argument("--url", default=None,
                   help="gateway URL: busgate://, busgate+tls://, ws://, wss:// "
                        f"(default $BUSGATE_URL, else the context's, else {DEFAULT_URL})")
    p.add_argument("--token", default=None, help="tenant token (default $BUSGATE_TOKEN, else the context's)")
    p.add_argument("--context", default=None, metavar="NAME",
                   help="use the context NAME (default $BUSGATE_CONTEXT, else the selected one)")
    p.add_argument("--name", default=None, help="client name shown by the gateway")
    p.add_argument("--ws-json", action="store_true", help="on ws:// URLs, use the busgate.v1.json subprotocol")
    sp = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    pub = sp.add_parser("pub", help="publish a message")
    pub.add_argument("subject")
    pub.add_argument("data", nargs="?", default="", help="payload ('-' reads stdin)")
    pub.add_argument("-H", "--header", action="append", help="KEY=VALUE, repeatable")
    pub.add_argument("--reply-to", default=None)
    pub.add_argument("--count", type=int, default=1, help="publish it this many times")
    pub.add_argument("--ack", action="store_true",
                     help="wait for the gateway's OK for each message (on a stream subject: once it is stored)")
    pub.add_argument("--msg-id", default=None, help="idempotency key: a stream stores one message per key")

    sub = sp.add_parser("sub", help="subscribe and print messages")
    sub.add_argument("subject")
    sub.add_argument("--queue", default=None)
    sub.add_argument("--count", type=int, default=0, help="exit after this many messages (0: never)")
    sub.add_argument("--json", action="store_true", help="one JSON object per message")
    sub.add_argument("--raw", action="store_true", help="print only the payloads")
    sub.add_argument("--durable", default=None, metavar="NAME", help="read the durable consumer NAME")
    settle = sub.add_mutually_exclusive_group()
    settle.add_argument("--ack", dest="settle", action="store_const", const="ack",
                        help="acknowledge each delivery after printing it (the default)")
    settle.add_argument("--no-ack", dest="settle", action="store_const", const="none",
                        help="do not settle: a peek; held deliveries are released when the command exits")
    settle.add_argument("--nak", dest="settle", action="store_const", const="nak",
                        help="NAK each delivery: it is redelivered (after --delay, else the consumer's backoff)")
    settle.add_argument("--term", dest="settle", action="store_const", const="term",
                        help="TERM each delivery: it is dead-lettered (with --reason)")
    sub.set_defaults(settle="ack")
    sub.add_argument("--delay", type=float, default=None, help="with --nak: seconds before the redelivery")
    sub.add_argument("--reason", default=None, help="with --term: the reason copied into the dead letter")
    sub.add_argument("--max-inflight", type=int, default=None,
                     help="deliveries held at once (default 1)")
    sub.add_argument("--deliver", choices=("all", "new"), default=None,
                     help="where a consumer this creates starts (default all)")

    req = sp.add_parser("req", help="send a request and print the reply")
    req.add_argument("subject")
    req.add_argument("data", nargs="?", default="", help="payload ('-' reads stdin)")
    req.add_argument("-H", "--header", action="append", help="KEY=VALUE, repeatable")
    req.add_argument("--timeout", type=float, default=None, help="seconds (default: the gateway's)")
    req.add_argument("--json", action="store_true", help="print the reply as a JSON object")
    req.add_argument("--raw", action="store_true", help="print only the payload (the default)")

    rep = sp.add_parser("reply", help="answer requests: echo them, or send a fixed response")
    rep.add_argument("subject")
    rep.add_argument("response", nargs="?", default=None, help="fixed response (default: echo the request)")
    rep.add_argument("--echo", action="store_true", help="echo the request (the default without RESPONSE)")
    rep.add_argument("--queue", default=None)
    rep.add_argument("-H", "--header", action="append", help="KEY=VALUE on every reply, repeatable")
    rep.add_argument("--count", type=int, default=0, help="exit after this many requests (0: never)")
    rep.add_argument("--json", action="store_true", help="print each request as a JSON object")
    rep.add_argument("-v", "--verbose", action="store_true", help="print each request")

    cli_bench.add_parser(sp)
    cli_context.add_parser(sp)
    return p


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if args.cmd == "sub" and args.durable is None and (
            args.settle != "ack" or args.max_inflight is not None or args.deliver is not None):
        p.error("--no-ack, --nak, --term, --max-inflight and --deliver need --durable")
    if args.cmd == "bench":
        cli_bench.check(p, args)
    reporter = X.Reporter()
    raised: BaseException | None = None
    code = X.OK
    try:
        if args.cmd == "context":
            return cli_context.run(args)
        url, token = cli_context.resolve(args, DEFAULT_URL)
        code = asyncio.run(_run(args, url, token, reporter))
    except KeyboardInterrupt:
        return X.INTERRUPTED
    except BrokenPipeError:  # the reader of stdout went away (| head -1): stop quietly, like SIGPIPE
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return X.BROKEN_PIPE
    except Exception as e:  # busgate errors, ServiceError, UsageError, OSError, ...: one line each
        raised = e
    final = reporter.finish(raised)
    return final if final != X.OK else code


if __name__ == "__main__":
    sys.exit(main())
