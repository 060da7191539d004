package busgate

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func codeOf(err error) Code {
	var pe *ProtocolError
	if errors.As(err, &pe) {
		return pe.Code
	}
	return 0
}

func TestDecodeHostileInput(t *testing.T) {
	d := NewDecoder()
	var f Frame
	cases := map[string]string{
		"str32 claiming 4 GiB":          "9303dbffffffff",
		"array32 claiming 2^32-1":       "ddffffffff",
		"map32 claiming 2^32-1 in opts": "950401a161c0dfffffffff",
		"bin32 claiming 4 GiB":          "9303a161c6ffffffff",
		"truncated uint64":              "9205cf0000",
		"ext in headers map":            "9403a161c40178d40100",
		"nil required sid":              "9304c0a161",
		"map key not a str in opts":     "950401a161c08101c3",
		"ack above uint32":              "9603a161c40178c0c0cf0000000100000000",
		"float op":                      "91ca3f800000",
	}
	for name, h := range cases {
		body, _ := hex.DecodeString(h)
		err := d.DecodeBody(body, FromClient, &f)
		if codeOf(err) != CodeMalformedFrame {
			t.Errorf("%s: want MALFORMED_FRAME, got %v", name, err)
		}
	}
}

// nested builds an opts value nested depth maps deep: {"k":{"k":...{"k":1}}}.
func nested(depth int) Map {
	var v any = uint64(1)
	for i := 0; i < depth; i++ {
		v = Map{{"k", v}}
	}
	return v.(Map)
}

func TestNestingDepth(t *testing.T) {
	enc := NewEncoder()
	d := NewDecoder()
	// Section 3.2: at least 16 levels inside a body are accepted.
	ok := &Frame{Op: OpHello, Versions: []uint64{1}, Auth: Map{{"method", "token"}}, Opts: nested(15)}
	b, err := enc.AppendFrame(nil, ok)
	if err != nil {
		t.Fatal(err)
	}
	var f Frame
	if _, err := d.DecodeFrame(b, FromClient, DefaultMaxFrame, &f); err != nil {
		t.Fatalf("16 levels: %v", err)
	}
	// Much deeper nesting is refused with MALFORMED_FRAME, not a stack overflow.
	body := []byte{0x95, 0x01, 0x91, 0x01, 0x80, 0xc0}
	for i := 0; i < 100000; i++ {
		body = append(body, 0x91)
	}
	body = append(body, 0x01)
	if err := d.DecodeBody(body, FromClient, &f); codeOf(err) != CodeMalformedFrame {
		t.Fatalf("deep nesting: %v", err)
	}
}

func TestDecodeFrameStream(t *testing.T) {
	full, _ := hex.DecodeString("000000189303ae6f72646572732e63726561746564c40568656c6c6f") // vector 2.1.1
	d := NewDecoder()
	var f Frame
	for i := 0; i < len(full); i++ { // a partial frame is never an error, only "wait for more"
		if _, err := d.DecodeFrame(full[:i], FromClient, DefaultMaxFrame, &f); err != io.ErrUnexpectedEOF {
			t.Fatalf("%d bytes: %v", i, err)
		}
	}
	two := append(append([]byte(nil), full...), full...)
	n, err := d.DecodeFrame(two, FromClient, DefaultMaxFrame, &f)
	if err != nil || n != len(full) || f.Subject != "orders.created" {
		t.Fatalf("first of two frames: %d %v %+v", n, err, f)
	}
	// The length is checked before the body is there.
	if _, err := d.DecodeFrame([]byte{0, 1, 0, 0}, FromGateway, MaxFrameBeforeWelcome, &f); codeOf(err) != CodeFrameTooLarge {
		t.Fatalf("length above the pre-WELCOME maximum: %v", err)
	}
}

func TestJSONMapping(t *testing.T) {
	// Section 4: a JSON client may send the base64 form; it is the same frame.
	a, err := ParseJSON([]byte(`[3,"orders.created",{"base64":"aGVsbG8="}]`), FromClient)
	if err != nil {
		t.Fatal(err)
	}
	b, err := ParseJSON([]byte(` [ 3 , "orders.created" , "hello" ] `), FromClient)
	if err != nil {
		t.Fatal(err)
	}
	if string(AppendJSON(nil, a)) != `[3,"orders.created","hello"]` || string(AppendJSON(nil, b)) != `[3,"orders.created","hello"]` {
		t.Fatalf("%s / %s", AppendJSON(nil, a), AppendJSON(nil, b))
	}
	// Non-ASCII stays UTF-8, control characters are escaped.
	m := &Frame{Op: OpErr, Code: 999, Message: "café\n\"x\"\x01"}
	if got := string(AppendJSON(nil, m)); got != `[10,999,"café\n\"x\"\u0001"]` {
		t.Fatalf("got %s", got)
	}
	bad := map[string]Code{
		`[3,"a",{"base64":"!!!"}]`:              CodeMalformedFrame,
		`[3,"a",{"base64":"aGVsbG8"}]`:          CodeMalformedFrame, // no padding
		`[3,"a",{"base64":"aGVsbG8=","x":1}]`:   CodeMalformedFrame,
		`[3,"a","x",null,null,-1]`:              CodeMalformedFrame,
		`[3,"a","x",null,null,1.0]`:             CodeMalformedFrame,
		`[3,"a","x",null,null,1e2]`:             CodeMalformedFrame,
		`[3,"a","x"`:                            CodeMalformedFrame,
		`[3,"a","x"] [11]`:                      CodeMalformedFrame,
		`[3,"\ud800","x"]`:                      CodeMalformedFrame,
		`[3,"a","x",{"k":"1","k":"2"}]`:         CodeMalformedFrame,
		`[3,"a",7]`:                             CodeMalformedFrame,
		`[3.0,"a","x"]`:                         CodeMalformedFrame,
		`{}`:                                    CodeMalformedFrame,
		`[]`:                                    CodeMalformedFrame,
		`[99]`:                                  CodeUnknownOp,
		`[6,1,"a","x"]`:                         CodeUnexpectedOp,
		`[3,"a.*","x"]`:                         CodeWildcardNotAllowed,
		`[3,"a","x",{"busgate-tenant":"evil"}]`: CodeReservedHeader,
		`[4,1,"a",""]`:                          CodeInvalidQueue,
	}
	for text, want := range bad {
		_, err := ParseJSON([]byte(text), FromClient)
		if codeOf(err) != want {
			t.Errorf("%s: want %s, got %v", text, want, err)
		}
	}
	// A surrogate pair written as escapes is valid.
	if _, err := ParseJSON([]byte(`[3,"a","\ud83d\ude00"]`), FromClient); err != nil {
		t.Fatalf("surrogate pair: %v", err)
	}
}

func TestGrammar(t *testing.T) {
	valid := []string{"a", "orders.created", "café.x", "_INBOX.gw1.1", "a-b_c:d", strings.Repeat("x", 256)}
	for _, s := range valid {
		if c := checkSubject(s, false); c != 0 {
			t.Errorf("%q: %v", s, c)
		}
	}
	for s, want := range map[string]Code{
		"": CodeInvalidSubject, ".a": CodeInvalidSubject, "a.": CodeInvalidSubject, "a..b": CodeInvalidSubject,
		"a b": CodeInvalidSubject, "a\x00": CodeInvalidSubject, "a*": CodeInvalidSubject, "a.>.b": CodeInvalidSubject,
		"a.*": CodeWildcardNotAllowed, ">": CodeWildcardNotAllowed, "$SYS.x": CodeReservedSubject,
	} {
		if c := checkSubject(s, false); c != want {
			t.Errorf("%q: want %v, got %v", s, want, c)
		}
	}
	for _, s := range []string{"a.*", ">", "a.*.c.>", "*"} {
		if c := checkSubject(s, true); c != 0 {
			t.Errorf("SUB %q: %v", s, c)
		}
	}
	if checkHeaderKey("busgatex") != 0 || checkHeaderKey("BUSGATE-x") != CodeReservedHeader || checkHeaderKey("a:b") != CodeInvalidHeader {
		t.Error("header keys")
	}
}

// FuzzDecodeBody checks that no input panics the decoder and that every frame it accepts encodes
// to a frame that decodes to the same thing. Seeds: every vector.
func FuzzDecodeBody(f *testing.F) {
	files, _ := filepath.Glob(filepath.Join(vectorsDir(), "*.json"))
	for _, p := range files {
		raw, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		var vf vectorFile
		if json.Unmarshal(raw, &vf) != nil {
			continue
		}
		for _, c := range vf.Cases {
			if b, err := hex.DecodeString(c.Hex); err == nil && len(b) >= 4 {
				f.Add(b[4:], c.From == "gateway")
			}
		}
	}
	f.Fuzz(func(t *testing.T, body []byte, gateway bool) {
		from := FromClient
		if gateway {
			from = FromGateway
		}
		d := NewDecoder()
		var fr Frame
		if err := d.DecodeBody(body, from, &fr); err != nil {
			if codeOf(err) == 0 {
				t.Fatalf("error without a code: %v", err)
			}
			return
		}
		enc := NewEncoder()
		out, err := enc.AppendBody(nil, &fr)
		if err != nil {
			t.Fatalf("encode: %v", err)
		}
		var g Frame
		if err := d.DecodeBody(out, from, &g); err != nil {
			t.Fatalf("re-decode %x: %v", out, err)
		}
		if a, b := AppendJSON(nil, &fr), AppendJSON(nil, &g); !bytes.Equal(a, b) {
			t.Fatalf("round trip changed the frame:\n%s\n%s", a, b)
		}
	})
}
