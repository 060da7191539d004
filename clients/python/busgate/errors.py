"""Typed errors: one class per protocol error code (docs/protocol.md section 17), grouped by family.

Every error raised by this package is a :class:`BusgateError`. Errors that come from the gateway (an
ERR frame, a RES status) or from the codec carry the protocol ``code`` (an int) and ``name``
(``"NO_RESPONDERS"``); errors the client itself detects (the connection was lost, the outbound
buffer is full, ...) have ``code`` ``None``.

Families follow the hundreds of the code table::

    BusgateError
      FramingError    1xx  MalformedFrame, UnknownOp, FrameTooLarge, NotBusgate, HandshakeRequired,
                           UnsupportedVersion, HandshakeTimeout, UnexpectedOp
      AuthError       2xx  AuthMethodUnsupported, AuthFailed, AuthRevoked
      SubjectError    3xx  InvalidSubject, WildcardNotAllowed, ReservedSubject, ReservedHeader,
                           InvalidHeader, InvalidQueue, PermissionDenied, SidInUse, UnknownSid,
                           InvalidOption, UnknownDelivery, UnknownStream
      LimitError      4xx  PayloadTooLarge, TooManySubscriptions, RateLimited, TooManyRequests,
                           TooManyConnections, SlowConsumerWarning, SlowConsumer, TooManyConsumers
      RequestError    5xx  NoResponders, Timeout, BusUnavailable, DuplicateRequestId, NotStored
      GatewayError    6xx  InternalError, ShuttingDown, IdleTimeout, ClosedByAdmin, NotSupported
      ClientError     --   ConnectionClosed, ConnectionLost, NoServers, OutboundBufferFull,
                           SubscriptionClosed, InvalidURL, NotDurable, DeliverySettled

``Timeout`` is also a subclass of the built-in ``TimeoutError``; it is raised both for RES
REQUEST_TIMEOUT and for the client's own timers (``request`` safety net, ``Subscription.next``,
``flush``).
"""
from __future__ import annotations

from typing import ClassVar

__all__ = [
    "CODES", "NAMES", "FATAL", "error_for", "is_fatal",
    "BusgateError", "FramingError", "AuthError", "SubjectError", "LimitError", "RequestError",
    "GatewayError", "ClientError", "UnknownError",
    "MalformedFrame", "UnknownOp", "FrameTooLarge", "NotBusgate", "HandshakeRequired",
    "UnsupportedVersion", "HandshakeTimeout", "UnexpectedOp",
    "AuthMethodUnsupported", "AuthFailed", "AuthRevoked",
    "InvalidSubject", "WildcardNotAllowed", "ReservedSubject", "ReservedHeader", "InvalidHeader",
    "InvalidQueue", "PermissionDenied", "SidInUse", "UnknownSid", "InvalidOption", "UnknownDelivery",
    "UnknownStream",
    "PayloadTooLarge", "TooManySubscriptions", "RateLimited", "TooManyRequests",
    "TooManyConnections", "SlowConsumerWarning", "SlowConsumer", "TooManyConsumers",
    "NoResponders", "Timeout", "RequestTimeout", "BusUnavailable", "DuplicateRequestId", "NotStored",
    "InternalError", "ShuttingDown", "IdleTimeout", "ClosedByAdmin", "NotSupported",
    "ConnectionClosed", "ConnectionLost", "NoServers", "OutboundBufferFull", "SubscriptionClosed",
    "InvalidURL", "NotDurable", "DeliverySettled",
]

# docs/protocol.md section 17
CODES: dict[str, int] = {
    "MALFORMED_FRAME": 100, "UNKNOWN_OP": 101, "FRAME_TOO_LARGE": 102, "NOT_BUSGATE": 103,
    "HANDSHAKE_REQUIRED": 104, "UNSUPPORTED_VERSION": 105, "HANDSHAKE_TIMEOUT": 106,
    "UNEXPECTED_OP": 107, "AUTH_METHOD_UNSUPPORTED": 200, "AUTH_FAILED": 201, "AUTH_REVOKED": 202,
    "INVALID_SUBJECT": 300, "WILDCARD_NOT_ALLOWED": 301, "RESERVED_SUBJECT": 302,
    "RESERVED_HEADER": 303, "INVALID_HEADER": 304, "INVALID_QUEUE": 305, "PERMISSION_DENIED": 306,
    "SID_IN_USE": 307, "UNKNOWN_SID": 308, "INVALID_OPTION": 309, "UNKNOWN_DELIVERY": 310,
    "UNKNOWN_STREAM": 311, "PAYLOAD_TOO_LARGE": 400, "TOO_MANY_SUBSCRIPTIONS": 401,
    "RATE_LIMITED": 402, "TOO_MANY_REQUESTS": 403, "TOO_MANY_CONNECTIONS": 404,
    "SLOW_CONSUMER_WARNING": 405, "SLOW_CONSUMER": 406, "TOO_MANY_CONSUMERS": 407, "NO_RESPONDERS": 500,
    "REQUEST_TIMEOUT": 501, "BUS_UNAVAILABLE": 502, "DUPLICATE_REQUEST_ID": 503, "NOT_STORED": 504,
    "INTERNAL_ERROR": 600, "SHUTTING_DOWN": 601, "IDLE_TIMEOUT": 602, "CLOSED_BY_ADMIN": 603,
    "NOT_SUPPORTED": 604,
}
NAMES: dict[int, str] = {v: k for k, v in CODES.items()}
# Codes whose ERR closes the connection ("closes: yes" in section 17).
FATAL: frozenset[int] = frozenset({100, 102, 103, 104, 105, 106, 200, 201, 202, 404, 406, 601, 602, 603})


def is_fatal(code: int) -> bool:
    return code in FATAL


class BusgateError(Exception):
    """Base of every error of this package.

    ``code``: the protocol error code, or ``None`` for errors detected by the client.
    ``name``: the protocol error name (``"NO_RESPONDERS"``) or the class name for client errors.
    ``message``: human-readable detail (from the gateway when it sent one; not for parsing).
    ``ref_op``/``ref_id``: for ERR frames, the op and id of the frame that caused it.
    """

    code: ClassVar[int | None] = None
    default_message: ClassVar[str] = ""

    def __init__(self, message: str = "", *, code: int | None = None, ref_op: int | None = None,
                 ref_id: int | None = None) -> None:
        if code is not None:
            self.code = code  # type: ignore[misc]
        self.message = message or self.default_message
        self.ref_op = ref_op
        self.ref_id = ref_id
        super().__init__(self.message)

    @property
    def name(self) -> str:
        if self.code is not None:
            return NAMES.get(self.code, f"UNKNOWN_{self.code}")
        return type(self).__name__

    @property
    def fatal(self) -> bool:
        """Whether the gateway closes the connection after an ERR with this code."""
        return self.code is not None and self.code in FATAL

    def __str__(self) -> str:
        if self.code is not None:
            return f"{self.name} ({self.code}): {self.message}" if self.message else f"{self.name} ({self.code})"
        return self.message or self.name

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, code={self.code!r})"


class FramingError(BusgateError):
    """1xx: framing and handshake."""


class AuthError(BusgateError):
    """2xx: authentication."""


class SubjectError(BusgateError):
    """3xx: subjects, headers, queue groups, permissions and subscriptions."""


class LimitError(BusgateError):
    """4xx: limits."""


class RequestError(BusgateError):
    """5xx: request/reply and the bus."""


class GatewayError(BusgateError):
    """6xx: gateway state."""


class ClientError(BusgateError):
    """Errors detected by the client itself (``code`` is None)."""


class UnknownError(BusgateError):
    """A code this client does not know; treated as non-fatal (section 18)."""


def _mk(name: str, base: type[BusgateError], code: int, doc: str) -> type[BusgateError]:
    cls = type(name, (base,), {"code": code, "__doc__": f"{NAMES[code]} ({code}): {doc}"})
    cls.__module__ = __name__
    return cls


MalformedFrame = _mk("MalformedFrame", FramingError, 100, "not msgpack, wrong field type, trailing bytes")
UnknownOp = _mk("UnknownOp", FramingError, 101, "op code not in the op table")
FrameTooLarge = _mk("FrameTooLarge", FramingError, 102, "frame above the maximum frame size")
NotBusgate = _mk("NotBusgate", FramingError, 103, "the peer does not speak busgate framing")
HandshakeRequired = _mk("HandshakeRequired", FramingError, 104, "the first frame was not HELLO")
UnsupportedVersion = _mk("UnsupportedVersion", FramingError, 105, "no common protocol version")
HandshakeTimeout = _mk("HandshakeTimeout", FramingError, 106, "no HELLO before the deadline")
UnexpectedOp = _mk("UnexpectedOp", FramingError, 107, "op sent in the wrong direction")
AuthMethodUnsupported = _mk("AuthMethodUnsupported", AuthError, 200, "unknown authentication method")
AuthFailed = _mk("AuthFailed", AuthError, 201, "bad credentials")
AuthRevoked = _mk("AuthRevoked", AuthError, 202, "the credentials were revoked")
InvalidSubject = _mk("InvalidSubject", SubjectError, 300, "subject or reply subject grammar")
WildcardNotAllowed = _mk("WildcardNotAllowed", SubjectError, 301, "wildcard where a publish subject is needed")
ReservedSubject = _mk("ReservedSubject", SubjectError, 302, "$-prefixed subject")
ReservedHeader = _mk("ReservedHeader", SubjectError, 303, "busgate- header set by a client")
InvalidHeader = _mk("InvalidHeader", SubjectError, 304, "header grammar or too many headers")
InvalidQueue = _mk("InvalidQueue", SubjectError, 305, "queue group grammar")
PermissionDenied = _mk("PermissionDenied", SubjectError, 306, "tenant permissions forbid it")
SidInUse = _mk("SidInUse", SubjectError, 307, "SUB with a live sid")
UnknownSid = _mk("UnknownSid", SubjectError, 308,
                 "ACK, NAK, CREDIT, PROGRESS or TERM for a sid that is not live or not durable")
InvalidOption = _mk("InvalidOption", SubjectError, 309,
                    "a SUB option of the wrong type or range, a durable subject that is not the consumer's "
                    "filter, CREDIT without credit flow, or a bad msg_id")
UnknownDelivery = _mk("UnknownDelivery", SubjectError, 310,
                      "the delivery is not outstanding on the sid (already acknowledged, expired, released)")
UnknownStream = _mk("UnknownStream", SubjectError, 311, "a durable SUB whose subject no stream of the tenant stores")
PayloadTooLarge = _mk("PayloadTooLarge", LimitError, 400, "payload above max_payload")
TooManySubscriptions = _mk("TooManySubscriptions", LimitError, 401, "max_subs reached")
RateLimited = _mk("RateLimited", LimitError, 402, "tenant publish rate exceeded; message dropped")
TooManyRequests = _mk("TooManyRequests", LimitError, 403, "tenant max_inflight reached")
TooManyConnections = _mk("TooManyConnections", LimitError, 404, "tenant connection limit reached")
SlowConsumerWarning = _mk("SlowConsumerWarning", LimitError, 405, "outbound queue passed half of max_pending")
SlowConsumer = _mk("SlowConsumer", LimitError, 406, "outbound queue reached max_pending")
TooManyConsumers = _mk("TooManyConsumers", LimitError, 407,
                       "the tenant's max_consumers client-created durable consumers exist")
NoResponders = _mk("NoResponders", RequestError, 500, "nobody is subscribed to the request subject")


class Timeout(RequestError, TimeoutError):
    """REQUEST_TIMEOUT (501): no reply within the timeout; also raised by the client's own timers."""

    code = 501


RequestTimeout = Timeout
BusUnavailable = _mk("BusUnavailable", RequestError, 502, "the bus is unreachable")
DuplicateRequestId = _mk("DuplicateRequestId", RequestError, 503, "req_id already in flight")
NotStored = _mk("NotStored", RequestError, 504,
                "a stream could not store the message (full, storage failure); it was not published")
InternalError = _mk("InternalError", GatewayError, 600, "the gateway failed")
ShuttingDown = _mk("ShuttingDown", GatewayError, 601, "the gateway is draining")
IdleTimeout = _mk("IdleTimeout", GatewayError, 602, "no frame for 2 x heartbeat_ms")
ClosedByAdmin = _mk("ClosedByAdmin", GatewayError, 603, "an operator closed the connection")
NotSupported = _mk("NotSupported", GatewayError, 604, "a reserved feature this gateway does not implement")


class ConnectionClosed(ClientError):
    """The client is closed (or closing): no more operations."""

    default_message = "the client is closed"


class ConnectionLost(ClientError):
    """The connection dropped while the operation was in flight (e.g. a request whose RES never came)."""

    default_message = "the connection to the gateway was lost"


class NoServers(ClientError):
    """No server could be reached (initial connect, or reconnect attempts exhausted)."""

    default_message = "no busgate server could be reached"


class OutboundBufferFull(ClientError):
    """A publish while disconnected did not fit in the bounded reconnect buffer."""

    default_message = "the reconnect buffer is full"


class SubscriptionClosed(ClientError):
    """The subscription ended (unsubscribed, drained, failed or the client closed)."""

    default_message = "the subscription is closed"


class InvalidURL(ClientError, ValueError):
    """A server URL that is not one of busgate://, busgate+tls://, ws://, wss://."""


class NotDurable(ClientError):
    """ack, nak, in_progress or term on a message that is not a delivery of a durable subscription."""

    default_message = "this message is not a durable delivery: there is nothing to acknowledge"


class DeliverySettled(ClientError):
    """ack, nak, in_progress or term on a delivery this process already acknowledged, nakked or
    terminated (a programming error: each delivery is settled once)."""

    default_message = "the delivery was already settled"


_BY_CODE: dict[int, type[BusgateError]] = {}
for _cls in list(globals().values()):
    if isinstance(_cls, type) and issubclass(_cls, BusgateError) and _cls.code is not None:
        _BY_CODE.setdefault(_cls.code, _cls)


def error_for(code: int, message: str = "", ref_op: int | None = None, ref_id: int | None = None) -> BusgateError:
    """The typed error for a protocol code (an :class:`UnknownError` for codes this client does not know)."""
    cls = _BY_CODE.get(code)
    if cls is None:
        return UnknownError(message, code=code, ref_op=ref_op, ref_id=ref_id)
    return cls(message, ref_op=ref_op, ref_id=ref_id)


def error_class(code: int) -> type[BusgateError]:
    return _BY_CODE.get(code, UnknownError)
