package busgate

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"io"
	"math"
	"strconv"
	"strings"
	"unicode/utf8"
)

// The JSON mapping of frames (docs/protocol.md section 4): the busgate.v1.json WebSocket
// subprotocol, and the `decoded` member of the conformance vectors.

// payload marks a bin payload among a frame's JSON fields.
type payload []byte

// positional returns f's fields after the op in their JSON form, with trailing absent fields
// omitted and nil for absent fields before present ones.
func (f *Frame) positional() []any {
	var v []any
	opt := func(present bool, x any) {
		if present {
			v = append(v, x)
		} else {
			v = append(v, nil)
		}
	}
	hdr := func() any {
		m := make(Map, len(f.Headers))
		for i, h := range f.Headers {
			m[i] = MapEntry{h.Key, h.Value}
		}
		return m
	}
	switch f.Op {
	case OpHello:
		vs := make([]any, len(f.Versions))
		for i, x := range f.Versions {
			vs[i] = x
		}
		v = append(v, vs, f.Auth)
		opt(f.HasName, f.Name)
		opt(f.Opts != nil, f.Opts)
	case OpWelcome:
		v = append(v, f.Version, f.SessionID, f.NodeID, f.Tenant, f.Limits)
	case OpPub:
		v = append(v, f.Subject, payload(f.Payload))
		opt(len(f.Headers) > 0, hdr())
		opt(f.HasReplyTo, f.ReplyTo)
		opt(f.Ack != 0, f.Ack)
		opt(f.HasMsgID, f.MsgID)
	case OpSub:
		v = append(v, f.SID, f.Subject)
		opt(f.HasQueue, f.Queue)
		opt(f.Opts != nil, f.Opts)
	case OpUnsub:
		v = append(v, f.SID)
		opt(f.MaxMsgs != 0, f.MaxMsgs)
	case OpMsg:
		v = append(v, f.SID, f.Subject, payload(f.Payload))
		opt(len(f.Headers) > 0, hdr())
		opt(f.HasReplyTo, f.ReplyTo)
		opt(f.DeliveryID != 0, f.DeliveryID)
		opt(f.Attempt != 0, f.Attempt)
	case OpReq:
		v = append(v, f.ReqID, f.Subject, payload(f.Payload))
		opt(len(f.Headers) > 0, hdr())
		opt(f.TimeoutMS != 0, f.TimeoutMS)
	case OpRes:
		v = append(v, f.ReqID, uint64(f.Status), payload(f.Payload))
		opt(len(f.Headers) > 0, hdr())
	case OpOK:
		v = append(v, uint64(f.RefOp), f.RefID)
	case OpErr:
		v = append(v, uint64(f.Code), f.Message)
		opt(f.RefOp != 0, uint64(f.RefOp))
		opt(f.RefID != 0, f.RefID)
	case OpGoAway:
		v = append(v, f.DelayMS, f.Reason)
		opt(len(f.Servers) > 0, f.Servers)
	case OpAck:
		v = append(v, f.SID, f.DeliveryID)
	case OpNak:
		v = append(v, f.SID, f.DeliveryID)
		opt(f.DelayMS != 0, f.DelayMS)
	case OpCredit:
		v = append(v, f.SID, f.Credits)
	case OpProgress:
		v = append(v, f.SID, f.DeliveryID)
	case OpTerm:
		v = append(v, f.SID, f.DeliveryID)
		opt(f.HasReason, f.Reason)
	}
	for len(v) > 0 && v[len(v)-1] == nil {
		v = v[:len(v)-1]
	}
	return v
}

// AppendJSON appends the canonical JSON text of f (section 4): compact, object members in order,
// payloads as a string when they are valid UTF-8 and as {"base64": ...} otherwise.
func AppendJSON(dst []byte, f *Frame) []byte {
	dst = append(dst, '[')
	dst = strconv.AppendUint(dst, uint64(f.Op), 10)
	for _, x := range f.positional() {
		dst = append(dst, ',')
		dst = appendJSONValue(dst, x)
	}
	return append(dst, ']')
}

func appendJSONValue(dst []byte, v any) []byte {
	switch x := v.(type) {
	case nil:
		return append(dst, "null"...)
	case bool:
		return strconv.AppendBool(dst, x)
	case uint64:
		return strconv.AppendUint(dst, x, 10)
	case int64:
		return strconv.AppendInt(dst, x, 10)
	case float32:
		return appendJSONFloat(dst, float64(x), 32)
	case float64:
		return appendJSONFloat(dst, x, 64)
	case string:
		return appendJSONString(dst, x)
	case json.Number:
		return append(dst, x...)
	case payload:
		if utf8.Valid(x) {
			return appendJSONString(dst, string(x))
		}
		dst = append(dst, `{"base64":"`...)
		dst = base64.StdEncoding.AppendEncode(dst, x)
		return append(dst, `"}`...)
	case []string:
		dst = append(dst, '[')
		for i, s := range x {
			if i > 0 {
				dst = append(dst, ',')
			}
			dst = appendJSONString(dst, s)
		}
		return append(dst, ']')
	case []any:
		dst = append(dst, '[')
		for i, el := range x {
			if i > 0 {
				dst = append(dst, ',')
			}
			dst = appendJSONValue(dst, el)
		}
		return append(dst, ']')
	case Map:
		dst = append(dst, '{')
		for i, e := range x {
			if i > 0 {
				dst = append(dst, ',')
			}
			dst = appendJSONString(dst, e.Key)
			dst = append(dst, ':')
			dst = appendJSONValue(dst, e.Value)
		}
		return append(dst, '}')
	}
	return append(dst, "null"...)
}

func appendJSONFloat(dst []byte, f float64, bits int) []byte {
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return append(dst, "null"...) // JSON has no NaN or infinities
	}
	s := strconv.FormatFloat(f, 'g', -1, bits)
	if !strings.ContainsAny(s, ".eE") {
		s += ".0" // stays a float when read back
	}
	return append(dst, s...)
}

const hexDigits = "0123456789abcdef"

// appendJSONString writes s with only the escapes JSON requires; non-ASCII stays UTF-8.
func appendJSONString(dst []byte, s string) []byte {
	dst = append(dst, '"')
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '"' || c == '\\':
			dst = append(dst, '\\', c)
		case c == '\n':
			dst = append(dst, '\\', 'n')
		case c == '\r':
			dst = append(dst, '\\', 'r')
		case c == '\t':
			dst = append(dst, '\\', 't')
		case c < 0x20:
			dst = append(dst, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&15])
		default:
			dst = append(dst, c)
		}
	}
	return append(dst, '"')
}

// ParseJSON decodes a frame in the JSON mapping sent by from, with the same checks as the msgpack
// decoder: errors are *ProtocolError (MALFORMED_FRAME for JSON that is not valid or has a value of
// the wrong type, then UNKNOWN_OP, UNEXPECTED_OP and the grammar codes).
func ParseJSON(text []byte, from Sender) (*Frame, error) {
	if !utf8.Valid(text) || hasLoneSurrogate(text) {
		return nil, malformed("JSON text is not valid UTF-8")
	}
	dec := json.NewDecoder(bytes.NewReader(text))
	dec.UseNumber()
	v, err := jsonValue(dec, 0)
	if err != nil {
		return nil, err
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, malformed("data after the JSON value")
	}
	arr, ok := v.([]any)
	if !ok || len(arr) == 0 {
		return nil, malformed("JSON frame is not a non-empty array")
	}
	opv, err := jsonUint(arr[0], true)
	if err != nil {
		return nil, malformed("op is not a uint")
	}
	f := &Frame{Op: Op(opv)}
	if f.Op < OpHello || f.Op > opLast {
		return f, &ProtocolError{Code: CodeUnknownOp, Message: "unknown op", RefOp: f.Op, Local: true}
	}
	if !f.Op.sentBy(from) {
		return f, &ProtocolError{Code: CodeUnexpectedOp, Message: "unexpected op", RefOp: f.Op, Local: true}
	}
	if err := f.fromJSONFields(arr[1:]); err != nil {
		return nil, err
	}
	if from == FromClient {
		if code := grammar(f); code != 0 {
			return f, &ProtocolError{Code: code, Message: code.String(), RefOp: f.Op, RefID: refID(f), Local: true}
		}
	}
	return f, nil
}

// hasLoneSurrogate finds a \uD800-\uDFFF escape that is not a valid surrogate pair.
func hasLoneSurrogate(text []byte) bool {
	inStr := false
	for i := 0; i < len(text); i++ {
		c := text[i]
		if !inStr {
			if c == '"' {
				inStr = true
			}
			continue
		}
		switch c {
		case '"':
			inStr = false
		case '\\':
			if i+1 < len(text) && text[i+1] == 'u' && i+6 <= len(text) {
				r, err := strconv.ParseUint(string(text[i+2:i+6]), 16, 32)
				if err == nil && r >= 0xd800 && r <= 0xdfff {
					if r >= 0xdc00 {
						return true
					}
					ok := i+12 <= len(text) && text[i+6] == '\\' && text[i+7] == 'u'
					if ok {
						r2, err := strconv.ParseUint(string(text[i+8:i+12]), 16, 32)
						ok = err == nil && r2 >= 0xdc00 && r2 <= 0xdfff
					}
					if !ok {
						return true
					}
					i += 6
				}
				i += 5
			} else {
				i++
			}
		}
	}
	return false
}

// jsonValue reads one JSON value: objects become Map (in order, no repeated members), numbers stay
// json.Number.
func jsonValue(dec *json.Decoder, depth int) (any, error) {
	if depth > maxDepth {
		return nil, malformed("nesting too deep")
	}
	tok, err := dec.Token()
	if err != nil {
		return nil, malformed("invalid JSON")
	}
	switch t := tok.(type) {
	case json.Delim:
		switch t {
		case '[':
			a := []any{}
			for dec.More() {
				v, err := jsonValue(dec, depth+1)
				if err != nil {
					return nil, err
				}
				a = append(a, v)
			}
			if _, err := dec.Token(); err != nil {
				return nil, malformed("invalid JSON")
			}
			return a, nil
		case '{':
			m := Map{}
			for dec.More() {
				kt, err := dec.Token()
				if err != nil {
					return nil, malformed("invalid JSON")
				}
				k, _ := kt.(string)
				if _, dup := m.Get(k); dup {
					return nil, malformed("repeated member name")
				}
				v, err := jsonValue(dec, depth+1)
				if err != nil {
					return nil, err
				}
				m = append(m, MapEntry{k, v})
			}
			if _, err := dec.Token(); err != nil {
				return nil, malformed("invalid JSON")
			}
			return m, nil
		}
		return nil, malformed("invalid JSON")
	default:
		return t, nil // string, json.Number, bool, nil
	}
}

func jsonUint(v any, req bool) (uint64, error) {
	if v == nil && !req {
		return 0, nil
	}
	n, ok := v.(json.Number)
	if !ok || strings.ContainsAny(string(n), ".eE-") {
		return 0, malformed("expected a uint")
	}
	u, err := strconv.ParseUint(string(n), 10, 64)
	if err != nil {
		return 0, malformed("uint out of range")
	}
	return u, nil
}

func jsonID(v any, req bool) (uint64, error) {
	u, err := jsonUint(v, req)
	if err == nil && u > math.MaxUint32 {
		return 0, malformed("id above uint32")
	}
	return u, err
}

func jsonStr(v any, req bool) (string, bool, error) {
	if v == nil && !req {
		return "", false, nil
	}
	s, ok := v.(string)
	if !ok {
		return "", false, malformed("expected a string")
	}
	return s, true, nil
}

func jsonPayload(v any) ([]byte, error) {
	switch x := v.(type) {
	case string:
		return []byte(x), nil
	case Map:
		if len(x) != 1 || x[0].Key != "base64" {
			return nil, malformed(`payload object must have exactly the member "base64"`)
		}
		s, ok := x[0].Value.(string)
		if !ok {
			return nil, malformed("base64 member is not a string")
		}
		b, err := base64.StdEncoding.Strict().DecodeString(s)
		if err != nil {
			return nil, malformed("invalid base64")
		}
		return b, nil
	}
	return nil, malformed("payload is not a string or a base64 object")
}

func jsonHeaders(v any) ([]HeaderField, error) {
	if v == nil {
		return nil, nil
	}
	m, ok := v.(Map)
	if !ok {
		return nil, malformed("headers is not an object")
	}
	if len(m) == 0 {
		return nil, nil
	}
	h := make([]HeaderField, len(m))
	for i, e := range m {
		s, ok := e.Value.(string)
		if !ok {
			return nil, malformed("header value is not a string")
		}
		h[i] = HeaderField{e.Key, s}
	}
	return h, nil
}

// jsonMap converts an object for auth, opts or limits: numbers become uint64, int64 or float64.
func jsonMap(v any, req bool) (Map, error) {
	if v == nil && !req {
		return nil, nil
	}
	m, ok := v.(Map)
	if !ok {
		return nil, malformed("expected an object")
	}
	out := make(Map, len(m))
	for i, e := range m {
		x, err := jsonAny(e.Value)
		if err != nil {
			return nil, err
		}
		out[i] = MapEntry{e.Key, x}
	}
	return out, nil
}

func jsonAny(v any) (any, error) {
	switch x := v.(type) {
	case json.Number:
		s := string(x)
		if !strings.ContainsAny(s, ".eE") {
			if u, err := strconv.ParseUint(s, 10, 64); err == nil {
				return u, nil
			}
			if i, err := strconv.ParseInt(s, 10, 64); err == nil {
				return i, nil
			}
		}
		f, err := strconv.ParseFloat(s, 64)
		if err != nil {
			return nil, malformed("number out of range")
		}
		return f, nil
	case []any:
		out := make([]any, len(x))
		for i, el := range x {
			var err error
			if out[i], err = jsonAny(el); err != nil {
				return nil, err
			}
		}
		return out, nil
	case Map:
		return jsonMap(x, true)
	}
	return v, nil
}

func (f *Frame) fromJSONFields(a []any) error {
	var required, defined int
	switch f.Op {
	case OpHello:
		required, defined = 2, 4
	case OpWelcome:
		required, defined = 5, 5
	case OpPub:
		required, defined = 2, 6
	case OpSub:
		required, defined = 2, 4
	case OpUnsub:
		required, defined = 1, 2
	case OpMsg:
		required, defined = 3, 7
	case OpReq:
		required, defined = 3, 5
	case OpRes:
		required, defined = 3, 4
	case OpOK, OpAck, OpCredit, OpProgress:
		required, defined = 2, 2
	case OpTerm:
		required, defined = 2, 3
	case OpErr:
		required, defined = 2, 4
	case OpGoAway:
		required, defined = 2, 3
	case OpNak:
		required, defined = 2, 3
	}
	if len(a) < required {
		return malformed(f.Op.String() + " misses a required field")
	}
	a = a[:min(len(a), defined)]
	for len(a) < defined {
		a = append(a, nil)
	}
	var err error
	set := func(e error) {
		if err == nil {
			err = e
		}
	}
	var e error
	switch f.Op {
	case OpHello:
		vs, ok := a[0].([]any)
		if !ok || len(vs) == 0 {
			return malformed("versions is not a non-empty array")
		}
		for _, x := range vs {
			u, e := jsonUint(x, true)
			set(e)
			f.Versions = append(f.Versions, u)
		}
		f.Auth, e = jsonMap(a[1], true)
		set(e)
		f.Name, f.HasName, e = jsonStr(a[2], false)
		set(e)
		f.Opts, e = jsonMap(a[3], false)
		set(e)
	case OpWelcome:
		f.Version, e = jsonUint(a[0], true)
		set(e)
		f.SessionID, _, e = jsonStr(a[1], true)
		set(e)
		f.NodeID, _, e = jsonStr(a[2], true)
		set(e)
		f.Tenant, _, e = jsonStr(a[3], true)
		set(e)
		f.Limits, e = jsonMap(a[4], true)
		set(e)
	case OpPub, OpMsg, OpReq:
		i := 0
		if f.Op != OpPub {
			if f.Op == OpMsg {
				f.SID, e = jsonID(a[0], true)
			} else {
				f.ReqID, e = jsonID(a[0], true)
			}
			set(e)
			i = 1
		}
		f.Subject, _, e = jsonStr(a[i], true)
		set(e)
		f.Payload, e = jsonPayload(a[i+1])
		set(e)
		f.Headers, e = jsonHeaders(a[i+2])
		set(e)
		switch f.Op {
		case OpPub:
			f.ReplyTo, f.HasReplyTo, e = jsonStr(a[3], false)
			set(e)
			f.Ack, e = jsonID(a[4], false)
			set(e)
			f.MsgID, f.HasMsgID, e = jsonStr(a[5], false)
		case OpMsg:
			f.ReplyTo, f.HasReplyTo, e = jsonStr(a[4], false)
			set(e)
			f.DeliveryID, e = jsonUint(a[5], false)
			set(e)
			f.Attempt, e = jsonUint(a[6], false)
		case OpReq:
			f.TimeoutMS, e = jsonUint(a[4], false)
		}
		set(e)
	case OpSub:
		f.SID, e = jsonID(a[0], true)
		set(e)
		f.Subject, _, e = jsonStr(a[1], true)
		set(e)
		f.Queue, f.HasQueue, e = jsonStr(a[2], false)
		set(e)
		f.Opts, e = jsonMap(a[3], false)
		set(e)
	case OpUnsub:
		f.SID, e = jsonID(a[0], true)
		set(e)
		f.MaxMsgs, e = jsonUint(a[1], false)
		set(e)
	case OpRes:
		f.ReqID, e = jsonID(a[0], true)
		set(e)
		var s uint64
		s, e = jsonUint(a[1], true)
		f.Status = Code(s)
		set(e)
		f.Payload, e = jsonPayload(a[2])
		set(e)
		f.Headers, e = jsonHeaders(a[3])
		set(e)
	case OpOK:
		var r uint64
		r, e = jsonUint(a[0], true)
		f.RefOp = Op(r)
		set(e)
		f.RefID, e = jsonUint(a[1], true)
		set(e)
	case OpErr:
		var c, r uint64
		c, e = jsonUint(a[0], true)
		f.Code = Code(c)
		set(e)
		f.Message, _, e = jsonStr(a[1], true)
		set(e)
		r, e = jsonUint(a[2], false)
		f.RefOp = Op(r)
		set(e)
		f.RefID, e = jsonUint(a[3], false)
		set(e)
	case OpGoAway:
		f.DelayMS, e = jsonUint(a[0], true)
		set(e)
		f.Reason, _, e = jsonStr(a[1], true)
		set(e)
		if a[2] != nil {
			arr, ok := a[2].([]any)
			if !ok {
				return malformed("servers is not an array")
			}
			for _, x := range arr {
				s, _, e := jsonStr(x, true)
				set(e)
				f.Servers = append(f.Servers, s)
			}
		}
	case OpAck, OpNak, OpCredit, OpProgress, OpTerm:
		f.SID, e = jsonID(a[0], true)
		set(e)
		var v uint64
		v, e = jsonUint(a[1], true)
		set(e)
		if f.Op == OpCredit {
			f.Credits = v
		} else {
			f.DeliveryID = v
		}
		switch f.Op {
		case OpNak:
			f.DelayMS, e = jsonUint(a[2], false)
			set(e)
		case OpTerm:
			f.Reason, f.HasReason, e = jsonStr(a[2], false)
			set(e)
		}
	}
	return err
}
