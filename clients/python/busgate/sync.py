"""A thin blocking facade over the asyncio client, for scripts and notebooks.

    from busgate.sync import connect

    with connect("busgate://127.0.0.1:7422", token="dev-token") as bg:
        sub = bg.subscribe("orders.*")
        bg.publish("orders.created", b"hello")
        print(sub.next(timeout=1).data)
        print(bg.request("svc.echo", b"ping", timeout=2).data)

        jobs = bg.subscribe("jobs.score", durable="scorers", max_inflight=4)   # durable consumption
        for msg in jobs:
            work(msg.data)
            msg.ack()

Each ``SyncClient`` runs its asyncio client on a private event loop in a background (daemon) thread;
every method submits a coroutine to that loop and waits for its result, so the semantics, errors and
options are exactly those of :mod:`busgate.client`. Callbacks given to ``subscribe(cb=...)`` run in a
dedicated thread per subscription (one message at a time, in order), so they may block and may call
the client's methods.
"""
from __future__ import annotations

import asyncio
import threading
from concurrent.futures import Future
from typing import Any, Callable, Coroutine, Iterator, TypeVar

from . import errors as E
from .client import Client, Msg, Subscription

__all__ = ["connect", "SyncClient", "SyncSubscription", "SyncMsg"]

T = TypeVar("T")


class _Loop:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="busgate-loop", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("a busgate.sync method was called from the client's own event loop thread")
        fut: Future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return fut.result(timeout)

    def stop(self) -> None:
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
        if threading.current_thread() is not self._thread:
            self._thread.join(5)
        if not self.loop.is_running() and not self.loop.is_closed():
            self.loop.close()


class SyncMsg:
    """A received message (same fields as :class:`busgate.Msg`) with a blocking ``respond``, and for
    durable deliveries blocking ``ack``, ``nak``, ``in_progress`` and ``term`` (same semantics and
    return values as the asyncio ones)."""

    __slots__ = ("_msg", "_loop")

    def __init__(self, msg: Msg, loop: _Loop) -> None:
        self._msg = msg
        self._loop = loop

    subject = property(lambda self: self._msg.subject)
    data = property(lambda self: self._msg.data)
    headers = property(lambda self: self._msg.headers)
    reply_to = property(lambda self: self._msg.reply_to)
    sid = property(lambda self: self._msg.sid)
    tenant = property(lambda self: self._msg.tenant)
    delivery_id = property(lambda self: self._msg.delivery_id)
    attempt = property(lambda self: self._msg.attempt)
    settled = property(lambda self: self._msg.settled)
    stale = property(lambda self: self._msg.stale)

    def text(self) -> str:
        return self._msg.text()

    def json(self) -> Any:
        return self._msg.json()

    def respond(self, data: bytes | str = b"", headers: dict[str, str] | None = None) -> None:
        self._loop.run(self._msg.respond(data, headers))

    def ack(self) -> bool:
        return self._loop.run(self._msg.ack())

    def nak(self, delay: float | None = None) -> bool:
        return self._loop.run(self._msg.nak(delay))

    def in_progress(self) -> bool:
        return self._loop.run(self._msg.in_progress())

    def term(self, reason: str | None = None) -> bool:
        return self._loop.run(self._msg.term(reason))

    def __repr__(self) -> str:
        return repr(self._msg).replace("<Msg", "<SyncMsg", 1)


class SyncSubscription:
    def __init__(self, sub: Subscription, loop: _Loop) -> None:
        self._sub = sub
        self._loop = loop
        self._thread: threading.Thread | None = None

    sid = property(lambda self: self._sub.sid)
    subject = property(lambda self: self._sub.subject)
    queue = property(lambda self: self._sub.queue)
    pending_msgs = property(lambda self: self._sub.pending_msgs)
    durable = property(lambda self: self._sub.durable)
    unsettled = property(lambda self: self._sub.unsettled)

    def next(self, timeout: float | None = None) -> SyncMsg:
        """The next message; Timeout after ``timeout`` seconds, SubscriptionClosed once it ended."""
        return SyncMsg(self._loop.run(self._sub.next(timeout)), self._loop)

    def __iter__(self) -> Iterator[SyncMsg]:
        while True:
            try:
                yield self.next()
            except E.SubscriptionClosed:
                return

    def unsubscribe(self, max_msgs: int = 0) -> None:
        self._loop.run(self._sub.unsubscribe(max_msgs))

    def drain(self, timeout: float = 30.0) -> None:
        self._loop.run(self._sub.drain(timeout))
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def _start(self, cb: Callable[[SyncMsg], Any]) -> None:
        def run() -> None:
            for msg in self:
                try:
                    cb(msg)
                except Exception as e:  # reported to on_error, like the async client's callback failures
                    self._loop.loop.call_soon_threadsafe(self._sub._client._report, e)

        self._thread = threading.Thread(target=run, name=f"busgate-sub-{self.sid}", daemon=True)
        self._thread.start()


class SyncClient:
    """Blocking counterpart of :class:`busgate.Client`; create it with :func:`connect`."""

    def __init__(self, client: Client, loop: _Loop) -> None:
        self._client = client
        self._loop = loop

    @property
    def client(self) -> Client:
        """The underlying asyncio client (use it only from its loop)."""
        return self._client

    is_connected = property(lambda self: self._client.is_connected)
    is_closed = property(lambda self: self._client.is_closed)
    welcome = property(lambda self: self._client.welcome)
    limits = property(lambda self: self._client.limits)
    connected_url = property(lambda self: self._client.connected_url)

    def publish(self, subject: str, data: bytes | str = b"", headers: dict[str, str] | None = None,
                reply_to: str | None = None, *, ack: bool = False, msg_id: str | None = None) -> None:
        self._loop.run(self._client.publish(subject, data, headers, reply_to, ack=ack, msg_id=msg_id))

    def subscribe(self, subject: str, queue: str | None = None, cb: Callable[[SyncMsg], Any] | None = None,
                  **kw: Any) -> SyncSubscription:
        """Keywords as :meth:`busgate.Client.subscribe` (``durable``, ``max_inflight``, ``deliver``, ...)."""
        sub = SyncSubscription(self._loop.run(self._client.subscribe(subject, queue, **kw)), self._loop)
        if cb is not None:
            sub._start(cb)
        return sub

    def request(self, subject: str, data: bytes | str = b"", timeout: float | None = None,
                headers: dict[str, str] | None = None) -> SyncMsg:
        return SyncMsg(self._loop.run(self._client.request(subject, data, timeout, headers)), self._loop)

    def flush(self, timeout: float = 10.0) -> None:
        self._loop.run(self._client.flush(timeout))

    def drain(self, timeout: float = 30.0) -> None:
        try:
            self._loop.run(self._client.drain(timeout))
        finally:
            self._loop.stop()

    def close(self) -> None:
        if self._loop.loop.is_closed():
            return
        try:
            self._loop.run(self._client.close(), timeout=10)
        finally:
            self._loop.stop()

    def __enter__(self) -> "SyncClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def connect(url: str = "busgate://127.0.0.1:7422", **options: Any) -> SyncClient:
    """Connect and return a :class:`SyncClient`; takes the options of :func:`busgate.connect`.
    Callbacks (``on_error``, ...) run on the client's loop thread and must not block."""
    loop = _Loop()

    async def make() -> Client:
        return await Client(url, **options)._start_and_return()

    try:
        client = loop.run(make())
    except BaseException:
        loop.stop()
        raise
    return SyncClient(client, loop)
