"""The health and metrics endpoint of a busgate program (``--http HOST:PORT``).

A small HTTP/1.1 server on the program's own event loop (``asyncio.start_server``, one request per
connection, ``Connection: close``), so an event loop that is wedged fails the probes:

    GET /healthz   200 "ok", answered by the event loop
    GET /readyz    200 "ready" when every connection is connected and every subscription live,
                   else 503 with the reason ("starting", "connecting", "reconnecting", "draining", ...)
    GET /metrics   the Prometheus text format (:mod:`busgate.program_metrics`)
"""
from __future__ import annotations

import argparse
import asyncio
from typing import Callable

MAX_HEADER_BYTES = 16384
READ_TIMEOUT = 5.0


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:9090``, ``0.0.0.0:0``; an empty host is every interface) -> (host, port).
    Raises argparse.ArgumentTypeError (a usage error)."""
    host, sep, port = text.strip().rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"--http wants HOST:PORT, not {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host or "0.0.0.0", int(port)


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            500: "Internal Server Error", 503: "Service Unavailable"}


class HealthServer:
    """Serves /healthz, /readyz and /metrics. ``readiness()`` -> (ready, reason); ``metrics(accept)``
    -> (body, content type)."""

    def __init__(self, host: str, port: int, readiness: Callable[[], tuple[bool, str]],
                 metrics: Callable[[str], tuple[bytes, str]]) -> None:
        self.host = host
        self.port = port
        self.readiness = readiness
        self.metrics = metrics
        self._server: asyncio.AbstractServer | None = None
        self._conns: set[asyncio.Task] = set()

    async def start(self) -> str:
        """Listen; returns the address ``HOST:PORT`` with the real port."""
        self._server = await asyncio.start_server(self._serve, self.host, self.port, limit=MAX_HEADER_BYTES)
        sock = self._server.sockets[0]
        self.port = sock.getsockname()[1]
        return format_address(self.host, self.port)

    async def close(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for t in list(self._conns):
            t.cancel()
        await asyncio.gather(*self._conns, return_exceptions=True)
        await self._server.wait_closed()
        self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._conns.add(task)
        try:
            status, ctype, body, head = await self._answer(reader)
            writer.write(b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
                         % (status, _REASONS.get(status, "").encode(), ctype.encode(), len(body)))
            if not head:
                writer.write(body)
            await asyncio.wait_for(writer.drain(), READ_TIMEOUT)
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            pass
        finally:
            writer.close()
            if task is not None:
                self._conns.discard(task)

    async def _answer(self, reader: asyncio.StreamReader) -> tuple[int, str, bytes, bool]:
        text = "text/plain; charset=utf-8"
        line = await asyncio.wait_for(reader.readline(), READ_TIMEOUT)
        size = len(line)
        accept = ""
        while True:  # the headers: only Accept matters (for /metrics)
            h = await asyncio.wait_for(reader.readline(), READ_TIMEOUT)
            size += len(h)
            if h in (b"\r\n", b"\n", b"") or size > MAX_HEADER_BYTES:
                break
            name, _, value = h.decode("latin-1").partition(":")
            if name.strip().lower() == "accept":
                accept = value.strip()
        parts = line.decode("latin-1").split()
        if len(parts) != 3 or size > MAX_HEADER_BYTES:
            return 400, text, b"bad request\n", False
        method, target = parts[0], parts[1].split("?", 1)[0]
        head = method == "HEAD"
        if method not in ("GET", "HEAD"):
            return 405, text, b"method not allowed\n", False
        if target == "/healthz":
            return 200, text, b"ok", head
        if target == "/readyz":
            ready, reason = self.readiness()
            return (200, text, b"ready", head) if ready else (503, text, reason.encode(), head)
        if target == "/metrics":
            try:
                body, ctype = self.metrics(accept)
            except Exception as e:  # a collector that fails must not take the endpoint down
                return 500, text, f"{type(e).__name__}: {e}\n".encode(), head
            return 200, ctype, body, head
        return 404, text, b"not found: /healthz, /readyz, /metrics\n", head
