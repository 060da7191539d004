package busgate

import "strconv"

// Op is the operation code of a frame (docs/protocol.md section 5).
type Op uint64

// The v1 op table.
const (
	OpHello    Op = 1
	OpWelcome  Op = 2
	OpPub      Op = 3
	OpSub      Op = 4
	OpUnsub    Op = 5
	OpMsg      Op = 6
	OpReq      Op = 7
	OpRes      Op = 8
	OpOK       Op = 9
	OpErr      Op = 10
	OpPing     Op = 11
	OpPong     Op = 12
	OpGoAway   Op = 13
	OpAck      Op = 14
	OpNak      Op = 15
	OpCredit   Op = 16
	OpProgress Op = 17
	OpTerm     Op = 18
)

// opLast is the highest op code of v1.
const opLast = OpTerm

var opNames = [...]string{"", "HELLO", "WELCOME", "PUB", "SUB", "UNSUB", "MSG", "REQ", "RES", "OK", "ERR",
	"PING", "PONG", "GOAWAY", "ACK", "NAK", "CREDIT", "PROGRESS", "TERM"}

func (o Op) String() string {
	if o >= 1 && o <= opLast {
		return opNames[o]
	}
	return "OP(" + strconv.FormatUint(uint64(o), 10) + ")"
}

// Sender says who sent a frame; the decoder applies the direction and grammar rules of that sender.
type Sender uint8

const (
	FromClient Sender = iota
	FromGateway
)

// direction of each op: which sender may send it.
func (o Op) sentBy(s Sender) bool {
	switch o {
	case OpHello, OpPub, OpSub, OpUnsub, OpReq, OpAck, OpNak, OpCredit, OpProgress, OpTerm:
		return s == FromClient
	case OpWelcome, OpMsg, OpRes, OpOK, OpErr, OpGoAway:
		return s == FromGateway
	case OpPing, OpPong:
		return true
	}
	return false
}

// Code is a protocol error code (docs/protocol.md section 17). It appears in ERR frames, as a RES
// status, and in errors of the codec.
type Code uint64

// The v1 error codes.
const (
	CodeMalformedFrame        Code = 100
	CodeUnknownOp             Code = 101
	CodeFrameTooLarge         Code = 102
	CodeNotBusgate            Code = 103
	CodeHandshakeRequired     Code = 104
	CodeUnsupportedVersion    Code = 105
	CodeHandshakeTimeout      Code = 106
	CodeUnexpectedOp          Code = 107
	CodeAuthMethodUnsupported Code = 200
	CodeAuthFailed            Code = 201
	CodeAuthRevoked           Code = 202
	CodeInvalidSubject        Code = 300
	CodeWildcardNotAllowed    Code = 301
	CodeReservedSubject       Code = 302
	CodeReservedHeader        Code = 303
	CodeInvalidHeader         Code = 304
	CodeInvalidQueue          Code = 305
	CodePermissionDenied      Code = 306
	CodeSIDInUse              Code = 307
	CodeUnknownSID            Code = 308
	CodeInvalidOption         Code = 309
	CodeUnknownDelivery       Code = 310
	CodeUnknownStream         Code = 311
	CodePayloadTooLarge       Code = 400
	CodeTooManySubscriptions  Code = 401
	CodeRateLimited           Code = 402
	CodeTooManyRequests       Code = 403
	CodeTooManyConnections    Code = 404
	CodeSlowConsumerWarning   Code = 405
	CodeSlowConsumer          Code = 406
	CodeTooManyConsumers      Code = 407
	CodeNoResponders          Code = 500
	CodeRequestTimeout        Code = 501
	CodeBusUnavailable        Code = 502
	CodeDuplicateRequestID    Code = 503
	CodeNotStored             Code = 504
	CodeInternalError         Code = 600
	CodeShuttingDown          Code = 601
	CodeIdleTimeout           Code = 602
	CodeClosedByAdmin         Code = 603
	CodeNotSupported          Code = 604
)

type codeInfo struct {
	name  string
	fatal bool
}

var codeTable = map[Code]codeInfo{
	CodeMalformedFrame:        {"MALFORMED_FRAME", true},
	CodeUnknownOp:             {"UNKNOWN_OP", false},
	CodeFrameTooLarge:         {"FRAME_TOO_LARGE", true},
	CodeNotBusgate:            {"NOT_BUSGATE", true},
	CodeHandshakeRequired:     {"HANDSHAKE_REQUIRED", true},
	CodeUnsupportedVersion:    {"UNSUPPORTED_VERSION", true},
	CodeHandshakeTimeout:      {"HANDSHAKE_TIMEOUT", true},
	CodeUnexpectedOp:          {"UNEXPECTED_OP", false},
	CodeAuthMethodUnsupported: {"AUTH_METHOD_UNSUPPORTED", true},
	CodeAuthFailed:            {"AUTH_FAILED", true},
	CodeAuthRevoked:           {"AUTH_REVOKED", true},
	CodeInvalidSubject:        {"INVALID_SUBJECT", false},
	CodeWildcardNotAllowed:    {"WILDCARD_NOT_ALLOWED", false},
	CodeReservedSubject:       {"RESERVED_SUBJECT", false},
	CodeReservedHeader:        {"RESERVED_HEADER", false},
	CodeInvalidHeader:         {"INVALID_HEADER", false},
	CodeInvalidQueue:          {"INVALID_QUEUE", false},
	CodePermissionDenied:      {"PERMISSION_DENIED", false},
	CodeSIDInUse:              {"SID_IN_USE", false},
	CodeUnknownSID:            {"UNKNOWN_SID", false},
	CodeInvalidOption:         {"INVALID_OPTION", false},
	CodeUnknownDelivery:       {"UNKNOWN_DELIVERY", false},
	CodeUnknownStream:         {"UNKNOWN_STREAM", false},
	CodePayloadTooLarge:       {"PAYLOAD_TOO_LARGE", false},
	CodeTooManySubscriptions:  {"TOO_MANY_SUBSCRIPTIONS", false},
	CodeRateLimited:           {"RATE_LIMITED", false},
	CodeTooManyRequests:       {"TOO_MANY_REQUESTS", false},
	CodeTooManyConnections:    {"TOO_MANY_CONNECTIONS", true},
	CodeSlowConsumerWarning:   {"SLOW_CONSUMER_WARNING", false},
	CodeSlowConsumer:          {"SLOW_CONSUMER", true},
	CodeTooManyConsumers:      {"TOO_MANY_CONSUMERS", false},
	CodeNoResponders:          {"NO_RESPONDERS", false},
	CodeRequestTimeout:        {"REQUEST_TIMEOUT", false},
	CodeBusUnavailable:        {"BUS_UNAVAILABLE", false},
	CodeDuplicateRequestID:    {"DUPLICATE_REQUEST_ID", false},
	CodeNotStored:             {"NOT_STORED", false},
	CodeInternalError:         {"INTERNAL_ERROR", false},
	CodeShuttingDown:          {"SHUTTING_DOWN", true},
	CodeIdleTimeout:           {"IDLE_TIMEOUT", true},
	CodeClosedByAdmin:         {"CLOSED_BY_ADMIN", true},
	CodeNotSupported:          {"NOT_SUPPORTED", false},
}

// String returns the code's name, e.g. "NO_RESPONDERS", or "CODE_<n>" for a code this version does
// not know.
func (c Code) String() string {
	if ci, ok := codeTable[c]; ok {
		return ci.name
	}
	return "CODE_" + strconv.FormatUint(uint64(c), 10)
}

// Fatal reports whether an ERR with this code closes the connection. Unknown codes are non-fatal
// (section 17); if the gateway closes anyway, the client sees the connection drop.
func (c Code) Fatal() bool { return codeTable[c].fatal }

// CodeByName returns the code with the given name (section 17).
func CodeByName(name string) (Code, bool) {
	for c, ci := range codeTable {
		if ci.name == name {
			return c, true
		}
	}
	return 0, false
}
