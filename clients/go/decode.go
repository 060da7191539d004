package busgate

import (
	"bytes"
	"encoding/binary"
	"io"
	"math"
	"unicode/utf8"

	"github.com/vmihailenco/msgpack/v5"
)

// maxDepth bounds nesting inside a body. The spec requires at least 16 levels (section 3.2).
const maxDepth = 32

// Decoder decodes frame bodies with the checks of docs/protocol.md section 3.4, in order. The zero
// value is not usable; use NewDecoder. A Decoder is not safe for concurrent use.
type Decoder struct {
	body []byte
	br   bytes.Reader
	d    *msgpack.Decoder

	// reuse: Headers of decoded frames alias hdrBuf and are valid until the next call (the client's
	// read loop copies them out at once).
	reuse  bool
	hdrBuf []HeaderField
	intern [internSlots]string
}

// internSlots is the size of the decoder's cache of recent short strings (subjects, header keys
// and values repeat from message to message): a hit saves an allocation.
const internSlots = 256

// NewDecoder returns a Decoder.
func NewDecoder() *Decoder {
	d := &Decoder{}
	d.d = msgpack.NewDecoder(&d.br)
	return d
}

func malformed(msg string) *ProtocolError { return protoErr(CodeMalformedFrame, msg) }

var errTruncated = malformed("truncated msgpack")

// DecodeFrame decodes one full TCP frame (4-byte length prefix and body) at the start of data,
// applying maxFrame to the length prefix. It returns the number of bytes the frame used. When data
// holds less than a whole frame it returns io.ErrUnexpectedEOF (a stream reader waits for more).
// Errors are *ProtocolError with the code of the first failed check; for grammar errors (check 7)
// the frame is also filled in.
func (d *Decoder) DecodeFrame(data []byte, from Sender, maxFrame int, f *Frame) (int, error) {
	if len(data) < 4 {
		return 0, io.ErrUnexpectedEOF
	}
	n := binary.BigEndian.Uint32(data)
	if n == 0 {
		return 0, malformed("zero-length frame")
	}
	if uint64(n) > uint64(maxFrame) {
		return 0, protoErr(CodeFrameTooLarge, "frame above the maximum frame size")
	}
	if uint64(len(data)-4) < uint64(n) {
		return 0, io.ErrUnexpectedEOF
	}
	return 4 + int(n), d.DecodeBody(data[4:4+n], from, f)
}

// DecodeBody decodes one msgpack body sent by from into f.
func (d *Decoder) DecodeBody(body []byte, from Sender, f *Frame) error {
	*f = Frame{}
	d.body = body
	d.br.Reset(body)
	err := d.decodeBody(from, f)
	d.body = nil
	return err
}

func (d *Decoder) pos() int { return len(d.body) - d.br.Len() }

// peek returns the next type byte. The body is in memory, so it is read directly rather than
// through msgpack.Decoder.PeekCode (an interface call each time).
func (d *Decoder) peek() (byte, error) {
	p := d.pos()
	if p >= len(d.body) {
		return 0, errTruncated
	}
	return d.body[p], nil
}

// skip advances past n bytes that were checked to be there.
func (d *Decoder) skip(n int) { _, _ = d.br.Seek(int64(n), io.SeekCurrent) }

func (d *Decoder) skipByte() { d.skip(1) }

func (d *Decoder) decodeBody(from Sender, f *Frame) error {
	c, err := d.peek()
	if err != nil {
		return malformed("empty body")
	}
	if !isArray(c) {
		return malformed("body is not an array")
	}
	n, err := d.arrayLen()
	if err != nil {
		return err
	}
	if n == 0 {
		if d.br.Len() != 0 {
			return malformed("bytes after the body")
		}
		return malformed("body is an empty array")
	}
	opv, err := d.readUint(true)
	if err != nil {
		return malformed("op is not a uint")
	}
	op := Op(opv)
	f.Op = op
	nf := n - 1
	if op < OpHello || op > opLast || !op.sentBy(from) {
		if err := d.scanRest(nf, true); err != nil {
			return err
		}
		if op < OpHello || op > opLast {
			return &ProtocolError{Code: CodeUnknownOp, Message: "unknown op " + op.String(), RefOp: op, Local: true}
		}
		return &ProtocolError{Code: CodeUnexpectedOp, Message: op.String() + " may not be sent by this side", RefOp: op, Local: true}
	}
	defined, err := d.fields(f, nf)
	if err != nil {
		return err
	}
	for i := defined; i < nf; i++ { // unknown trailing fields: well-formed, no ext
		if err := d.scan(0, false); err != nil {
			return err
		}
	}
	if d.br.Len() != 0 {
		return malformed("bytes after the body")
	}
	if from == FromClient {
		if code := grammar(f); code != 0 {
			return &ProtocolError{Code: code, Message: code.String(), RefOp: op, RefID: refID(f), Local: true}
		}
	}
	return nil
}

// scanRest checks that count more values and then the end of the body are well-formed msgpack
// (check 2 of section 3.4), so that a later check is only reported for a well-formed body.
func (d *Decoder) scanRest(count int, allowExt bool) error {
	for i := 0; i < count; i++ {
		if err := d.scan(0, allowExt); err != nil {
			return err
		}
	}
	if d.br.Len() > 0 {
		return malformed("bytes after the body")
	}
	return nil
}

func refID(f *Frame) uint64 {
	switch f.Op {
	case OpPub:
		return f.Ack
	case OpSub, OpUnsub:
		return f.SID
	case OpReq:
		return f.ReqID
	}
	return 0
}

// grammar applies check 7 to a client frame.
func grammar(f *Frame) Code {
	switch f.Op {
	case OpPub:
		if c := checkSubject(f.Subject, false); c != 0 {
			return c
		}
		if f.HasReplyTo {
			if c := checkSubject(f.ReplyTo, false); c != 0 {
				return c
			}
		}
		if c := checkHeaderFields(f.Headers); c != 0 {
			return c
		}
		if f.HasMsgID && !validMsgID(f.MsgID) {
			return CodeInvalidOption
		}
	case OpSub:
		if c := checkSubject(f.Subject, true); c != 0 {
			return c
		}
		if f.HasQueue {
			return checkQueue(f.Queue)
		}
	case OpReq:
		if c := checkSubject(f.Subject, false); c != 0 {
			return c
		}
		return checkHeaderFields(f.Headers)
	}
	return 0
}

// fields decodes the fields an op defines. nf is the number of fields present after the op. It
// returns how many fields it consumed.
func (d *Decoder) fields(f *Frame, nf int) (int, error) {
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
	case OpOK:
		required, defined = 2, 2
	case OpErr:
		required, defined = 2, 4
	case OpPing, OpPong:
		required, defined = 0, 0
	case OpGoAway:
		required, defined = 2, 3
	case OpAck:
		required, defined = 2, 2
	case OpNak:
		required, defined = 2, 3
	case OpCredit, OpProgress:
		required, defined = 2, 2
	case OpTerm:
		required, defined = 2, 3
	}
	if nf < required {
		return 0, malformed(f.Op.String() + " misses a required field")
	}
	k := min(nf, defined)
	for i := 0; i < k; i++ {
		if err := d.field(f, i, i < required); err != nil {
			return 0, err
		}
	}
	return k, nil
}

// field decodes field i (0-based, after the op) of f.Op.
func (d *Decoder) field(f *Frame, i int, req bool) error {
	var err error
	switch f.Op {
	case OpHello:
		switch i {
		case 0:
			f.Versions, err = d.readUintArray()
			if err == nil && len(f.Versions) == 0 {
				err = malformed("HELLO versions is empty")
			}
		case 1:
			f.Auth, err = d.readMap(req)
		case 2:
			f.Name, f.HasName, err = d.readStr(req)
		case 3:
			f.Opts, err = d.readMap(req)
		}
	case OpWelcome:
		switch i {
		case 0:
			f.Version, err = d.readUint(req)
		case 1:
			f.SessionID, _, err = d.readStr(req)
		case 2:
			f.NodeID, _, err = d.readStr(req)
		case 3:
			f.Tenant, _, err = d.readStr(req)
		case 4:
			f.Limits, err = d.readMap(req)
		}
	case OpPub:
		switch i {
		case 0:
			f.Subject, _, err = d.readStr(req)
		case 1:
			f.Payload, err = d.readBin()
		case 2:
			f.Headers, err = d.readHeaders()
		case 3:
			f.ReplyTo, f.HasReplyTo, err = d.readStr(req)
		case 4:
			f.Ack, err = d.readID(req)
		case 5:
			f.MsgID, f.HasMsgID, err = d.readStr(req)
		}
	case OpSub:
		switch i {
		case 0:
			f.SID, err = d.readID(req)
		case 1:
			f.Subject, _, err = d.readStr(req)
		case 2:
			f.Queue, f.HasQueue, err = d.readStr(req)
		case 3:
			f.Opts, err = d.readMap(req)
		}
	case OpUnsub:
		switch i {
		case 0:
			f.SID, err = d.readID(req)
		case 1:
			f.MaxMsgs, err = d.readUint(req)
		}
	case OpMsg:
		switch i {
		case 0:
			f.SID, err = d.readID(req)
		case 1:
			f.Subject, _, err = d.readStr(req)
		case 2:
			f.Payload, err = d.readBin()
		case 3:
			f.Headers, err = d.readHeaders()
		case 4:
			f.ReplyTo, f.HasReplyTo, err = d.readStr(req)
		case 5:
			f.DeliveryID, err = d.readUint(req)
		case 6:
			f.Attempt, err = d.readUint(req)
		}
	case OpReq:
		switch i {
		case 0:
			f.ReqID, err = d.readID(req)
		case 1:
			f.Subject, _, err = d.readStr(req)
		case 2:
			f.Payload, err = d.readBin()
		case 3:
			f.Headers, err = d.readHeaders()
		case 4:
			f.TimeoutMS, err = d.readUint(req)
		}
	case OpRes:
		switch i {
		case 0:
			f.ReqID, err = d.readID(req)
		case 1:
			var s uint64
			s, err = d.readUint(req)
			f.Status = Code(s)
		case 2:
			f.Payload, err = d.readBin()
		case 3:
			f.Headers, err = d.readHeaders()
		}
	case OpOK:
		switch i {
		case 0:
			var v uint64
			v, err = d.readUint(req)
			f.RefOp = Op(v)
		case 1:
			f.RefID, err = d.readUint(req)
		}
	case OpErr:
		switch i {
		case 0:
			var v uint64
			v, err = d.readUint(req)
			f.Code = Code(v)
		case 1:
			f.Message, _, err = d.readStr(req)
		case 2:
			var v uint64
			v, err = d.readUint(req)
			f.RefOp = Op(v)
		case 3:
			f.RefID, err = d.readUint(req)
		}
	case OpGoAway:
		switch i {
		case 0:
			f.DelayMS, err = d.readUint(req)
		case 1:
			f.Reason, _, err = d.readStr(req)
		case 2:
			f.Servers, err = d.readStrArray()
		}
	case OpAck, OpNak, OpCredit, OpProgress, OpTerm:
		switch i {
		case 0:
			f.SID, err = d.readID(req)
		case 1:
			var v uint64
			v, err = d.readUint(req)
			if f.Op == OpCredit {
				f.Credits = v
			} else {
				f.DeliveryID = v
			}
		case 2:
			if f.Op == OpTerm {
				f.Reason, f.HasReason, err = d.readStr(req)
			} else {
				f.DelayMS, err = d.readUint(req)
			}
		}
	}
	return err
}

func isArray(c byte) bool { return c >= 0x90 && c <= 0x9f || c == 0xdc || c == 0xdd }
func isMap(c byte) bool   { return c >= 0x80 && c <= 0x8f || c == 0xde || c == 0xdf }
func isStr(c byte) bool   { return c >= 0xa0 && c <= 0xbf || c >= 0xd9 && c <= 0xdb }
func isBin(c byte) bool   { return c >= 0xc4 && c <= 0xc6 }
func isUintCode(c byte) bool {
	return c <= 0x7f || c >= 0xcc && c <= 0xcf
}
func isIntCode(c byte) bool { return c >= 0xe0 || c >= 0xd0 && c <= 0xd3 }
func isExt(c byte) bool     { return c >= 0xc7 && c <= 0xc9 || c >= 0xd4 && c <= 0xd8 }

// arrayLen reads an array header whose code was checked; the length is bounded by the bytes left.
func (d *Decoder) arrayLen() (int, error) {
	n, err := d.d.DecodeArrayLen()
	if err != nil {
		return 0, errTruncated
	}
	if n > d.br.Len() {
		return 0, malformed("array longer than the body")
	}
	return n, nil
}

func (d *Decoder) mapLen() (int, error) {
	n, err := d.d.DecodeMapLen()
	if err != nil {
		return 0, errTruncated
	}
	if n > d.br.Len()/2 {
		return 0, malformed("map longer than the body")
	}
	return n, nil
}

// rawBytes reads a str or bin header whose code was checked and returns a view of its bytes.
func (d *Decoder) rawBytes() ([]byte, error) {
	var n int
	p := d.pos()
	c := d.body[p]
	switch {
	case c >= 0xa0 && c <= 0xbf: // fixstr: the length is in the type byte
		n = int(c & 0x1f)
		d.skip(1)
	case (c == 0xd9 || c == 0xc4) && p+1 < len(d.body): // str 8, bin 8
		n = int(d.body[p+1])
		d.skip(2)
	default:
		var err error
		if n, err = d.d.DecodeBytesLen(); err != nil {
			return nil, errTruncated
		}
	}
	if n < 0 || n > d.br.Len() {
		return nil, errTruncated
	}
	p = d.pos()
	d.skip(n)
	return d.body[p : p+n : p+n], nil
}

// readUint reads a uint field. A nil is an absent field (0) unless the field is required.
func (d *Decoder) readUint(req bool) (uint64, error) {
	c, err := d.peek()
	if err != nil {
		return 0, err
	}
	switch {
	case c <= 0x7f: // positive fixint
		d.skip(1)
		return uint64(c), nil
	case isUintCode(c):
		v, err := d.d.DecodeUint64()
		if err != nil {
			return 0, errTruncated
		}
		return v, nil
	case isIntCode(c):
		v, err := d.d.DecodeInt64()
		if err != nil {
			return 0, errTruncated
		}
		if v < 0 {
			return 0, malformed("negative integer where a uint is expected")
		}
		return uint64(v), nil
	case c == 0xc0 && !req:
		d.skipByte()
		return 0, nil
	}
	return 0, malformed("expected a uint")
}

func (d *Decoder) readID(req bool) (uint64, error) {
	v, err := d.readUint(req)
	if err == nil && v > math.MaxUint32 {
		return 0, malformed("id above uint32")
	}
	return v, err
}

func (d *Decoder) str(b []byte) string {
	n := len(b)
	if n == 0 || n > 64 {
		return string(b)
	}
	h := uint(n)*31 + uint(b[0])*7 + uint(b[n-1])*131 + uint(b[n/2])
	slot := &d.intern[h%internSlots]
	if *slot == string(b) {
		return *slot
	}
	*slot = string(b)
	return *slot
}

// readStr reads a str field; present is false for an absent optional field.
func (d *Decoder) readStr(req bool) (s string, present bool, err error) {
	c, err := d.peek()
	if err != nil {
		return "", false, err
	}
	if c == 0xc0 && !req {
		d.skipByte()
		return "", false, nil
	}
	if !isStr(c) {
		return "", false, malformed("expected a str")
	}
	b, err := d.rawBytes()
	if err != nil {
		return "", false, err
	}
	if !utf8.Valid(b) {
		return "", false, malformed("str is not valid UTF-8")
	}
	return d.str(b), true, nil
}

// readBin reads a required payload and copies it.
func (d *Decoder) readBin() ([]byte, error) {
	c, err := d.peek()
	if err != nil {
		return nil, err
	}
	if !isBin(c) {
		return nil, malformed("payload is not bin")
	}
	b, err := d.rawBytes()
	if err != nil {
		return nil, err
	}
	return append([]byte(nil), b...), nil
}

func (d *Decoder) readHeaders() ([]HeaderField, error) {
	c, err := d.peek()
	if err != nil {
		return nil, err
	}
	if c == 0xc0 {
		d.skipByte()
		return nil, nil
	}
	if !isMap(c) {
		return nil, malformed("headers is not a map")
	}
	n, err := d.mapLen()
	if err != nil {
		return nil, err
	}
	if n == 0 {
		return nil, nil // {} means no headers
	}
	var h []HeaderField
	if d.reuse {
		h = d.hdrBuf[:0]
	} else {
		h = make([]HeaderField, 0, n)
	}
	var seen map[string]struct{}
	for i := 0; i < n; i++ {
		k, _, err := d.readStr(true)
		if err != nil {
			return nil, malformed("header key is not a str")
		}
		v, _, err := d.readStr(true)
		if err != nil {
			return nil, malformed("header value is not a str")
		}
		if n <= 16 {
			for j := range h {
				if h[j].Key == k {
					return nil, malformed("duplicate header key")
				}
			}
		} else {
			if seen == nil {
				seen = make(map[string]struct{}, n)
			}
			if _, dup := seen[k]; dup {
				return nil, malformed("duplicate header key")
			}
			seen[k] = struct{}{}
		}
		h = append(h, HeaderField{k, v})
	}
	if d.reuse {
		d.hdrBuf = h
	}
	return h, nil
}

func (d *Decoder) readUintArray() ([]uint64, error) {
	c, err := d.peek()
	if err != nil {
		return nil, err
	}
	if !isArray(c) {
		return nil, malformed("expected an array")
	}
	n, err := d.arrayLen()
	if err != nil {
		return nil, err
	}
	out := make([]uint64, n)
	for i := range out {
		if out[i], err = d.readUint(true); err != nil {
			return nil, err
		}
	}
	return out, nil
}

func (d *Decoder) readStrArray() ([]string, error) {
	c, err := d.peek()
	if err != nil {
		return nil, err
	}
	if c == 0xc0 {
		d.skipByte()
		return nil, nil
	}
	if !isArray(c) {
		return nil, malformed("expected an array of str")
	}
	n, err := d.arrayLen()
	if err != nil {
		return nil, err
	}
	if n == 0 {
		return nil, nil // an empty servers array means none given
	}
	out := make([]string, n)
	for i := range out {
		if out[i], _, err = d.readStr(true); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// readMap reads an auth, opts or limits map. An absent optional map is nil; `{}` is an empty Map.
func (d *Decoder) readMap(req bool) (Map, error) {
	c, err := d.peek()
	if err != nil {
		return nil, err
	}
	if c == 0xc0 && !req {
		d.skipByte()
		return nil, nil
	}
	if !isMap(c) {
		return nil, malformed("expected a map")
	}
	return d.mapBody(0)
}

func (d *Decoder) mapBody(depth int) (Map, error) {
	if depth >= maxDepth {
		return nil, malformed("nesting too deep")
	}
	n, err := d.mapLen()
	if err != nil {
		return nil, err
	}
	m := make(Map, 0, n)
	for i := 0; i < n; i++ {
		c, err := d.peek()
		if err != nil {
			return nil, err
		}
		if !isStr(c) {
			return nil, malformed("map key is not a str")
		}
		k, _, err := d.readStr(true)
		if err != nil {
			return nil, err
		}
		for j := range m {
			if m[j].Key == k {
				return nil, malformed("duplicate map key")
			}
		}
		v, err := d.anyValue(depth + 1)
		if err != nil {
			return nil, err
		}
		m = append(m, MapEntry{k, v})
	}
	return m, nil
}

// anyValue reads a value of an auth, opts or limits map: no bin, no ext.
func (d *Decoder) anyValue(depth int) (any, error) {
	if depth >= maxDepth {
		return nil, malformed("nesting too deep")
	}
	c, err := d.peek()
	if err != nil {
		return nil, err
	}
	switch {
	case c == 0xc0:
		d.skipByte()
		return nil, nil
	case c == 0xc2 || c == 0xc3:
		d.skipByte()
		return c == 0xc3, nil
	case isUintCode(c):
		return d.readUint(true)
	case isIntCode(c):
		v, err := d.d.DecodeInt64()
		if err != nil {
			return nil, errTruncated
		}
		if v >= 0 {
			return uint64(v), nil
		}
		return v, nil
	case c == 0xca:
		v, err := d.d.DecodeFloat32()
		if err != nil {
			return nil, errTruncated
		}
		return v, nil
	case c == 0xcb:
		v, err := d.d.DecodeFloat64()
		if err != nil {
			return nil, errTruncated
		}
		return v, nil
	case isStr(c):
		s, _, err := d.readStr(true)
		return s, err
	case isArray(c):
		n, err := d.arrayLen()
		if err != nil {
			return nil, err
		}
		a := make([]any, n)
		for i := range a {
			if a[i], err = d.anyValue(depth + 1); err != nil {
				return nil, err
			}
		}
		return a, nil
	case isMap(c):
		return d.mapBody(depth)
	case isBin(c):
		return nil, malformed("bin value in a map")
	case isExt(c):
		return nil, malformed("ext value")
	}
	return nil, malformed("invalid msgpack code")
}

// scan skips one well-formed value, checking UTF-8 of str and, unless allowExt, that it holds no
// ext value.
func (d *Decoder) scan(depth int, allowExt bool) error {
	if depth >= maxDepth {
		return malformed("nesting too deep")
	}
	c, err := d.peek()
	if err != nil {
		return err
	}
	switch {
	case isStr(c):
		_, _, err := d.readStr(true)
		return err
	case isBin(c):
		_, err := d.rawBytes()
		return err
	case isArray(c):
		n, err := d.arrayLen()
		if err != nil {
			return err
		}
		for i := 0; i < n; i++ {
			if err := d.scan(depth+1, allowExt); err != nil {
				return err
			}
		}
		return nil
	case isMap(c):
		n, err := d.mapLen()
		if err != nil {
			return err
		}
		for i := 0; i < 2*n; i++ {
			if err := d.scan(depth+1, allowExt); err != nil {
				return err
			}
		}
		return nil
	case isExt(c):
		if !allowExt {
			return malformed("ext value")
		}
	case c == 0xc1:
		return malformed("the never-used byte c1")
	}
	// nil, bool, numbers and ext: sized from the type byte, checked against the bytes left (the
	// library's Skip would allocate up to an ext's declared length first).
	n, err := d.scalarSize(c)
	if err != nil {
		return err
	}
	if n > d.br.Len() {
		return errTruncated
	}
	d.skip(n)
	return nil
}

// scalarSize is the encoded size of a value that is not a str, bin, array or map.
func (d *Decoder) scalarSize(c byte) (int, error) {
	switch {
	case c <= 0x7f || c >= 0xe0 || c == 0xc0 || c == 0xc2 || c == 0xc3:
		return 1, nil
	case c == 0xcc || c == 0xd0:
		return 2, nil
	case c == 0xcd || c == 0xd1:
		return 3, nil
	case c == 0xce || c == 0xd2 || c == 0xca:
		return 5, nil
	case c == 0xcf || c == 0xd3 || c == 0xcb:
		return 9, nil
	case c >= 0xd4 && c <= 0xd8: // fixext 1, 2, 4, 8, 16: type byte and data
		return 2 + 1<<(c-0xd4), nil
	case c >= 0xc7 && c <= 0xc9: // ext 8, 16, 32: length, type byte, data
		w := 1 << (c - 0xc7)
		p := d.pos()
		if p+1+w > len(d.body) {
			return 0, errTruncated
		}
		var n int
		for _, b := range d.body[p+1 : p+1+w] {
			n = n<<8 | int(b)
		}
		if n < 0 || n > len(d.body) {
			return 0, errTruncated
		}
		return 1 + w + 1 + n, nil
	}
	return 0, malformed("invalid msgpack code")
}
