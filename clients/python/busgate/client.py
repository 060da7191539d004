"""The asyncio client: ``busgate.connect(url, token=...)`` returns a :class:`Client`.

Structure: a :class:`Client` owns the user-visible state (subscriptions, the reconnect buffer, the
server pool, callbacks) and at most one *current* :class:`_Connection` (the transport plus the
per-connection protocol state: request ids, ack ids, PONG waiters, heartbeats). After a GOAWAY the
old connection is kept as a *retiring* one until its in-flight requests are answered, while new work
goes to the new current connection (docs/protocol.md section 14).
"""
from __future__ import annotations

import asyncio
import inspect
import logging
import os
import random
import ssl
from collections import deque
from typing import Any, AsyncIterator, Awaitable, Callable, Iterable, Union

from . import errors as E
from . import protocol as P
from ._transport import ServerURL, TcpTransport, Transport, WebSocketTransport, parse_url

__all__ = ["connect", "Client", "Subscription", "Msg", "DEFAULT_URL"]

log = logging.getLogger("busgate")

DEFAULT_URL = "busgate://127.0.0.1:7422"
VERSION = "0.1.0"
INBOX = "_INBOX."
MAX_REPLY_ROUTES = 4096
Data = Union[bytes, bytearray, memoryview, str]
Callback = Callable[..., Any]


def _fail(fut: asyncio.Future, exc: BaseException) -> None:
    """Fail a future that may have no awaiter any more, without 'exception was never retrieved'."""
    if not fut.done():
        fut.set_exception(exc)
        fut.add_done_callback(lambda f: f.cancelled() or f.exception())


def _payload(data: Data | None) -> bytes:
    if data is None:
        return b""
    if type(data) is bytes:
        return data
    if isinstance(data, str):
        return data.encode("utf-8")
    if isinstance(data, (bytearray, memoryview)):
        return bytes(data)
    raise TypeError(f"data must be bytes or str, not {type(data).__name__}")


class Msg:
    """A message received on a subscription, or the reply to a request.

    ``subject``, ``data`` (bytes), ``headers`` (dict or None), ``reply_to`` (str or None),
    ``sid``. ``tenant`` is the publishing tenant (the gateway-set ``busgate-tenant`` header, which
    clients cannot forge). ``await msg.respond(data)`` answers a request.

    A delivery of a durable subscription (``subscribe(..., durable=NAME)``) also has
    ``delivery_id`` and ``attempt`` (1 for the first delivery, 2 for the first redelivery, ...) and
    is settled exactly once with ``await msg.ack()``, ``await msg.nak(delay=None)`` or
    ``await msg.term(reason=None)``; ``await msg.in_progress()`` restarts its ack wait while the work
    goes on. Each of them returns True when the frame was sent on the connection the delivery came
    from, and False when that connection (or the subscription on it) is gone: the gateway has then
    already released the delivery, it will be redelivered as the next attempt, and there is nothing
    left to acknowledge. Either way the delivery no longer counts against the subscription's
    ``max_inflight`` window once settled. Settling a delivery twice raises
    :class:`~busgate.errors.DeliverySettled`; these methods on a message that is not a durable
    delivery raise :class:`~busgate.errors.NotDurable`.
    """

    __slots__ = ("subject", "data", "headers", "reply_to", "sid", "delivery_id", "attempt", "_client", "_conn",
                 "_sub", "_settled")

    def __init__(self, subject: str, data: bytes, headers: dict[str, str] | None = None,
                 reply_to: str | None = None, sid: int = 0, client: "Client | None" = None,
                 conn: "_Connection | None" = None, delivery_id: int | None = None,
                 attempt: int | None = None) -> None:
        self.subject = subject
        self.data = data
        self.headers = headers
        self.reply_to = reply_to
        self.sid = sid
        self.delivery_id = delivery_id
        self.attempt = attempt
        self._client = client
        self._conn = conn
        self._sub: Subscription | None = None  # set for deliveries of a durable subscription
        self._settled = False

    @property
    def tenant(self) -> str | None:
        return self.headers.get("busgate-tenant") if self.headers else None

    @property
    def settled(self) -> bool:
        """Whether this delivery was acknowledged, nakked or terminated by this process."""
        return self._settled

    @property
    def stale(self) -> bool:
        """Whether the connection or subscription this delivery came on is gone (the gateway has
        released it for redelivery); settling it then sends nothing and returns False."""
        sub = self._sub
        return sub is None or not sub._live_on(self._conn)

    def text(self) -> str:
        return self.data.decode("utf-8")

    def json(self) -> Any:
        import json
        return json.loads(self.data)

    async def respond(self, data: Data = b"", headers: dict[str, str] | None = None) -> None:
        """Answer the request this message carries: one PUB to its ``reply_to``. A reply to a
        gateway inbox goes out on the connection the request arrived on (the gateway grants that
        connection one PUB to it, section 12.3)."""
        if not self.reply_to or self._client is None:
            raise E.ClientError("this message has no reply_to: there is nothing to respond to")
        await self._client.publish(self.reply_to, data, headers=headers)

    # -- durable deliveries (docs/protocol.md section 16.3)
    async def ack(self) -> bool:
        """The work is done: the message is not delivered again."""
        return self._send(P.Ack, True)

    async def nak(self, delay: float | None = None) -> bool:
        """The work failed: redeliver the message (as the next attempt) after ``delay`` seconds, or,
        with None, after the consumer's configured backoff for this attempt (none configured: at
        once). A delay rounds to whole milliseconds, at least 1."""
        delay_ms = None
        if delay is not None:
            if delay < 0:
                raise ValueError("delay must not be negative")
            delay_ms = max(1, int(round(delay * 1000)))
        return self._send(P.Nak, True, delay_ms)

    async def in_progress(self) -> bool:
        """Still working on it: restart the delivery's ack wait. Long jobs call it more often than the
        consumer's ``ack_wait_ms`` (the program runner does it for its handlers)."""
        return self._send(P.Progress, False)

    async def term(self, reason: str | None = None) -> bool:
        """Do not retry: the message goes to the consumer's dead-letter subject with
        ``busgate-dead-reason: terminated[: reason]``. ``reason`` is cut to 1024 bytes."""
        if reason is not None:
            b = str(reason).encode("utf-8")
            if len(b) > P.TERM_REASON_MAX:
                reason = b[:P.TERM_REASON_MAX].decode("utf-8", "ignore")
            reason = str(reason) or None
        return self._send(P.Term, True, reason)

    def _send(self, cls: type, final: bool, *extra: Any) -> bool:
        sub = self._sub
        if sub is None or self.delivery_id is None:
            raise E.NotDurable()
        if self._settled:
            raise E.DeliverySettled(f"delivery {self.delivery_id} on {self.subject!r} was already settled")
        conn = self._conn
        live = sub._live_on(conn)
        if live:
            conn.transport.send(cls(self.sid, self.delivery_id, *extra))  # type: ignore[union-attr]
        elif final:
            log.debug("busgate: delivery %s on %r came on a connection that is gone; the gateway released it",
                      self.delivery_id, self.subject)
        if final:
            self._settled = True
            sub._settle(self)
        return live

    def __repr__(self) -> str:
        d = self.data if len(self.data) <= 64 else self.data[:64] + b"..."
        extra = f" delivery_id={self.delivery_id} attempt={self.attempt}" if self.delivery_id is not None else ""
        return f"<Msg subject={self.subject!r} data={d!r} headers={self.headers!r} reply_to={self.reply_to!r}{extra}>"


class Subscription:
    """A live subscription. Async-iterable (``async for msg in sub``), or ``await sub.next(timeout)``;
    with ``cb=`` the client calls the callback for each message instead (one at a time, in order).

    Messages wait in a bounded local queue (``pending_msgs_limit`` messages, ``pending_bytes_limit``
    bytes). When it is full the client stops reading the connection at a frame boundary until the
    queue is half empty again: backpressure goes to the gateway, whose own outbound queue is bounded
    (``max_pending``); a consumer stalled long enough is disconnected by the gateway with
    SLOW_CONSUMER, and the client then reconnects and resubscribes (messages queued at the gateway
    for the old connection are lost: delivery is at most once).

    A durable subscription (``durable=NAME``, docs/protocol.md section 16) takes its messages from
    a consumer on the bus and holds at most ``max_inflight`` deliveries: the client grants the
    gateway a credit (CREDIT) for each free place in that window, and a place is freed when a
    delivery is settled (ack, nak, term). What it does not take stays stored on the bus.
    """

    def __init__(self, client: "Client", sid: int, subject: str, queue: str | None, cb: Callback | None,
                 pending_msgs_limit: int, pending_bytes_limit: int, durable: str | None = None,
                 opts: dict[str, Any] | None = None, max_inflight: int = 1) -> None:
        self._client = client
        self.sid = sid
        self.subject = subject
        self.queue = queue
        self.durable = durable
        self.opts = opts            # the SUB opts sent (durable subscriptions)
        self.max_inflight = max_inflight
        self._cb = cb
        self.pending_msgs_limit = max(1, pending_msgs_limit)
        self.pending_bytes_limit = max(1, pending_bytes_limit)
        self._q: deque[Msg] = deque()
        self._pending_bytes = 0
        self._waiter: asyncio.Future | None = None
        self._closed = False        # no more messages will be queued
        self._error: BaseException | None = None
        self._draining = False
        self._max_msgs = 0          # auto-unsubscribe after this many deliveries (0: none)
        self._delivered = 0
        self._task: asyncio.Task | None = None
        self._empty = asyncio.Event()  # set whenever the local queue is empty
        self._empty.set()
        self.delivered = 0          # messages received on this subscription
        self.max_pending_seen = 0   # the highest number of messages that waited in the local queue
        # durable: deliveries received and not settled (queued or taken), the connections the SUB was
        # sent on and not ended there (value: credits granted there and not used yet), those of them
        # whose OK arrived, and whether new credits may be granted
        self._unsettled: set[Msg] = set()
        self._credits: dict[_Connection, int] = {}
        self._ready: set[_Connection] = set()
        self._granting = True
        self._grant_handle: asyncio.Handle | None = None
        self._settled_event = asyncio.Event()  # set whenever nothing is unsettled
        self._settled_event.set()

    # -- state
    @property
    def pending_msgs(self) -> int:
        return len(self._q)

    @property
    def pending_bytes(self) -> int:
        return self._pending_bytes

    @property
    def closed(self) -> bool:
        return self._closed and not self._q

    @property
    def unsettled(self) -> int:
        """Durable: deliveries held (queued here or taken by the application) and not yet settled."""
        return len(self._unsettled)

    # -- durable bookkeeping
    def _live_on(self, conn: "_Connection | None") -> bool:
        """Whether the subscription is live on ``conn``: deliveries from it can still be settled."""
        return conn is not None and conn in self._credits and conn.state != "closed"

    def _held_on(self, conn: "_Connection") -> int:
        return sum(1 for m in self._unsettled if m._conn is conn)

    def _sent_sub(self, conn: "_Connection") -> None:
        """The SUB for this durable subscription was sent on ``conn``."""
        self._credits[conn] = 0
        self._ready.discard(conn)

    def _on_live(self, conn: "_Connection") -> None:
        """OK for the SUB on ``conn``: credits may be granted there."""
        if conn in self._credits:
            self._ready.add(conn)
            self._grant()

    def _conn_gone(self, conn: "_Connection") -> None:
        """The subscription ended on ``conn`` (UNSUB, or the connection closed): the gateway released
        every delivery it had there. Those still queued here are dropped (they come back as the next
        attempt); those the application has taken stay counted until it settles them."""
        self._credits.pop(conn, None)
        self._ready.discard(conn)
        dropped = [m for m in self._q if m._conn is conn]
        for m in dropped:
            self._q.remove(m)
            self._pending_bytes -= len(m.data)
            self._unsettled.discard(m)
        if dropped:
            if not self._q:
                self._empty.set()
            self._client._unblock(self)
            self._check_settled()
        self._schedule_grant()

    def _settle(self, msg: Msg) -> None:
        self._unsettled.discard(msg)
        if msg._conn is not None:
            msg._conn.changed.set()
        self._check_settled()
        self._schedule_grant()

    def _check_settled(self) -> None:
        if not self._unsettled:
            self._settled_event.set()

    def _schedule_grant(self) -> None:
        """Grant credits once per event-loop turn, however many deliveries were settled in it."""
        if self._grant_handle is None and self.durable is not None and not self._closed:
            self._grant_handle = asyncio.get_running_loop().call_soon(self._grant)

    def _grant(self) -> None:
        """CREDIT for the free part of the window, on the current connection, once its OK is in."""
        self._grant_handle = None
        if self._closed or not self._granting:
            return
        conn = self._client._conn
        if conn is None or conn not in self._ready or conn.state != "open":
            return
        free = self.max_inflight - len(self._unsettled) - sum(self._credits.values())
        if free > 0:
            self._credits[conn] += free
            conn.transport.send(P.Credit(self.sid, free))

    # -- from the client
    def _push(self, msg: Msg, conn: "_Connection") -> None:
        if self._closed:
            return
        if self.durable is not None:
            left = self._credits.get(conn)
            if left is None:
                return  # not (or no longer) subscribed there: the gateway released it
            if left > 0:
                self._credits[conn] = left - 1
            if msg.delivery_id is not None:
                msg._sub = self
                self._unsettled.add(msg)
                self._settled_event.clear()
            else:
                self._schedule_grant()  # (a durable MSG always has a delivery id; keep the window whole)
        q = self._q
        q.append(msg)
        n = len(q)
        if n == 1:
            self._empty.clear()  # (with more than one queued it is clear already)
        self._pending_bytes += len(msg.data)
        self.delivered += 1
        if n > self.max_pending_seen:
            self.max_pending_seen = n
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)
        if self._max_msgs:
            self._delivered += 1
            if self._delivered >= self._max_msgs:
                self._client._forget_sub(self)
                self._end(None)
                return
        if n >= self.pending_msgs_limit or self._pending_bytes >= self.pending_bytes_limit:
            self._client._block(self, conn)

    def _end(self, error: BaseException | None, discard: bool = False) -> None:
        """No more messages: the iterator ends once the queue is empty (at once with discard). A
        durable subscription's queued deliveries were released by the gateway: always discarded."""
        self._closed = True
        if error is not None and self._error is None:
            self._error = error
        if self.durable is not None:
            discard = True
            for m in self._q:
                self._unsettled.discard(m)
            self._credits.clear()
            self._ready.clear()
            self._check_settled()
            if self._grant_handle is not None:
                self._grant_handle.cancel()
                self._grant_handle = None
        if discard:
            self._q.clear()
            self._pending_bytes = 0
            self._empty.set()
        self._client._unblock(self)
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    def _take(self) -> Msg:
        msg = self._q.popleft()
        self._pending_bytes -= len(msg.data)
        if not self._q:
            self._empty.set()
        if self in self._client._blocked and len(self._q) <= self.pending_msgs_limit // 2 \
                and self._pending_bytes <= self.pending_bytes_limit // 2:
            self._client._unblock(self)
        return msg

    # -- consuming
    async def next(self, timeout: float | None = None) -> Msg:
        """The next message. Raises :class:`~busgate.errors.Timeout` after ``timeout`` seconds and
        :class:`~busgate.errors.SubscriptionClosed` once the subscription has ended and its queue is
        empty."""
        if self._q:
            return self._take()
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while not self._q:
            if self._closed:
                raise E.SubscriptionClosed(str(self._error) if self._error else "the subscription has ended")
            if self._waiter is None or self._waiter.done():
                self._waiter = loop.create_future()
            if deadline is None:
                await self._waiter
            else:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise E.Timeout(f"no message on {self.subject!r} within {timeout} s")
                try:
                    await asyncio.wait_for(asyncio.shield(self._waiter), remaining)
                except asyncio.TimeoutError:
                    raise E.Timeout(f"no message on {self.subject!r} within {timeout} s") from None
        return self._take()

    async def _wait(self) -> None:
        """Return once a message is queued or the subscription has ended (takes nothing)."""
        if self._q or self._closed:
            return
        if self._waiter is None or self._waiter.done():
            self._waiter = asyncio.get_running_loop().create_future()
        await self._waiter

    def __aiter__(self) -> AsyncIterator[Msg]:
        return self

    async def __anext__(self) -> Msg:
        try:
            return await self.next()
        except E.SubscriptionClosed:
            raise StopAsyncIteration from None

    async def unsubscribe(self, max_msgs: int = 0) -> None:
        """End the subscription now (messages still queued locally are discarded), or after
        ``max_msgs`` more messages in total. Ending a durable subscription releases its unsettled
        deliveries at the gateway (they are redelivered as the next attempt); the consumer and its
        stored messages remain. ``max_msgs`` is for plain subscriptions only."""
        if self._closed:
            return
        if max_msgs and self.durable is not None:
            raise E.ClientError("unsubscribe(max_msgs) is for plain subscriptions: a durable subscription that "
                                "ends releases its outstanding deliveries; count, settle, then unsubscribe()")
        if max_msgs and max_msgs > self._delivered:
            self._max_msgs = max_msgs
            self._client._send_unsub(self.sid, max_msgs - self._delivered)
            return
        self._client._forget_sub(self)
        self._client._send_unsub(self.sid, 0, self)
        self._end(None, discard=True)
        if self._task is not None and self._task is not asyncio.current_task():
            self._task.cancel()

    async def drain(self, timeout: float = 30.0) -> None:
        """Stop new messages (UNSUB), wait for those already sent by the gateway (PING/PONG barrier),
        and return once every queued message has been consumed (by the callback or the iterator).

        Durable: grant no more credits, wait (at most ``timeout``) until every delivery received is
        consumed and settled, then UNSUB; what arrives or is still unsettled by then is released by
        the gateway for redelivery."""
        if self.durable is not None:
            await self._drain_durable(timeout)
            return
        if self._closed and not self._q:
            await self._wait_idle(timeout)
            return
        self._draining = True
        self._client._send_unsub(self.sid, 0)
        try:
            await self._client.flush(timeout)
        except E.BusgateError:
            pass
        self._client._forget_sub(self)
        self._end(None)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            await asyncio.wait_for(self._empty.wait(), timeout)
        except asyncio.TimeoutError:
            pass
        await self._wait_idle(max(0.0, deadline - loop.time()))

    async def _drain_durable(self, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        if not self._closed:
            self._draining = True
            self._granting = False
            try:
                await asyncio.wait_for(self._settled_event.wait(), timeout)
            except asyncio.TimeoutError:
                pass
            if not self._closed:
                self._client._forget_sub(self)
                self._client._send_unsub(self.sid, 0, self)
                self._end(None)
        await self._wait_idle(max(0.0, deadline - loop.time()))

    async def _wait_idle(self, timeout: float) -> None:
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout)
            except (asyncio.TimeoutError, asyncio.CancelledError):
                pass

    # -- callback form
    def _start_dispatch(self) -> None:
        cb = self._cb
        assert cb is not None
        is_coro = inspect.iscoroutinefunction(cb)

        async def run() -> None:
            q = self._q
            blocked = self._client._blocked
            take = self._take
            isawaitable = inspect.isawaitable
            while True:
                if not q:
                    if self._closed:
                        return
                    await self._wait()
                    continue
                # deliver everything queued without a coroutine per message
                while q:
                    if blocked:
                        msg = take()
                    else:  # _take() inlined: nothing to unblock
                        msg = q.popleft()
                        self._pending_bytes -= len(msg.data)
                        if not q:
                            self._empty.set()
                    try:
                        if is_coro:
                            await cb(msg)
                        else:
                            r = cb(msg)
                            if r is not None and isawaitable(r):
                                await r
                    except asyncio.CancelledError:
                        raise
                    except Exception as e:  # the callback's own failure: report it, keep going
                        self._client._report(e)

        self._task = asyncio.get_running_loop().create_task(run())

    def __repr__(self) -> str:
        return f"<Subscription sid={self.sid} subject={self.subject!r} queue={self.queue!r} pending={len(self._q)}>"


class _Connection:
    """One transport connection and its protocol state."""

    def __init__(self, client: "Client", url: ServerURL) -> None:
        self.client = client
        self.url = url
        self.loop = asyncio.get_running_loop()
        self.transport: Transport = None  # type: ignore[assignment]
        self.welcome: P.Welcome | None = None
        self.state = "handshake"  # open, draining, closed
        self.handshake: asyncio.Future = self.loop.create_future()
        self.inflight: dict[int, tuple[asyncio.Future, str]] = {}
        self.acks: dict[int, asyncio.Future] = {}
        self.sub_oks: dict[int, asyncio.Future] = {}
        self.pongs: deque[asyncio.Future | None] = deque()
        self._next_req = 0
        self._next_ack = 0
        self.rx = False
        self.ping_out = False
        self.heartbeat_ms = 30000
        self.max_payload = 1 << 20
        self.request_timeout_ms = 5000
        self.max_timeout_ms = 60000
        self.close_error: E.BusgateError | None = None
        self.grants = 0  # _INBOX replies granted on this connection and not yet sent
        # sids whose subscribe() gave up (cancelled, timed out) before the SUB's answer: an OK that
        # arrives later is answered with UNSUB, and the sid is not reused until the answer is in
        self.abandoned: set[int] = set()
        self.changed = asyncio.Event()
        self.goaway_deadline: float | None = None
        self._hb_task: asyncio.Task | None = None
        self.closed = self.loop.create_future()

    # -- transport events
    def on_msg(self, sid: int, subject: str, payload: bytes, headers: dict[str, str] | None,
               reply_to: str | None, delivery_id: int | None = None, attempt: int | None = None) -> None:
        """A MSG frame, from the transport's fast path (fields, no frame object)."""
        self.rx = True
        client = self.client
        sub = client._subs.get(sid)
        if sub is None:
            return  # unknown sid: messages already queued when it was unsubscribed
        if reply_to is not None and reply_to.startswith(INBOX):
            client._grant_reply(reply_to, self)
        sub._push(Msg(subject, payload, headers, reply_to, sid, client, self, delivery_id, attempt), self)

    def on_frame(self, f: P.Frame) -> None:
        self.rx = True
        t = type(f)
        if t is P.Msg:
            self.client._on_msg(self, f)  # type: ignore[arg-type]
        elif t is P.Res:
            self._on_res(f)  # type: ignore[arg-type]
        elif t is P.Ok:
            self._on_ok(f)  # type: ignore[arg-type]
        elif t is P.Ping:
            self.transport.send(P.Pong())
        elif t is P.Pong:
            if self.pongs:
                w = self.pongs.popleft()
                if w is not None and not w.done():
                    w.set_result(None)
        elif t is P.Err:
            self._on_err(f)  # type: ignore[arg-type]
        elif t is P.Welcome:
            if not self.handshake.done():
                self.handshake.set_result(f)
        elif t is P.Goaway:
            self.client._on_goaway(self, f)  # type: ignore[arg-type]

    def on_transport_lost(self, exc: BaseException | None) -> None:
        if self.state == "closed":
            return
        prev = self.state
        self.state = "closed"
        err = self.close_error or (exc if isinstance(exc, E.BusgateError) else None) \
            or E.ConnectionLost(f"the connection to {self.url} was lost" + (f": {exc}" if exc else ""))
        _fail(self.handshake, err)
        if self._hb_task is not None:
            self._hb_task.cancel()
        for fut, _ in self.inflight.values():
            _fail(fut, err if isinstance(err, E.ShuttingDown) else E.ConnectionLost(str(err)))
        self.inflight.clear()
        for d in (self.acks, self.sub_oks):
            for fut in d.values():
                _fail(fut, E.ConnectionLost(str(err)))
            d.clear()
        while self.pongs:
            w = self.pongs.popleft()
            if w is not None:
                _fail(w, E.ConnectionLost(str(err)))
        self.changed.set()
        if not self.closed.done():
            self.closed.set_result(err)
        if prev != "handshake":
            self.client._on_conn_lost(self, err)

    # -- frames
    def _on_res(self, f: P.Res) -> None:
        entry = self.inflight.pop(f.req_id, None)
        if entry is None:
            return
        fut, subject = entry
        if not fut.done():
            if f.status == 0:
                fut.set_result(Msg(subject, f.payload, f.headers, None, 0, self.client, self))
            else:
                fut.set_exception(E.error_for(f.status, f.payload.decode("utf-8", "replace")))
        self.changed.set()

    def _on_ok(self, f: P.Ok) -> None:
        d = self.acks if f.ref_op == P.PUB else self.sub_oks if f.ref_op == P.SUB else None
        if d is not None:
            fut = d.pop(f.ref_id, None)
            if fut is not None and not fut.done():
                fut.set_result(None)
            if f.ref_op == P.SUB:
                if f.ref_id in self.abandoned:
                    # the subscribe() that sent it gave up: end the subscription it made
                    self.abandoned.discard(f.ref_id)
                    self.transport.send(P.Unsub(f.ref_id))
                else:
                    sub = self.client._subs.get(f.ref_id)
                    if sub is not None and sub.durable is not None:
                        sub._on_live(self)
            self.changed.set()

    def _on_err(self, f: P.Err) -> None:
        err = f.error()
        if err.fatal or f.ref_op is None and self.state == "handshake":
            self.close_error = err
            if not self.handshake.done():
                self.handshake.set_exception(err)
            if not (self.state == "draining" and isinstance(err, E.ShuttingDown)):
                self.client._report(err)  # (the end of a GOAWAY delay is expected, not an error)
            return
        if f.ref_op == P.PUB and f.ref_id:
            fut = self.acks.pop(f.ref_id, None)
            if fut is not None and not fut.done():
                fut.set_exception(err)
                self.changed.set()
                return
        if f.ref_op == P.SUB and f.ref_id:
            fut = self.sub_oks.pop(f.ref_id, None)
            if f.ref_id in self.abandoned:  # no subscription was made: nothing to end
                self.abandoned.discard(f.ref_id)
                if fut is not None and not fut.done():
                    _fail(fut, err)
                return
            if fut is not None and not fut.done():
                fut.set_exception(err)
                self.changed.set()
                return
            if isinstance(err, E.PermissionDenied):
                # the gateway ended a live subscription (a configuration reload no longer allows it as
                # it was made): it delivers nothing more and is not made again on a reconnect
                sub = self.client._subs.get(f.ref_id)
                if sub is not None:
                    self.client._forget_sub(sub)
                    sub._end(err)
        # not tied to a waiting call: a PUB without ack, SLOW_CONSUMER_WARNING, a delivery that was
        # too large for max_frame, UNKNOWN_OP, ...
        self.client._report(err)

    # -- ids
    def alloc_req_id(self) -> int:
        while True:
            self._next_req = self._next_req + 1 if self._next_req < P.UINT32_MAX else 1
            if self._next_req not in self.inflight:
                return self._next_req

    def alloc_ack(self) -> int:
        while True:
            self._next_ack = self._next_ack + 1 if self._next_ack < P.UINT32_MAX else 1
            if self._next_ack not in self.acks:
                return self._next_ack

    # -- after WELCOME
    def opened(self, w: P.Welcome) -> None:
        self.welcome = w
        lim = w.limits
        self.transport.max_frame = int(lim.get("max_frame", P.DEFAULT_MAX_FRAME))
        self.max_payload = int(lim.get("max_payload", self.max_payload))
        self.heartbeat_ms = int(lim.get("heartbeat_ms", self.heartbeat_ms)) or 30000
        self.request_timeout_ms = int(lim.get("request_timeout_ms", self.request_timeout_ms))
        self.max_timeout_ms = int(lim.get("max_timeout_ms", self.max_timeout_ms))
        self.state = "open"
        self._hb_task = self.loop.create_task(self._heartbeat())

    async def _heartbeat(self) -> None:
        """Section 13: after heartbeat_ms without receiving a frame, PING; after another heartbeat_ms
        without receiving anything, the gateway is gone: close (the client reconnects). While reading
        is paused for backpressure the silence is ours, so PING is sent every tick to keep the gateway
        from timing us out, and nothing is concluded."""
        interval = self.heartbeat_ms / 1000.0
        while self.state in ("open", "draining"):
            await asyncio.sleep(interval)
            if self.state not in ("open", "draining"):
                return
            if getattr(self.transport, "reading_paused", False):
                self.rx = False
                self.ping_out = False
                self.send_ping(None)
                continue
            if self.rx:
                self.rx = False
                self.ping_out = False
                continue
            if self.ping_out:
                log.warning("busgate: no frame from %s for 2 x %d ms; closing the connection", self.url,
                            self.heartbeat_ms)
                self.close_error = E.ConnectionLost(
                    f"the gateway at {self.url} sent nothing for 2 x heartbeat_ms ({self.heartbeat_ms} ms)")
                self.transport.abort()
                self.on_transport_lost(None)
                return
            self.ping_out = True
            self.send_ping(None)

    def send_ping(self, waiter: asyncio.Future | None) -> None:
        self.pongs.append(waiter)
        self.transport.send(P.Ping())

    @property
    def usable(self) -> bool:
        return self.state == "open"

    def close(self) -> None:
        if self.state != "closed":
            self.transport.close()


class _Buffered:
    __slots__ = ("subject", "payload", "headers", "reply_to", "ack", "msg_id")

    def __init__(self, subject: str, payload: bytes, headers: dict | None, reply_to: str | None,
                 ack: asyncio.Future | None, msg_id: str | None = None) -> None:
        self.subject = subject
        self.payload = payload
        self.headers = headers
        self.reply_to = reply_to
        self.ack = ack
        self.msg_id = msg_id


class Client:
    """A connection to a busgate gateway that survives reconnects. Create it with :func:`connect`."""

    def __init__(self, url: str | Iterable[str] = DEFAULT_URL, *, token: str | None = None, name: str | None = None,
                 tls: ssl.SSLContext | bool | None = None, servers: Iterable[str] = (), ws_json: bool = False,
                 connect_timeout: float = 5.0, reconnect: bool = True, max_reconnect_attempts: int = -1,
                 reconnect_wait: float = 0.05, reconnect_wait_max: float = 2.0,
                 reconnect_buffer_msgs: int = 65536, reconnect_buffer_bytes: int = 8 * 1024 * 1024,
                 pending_msgs_limit: int = 65536, pending_bytes_limit: int = 64 * 1024 * 1024,
                 heartbeat_ms: int | None = None, max_frame: int | None = None,
                 on_disconnect: Callback | None = None, on_reconnect: Callback | None = None,
                 on_error: Callback | None = None, on_goaway: Callback | None = None) -> None:
        urls = [url] if isinstance(url, str) else list(url)
        urls += [s for s in servers if s not in urls]
        if not urls:
            raise E.InvalidURL("no server URL given")
        self._pool: list[ServerURL] = [parse_url(u) for u in urls]
        self._token = token if token is not None else os.environ.get("BUSGATE_TOKEN", "")
        self._name = name
        if tls is True:
            tls = ssl.create_default_context()
        self._tls: ssl.SSLContext | None = tls or None
        if self._tls is not None:  # a TLS context given for busgate:// URLs means busgate+tls://
            self._pool = [ServerURL("busgate+tls", u.host, u.port) if u.scheme == "busgate" else
                          ServerURL("wss", u.host, u.port, u.path) if u.scheme == "ws" else u for u in self._pool]
        self._ws_json = ws_json
        self.connect_timeout = connect_timeout
        self.reconnect = reconnect
        self.max_reconnect_attempts = max_reconnect_attempts
        self.reconnect_wait = reconnect_wait
        self.reconnect_wait_max = reconnect_wait_max
        self.reconnect_buffer_msgs = reconnect_buffer_msgs
        self.reconnect_buffer_bytes = reconnect_buffer_bytes
        self.pending_msgs_limit = pending_msgs_limit
        self.pending_bytes_limit = pending_bytes_limit
        self._heartbeat_ms = heartbeat_ms
        self._max_frame = max_frame
        self._cb_disconnect = on_disconnect
        self._cb_reconnect = on_reconnect
        self._cb_error = on_error
        self._cb_goaway = on_goaway

        self._conn: _Connection | None = None
        self._retiring: set[_Connection] = set()
        self._subs: dict[int, Subscription] = {}
        self._next_sid = 0
        self._buffer: deque[_Buffered] = deque()
        self._buffer_bytes = 0
        self._routes: dict[str, _Connection] = {}
        self._blocked: set[Subscription] = set()
        self._paused: set[_Connection] = set()
        self._pub_ok: set[str] = set()
        self._connected = asyncio.Event()
        self._closed = False
        self._draining = False
        self._reconnect_task: asyncio.Task | None = None
        self._tasks: set[asyncio.Task] = set()
        self.reconnects = 0
        self.last_error: BaseException | None = None

    # ------------------------------------------------------------------ properties
    @property
    def is_connected(self) -> bool:
        return self._conn is not None and self._conn.usable

    @property
    def is_closed(self) -> bool:
        return self._closed

    @property
    def connected_url(self) -> str | None:
        return str(self._conn.url) if self._conn else None

    @property
    def welcome(self) -> P.Welcome | None:
        """The WELCOME of the current connection: ``session_id``, ``node_id``, ``tenant``, ``limits``."""
        return self._conn.welcome if self._conn else None

    @property
    def limits(self) -> dict[str, Any]:
        return dict(self._conn.welcome.limits) if self._conn and self._conn.welcome else {}

    @property
    def servers(self) -> list[str]:
        return [str(u) for u in self._pool]

    @property
    def buffered(self) -> tuple[int, int]:
        """(messages, bytes) waiting in the reconnect buffer."""
        return len(self._buffer), self._buffer_bytes

    # ------------------------------------------------------------------ lifecycle
    async def __aenter__(self) -> "Client":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def _start_and_return(self) -> "Client":
        await self._start()
        return self

    async def _start(self) -> None:
        errs = []
        last: E.BusgateError | None = None
        for url in self._pool:
            try:
                conn = await self._open(url)
            except (E.AuthError, E.UnsupportedVersion) as e:
                raise e
            except (OSError, asyncio.TimeoutError, E.BusgateError) as e:
                errs.append(f"{url}: {str(e) or type(e).__name__}")
                if isinstance(e, E.BusgateError) and e.code is not None:
                    last = e
                continue
            self._adopt(conn, initial=True)
            return
        if last is not None and len(errs) == 1:
            raise last  # e.g. TooManyConnections: the gateway's own answer says more than NoServers
        raise E.NoServers("could not connect: " + "; ".join(errs))

    async def _open(self, url: ServerURL) -> _Connection:
        conn = _Connection(self, url)
        try:
            if url.websocket:
                conn.transport = await WebSocketTransport.open(conn, url, self._tls, self.connect_timeout,
                                                               self._ws_json)
            else:
                conn.transport = await TcpTransport.open(conn, url, self._tls, self.connect_timeout)
        except asyncio.TimeoutError:
            raise E.NoServers(f"{url}: connect timed out after {self.connect_timeout} s") from None
        opts: dict[str, Any] = {}
        if self._max_frame:
            opts["max_frame"] = self._max_frame
        if self._heartbeat_ms:
            opts["heartbeat_ms"] = self._heartbeat_ms
        opts["lang"] = "python"
        opts["version"] = VERSION
        conn.transport.send(P.Hello([P.VERSION], {"method": "token", "token": self._token}, self._name, opts))
        try:
            welcome = await asyncio.wait_for(asyncio.shield(conn.handshake), self.connect_timeout)
        except asyncio.TimeoutError:
            conn.transport.abort()
            raise E.NoServers(f"{url}: no WELCOME within {self.connect_timeout} s") from None
        except BaseException:
            conn.transport.abort()
            raise
        conn.opened(welcome)
        return conn

    def _adopt(self, conn: _Connection, initial: bool = False) -> None:
        """Make ``conn`` the current connection: resubscribe, send the reconnect buffer, resume."""
        self._conn = conn
        t = conn.transport
        pending: list[tuple[Subscription, asyncio.Future]] = []
        if not initial:
            for sub in list(self._subs.values()):
                if sub._closed or sub._draining:
                    continue
                fut = conn.loop.create_future()
                conn.sub_oks[sub.sid] = fut
                if sub.durable is not None:
                    sub._sent_sub(conn)
                t.send(P.Sub(sub.sid, sub.subject, sub.queue, sub.opts))
                if sub._max_msgs:
                    t.send(P.Unsub(sub.sid, max(1, sub._max_msgs - sub._delivered)))
                pending.append((sub, fut))
            while self._buffer:
                b = self._buffer.popleft()
                ack = conn.alloc_ack() if b.ack is not None else None
                if ack is not None:
                    conn.acks[ack] = b.ack  # type: ignore[assignment]
                try:
                    t.send_pub(b.subject, b.payload, b.headers, b.reply_to, ack, b.msg_id)
                except E.BusgateError as e:
                    if b.ack is not None and not b.ack.done():
                        b.ack.set_exception(e)
                    else:
                        self._report(e)
            self._buffer_bytes = 0
        self._connected.set()
        if not initial:
            self.reconnects += 1
            log.info("busgate: reconnected to %s (session %s)", conn.url,
                     conn.welcome.session_id if conn.welcome else "?")
            self._spawn(self._after_reconnect(pending))

    async def _after_reconnect(self, pending: list[tuple[Subscription, asyncio.Future]]) -> None:
        for sub, fut in pending:
            try:
                await fut
            except E.ConnectionLost:
                return  # lost again; the next reconnect resubscribes
            except E.BusgateError as e:
                self._forget_sub(sub)
                sub._end(e)
                self._report(e)
            else:
                sub._schedule_grant()
        for old in list(self._retiring):
            self._spawn(self._retire(old))
        await self._call(self._cb_reconnect)

    async def _retire(self, old: _Connection) -> None:
        """Section 14, steps 2-4 for the old connection: stop its subscriptions (they now live on the
        new connection), wait until its in-flight requests are answered and the replies it was
        granted are sent, then close it, all before the GOAWAY delay ends."""
        if old.state == "closed":
            self._retiring.discard(old)
            return
        # Durable subscriptions stay on the old connection (it gets no new credits) until the
        # deliveries taken from it are settled there, so that a GOAWAY does not release running work.
        durable = [s for s in self._subs.values() if s.durable is not None and old in s._credits]
        for sid, s in list(self._subs.items()):
            if s.durable is None:
                old.transport.send(P.Unsub(sid))
        deadline = old.goaway_deadline or (old.loop.time() + 5.0)
        while old.state != "closed" and (old.inflight or old.acks or old.grants > 0
                                         or any(s._held_on(old) for s in durable if old in s._credits)):
            remaining = deadline - old.loop.time()
            if remaining <= 0:
                break
            old.changed.clear()
            try:
                await asyncio.wait_for(old.changed.wait(), remaining)
            except asyncio.TimeoutError:
                break
        for s in durable:
            if old in s._credits:
                if old.state != "closed":
                    old.transport.send(P.Unsub(s.sid))
                s._conn_gone(old)
        if old.inflight and old.state != "closed":
            # not answered before the delay: the gateway answers them RES SHUTTING_DOWN; wait for it
            try:
                await asyncio.wait_for(asyncio.shield(old.closed), 2.0)
            except asyncio.TimeoutError:
                pass
        old.close()
        self._retiring.discard(old)

    def _on_conn_lost(self, conn: _Connection, err: BaseException) -> None:
        self._paused.discard(conn)
        for sub in list(self._subs.values()):
            if sub.durable is not None and conn in sub._credits:
                sub._conn_gone(conn)  # the gateway released what it had delivered there
        for subj in [s for s, c in self._routes.items() if c is conn]:
            del self._routes[subj]
        if conn in self._retiring:
            self._retiring.discard(conn)
            return
        if conn is not self._conn:
            return
        self._conn = None
        self._connected.clear()
        if self._closed:
            return
        self.last_error = err
        log.info("busgate: disconnected from %s: %s", conn.url, err)
        self._spawn(self._call(self._cb_disconnect, err))
        if not self.reconnect or isinstance(err, (E.AuthError, E.UnsupportedVersion)):
            self._spawn(self._close_with(err))
            return
        self._start_reconnect([conn.url])

    def _on_goaway(self, conn: _Connection, g: P.Goaway) -> None:
        if conn is not self._conn or conn.state != "open":
            return
        conn.state = "draining"
        conn.goaway_deadline = conn.loop.time() + g.delay_ms / 1000.0
        self._conn = None
        self._connected.clear()
        self._retiring.add(conn)
        log.info("busgate: GOAWAY from %s (delay %d ms, %s); moving to a new connection", conn.url,
                 g.delay_ms, g.reason)
        prefer: list[ServerURL] = []
        for s in g.servers or []:
            try:
                u = parse_url(s)
            except E.InvalidURL:
                continue
            prefer.append(u)
            if u not in self._pool:
                self._pool.append(u)
        self._spawn(self._call(self._cb_goaway, g))
        self._start_reconnect(prefer or [conn.url])

    def _start_reconnect(self, first: list[ServerURL]) -> None:
        if self._reconnect_task is not None and not self._reconnect_task.done():
            return
        self._reconnect_task = asyncio.get_running_loop().create_task(self._reconnect_loop(first))

    async def _reconnect_loop(self, first: list[ServerURL]) -> None:
        """Exponential backoff with full jitter: before attempt n, sleep uniform(0, min(max, base * 2**n))."""
        attempt = 0
        order = first + [u for u in self._pool if u not in first]
        i = 0
        while not self._closed:
            if self.max_reconnect_attempts >= 0 and attempt >= self.max_reconnect_attempts:
                await self._close_with(E.NoServers(f"gave up after {attempt} reconnect attempts"))
                return
            url = order[i % len(order)]
            i += 1
            delay = random.uniform(0, min(self.reconnect_wait_max, self.reconnect_wait * (2 ** min(attempt, 30))))
            await asyncio.sleep(delay)
            if self._closed:
                return
            attempt += 1
            try:
                conn = await self._open(url)
            except (E.AuthError, E.UnsupportedVersion) as e:
                self._report(e)
                await self._close_with(e)
                return
            except (OSError, asyncio.TimeoutError, E.BusgateError) as e:
                log.debug("busgate: reconnect attempt %d to %s failed: %s", attempt, url, e)
                if i >= len(order):  # after the first round, rotate through the whole pool
                    order = list(self._pool)
                    i = 0
                continue
            if self._closed:
                conn.close()
                return
            self._adopt(conn)
            return

    async def _close_with(self, err: BaseException) -> None:
        self.last_error = err
        await self.close()

    async def flush(self, timeout: float = 10.0) -> None:
        """PING/PONG barrier (section 7.11): returns once the gateway has processed every frame sent
        before (validation errors for them have arrived, their SUBs are live, their PUBs were handed
        to the bus)."""
        conn = await self._ready_conn(timeout)
        fut = conn.loop.create_future()
        conn.send_ping(fut)
        try:
            await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError:
            raise E.Timeout(f"no PONG within {timeout} s") from None

    async def drain(self, timeout: float = 30.0) -> None:
        """Graceful end: stop every subscription (UNSUB), let the messages already received be
        consumed, wait for in-flight requests, send what was published, then close."""
        if self._closed:
            return
        self._draining = True
        subs = list(self._subs.values())
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            if subs:
                await asyncio.gather(*(s.drain(max(0.1, deadline - loop.time())) for s in subs),
                                     return_exceptions=True)
            conns = [c for c in [self._conn, *self._retiring] if c is not None]
            futs = [f for c in conns for f, _ in c.inflight.values()] + [f for c in conns for f in c.acks.values()]
            if futs:
                await asyncio.wait(futs, timeout=max(0.1, deadline - loop.time()))
            if self._conn is not None:
                try:
                    await self.flush(max(0.1, deadline - loop.time()))
                except E.BusgateError:
                    pass
        finally:
            await self.close()

    async def close(self) -> None:
        """Close now: the connection is closed (buffered frames are written first), in-flight
        requests fail with ConnectionClosed, subscriptions end."""
        if self._closed:
            return
        self._closed = True
        self._connected.clear()
        if self._reconnect_task is not None and self._reconnect_task is not asyncio.current_task():
            self._reconnect_task.cancel()
        conns = [c for c in [self._conn, *self._retiring] if c is not None]
        self._conn = None
        self._retiring.clear()
        closed_futs = []
        for c in conns:
            for fut, _ in c.inflight.values():
                if not fut.done():
                    fut.set_exception(E.ConnectionClosed("the client was closed"))
            c.inflight.clear()
            c.close()
            closed_futs.append(c.closed)
        for b in self._buffer:
            if b.ack is not None and not b.ack.done():
                b.ack.set_exception(E.ConnectionClosed("the client was closed before the message was sent"))
        self._buffer.clear()
        self._buffer_bytes = 0
        for sub in list(self._subs.values()):
            sub._end(self.last_error if isinstance(self.last_error, E.BusgateError) else None)
        self._subs.clear()
        if closed_futs:
            await asyncio.wait(closed_futs, timeout=2.0)
        for sub_task in [t for t in self._tasks if not t.done() and t is not asyncio.current_task()]:
            sub_task.cancel()

    # ------------------------------------------------------------------ helpers
    def _spawn(self, coro: Awaitable[Any]) -> None:
        t = asyncio.get_running_loop().create_task(coro)  # type: ignore[arg-type]
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    async def _call(self, cb: Callback | None, *args: Any) -> None:
        if cb is None:
            return
        try:
            r = cb(*args)
            if inspect.isawaitable(r):
                await r
        except Exception:
            log.exception("busgate: callback %r failed", cb)

    def _report(self, err: BaseException) -> None:
        self.last_error = err
        if self._cb_error is None:
            log.warning("busgate: %s", err)
            return
        try:
            r = self._cb_error(err)
            if inspect.isawaitable(r):
                self._spawn(r)
        except Exception:
            log.exception("busgate: on_error callback failed")

    async def _ready_conn(self, timeout: float | None) -> _Connection:
        conn = self._conn
        if conn is not None and conn.usable:
            return conn
        if self._closed:
            raise E.ConnectionClosed()
        try:
            await asyncio.wait_for(self._connected.wait(), timeout if timeout is not None else self.connect_timeout)
        except asyncio.TimeoutError:
            raise E.Timeout("not connected to a gateway (reconnecting)") from None
        if self._conn is None or self._closed:
            raise E.ConnectionClosed()
        return self._conn

    def _block(self, sub: Subscription, conn: _Connection) -> None:
        self._blocked.add(sub)
        if conn not in self._paused and conn.state != "closed":
            self._paused.add(conn)
            conn.transport.pause_reading()

    def _unblock(self, sub: Subscription) -> None:
        if sub in self._blocked:
            self._blocked.discard(sub)
            if not self._blocked:
                for c in self._paused:
                    c.transport.resume_reading()
                self._paused.clear()

    def _forget_sub(self, sub: Subscription) -> None:
        if self._subs.get(sub.sid) is sub:
            del self._subs[sub.sid]

    def _send_unsub(self, sid: int, max_msgs: int, sub: Subscription | None = None) -> None:
        if sub is not None and sub.durable is not None:
            # every connection it is live on (after a GOAWAY, the retiring one too)
            for conn in list(sub._credits):
                if conn.state in ("open", "draining"):
                    conn.transport.send(P.Unsub(sid))
            return
        conn = self._conn
        if conn is not None and conn.usable:
            conn.transport.send(P.Unsub(sid, max_msgs or None))

    def _on_msg(self, conn: _Connection, f: P.Msg) -> None:
        sub = self._subs.get(f.sid)
        if sub is None:
            return  # unknown sid: messages already queued when it was unsubscribed
        reply = f.reply_to
        if reply is not None and reply.startswith(INBOX):
            self._grant_reply(reply, conn)
        sub._push(Msg(f.subject, f.payload, f.headers, reply, f.sid, self, conn, f.delivery_id, f.attempt), conn)

    def _grant_reply(self, reply: str, conn: _Connection) -> None:
        """A request arrived on ``conn``: its reply to the gateway inbox ``reply`` goes out there."""
        routes = self._routes
        if reply not in routes:
            if len(routes) >= MAX_REPLY_ROUTES:
                old = next(iter(routes))
                routes.pop(old).grants -= 1
            routes[reply] = conn
            conn.grants += 1

    # ------------------------------------------------------------------ API
    async def publish(self, subject: str, data: Data = b"", headers: dict[str, str] | None = None,
                      reply_to: str | None = None, *, ack: bool = False, msg_id: str | None = None) -> None:
        """Publish ``data`` to ``subject``. With ``ack=True``, wait until the gateway confirms that
        the bus accepted it (or raise the typed error); on a subject a stream stores, the OK means
        the message is stored, and a stream that cannot store it answers
        :class:`~busgate.errors.NotStored`. ``msg_id`` (1 to 128 printable ASCII characters, no
        spaces) is the message's idempotency key for a stream: a re-send with the same key within the
        stream's duplicate window is answered OK and stored once. With ``ack=True`` and a
        ``msg_id``, a publish whose OK was lost with the connection is re-sent on the next one
        (safe: it is stored once); without a ``msg_id`` it raises ConnectionLost and the caller
        decides. While disconnected, the message goes to the bounded reconnect buffer
        (:class:`~busgate.errors.OutboundBufferFull` when it is full)."""
        payload = _payload(data)
        if subject not in self._pub_ok:
            P.check_subject(subject)
            if len(self._pub_ok) < 4096:
                self._pub_ok.add(subject)
        if headers:
            P.check_headers(headers)
        if reply_to is not None:
            P.check_subject(reply_to)
        if msg_id is not None:
            P.check_msg_id(msg_id)
        if subject.startswith(INBOX):
            conn = self._routes.pop(subject, None)
            if conn is not None:
                conn.grants -= 1
                conn.changed.set()
                if conn.state == "closed":
                    raise E.ConnectionLost("the request arrived on a connection that is gone; "
                                           "the reply cannot be delivered")
                return await self._send_pub(conn, subject, payload, headers, reply_to, ack, msg_id)
        while True:
            if self._closed:
                raise E.ConnectionClosed()
            conn = self._conn
            try:
                if conn is None:
                    return await self._buffer_pub(subject, payload, headers, reply_to, ack, msg_id)
                return await self._send_pub(conn, subject, payload, headers, reply_to, ack, msg_id)
            except E.ConnectionLost:
                if not (ack and msg_id) or self._closed:
                    raise
                # the OK was lost with the connection; the key makes a re-send safe
                log.debug("busgate: re-sending PUB %r with msg_id %r after a lost connection", subject, msg_id)

    async def _send_pub(self, conn: _Connection, subject: str, payload: bytes, headers: dict | None,
                        reply_to: str | None, ack: bool, msg_id: str | None = None) -> None:
        if len(payload) > conn.max_payload:
            raise E.PayloadTooLarge(f"payload of {len(payload)} bytes is above max_payload {conn.max_payload}")
        t = conn.transport
        if ack:
            ack_id = conn.alloc_ack()
            fut = conn.loop.create_future()
            conn.acks[ack_id] = fut
            try:
                t.send_pub(subject, payload, headers, reply_to, ack_id, msg_id)
            except BaseException:
                conn.acks.pop(ack_id, None)
                raise
            await fut
            return
        t.send_pub(subject, payload, headers, reply_to, None, msg_id)
        if t.write_blocked:
            await t.wait_writable()

    async def _buffer_pub(self, subject: str, payload: bytes, headers: dict | None, reply_to: str | None,
                          ack: bool, msg_id: str | None = None) -> None:
        if len(self._buffer) >= self.reconnect_buffer_msgs or \
                self._buffer_bytes + len(payload) > self.reconnect_buffer_bytes:
            raise E.OutboundBufferFull(
                f"not connected and the reconnect buffer is full ({len(self._buffer)} messages, "
                f"{self._buffer_bytes} bytes; limits {self.reconnect_buffer_msgs} messages, "
                f"{self.reconnect_buffer_bytes} bytes)")
        fut = asyncio.get_running_loop().create_future() if ack else None
        self._buffer.append(_Buffered(subject, payload, headers, reply_to, fut, msg_id))
        self._buffer_bytes += len(payload)
        if fut is not None:
            await fut

    async def subscribe(self, subject: str, queue: str | None = None, cb: Callback | None = None, *,
                        durable: str | None = None, max_inflight: int | None = None, deliver: str | None = None,
                        consumer_max_inflight: int | None = None,
                        pending_msgs_limit: int | None = None, pending_bytes_limit: int | None = None,
                        timeout: float | None = None) -> Subscription:
        """Subscribe to ``subject`` (wildcards allowed), in queue group ``queue`` if given. Waits for the
        gateway's OK and raises the typed error of its ERR. With ``cb`` (a function or coroutine
        function of one Msg) messages are dispatched to it; otherwise iterate the subscription.
        While disconnected the subscription is registered and made on the next connection.

        Durable consumption (docs/protocol.md section 16): ``durable=NAME`` subscribes to the
        consumer NAME of the stream that stores ``subject`` (declared by the operator, or created by
        this SUB with the tenant's defaults). Deliveries have ``delivery_id`` and ``attempt`` and are
        settled with ``ack()``, ``nak(delay)`` or ``term(reason)``. ``max_inflight`` (default 1) is
        this subscription's window: it never holds more unsettled deliveries than that, granting
        the gateway a credit for each free place; the rest stays stored on the bus. ``deliver``
        (``"all"``, the default, or ``"new"``) says where a consumer created by this SUB starts.
        ``consumer_max_inflight`` is sent as the SUB's ``max_inflight`` option: the cluster-wide cap of
        a consumer this SUB creates (and a bound on this subscription); without it a created consumer
        gets the tenant's ``max_consumer_inflight``. Errors: UnknownStream, InvalidOption,
        TooManyConsumers, PermissionDenied, NotSupported (a gateway without durable consumption).

        A subscribe() that is cancelled or times out while waiting for the OK leaves nothing behind:
        the subscription is not made again on a reconnect, and one the gateway made anyway is ended
        (UNSUB) as soon as its OK arrives."""
        if self._closed or self._draining:
            raise E.ConnectionClosed()
        P.check_subject(subject, wildcards=True)
        if queue is not None:
            P.check_queue(queue)
        opts: dict[str, Any] | None = None
        window = 1
        if durable is not None:
            P.check_durable_name(durable)
            if max_inflight is not None:
                if type(max_inflight) is not int or not 1 <= max_inflight <= P.UINT32_MAX:
                    raise E.InvalidOption(f"max_inflight must be an int from 1 to {P.UINT32_MAX}")
                window = max_inflight
            opts = {"durable": durable}
            if deliver is not None:
                if deliver not in ("all", "new"):
                    raise E.InvalidOption(f"deliver must be 'all' or 'new', not {deliver!r}")
                opts["deliver"] = deliver
            if consumer_max_inflight is not None:
                if type(consumer_max_inflight) is not int or not 1 <= consumer_max_inflight <= P.UINT32_MAX:
                    raise E.InvalidOption(f"consumer_max_inflight must be an int from 1 to {P.UINT32_MAX}")
                opts["max_inflight"] = consumer_max_inflight
            opts["flow"] = "credit"
        elif max_inflight is not None or deliver is not None or consumer_max_inflight is not None:
            raise E.InvalidOption("max_inflight, deliver and consumer_max_inflight need durable=")
        abandoned = set().union(*(c.abandoned for c in [self._conn, *self._retiring] if c is not None))
        while True:
            self._next_sid = self._next_sid + 1 if self._next_sid < P.UINT32_MAX else 1
            if self._next_sid not in self._subs and self._next_sid not in abandoned:
                break
        sid = self._next_sid
        sub = Subscription(self, sid, subject, queue, cb,
                           pending_msgs_limit or self.pending_msgs_limit,
                           pending_bytes_limit or self.pending_bytes_limit,
                           durable, opts, window)
        self._subs[sid] = sub
        conn = self._conn
        if conn is not None and conn.usable:
            fut = conn.loop.create_future()
            conn.sub_oks[sid] = fut
            if durable is not None:
                sub._sent_sub(conn)
            conn.transport.send(P.Sub(sid, subject, queue, opts))
            try:
                await asyncio.wait_for(asyncio.shield(fut), timeout or max(self.connect_timeout, 5.0))
            except E.ConnectionLost:
                pass  # made again on the next connection
            except asyncio.TimeoutError:
                self._abandon(sub, conn, fut)
                raise E.Timeout(f"no answer to SUB {subject!r}") from None
            except asyncio.CancelledError:
                self._abandon(sub, conn, fut)
                raise
            except E.BusgateError:
                self._forget_sub(sub)
                sub._end(None)
                raise
        if cb is not None:
            sub._start_dispatch()
        return sub

    def _abandon(self, sub: Subscription, conn: _Connection, fut: asyncio.Future) -> None:
        """subscribe() gave up waiting for the answer to its SUB: forget the subscription (it is not
        made again on a reconnect) and end whatever the gateway makes of the SUB."""
        self._forget_sub(sub)
        if fut.done():
            ok = not fut.cancelled() and fut.exception() is None
            if ok and conn.state in ("open", "draining"):
                conn.transport.send(P.Unsub(sub.sid))  # the OK was in already
        elif conn.state != "closed":
            conn.abandoned.add(sub.sid)  # _on_ok answers a late OK with UNSUB
        sub._end(None, discard=True)

    async def request(self, subject: str, data: Data = b"", timeout: float | None = None,
                      headers: dict[str, str] | None = None) -> Msg:
        """Send a request and return the reply (a :class:`Msg`). ``timeout`` in seconds; None uses the
        gateway's ``request_timeout_ms``. Failures raise the typed error of the RES status
        (NoResponders, Timeout, PermissionDenied, TooManyRequests, PayloadTooLarge, ...), or
        ConnectionLost if the connection dropped with the request in flight (it is not re-sent: the
        caller decides whether it is safe to repeat). A request made while reconnecting waits for
        the connection within its timeout."""
        payload = _payload(data)
        P.check_subject(subject)
        if headers:
            P.check_headers(headers)
        loop = asyncio.get_running_loop()
        start = loop.time()
        conn = await self._ready_conn(timeout)
        if len(payload) > conn.max_payload:
            raise E.PayloadTooLarge(f"payload of {len(payload)} bytes is above max_payload {conn.max_payload}")
        timeout_ms = None
        if timeout is not None:
            timeout_ms = max(1, int(round((timeout - (loop.time() - start)) * 1000)))
        effective = min(timeout_ms or conn.request_timeout_ms, conn.max_timeout_ms)
        req_id = conn.alloc_req_id()
        fut = loop.create_future()
        conn.inflight[req_id] = (fut, subject)
        try:
            conn.transport.send(P.Req(req_id, subject, payload, headers or None, timeout_ms))
        except BaseException:
            conn.inflight.pop(req_id, None)
            raise
        # the gateway answers REQUEST_TIMEOUT at `effective`; this local timer is only a safety net
        safety = effective / 1000.0 + max(1.0, effective / 10000.0)
        try:
            return await asyncio.wait_for(fut, safety)
        except E.Timeout:
            raise  # the gateway's RES REQUEST_TIMEOUT (E.Timeout is also a TimeoutError)
        except asyncio.TimeoutError:
            raise E.Timeout(f"no RES for {subject!r} within {safety:.1f} s") from None
        finally:
            if conn.inflight.pop(req_id, None) is not None or conn.state != "open":
                conn.changed.set()


class _Connector:
    """What :func:`connect` returns: ``await`` it for a Client, or use it as ``async with``."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def __await__(self):  # type: ignore[no-untyped-def]
        return self._run().__await__()

    async def _run(self) -> Client:
        await self._client._start()
        return self._client

    async def __aenter__(self) -> Client:
        return await self._run()

    async def __aexit__(self, *exc: Any) -> None:
        await self._client.close()


def connect(url: str | Iterable[str] = DEFAULT_URL, **options: Any) -> _Connector:
    """Connect to a gateway. ``await busgate.connect(url, token=...)`` or
    ``async with busgate.connect(url, token=...) as client``.

    URLs: ``busgate://host[:port]`` (default port 7422), ``busgate+tls://``, ``ws://host[:port]/v1/ws``,
    ``wss://``. Options (all keyword):

    - ``token``: the tenant's token (default: the BUSGATE_TOKEN environment variable)
    - ``name``: client name shown in the gateway's logs
    - ``tls``: an ``ssl.SSLContext`` (or True) for TLS; SNI and verification use the URL's host
    - ``servers``: more URLs to try (initial connect and reconnect); GOAWAY ``servers`` are added
    - ``ws_json``: use the ``busgate.v1.json`` subprotocol on ws:// URLs
    - ``connect_timeout`` (5 s): TCP/TLS/WebSocket connect plus HELLO/WELCOME
    - ``reconnect`` (True), ``max_reconnect_attempts`` (-1: forever), ``reconnect_wait`` (0.05 s base),
      ``reconnect_wait_max`` (2 s cap)
    - ``reconnect_buffer_msgs`` (65536), ``reconnect_buffer_bytes`` (8 MiB): publishes kept while
      disconnected
    - ``pending_msgs_limit`` (65536), ``pending_bytes_limit`` (64 MiB): per-subscription local queue
    - ``heartbeat_ms``: ask the gateway for a shorter heartbeat interval
    - ``max_frame``: ask for a smaller maximum frame
    - ``on_disconnect(err)``, ``on_reconnect()``, ``on_error(err)``, ``on_goaway(frame)``: callbacks
      (functions or coroutine functions)
    """
    return _Connector(Client(url, **options))
