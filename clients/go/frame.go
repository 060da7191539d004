package busgate

import (
	"encoding/binary"
	"math"

	"github.com/vmihailenco/msgpack/v5"
)

// Frame sizes (docs/protocol.md sections 2.1 and 6.5).
const (
	MaxFrameBeforeWelcome = 65535
	DefaultMaxFrame       = 1114112
)

// HeaderField is one header of a frame. Frames keep headers in the order they were sent.
type HeaderField struct {
	Key, Value string
}

// MapEntry is one entry of an auth, opts or limits map.
type MapEntry struct {
	Key   string
	Value any
}

// Map is a msgpack map with str keys, in the order the sender wrote it. Values are nil, bool,
// uint64 (non-negative integers), int64 (negative integers), float32, float64, string, []any or Map.
// A nil Map is an absent field; a non-nil empty Map is `{}`.
type Map []MapEntry

// Get returns the value stored under key.
func (m Map) Get(key string) (any, bool) {
	for _, e := range m {
		if e.Key == key {
			return e.Value, true
		}
	}
	return nil, false
}

// Uint returns the value under key as a uint64 when it is a non-negative integer.
func (m Map) Uint(key string) (uint64, bool) {
	v, ok := m.Get(key)
	if !ok {
		return 0, false
	}
	switch x := v.(type) {
	case uint64:
		return x, true
	}
	return 0, false
}

// Frame is one protocol frame (docs/protocol.md section 7). Only the fields of its Op are used; an
// optional uint field of 0 is absent, as are empty Headers and Servers. Name, Queue and ReplyTo are
// present when their Has* flag is set.
type Frame struct {
	Op Op

	// HELLO
	Versions []uint64
	Auth     Map
	Name     string
	HasName  bool
	Opts     Map // HELLO and SUB

	// WELCOME
	Version   uint64
	SessionID string
	NodeID    string
	Tenant    string
	Limits    Map

	// PUB, SUB, UNSUB, MSG, REQ, RES, ACK, NAK, CREDIT, PROGRESS, TERM
	SID        uint64 // SUB, UNSUB, MSG, ACK, NAK, CREDIT, PROGRESS, TERM
	ReqID      uint64 // REQ, RES
	Subject    string
	Queue      string
	HasQueue   bool
	Payload    []byte
	Headers    []HeaderField
	ReplyTo    string
	HasReplyTo bool
	Ack        uint64 // PUB
	MsgID      string // PUB: idempotency key, present when HasMsgID
	HasMsgID   bool
	MaxMsgs    uint64 // UNSUB
	DeliveryID uint64 // MSG, ACK, NAK, PROGRESS, TERM
	Attempt    uint64 // MSG
	TimeoutMS  uint64 // REQ
	Status     Code   // RES
	Credits    uint64 // CREDIT

	// OK, ERR
	Code    Code
	Message string
	RefOp   Op
	RefID   uint64

	// GOAWAY (DelayMS also NAK; Reason also TERM, where it is present when HasReason)
	DelayMS   uint64
	Reason    string
	HasReason bool
	Servers   []string
}

// sliceWriter lets a msgpack.Encoder append to a byte slice.
type sliceWriter struct{ b []byte }

func (w *sliceWriter) Write(p []byte) (int, error) { w.b = append(w.b, p...); return len(p), nil }
func (w *sliceWriter) WriteByte(c byte) error      { w.b = append(w.b, c); return nil }

// Encoder writes frames in the canonical encoding (section 3.3). The zero value is not usable;
// use NewEncoder. An Encoder is not safe for concurrent use.
type Encoder struct {
	w   sliceWriter
	enc *msgpack.Encoder
}

// NewEncoder returns an Encoder.
func NewEncoder() *Encoder {
	e := &Encoder{}
	e.enc = msgpack.NewEncoder(&e.w)
	return e
}

// AppendFrame appends f to dst as a full TCP frame (length prefix and body) and returns the
// extended slice. It does not check the grammar rules; the client does that before encoding.
func (e *Encoder) AppendFrame(dst []byte, f *Frame) ([]byte, error) {
	start := len(dst)
	e.w.b = append(dst, 0, 0, 0, 0)
	err := e.body(f)
	out := e.w.b
	e.w.b = nil
	if err != nil {
		return dst, err
	}
	n := len(out) - start - 4
	if uint64(n) > math.MaxUint32 {
		return dst, protoErr(CodeFrameTooLarge, "frame body above 4 GiB")
	}
	binary.BigEndian.PutUint32(out[start:], uint32(n))
	return out, nil
}

// AppendBody appends the msgpack body of f (no length prefix), as sent in a busgate.v1 WebSocket
// message.
func (e *Encoder) AppendBody(dst []byte, f *Frame) ([]byte, error) {
	e.w.b = dst
	err := e.body(f)
	out := e.w.b
	e.w.b = nil
	if err != nil {
		return dst, err
	}
	return out, nil
}

func (e *Encoder) nils(n int) {
	for ; n > 0; n-- {
		e.w.b = append(e.w.b, 0xc0)
	}
}

func (e *Encoder) str(s string)  { _ = e.enc.EncodeString(s) }
func (e *Encoder) uint(v uint64) { _ = e.enc.EncodeUint(v) }
func (e *Encoder) bin(b []byte) {
	_ = e.enc.EncodeBytesLen(len(b)) // bin even when empty or nil: payloads are always bin
	e.w.b = append(e.w.b, b...)
}

func (e *Encoder) headers(h []HeaderField) {
	_ = e.enc.EncodeMapLen(len(h))
	for i := range h {
		e.str(h[i].Key)
		e.str(h[i].Value)
	}
}

func (e *Encoder) strArray(a []string) {
	_ = e.enc.EncodeArrayLen(len(a))
	for _, s := range a {
		e.str(s)
	}
}

func (e *Encoder) mapValue(m Map, depth int) error {
	if depth > maxDepth {
		return protoErr(CodeMalformedFrame, "nesting too deep")
	}
	_ = e.enc.EncodeMapLen(len(m))
	for _, kv := range m {
		e.str(kv.Key)
		if err := e.anyValue(kv.Value, depth+1); err != nil {
			return err
		}
	}
	return nil
}

func (e *Encoder) anyValue(v any, depth int) error {
	if depth > maxDepth {
		return protoErr(CodeMalformedFrame, "nesting too deep")
	}
	switch x := v.(type) {
	case nil:
		_ = e.enc.EncodeNil()
	case bool:
		_ = e.enc.EncodeBool(x)
	case uint64:
		e.uint(x)
	case int64:
		_ = e.enc.EncodeInt(x)
	case int:
		_ = e.enc.EncodeInt(int64(x))
	case uint:
		e.uint(uint64(x))
	case uint32:
		e.uint(uint64(x))
	case int32:
		_ = e.enc.EncodeInt(int64(x))
	case float32:
		_ = e.enc.EncodeFloat32(x)
	case float64:
		_ = e.enc.EncodeFloat64(x)
	case string:
		e.str(x)
	case []any:
		_ = e.enc.EncodeArrayLen(len(x))
		for _, el := range x {
			if err := e.anyValue(el, depth+1); err != nil {
				return err
			}
		}
	case Map:
		return e.mapValue(x, depth)
	case []string:
		e.strArray(x)
	default:
		return protoErr(CodeMalformedFrame, "unsupported value type in a map")
	}
	return nil
}

// body writes the canonical msgpack body: trailing absent fields omitted, nil for absent fields
// before present ones.
func (e *Encoder) body(f *Frame) error {
	switch f.Op {
	case OpHello:
		if len(f.Versions) == 0 {
			return protoErr(CodeMalformedFrame, "HELLO needs at least one version")
		}
		n := 3
		if f.HasName {
			n = 4
		}
		if f.Opts != nil {
			n = 5
		}
		_ = e.enc.EncodeArrayLen(n)
		e.uint(uint64(OpHello))
		_ = e.enc.EncodeArrayLen(len(f.Versions))
		for _, v := range f.Versions {
			e.uint(v)
		}
		auth := f.Auth
		if auth == nil {
			auth = Map{}
		}
		if err := e.mapValue(auth, 0); err != nil {
			return err
		}
		if n >= 4 {
			if f.HasName {
				e.str(f.Name)
			} else {
				e.nils(1)
			}
		}
		if n == 5 {
			return e.mapValue(f.Opts, 0)
		}
	case OpWelcome:
		_ = e.enc.EncodeArrayLen(6)
		e.uint(uint64(OpWelcome))
		e.uint(f.Version)
		e.str(f.SessionID)
		e.str(f.NodeID)
		e.str(f.Tenant)
		limits := f.Limits
		if limits == nil {
			limits = Map{}
		}
		return e.mapValue(limits, 0)
	case OpPub:
		e.pub(f.Subject, f.Payload, f.Headers, f.ReplyTo, f.HasReplyTo, f.Ack, f.MsgID, f.HasMsgID)
	case OpSub:
		n := 3
		if f.HasQueue {
			n = 4
		}
		if f.Opts != nil {
			n = 5
		}
		_ = e.enc.EncodeArrayLen(n)
		e.uint(uint64(OpSub))
		e.uint(f.SID)
		e.str(f.Subject)
		if n >= 4 {
			if f.HasQueue {
				e.str(f.Queue)
			} else {
				e.nils(1)
			}
		}
		if n == 5 {
			return e.mapValue(f.Opts, 0)
		}
	case OpUnsub:
		if f.MaxMsgs != 0 {
			_ = e.enc.EncodeArrayLen(3)
		} else {
			_ = e.enc.EncodeArrayLen(2)
		}
		e.uint(uint64(OpUnsub))
		e.uint(f.SID)
		if f.MaxMsgs != 0 {
			e.uint(f.MaxMsgs)
		}
	case OpMsg:
		n := 4
		if len(f.Headers) > 0 {
			n = 5
		}
		if f.HasReplyTo {
			n = 6
		}
		if f.DeliveryID != 0 {
			n = 7
		}
		if f.Attempt != 0 {
			n = 8
		}
		_ = e.enc.EncodeArrayLen(n)
		e.uint(uint64(OpMsg))
		e.uint(f.SID)
		e.str(f.Subject)
		e.bin(f.Payload)
		if n >= 5 {
			if len(f.Headers) > 0 {
				e.headers(f.Headers)
			} else {
				e.nils(1)
			}
		}
		if n >= 6 {
			if f.HasReplyTo {
				e.str(f.ReplyTo)
			} else {
				e.nils(1)
			}
		}
		if n >= 7 {
			e.optUint(f.DeliveryID)
		}
		if n == 8 {
			e.uint(f.Attempt)
		}
	case OpReq:
		e.req(f.ReqID, f.Subject, f.Payload, f.Headers, f.TimeoutMS)
	case OpRes:
		n := 4
		if len(f.Headers) > 0 {
			n = 5
		}
		_ = e.enc.EncodeArrayLen(n)
		e.uint(uint64(OpRes))
		e.uint(f.ReqID)
		e.uint(uint64(f.Status))
		e.bin(f.Payload)
		if n == 5 {
			e.headers(f.Headers)
		}
	case OpOK:
		_ = e.enc.EncodeArrayLen(3)
		e.uint(uint64(OpOK))
		e.uint(uint64(f.RefOp))
		e.uint(f.RefID)
	case OpErr:
		n := 3
		if f.RefOp != 0 {
			n = 4
		}
		if f.RefID != 0 {
			n = 5
		}
		_ = e.enc.EncodeArrayLen(n)
		e.uint(uint64(OpErr))
		e.uint(uint64(f.Code))
		e.str(f.Message)
		if n >= 4 {
			if f.RefOp != 0 {
				e.uint(uint64(f.RefOp))
			} else {
				e.nils(1)
			}
		}
		if n == 5 {
			e.uint(f.RefID)
		}
	case OpPing, OpPong:
		_ = e.enc.EncodeArrayLen(1)
		e.uint(uint64(f.Op))
	case OpGoAway:
		n := 3
		if len(f.Servers) > 0 {
			n = 4
		}
		_ = e.enc.EncodeArrayLen(n)
		e.uint(uint64(OpGoAway))
		e.uint(f.DelayMS)
		e.str(f.Reason)
		if n == 4 {
			e.strArray(f.Servers)
		}
	case OpAck:
		_ = e.enc.EncodeArrayLen(3)
		e.uint(uint64(OpAck))
		e.uint(f.SID)
		e.uint(f.DeliveryID)
	case OpNak:
		if f.DelayMS != 0 {
			_ = e.enc.EncodeArrayLen(4)
		} else {
			_ = e.enc.EncodeArrayLen(3)
		}
		e.uint(uint64(OpNak))
		e.uint(f.SID)
		e.uint(f.DeliveryID)
		if f.DelayMS != 0 {
			e.uint(f.DelayMS)
		}
	case OpCredit:
		_ = e.enc.EncodeArrayLen(3)
		e.uint(uint64(OpCredit))
		e.uint(f.SID)
		e.uint(f.Credits)
	case OpProgress:
		_ = e.enc.EncodeArrayLen(3)
		e.uint(uint64(OpProgress))
		e.uint(f.SID)
		e.uint(f.DeliveryID)
	case OpTerm:
		if f.HasReason {
			_ = e.enc.EncodeArrayLen(4)
		} else {
			_ = e.enc.EncodeArrayLen(3)
		}
		e.uint(uint64(OpTerm))
		e.uint(f.SID)
		e.uint(f.DeliveryID)
		if f.HasReason {
			e.str(f.Reason)
		}
	default:
		return protoErr(CodeUnknownOp, "cannot encode "+f.Op.String())
	}
	return nil
}

// optUint writes an optional uint field that precedes a present one: nil when it is 0 (absent).
func (e *Encoder) optUint(v uint64) {
	if v == 0 {
		e.nils(1)
	} else {
		e.uint(v)
	}
}

func (e *Encoder) pub(subject string, payload []byte, h []HeaderField, reply string, hasReply bool, ack uint64,
	msgID string, hasMsgID bool) {
	n := 3
	if len(h) > 0 {
		n = 4
	}
	if hasReply {
		n = 5
	}
	if ack != 0 {
		n = 6
	}
	if hasMsgID {
		n = 7
	}
	e.w.b = append(e.w.b, 0x90|byte(n), byte(OpPub))
	e.str(subject)
	e.bin(payload)
	if n >= 4 {
		if len(h) > 0 {
			e.headers(h)
		} else {
			e.nils(1)
		}
	}
	if n >= 5 {
		if hasReply {
			e.str(reply)
		} else {
			e.nils(1)
		}
	}
	if n >= 6 {
		e.optUint(ack)
	}
	if n == 7 {
		e.str(msgID)
	}
}

func (e *Encoder) req(id uint64, subject string, payload []byte, h []HeaderField, timeoutMS uint64) {
	n := 4
	if len(h) > 0 {
		n = 5
	}
	if timeoutMS != 0 {
		n = 6
	}
	e.w.b = append(e.w.b, 0x90|byte(n), byte(OpReq))
	e.uint(id)
	e.str(subject)
	e.bin(payload)
	if n >= 5 {
		if len(h) > 0 {
			e.headers(h)
		} else {
			e.nils(1)
		}
	}
	if n == 6 {
		e.uint(timeoutMS)
	}
}

// appendPub appends a PUB frame (length prefix and body) to dst; the client's hot path.
func (e *Encoder) appendPub(dst []byte, subject string, data []byte, h []HeaderField, reply string, ack uint64) []byte {
	start := len(dst)
	e.w.b = append(dst, 0, 0, 0, 0)
	e.pub(subject, data, h, reply, reply != "", ack, "", false)
	return e.finish(start)
}

// appendStoredPub appends a PUB frame with an ack id and an idempotency key (empty: none).
func (e *Encoder) appendStoredPub(dst []byte, subject string, data []byte, h []HeaderField, reply string, ack uint64,
	msgID string) []byte {
	start := len(dst)
	e.w.b = append(dst, 0, 0, 0, 0)
	e.pub(subject, data, h, reply, reply != "", ack, msgID, msgID != "")
	return e.finish(start)
}

// appendReq appends a REQ frame to dst.
func (e *Encoder) appendReq(dst []byte, id uint64, subject string, data []byte, h []HeaderField, timeoutMS uint64) []byte {
	start := len(dst)
	e.w.b = append(dst, 0, 0, 0, 0)
	e.req(id, subject, data, h, timeoutMS)
	return e.finish(start)
}

func (e *Encoder) finish(start int) []byte {
	out := e.w.b
	e.w.b = nil
	binary.BigEndian.PutUint32(out[start:], uint32(len(out)-start-4))
	return out
}
