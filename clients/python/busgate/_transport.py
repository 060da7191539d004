"""Transports: TCP (optionally TLS) and WebSocket (binary ``busgate.v1`` or text ``busgate.v1.json``).

A transport turns bytes into frames and frames into bytes; the protocol logic lives in the client's
``_Connection``. Every transport delivers decoded frames to ``sink.on_frame(frame)``, reports the end
of the connection once through ``sink.on_transport_lost(exc)``, buffers writes (many frames, one
syscall on TCP), and can stop reading at a frame boundary (``pause_reading``) so that the client
never takes more messages than its subscriptions have room for.
"""
from __future__ import annotations

import asyncio
import logging
import ssl
import struct
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

from . import errors as E
from . import protocol as P

log = logging.getLogger("busgate")

DEFAULT_PORT = 7422
_LEN = struct.Struct(">I").pack


@dataclass(frozen=True)
class ServerURL:
    """A parsed server URL (docs/protocol.md section 2.5)."""

    scheme: str  # busgate, busgate+tls, ws, wss
    host: str
    port: int
    path: str = ""

    @property
    def tls(self) -> bool:
        return self.scheme in ("busgate+tls", "wss")

    @property
    def websocket(self) -> bool:
        return self.scheme in ("ws", "wss")

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}{self.path}"


def parse_url(url: str) -> ServerURL:
    """Parse ``busgate://host[:port]``, ``busgate+tls://``, ``ws://host[:port]/v1/ws``, ``wss://``."""
    if "://" not in url:
        url = "busgate://" + url
    try:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        host = parts.hostname
        port = parts.port
    except ValueError as e:
        raise E.InvalidURL(f"{url!r}: {e}") from None
    if scheme not in ("busgate", "busgate+tls", "ws", "wss"):
        raise E.InvalidURL(f"{url!r}: the scheme must be busgate://, busgate+tls://, ws:// or wss://")
    if not host:
        raise E.InvalidURL(f"{url!r}: no host")
    if parts.username or parts.password:
        raise E.InvalidURL(f"{url!r}: URLs carry no credentials; pass token=")
    if port is None:
        port = {"busgate": DEFAULT_PORT, "busgate+tls": DEFAULT_PORT, "ws": 80, "wss": 443}[scheme]
    path = ""
    if scheme in ("ws", "wss"):
        path = parts.path or "/v1/ws"
        if parts.query:
            path += "?" + parts.query
    return ServerURL(scheme, host, port, path)


class Sink(Protocol):
    def on_frame(self, frame: P.Frame) -> None: ...
    def on_transport_lost(self, exc: BaseException | None) -> None: ...


class Transport:
    """Common interface."""

    max_frame: int = P.PRE_HANDSHAKE_MAX_FRAME
    kind = "?"

    def send(self, frame: P.Frame) -> None:
        raise NotImplementedError

    def send_pub(self, subject: str, payload: bytes, headers: dict | None, reply_to: str | None,
                 ack: int | None, msg_id: str | None = None) -> None:
        self.send(P.Pub(subject, payload, headers, reply_to, ack, msg_id))

    @property
    def write_blocked(self) -> bool:
        return False

    async def wait_writable(self) -> None:
        return None

    def pause_reading(self) -> None:
        raise NotImplementedError

    def resume_reading(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def abort(self) -> None:
        self.close()


# ------------------------------------------------------------------------------------------------ TCP


class _TcpProtocol(asyncio.Protocol):
    def __init__(self, owner: "TcpTransport") -> None:
        self.owner = owner

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.owner._on_made(transport)  # type: ignore[arg-type]

    def data_received(self, data: bytes) -> None:
        self.owner._on_data(data)

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.owner._on_lost(exc)

    def pause_writing(self) -> None:
        self.owner._write_paused = True

    def resume_writing(self) -> None:
        self.owner._write_paused = False
        w = self.owner._writable
        if w is not None and not w.done():
            w.set_result(None)


class TcpTransport(Transport):
    """Length-prefixed frames over TCP or TLS (section 2.1). Writes are buffered in memory and handed
    to the socket once per event-loop iteration, or at once past 64 KiB; reads are parsed lazily so
    that pausing stops at a frame boundary."""

    kind = "tcp"
    FLUSH_AT = 65536

    def __init__(self, sink: Sink, loop: asyncio.AbstractEventLoop) -> None:
        self.sink = sink
        self.loop = loop
        self.parser = P.StreamParser(P.PRE_HANDSHAKE_MAX_FRAME)
        self.transport: asyncio.Transport | None = None
        self._wbuf = bytearray()
        self._flush_handle: asyncio.Handle | None = None
        self._write_paused = False
        self._writable: asyncio.Future | None = None
        self._paused = False
        self._lost = False
        self._processing = False

    @classmethod
    async def open(cls, sink: Sink, url: ServerURL, tls: ssl.SSLContext | None, timeout: float) -> "TcpTransport":
        loop = asyncio.get_running_loop()
        t = cls(sink, loop)
        kw: dict[str, Any] = {}
        if url.tls:
            kw["ssl"] = tls or ssl.create_default_context()
            kw["server_hostname"] = url.host  # SNI and verification against the URL's host
        await asyncio.wait_for(loop.create_connection(lambda: _TcpProtocol(t), url.host, url.port, **kw), timeout)
        return t

    @property
    def max_frame(self) -> int:  # type: ignore[override]
        return self.parser.max_frame

    @max_frame.setter
    def max_frame(self, v: int) -> None:
        self.parser.max_frame = v

    # -- events from asyncio
    def _on_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            import socket
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        transport.set_write_buffer_limits(high=1 << 20, low=1 << 18)

    def _on_data(self, data: bytes) -> None:
        self.parser.feed(data)
        self._process()

    def _process(self) -> None:
        if self._processing:
            return
        self._processing = True
        try:
            parser = self.parser
            while not self._paused and not self._lost and parser.buffered >= 4:
                # Walk the frames in a copy of (a window of) the unread bytes, one copy per window
                # rather than per frame, then tell the parser how far we got. A window ends where
                # its data does, or when a handler pauses reading (at a frame boundary).
                data = parser._unread(self.WINDOW)
                i, error = self._walk(data)
                parser._consume(i)
                if error is not None:
                    # MALFORMED_FRAME / FRAME_TOO_LARGE from the gateway: close the connection
                    self._fail(error)
                    return
                if i == 0:
                    return  # the first frame is not complete yet
        finally:
            self._processing = False

    WINDOW = 65536

    def _walk(self, data: bytes) -> tuple[int, E.BusgateError | None]:
        """Deliver the whole frames at the start of ``data``; returns how many bytes they took, and
        the error that ends the connection, if any. MSG frames take the fast path straight to the
        sink's ``on_msg`` (no frame object); everything else is decoded in full."""
        parser = self.parser
        size = len(data)
        i = 0
        from_bytes = int.from_bytes
        msg_fields = P._msg_fields
        decode = P._decode_generic
        on_frame = self.sink.on_frame
        on_msg = getattr(self.sink, "on_msg", None)
        try:
            while size - i >= 4:
                n = from_bytes(data[i:i + 4], "big")
                if n == 0:
                    raise E.MalformedFrame("zero-length frame")
                if n > parser.max_frame:
                    raise E.FrameTooLarge(f"length prefix {n} is above the maximum frame size {parser.max_frame}")
                end = i + 4 + n
                if end > size:
                    break
                body = data[i + 4:end]
                i = end
                if on_msg is not None:
                    fields = msg_fields(body)
                    if fields is not None:
                        try:
                            on_msg(*fields)
                        except Exception:  # a bug in a handler must not kill the connection's reading
                            log.exception("busgate: handling a MSG frame failed")
                        if self._paused or self._lost:
                            break
                        continue
                try:
                    frame = decode(body, P.GATEWAY)
                except (E.UnknownOp, E.UnexpectedOp):
                    continue  # skipped silently (section 3.4)
                try:
                    on_frame(frame)
                except Exception:  # a bug in a handler must not kill the connection's reading
                    log.exception("busgate: handling a %s frame failed", frame.op_name)
                if self._paused or self._lost:
                    break
        except E.BusgateError as e:
            return i, e
        return i, None

    def _fail(self, exc: BaseException) -> None:
        if self.transport is not None:
            self.transport.abort()
        self._on_lost(exc)

    def _on_lost(self, exc: BaseException | None) -> None:
        if self._lost:
            return
        self._lost = True
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        w = self._writable
        if w is not None and not w.done():
            w.set_result(None)
        self.sink.on_transport_lost(exc)

    # -- writing
    def _write(self, data: bytes) -> None:
        if self._lost:
            return
        self._wbuf += data
        if len(self._wbuf) >= self.FLUSH_AT:
            self.flush()
        elif self._flush_handle is None:
            self._flush_handle = self.loop.call_soon(self.flush)

    def flush(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if self._wbuf and not self._lost and self.transport is not None:
            data, self._wbuf = self._wbuf, bytearray()
            self.transport.write(data)

    def send(self, frame: P.Frame) -> None:
        data = P.encode_framed(frame)
        if len(data) - 4 > self.parser.max_frame:
            raise E.FrameTooLarge(f"a {frame.op_name} frame of {len(data) - 4} bytes is above max_frame "
                                  f"{self.parser.max_frame}; not sent")
        self._write(data)

    def send_pub(self, subject: str, payload: bytes, headers: dict | None, reply_to: str | None,
                 ack: int | None, msg_id: str | None = None) -> None:
        data = P.encode_pub_framed(subject, payload, headers, reply_to, ack, msg_id)
        if len(data) - 4 > self.parser.max_frame:
            raise E.FrameTooLarge(f"a PUB frame of {len(data) - 4} bytes is above max_frame "
                                  f"{self.parser.max_frame}; not sent")
        self._write(data)

    @property
    def write_blocked(self) -> bool:
        return self._write_paused

    async def wait_writable(self) -> None:
        if self._write_paused and not self._lost:
            if self._writable is None or self._writable.done():
                self._writable = self.loop.create_future()
            await self._writable

    # -- reading
    def pause_reading(self) -> None:
        if not self._paused:
            self._paused = True
            if self.transport is not None and not self._lost:
                self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self._paused:
            self._paused = False
            if self.transport is not None and not self._lost:
                self.transport.resume_reading()
                self.loop.call_soon(self._process)  # frames already buffered

    @property
    def reading_paused(self) -> bool:
        return self._paused

    def close(self) -> None:
        if self.transport is not None and not self._lost:
            self.flush()
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None and not self._lost:
            self.transport.abort()


# ------------------------------------------------------------------------------------------ WebSocket


class WebSocketTransport(Transport):
    """One frame per WebSocket message (section 2.4): binary msgpack under ``busgate.v1``, JSON text
    under ``busgate.v1.json``. Needs the optional dependency ``websockets`` (``pip install busgate[ws]``)."""

    kind = "ws"

    def __init__(self, sink: Sink, ws: Any, json_mode: bool) -> None:
        self.sink = sink
        self.ws = ws
        self.json_mode = json_mode
        self.kind = "ws-json" if json_mode else "ws"
        self.max_frame = P.PRE_HANDSHAKE_MAX_FRAME
        self._out: list[bytes | str] = []
        self._out_bytes = 0
        self._wake = asyncio.Event()
        self._resume = asyncio.Event()
        self._resume.set()
        self._lost = False
        self._closing = False
        self._writable = asyncio.Event()
        self._writable.set()
        self._reader = asyncio.get_running_loop().create_task(self._read_loop())
        self._writer = asyncio.get_running_loop().create_task(self._write_loop())

    @classmethod
    async def open(cls, sink: Sink, url: ServerURL, tls: ssl.SSLContext | None, timeout: float,
                   json_mode: bool = False) -> "WebSocketTransport":
        try:
            from websockets.asyncio.client import connect as ws_connect
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise E.ClientError("WebSocket URLs need the 'websockets' package: pip install 'busgate[ws]'") from e
        scheme = "wss" if url.tls else "ws"
        host = f"[{url.host}]" if ":" in url.host else url.host
        uri = f"{scheme}://{host}:{url.port}{url.path}"
        proto = "busgate.v1.json" if json_mode else "busgate.v1"
        kw: dict[str, Any] = {}
        if url.tls:
            kw["ssl"] = tls or ssl.create_default_context()
        ws = await ws_connect(uri, subprotocols=[proto], open_timeout=timeout, max_size=None,
                              ping_interval=None, compression=None, max_queue=64, **kw)
        if ws.subprotocol != proto:
            await ws.close()
            raise E.ClientError(f"the gateway did not select the subprotocol {proto}")
        return cls(sink, ws, json_mode)

    async def _read_loop(self) -> None:
        exc: BaseException | None = None
        try:
            while True:
                if not self._resume.is_set():
                    await self._resume.wait()
                msg = await self.ws.recv()
                try:
                    if self.json_mode:
                        if not isinstance(msg, str):
                            raise E.MalformedFrame("a binary message under busgate.v1.json")
                        frame = P.from_json_text(msg, P.GATEWAY, self.max_frame)
                    else:
                        if not isinstance(msg, (bytes, bytearray)):
                            raise E.MalformedFrame("a text message under busgate.v1")
                        if len(msg) > self.max_frame:
                            raise E.FrameTooLarge(f"message of {len(msg)} bytes above {self.max_frame}")
                        frame = P.decode(bytes(msg), P.GATEWAY)
                except (E.UnknownOp, E.UnexpectedOp):
                    continue
                try:
                    self.sink.on_frame(frame)
                except Exception:
                    log.exception("busgate: handling a %s frame failed", frame.op_name)
        except asyncio.CancelledError:
            pass
        except E.BusgateError as e:
            exc = e
        except Exception as e:  # websockets.ConnectionClosed and socket errors
            exc = e if not self._closing else None
        self._lost_once(exc)
        try:
            await self.ws.close()
        except Exception:
            pass

    async def _write_loop(self) -> None:
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                out, self._out = self._out, []
                for m in out:
                    await self.ws.send(m)
                self._out_bytes = 0
                self._writable.set()
        except asyncio.CancelledError:
            pass
        except Exception as e:
            self._lost_once(e)

    def _lost_once(self, exc: BaseException | None) -> None:
        if self._lost:
            return
        self._lost = True
        self._writable.set()
        self._writer.cancel()
        self.sink.on_transport_lost(exc)

    def send(self, frame: P.Frame) -> None:
        if self._lost:
            return
        m: bytes | str = P.to_json_text(frame) if self.json_mode else P.encode(frame)
        size = len(m.encode("utf-8")) if isinstance(m, str) else len(m)
        if size > self.max_frame:
            raise E.FrameTooLarge(f"a {frame.op_name} message of {size} bytes is above max_frame "
                                  f"{self.max_frame}; not sent")
        self._out.append(m)
        self._out_bytes += len(m)
        if self._out_bytes > (1 << 20):
            self._writable.clear()
        self._wake.set()

    @property
    def write_blocked(self) -> bool:
        return not self._writable.is_set()

    async def wait_writable(self) -> None:
        if not self._lost:
            await self._writable.wait()

    def pause_reading(self) -> None:
        self._resume.clear()

    def resume_reading(self) -> None:
        self._resume.set()

    @property
    def reading_paused(self) -> bool:
        return not self._resume.is_set()

    def close(self) -> None:
        if self._lost:
            return
        self._closing = True

        async def _close() -> None:
            # let queued frames go out first
            for _ in range(100):
                if not self._out or self._lost:
                    break
                await asyncio.sleep(0)
            try:
                await self.ws.close(1000)
            except Exception:
                pass
            self._reader.cancel()
            self._lost_once(None)

        asyncio.get_running_loop().create_task(_close())

    def abort(self) -> None:
        if self._lost:
            return
        self._closing = True
        try:
            self.ws.transport.abort()
        except Exception:
            pass
