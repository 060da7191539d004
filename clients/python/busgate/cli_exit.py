"""busgate-cli exit codes and error reporting: every error is printed once, to stderr, as
``busgate-cli: NAME (code): message``, and the exit code tells a script what went wrong.

===  =====================  ==========================================================================
code name                   when
===  =====================  ==========================================================================
0    OK                     success
1    ERROR                  any other busgate error (INVALID_SUBJECT, NOT_STORED, RATE_LIMITED, ...)
2    USAGE                  bad arguments, an unknown context, a context token variable that is unset
3    NO_RESPONDERS          a request found nobody subscribed to its subject (NO_RESPONDERS, 500)
4    TIMEOUT                no reply in time (REQUEST_TIMEOUT, 501, or the client's own timer)
5    AUTH                   the gateway refused the credentials (AUTH_FAILED 201, AUTH_REVOKED 202,
                            AUTH_METHOD_UNSUPPORTED 200)
6    PERMISSION_DENIED      the tenant's permissions forbid the subject (PERMISSION_DENIED, 306)
7    SERVICE_ERROR          the reply carried an ``error`` header: the service's handler failed
8    CONNECTION             the gateway could not be reached, or the connection was lost mid-call
130  INTERRUPTED            SIGINT (143 for SIGTERM)
141  BROKEN_PIPE            standard output was closed by its reader (| head -1); nothing printed
===  =====================  ==========================================================================
"""
from __future__ import annotations

import re
import sys
from typing import Any

from . import errors as E

OK, ERROR, USAGE, NO_RESPONDERS, TIMEOUT, AUTH, PERMISSION_DENIED, SERVICE_ERROR, CONNECTION = range(9)
INTERRUPTED = 130
TERMINATED = 143
BROKEN_PIPE = 141

#: (code, name, meaning) rows, for --help and the documentation.
TABLE: list[tuple[int, str, str]] = [
    (OK, "OK", "success"),
    (ERROR, "ERROR", "any other busgate error (INVALID_SUBJECT, NOT_STORED, ...)"),
    (USAGE, "USAGE", "bad arguments, unknown context"),
    (NO_RESPONDERS, "NO_RESPONDERS", "nobody serves the request subject (500)"),
    (TIMEOUT, "TIMEOUT", "no reply in time (REQUEST_TIMEOUT 501, or the client's timer)"),
    (AUTH, "AUTH", "credentials refused (AUTH_FAILED 201, AUTH_REVOKED 202)"),
    (PERMISSION_DENIED, "PERMISSION_DENIED", "the tenant may not use the subject (306)"),
    (SERVICE_ERROR, "SERVICE_ERROR", "the reply carried an 'error' header: the handler failed"),
    (CONNECTION, "CONNECTION", "gateway unreachable, or the connection was lost mid-call"),
    (INTERRUPTED, "INTERRUPTED", "SIGINT (143: SIGTERM)"),
    (BROKEN_PIPE, "BROKEN_PIPE", "stdout closed by its reader (| head -1), nothing printed"),
]

#: The reply header a service sets when its handler failed (busgate.program: ``<Type>: <message>``).
SERVICE_ERROR_HEADER = "error"


def epilog() -> str:
    rows = "\n".join(f"  {code:>3}  {name:<18} {meaning}" for code, name, meaning in TABLE)
    return ("exit codes:\n" + rows + "\n\nerrors are printed once, on stderr, as 'busgate-cli: NAME (code): message'"
            "\n(no '(code)' for errors without a protocol code: NO_SERVERS, SERVICE_ERROR, ...)")


class ServiceError(Exception):
    """A reply whose ``error`` header says the service's handler failed."""

    def __init__(self, subject: str, detail: str) -> None:
        self.subject = subject
        self.detail = detail
        super().__init__(f"the service on {subject!r} failed: {detail}")


class UsageError(Exception):
    """A usage problem found after argument parsing (unknown context, unset token variable)."""


def service_error(subject: str, headers: dict[str, str] | None) -> ServiceError | None:
    for k, v in (headers or {}).items():
        if k.lower() == SERVICE_ERROR_HEADER:
            return ServiceError(subject, v or "(no detail)")
    return None


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).upper()


def error_line(err: BaseException) -> str:
    """``busgate-cli: NAME (code): message`` for one error."""
    if isinstance(err, ServiceError):
        return f"busgate-cli: SERVICE_ERROR: {err}"
    if isinstance(err, UsageError):
        return f"busgate-cli: USAGE: {err}"
    if isinstance(err, E.BusgateError):
        if err.code is not None:
            head = f"{err.name} ({err.code})"
        else:
            head = _snake(type(err).__name__)
        return f"busgate-cli: {head}: {err.message}" if err.message and err.message != head else f"busgate-cli: {head}"
    text = str(err) or type(err).__name__
    return f"busgate-cli: {_snake(type(err).__name__)}: {text}"


def exit_code(err: BaseException) -> int:
    if isinstance(err, ServiceError):
        return SERVICE_ERROR
    if isinstance(err, UsageError):
        return USAGE
    if isinstance(err, E.NoResponders):
        return NO_RESPONDERS
    if isinstance(err, (E.Timeout, TimeoutError)):
        return TIMEOUT
    if isinstance(err, E.AuthError):
        return AUTH
    if isinstance(err, E.PermissionDenied):
        return PERMISSION_DENIED
    if isinstance(err, (E.NoServers, E.ConnectionLost, ConnectionError)):
        return CONNECTION
    return ERROR


def _is_warning(err: BaseException) -> bool:
    return isinstance(err, E.SlowConsumerWarning)


class Reporter:
    """Prints each error once and remembers the first failure.

    It is the client's ``on_error`` callback (errors not tied to a call: an ERR for a PUB without
    ack, a fatal ERR during the handshake, SLOW_CONSUMER_WARNING, ...) and the final handler of the
    error a command raised; the same error reaching both is printed once."""

    def __init__(self, stream: Any = None) -> None:
        self._stream = stream
        self._printed: set[str] = set()
        self.first: BaseException | None = None

    def __call__(self, err: BaseException) -> None:  # on_error
        self.report(err)

    def report(self, err: BaseException) -> None:
        line = error_line(err)
        if line not in self._printed:
            self._printed.add(line)
            print(line, file=self._stream or sys.stderr, flush=True)
        if self.first is None and not _is_warning(err):
            self.first = err

    def finish(self, raised: BaseException | None) -> int:
        """Report what the command raised (None: it returned) and return the exit code."""
        if raised is not None:
            # a generic consequence (the client closed) says less than the error that closed it
            if isinstance(raised, (E.ConnectionClosed, E.SubscriptionClosed)) and self.first is not None:
                return exit_code(self.first)
            self.report(raised)
            return exit_code(raised)
        return exit_code(self.first) if self.first is not None else OK
