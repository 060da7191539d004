package busgate

import (
	"context"
	"errors"
	"strconv"
)

// ProtocolError is an error that carries a protocol error code (docs/protocol.md section 17): an ERR
// frame from the gateway, a failed RES status, a frame the codec rejected, or a check the client
// made locally before sending (Local is then true and nothing was sent).
//
// Use errors.As to read the code, or errors.Is with the sentinel errors below, which match by code:
// errors.Is(err, ErrNoResponders) is true for a RES with status 500.
type ProtocolError struct {
	Code    Code
	Message string
	RefOp   Op     // the op of the frame the error is about; 0: the connection itself
	RefID   uint64 // that frame's ack id or sid; 0: none
	Local   bool   // detected by this client, not sent by the gateway
}

func (e *ProtocolError) Error() string {
	s := "busgate: " + e.Code.String() + " (" + strconv.FormatUint(uint64(e.Code), 10) + ")"
	if e.Message != "" {
		s += ": " + e.Message
	}
	return s
}

// Fatal reports whether the code closes the connection when it comes in an ERR frame.
func (e *ProtocolError) Fatal() bool { return e.Code.Fatal() }

// Is matches the sentinel error of the code's family (see codeSentinel).
func (e *ProtocolError) Is(target error) bool {
	if t, ok := target.(*ProtocolError); ok {
		return t.Code == e.Code
	}
	s := codeSentinel(e.Code)
	return s != nil && s == target
}

// Sentinel errors. Those that name a protocol condition are matched by *ProtocolError values with
// the corresponding codes, so callers test with errors.Is.
var (
	ErrConnectionClosed     = errors.New("busgate: connection closed")
	ErrConnectionLost       = errors.New("busgate: connection lost before the answer arrived")
	ErrConnectionDraining   = errors.New("busgate: connection draining")
	ErrStaleConnection      = errors.New("busgate: no frame from the gateway within two heartbeat intervals")
	ErrReconnectBufExceeded = errors.New("busgate: reconnect buffer full")
	ErrBadSubscription      = errors.New("busgate: invalid subscription")
	ErrInvalidURL           = errors.New("busgate: invalid URL")
	ErrNoServers            = errors.New("busgate: no server could be reached")
	ErrInvalidArg           = errors.New("busgate: invalid argument")
	ErrSyncSubRequired      = errors.New("busgate: NextMsg needs a subscription made with SubscribeSync")

	// Durable consumption (section 16).
	ErrNotDurable    = errors.New("busgate: the message is not a durable delivery")
	ErrMsgSettled    = errors.New("busgate: the delivery was already acknowledged, nakked or terminated")
	ErrStaleDelivery = errors.New("busgate: the delivery arrived on a connection that has ended; the gateway released it for redelivery")
	ErrConsumeActive = errors.New("busgate: Consume is already running on this subscription")

	// Matched by codes.
	ErrTimeout              = errors.New("busgate: timeout")                              // REQUEST_TIMEOUT, or a local deadline
	ErrNoResponders         = errors.New("busgate: no responders")                        // NO_RESPONDERS
	ErrPermissionDenied     = errors.New("busgate: permission denied")                    // PERMISSION_DENIED
	ErrBadSubject           = errors.New("busgate: invalid subject")                      // INVALID_SUBJECT, WILDCARD_NOT_ALLOWED, RESERVED_SUBJECT
	ErrBadHeader            = errors.New("busgate: invalid header")                       // INVALID_HEADER, RESERVED_HEADER
	ErrBadQueue             = errors.New("busgate: invalid queue group")                  // INVALID_QUEUE
	ErrMaxPayload           = errors.New("busgate: payload too large")                    // PAYLOAD_TOO_LARGE
	ErrMaxFrame             = errors.New("busgate: frame too large")                      // FRAME_TOO_LARGE
	ErrTooManySubscriptions = errors.New("busgate: too many subscriptions")               // TOO_MANY_SUBSCRIPTIONS
	ErrRateLimited          = errors.New("busgate: publish rate limited")                 // RATE_LIMITED
	ErrTooManyRequests      = errors.New("busgate: too many requests in flight")          // TOO_MANY_REQUESTS
	ErrTooManyConnections   = errors.New("busgate: too many connections")                 // TOO_MANY_CONNECTIONS
	ErrSlowConsumer         = errors.New("busgate: slow consumer")                        // SLOW_CONSUMER_WARNING, SLOW_CONSUMER, and local pending limits
	ErrAuthFailed           = errors.New("busgate: authentication failed")                // AUTH_FAILED, AUTH_REVOKED, AUTH_METHOD_UNSUPPORTED
	ErrUnsupportedVersion   = errors.New("busgate: no common protocol version")           // UNSUPPORTED_VERSION
	ErrBusUnavailable       = errors.New("busgate: bus unavailable")                      // BUS_UNAVAILABLE
	ErrShuttingDown         = errors.New("busgate: gateway shutting down")                // SHUTTING_DOWN
	ErrNotSupported         = errors.New("busgate: not supported by this gateway")        // NOT_SUPPORTED
	ErrMalformedFrame       = errors.New("busgate: malformed frame")                      // MALFORMED_FRAME
	ErrIdleTimeout          = errors.New("busgate: closed by the gateway for silence")    // IDLE_TIMEOUT
	ErrInvalidOption        = errors.New("busgate: invalid option")                       // INVALID_OPTION
	ErrUnknownDelivery      = errors.New("busgate: delivery not outstanding")             // UNKNOWN_DELIVERY
	ErrUnknownStream        = errors.New("busgate: no stream stores the subject")         // UNKNOWN_STREAM
	ErrTooManyConsumers     = errors.New("busgate: too many durable consumers")           // TOO_MANY_CONSUMERS
	ErrNotStored            = errors.New("busgate: the stream did not store the message") // NOT_STORED
)

func codeSentinel(c Code) error {
	switch c {
	case CodeRequestTimeout:
		return ErrTimeout
	case CodeNoResponders:
		return ErrNoResponders
	case CodePermissionDenied:
		return ErrPermissionDenied
	case CodeInvalidSubject, CodeWildcardNotAllowed, CodeReservedSubject:
		return ErrBadSubject
	case CodeInvalidHeader, CodeReservedHeader:
		return ErrBadHeader
	case CodeInvalidQueue:
		return ErrBadQueue
	case CodePayloadTooLarge:
		return ErrMaxPayload
	case CodeFrameTooLarge:
		return ErrMaxFrame
	case CodeTooManySubscriptions:
		return ErrTooManySubscriptions
	case CodeRateLimited:
		return ErrRateLimited
	case CodeTooManyRequests:
		return ErrTooManyRequests
	case CodeTooManyConnections:
		return ErrTooManyConnections
	case CodeSlowConsumerWarning, CodeSlowConsumer:
		return ErrSlowConsumer
	case CodeAuthFailed, CodeAuthRevoked, CodeAuthMethodUnsupported:
		return ErrAuthFailed
	case CodeUnsupportedVersion:
		return ErrUnsupportedVersion
	case CodeBusUnavailable:
		return ErrBusUnavailable
	case CodeShuttingDown:
		return ErrShuttingDown
	case CodeNotSupported:
		return ErrNotSupported
	case CodeMalformedFrame:
		return ErrMalformedFrame
	case CodeIdleTimeout:
		return ErrIdleTimeout
	case CodeInvalidOption:
		return ErrInvalidOption
	case CodeUnknownDelivery:
		return ErrUnknownDelivery
	case CodeUnknownStream:
		return ErrUnknownStream
	case CodeTooManyConsumers:
		return ErrTooManyConsumers
	case CodeNotStored:
		return ErrNotStored
	}
	return nil
}

func protoErr(c Code, msg string) *ProtocolError {
	return &ProtocolError{Code: c, Message: msg, Local: true}
}

// timeoutError is returned when a caller's context deadline ends a wait: it is both ErrTimeout and
// the context's error.
type timeoutError struct{ ctxErr error }

func (e *timeoutError) Error() string        { return "busgate: timeout: " + e.ctxErr.Error() }
func (e *timeoutError) Is(target error) bool { return target == ErrTimeout }
func (e *timeoutError) Unwrap() error        { return e.ctxErr }

// ctxError maps a finished context to the error a blocking call returns.
func ctxError(err error) error {
	if errors.Is(err, context.DeadlineExceeded) {
		return &timeoutError{ctxErr: err}
	}
	return err
}
