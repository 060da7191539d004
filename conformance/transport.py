"""Byte transports for the runner: plain TCP with busgate framing, and a small RFC 6455 WebSocket
client written here (no WebSocket library), so the suite can also send what libraries refuse to:
wrong message types, empty messages, fragments, oversized messages."""
from __future__ import annotations

import base64
import hashlib
import os
import socket
import struct
import time
from urllib.parse import urlparse

WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_CONT, OP_TEXT, OP_BIN, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


class Closed(Exception):
    """The peer closed the transport. For WebSocket, ws_code/ws_reason hold its Close frame."""

    def __init__(self, how: str, ws_code: int | None = None, ws_reason: str = ""):
        super().__init__(how + (f" (close code {ws_code} {ws_reason!r})" if ws_code is not None else ""))
        self.how = how
        self.ws_code = ws_code
        self.ws_reason = ws_reason


class WsRefused(Exception):
    """The HTTP upgrade was not accepted."""

    def __init__(self, status: int, reason: str, headers: dict, body: bytes):
        super().__init__(f"HTTP {status} {reason}")
        self.status = status
        self.headers = headers
        self.body = body


def parse_hostport(url: str, default_port: int) -> tuple[str, int]:
    u = urlparse(url)
    return (u.hostname or "127.0.0.1"), (u.port or default_port)


class _SocketReader:
    """Reads the raw socket into self.buf, shared by both transports."""
    eof_message = "closed by the gateway"  # what an orderly TCP close means for this transport

    def _fill(self, deadline: float):
        if self.eof:
            raise Closed("closed by the gateway")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        self.sock.settimeout(remaining)
        try:
            chunk = self.sock.recv(262144)
        except socket.timeout as e:
            raise TimeoutError from e
        except (ConnectionResetError, ConnectionAbortedError) as e:
            self.eof = True
            raise Closed("connection reset by the gateway") from e
        if not chunk:
            self.eof = True
            raise Closed(self.eof_message)
        self.buf += chunk


class TcpTransport(_SocketReader):
    kind = "tcp"

    def __init__(self, host: str, port: int, timeout: float = 5.0, rcvbuf: int | None = None):
        self.sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        self.sock.connect((host, port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.eof = False

    def send_bytes(self, data: bytes):
        try:
            self.sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError) as e:
            raise Closed("reset while sending") from e


    def recv_message(self, timeout: float, max_frame: int) -> bytes:
        """One frame body. Raises TimeoutError, Closed, or ValueError (length above the maximum)."""
        deadline = time.monotonic() + timeout
        while len(self.buf) < 4:
            self._fill(deadline)
        (n,) = struct.unpack(">I", self.buf[:4])
        if n > max_frame:
            raise ValueError(f"gateway frame length {n} above the maximum {max_frame}")
        while len(self.buf) < 4 + n:
            self._fill(deadline)
        body, self.buf = self.buf[4:4 + n], self.buf[4 + n:]
        return body

    def recv_raw_until_close(self, timeout: float) -> tuple[bytes, bool]:
        """Every byte until the peer closes (True) or the timeout passes (False)."""
        deadline = time.monotonic() + timeout
        try:
            while True:
                self._fill(deadline)
        except Closed:
            data, self.buf = self.buf, b""
            return data, True
        except TimeoutError:
            data, self.buf = self.buf, b""
            return data, False

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


class WsTransport(_SocketReader):
    """A WebSocket client connection. `messages` are (opcode, payload) after reassembly."""

    eof_message = "TCP closed without a WebSocket Close frame"

    def __init__(self, url: str, subprotocols: list[str] | None, timeout: float = 5.0, extra_headers=None):
        u = urlparse(url)
        self.host, self.port = u.hostname or "127.0.0.1", u.port or 80
        path = u.path or "/"
        self.sock = socket.create_connection((self.host, self.port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [f"GET {path} HTTP/1.1", f"Host: {self.host}:{self.port}", "Upgrade: websocket",
                 "Connection: Upgrade", f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13"]
        if subprotocols:
            lines.append("Sec-WebSocket-Protocol: " + ", ".join(subprotocols))
        for k, v in (extra_headers or {}).items():
            lines.append(f"{k}: {v}")
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        self.buf = b""
        self.eof = False
        deadline = time.monotonic() + timeout
        while b"\r\n\r\n" not in self.buf:
            try:
                self._fill(deadline)
            except Closed as e:
                raise WsRefused(0, "connection closed during the upgrade", {}, self.buf) from e
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        status_line, *hdr_lines = head.decode("latin-1").split("\r\n")
        parts = status_line.split(" ", 2)
        status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
        headers = {}
        for ln in hdr_lines:
            if ":" in ln:
                k, v = ln.split(":", 1)
                headers[k.strip().lower()] = v.strip()
        if status != 101:
            body = self.buf
            n = int(headers.get("content-length", "0") or 0)
            try:
                while len(body) < n:
                    self._fill(deadline)
                    body = self.buf
            except (Closed, TimeoutError):
                pass
            self.close()
            raise WsRefused(status, parts[2] if len(parts) > 2 else "", headers, body)
        expect = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
        self.accept_ok = headers.get("sec-websocket-accept") == expect
        self.subprotocol = headers.get("sec-websocket-protocol")
        self.headers = headers
        self.close_code: int | None = None
        self.close_reason = ""
        self.close_sent = False

    # -- raw socket

    def _need(self, n: int, deadline: float):
        while len(self.buf) < n:
            self._fill(deadline)

    # -- frames
    def send_frame(self, opcode: int, payload: bytes, fin: bool = True):
        head = bytes([(0x80 if fin else 0) | opcode])
        n = len(payload)
        if n < 126:
            head += bytes([0x80 | n])
        elif n < 65536:
            head += bytes([0x80 | 126]) + struct.pack(">H", n)
        else:
            head += bytes([0x80 | 127]) + struct.pack(">Q", n)
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload)) if n < 4096 else _mask_fast(payload, mask)
        try:
            self.sock.sendall(head + mask + masked)
        except (BrokenPipeError, ConnectionResetError) as e:
            raise Closed("reset while sending") from e

    def send_message(self, opcode: int, payload: bytes, fragments: int = 1):
        if fragments <= 1 or len(payload) < fragments:
            return self.send_frame(opcode, payload)
        step = max(1, len(payload) // fragments)
        chunks = [payload[i:i + step] for i in range(0, len(payload), step)]
        for i, c in enumerate(chunks):
            self.send_frame(opcode if i == 0 else OP_CONT, c, fin=i == len(chunks) - 1)

    def send_close(self, code: int = 1000, reason: str = ""):
        if self.close_sent:
            return
        self.close_sent = True
        try:
            self.send_frame(OP_CLOSE, struct.pack(">H", code) + reason.encode())
        except Closed:
            pass

    def _read_frame(self, deadline: float):
        self._need(2, deadline)
        b0, b1 = self.buf[0], self.buf[1]
        fin, opcode, masked, n = bool(b0 & 0x80), b0 & 0x0F, bool(b1 & 0x80), b1 & 0x7F
        off = 2
        if n == 126:
            self._need(4, deadline)
            n = struct.unpack(">H", self.buf[2:4])[0]
            off = 4
        elif n == 127:
            self._need(10, deadline)
            n = struct.unpack(">Q", self.buf[2:10])[0]
            off = 10
        if masked:
            off += 4
        self._need(off + n, deadline)
        payload = self.buf[off:off + n]
        if masked:
            mask = self.buf[off - 4:off]
            payload = _mask_fast(payload, mask)
        self.buf = self.buf[off + n:]
        return fin, opcode, payload, masked

    def recv_message(self, timeout: float) -> tuple[int, bytes]:
        """The next data message (opcode, payload). Pings are answered; a Close raises Closed."""
        deadline = time.monotonic() + timeout
        parts, first_op = [], None
        while True:
            fin, opcode, payload, masked = self._read_frame(deadline)
            if masked:
                self.server_masked = True
            if opcode == OP_PING:
                self.send_frame(OP_PONG, payload)
                self.pongs_sent = getattr(self, "pongs_sent", 0) + 1
                continue
            if opcode == OP_PONG:
                self.pongs_received = getattr(self, "pongs_received", 0) + 1
                continue
            if opcode == OP_CLOSE:
                code = struct.unpack(">H", payload[:2])[0] if len(payload) >= 2 else None
                reason = payload[2:].decode("utf-8", "replace")
                self.close_code, self.close_reason = code, reason
                self.send_close(code if code in (1000, 1001) else 1000)
                self.eof = True
                raise Closed("WebSocket Close", code, reason)
            if opcode in (OP_TEXT, OP_BIN):
                first_op, parts = opcode, [payload]
            elif opcode == OP_CONT:
                parts.append(payload)
            if fin and first_op is not None:
                return first_op, b"".join(parts)

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def _mask_fast(data: bytes, mask: bytes) -> bytes:
    if not data:
        return b""
    n = len(data)
    m = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "big") ^ int.from_bytes(m, "big")).to_bytes(n, "big")
