package busgate

import (
	"encoding/hex"
	"errors"
	"strings"
	"testing"
)

// The frames of durable consumption (docs/protocol.md sections 7.13 and 16), checked byte by byte,
// in both directions and through the JSON mapping.
func TestDurableFrames(t *testing.T) {
	cases := []struct {
		json, hex string
		from      Sender
	}{
		{`[17,20,1]`, "00000004931114" + "01", FromClient},
		{`[18,20,1]`, "00000004931214" + "01", FromClient},
		{`[18,20,1,"bad input"]`, "0000000e941214" + "01a9" + hex.EncodeToString([]byte("bad input")), FromClient},
		{`[18,20,1,""]`, "00000005941214" + "01a0", FromClient}, // an empty reason is a value
		{`[6,20,"jobs.resize","img-1",{"busgate-tenant":"acme"},null,1,1]`,
			"0000002e980614ab6a6f62732e726573697a65c405696d672d3181ae627573676174652d74656e616e74a461636d65c00101", FromGateway},
		{`[6,1,"a","x",null,null,null,2]`, "0000000c980601a161c40178c0c0c002", FromGateway},
		{`[3,"jobs.a","x",null,null,7,"job-1"]`, "000000159703a66a6f62732e61c40178c0c007a56a6f622d31", FromClient},
		{`[3,"jobs.a","x",null,null,null,"job-1"]`, "000000159703a66a6f62732e61c40178c0c0c0a56a6f622d31", FromClient},
	}
	enc := NewEncoder()
	dec := NewDecoder()
	for _, c := range cases {
		f, err := ParseJSON([]byte(c.json), c.from)
		if err != nil {
			t.Fatalf("%s: %v", c.json, err)
		}
		b, err := enc.AppendFrame(nil, f)
		if err != nil {
			t.Fatalf("%s: encode: %v", c.json, err)
		}
		if got := hex.EncodeToString(b); got != c.hex {
			t.Errorf("%s:\n got  %s\n want %s", c.json, got, c.hex)
			continue
		}
		var g Frame
		if _, err := dec.DecodeFrame(b, c.from, DefaultMaxFrame, &g); err != nil {
			t.Fatalf("%s: decode: %v", c.json, err)
		}
		if j := string(AppendJSON(nil, &g)); j != c.json {
			t.Errorf("decoded %s, want %s", j, c.json)
		}
	}

	// A trailing nil reason or attempt is the absent field.
	var f Frame
	body, _ := hex.DecodeString("941214" + "01c0")
	if err := dec.DecodeBody(body, FromClient, &f); err != nil || f.HasReason || f.Op != OpTerm {
		t.Fatalf("TERM with a nil reason: %v %+v", err, f)
	}
}

func TestDurableFramesInvalid(t *testing.T) {
	long := strings.Repeat("k", 129)
	bad := map[string]Code{
		`[3,"jobs.a","x",null,null,7,""]`:             CodeInvalidOption,
		`[3,"jobs.a","x",null,null,7,"a b"]`:          CodeInvalidOption,
		`[3,"jobs.a","x",null,null,7,"caf\u00e9"]`:    CodeInvalidOption,
		`[3,"jobs.a","x",null,null,7,"` + long + `"]`: CodeInvalidOption,
		`[3,"jobs.a","x",null,null,7,5]`:              CodeMalformedFrame,
		`[3,"jobs.*","x",null,null,7,"a b"]`:          CodeWildcardNotAllowed, // subject before msg_id, as the gateway checks
		`[17,20]`:                                     CodeMalformedFrame,
		`[17,20,-1]`:                                  CodeMalformedFrame,
		`[17,4294967296,1]`:                           CodeMalformedFrame,
		`[18,20,1,7]`:                                 CodeMalformedFrame,
		`[18,20]`:                                     CodeMalformedFrame,
		`[19,20,1]`:                                   CodeUnknownOp,
		`[6,20,"jobs.resize","img-1",null,null,1,1]`:  CodeUnexpectedOp,
	}
	for text, want := range bad {
		if _, err := ParseJSON([]byte(text), FromClient); codeOf(err) != want {
			t.Errorf("JSON %s: want %s, got %v", text, want, err)
		}
	}
	for text, want := range map[string]Code{
		`[17,20,1]`:                     CodeUnexpectedOp,
		`[18,20,1,"x"]`:                 CodeUnexpectedOp,
		`[6,1,"a","x",null,null,1,-1]`:  CodeMalformedFrame,
		`[6,1,"a","x",null,null,1,"2"]`: CodeMalformedFrame,
	} {
		if _, err := ParseJSON([]byte(text), FromGateway); codeOf(err) != want {
			t.Errorf("gateway JSON %s: want %s, got %v", text, want, err)
		}
	}

	// The same checks in msgpack.
	dec := NewDecoder()
	var f Frame
	for h, want := range map[string]Code{
		"9703a161c40178c0c007a0":       CodeInvalidOption,  // msg_id ""
		"9703a161c40178c0c007a3612062": CodeInvalidOption,  // msg_id "a b"
		"9703a161c40178c0c007c40161":   CodeMalformedFrame, // msg_id as bin
		"941214" + "01c40178":          CodeMalformedFrame, // reason as bin
		"921114":                       CodeMalformedFrame, // PROGRESS without delivery_id
		"931114c0":                     CodeMalformedFrame, // nil required delivery_id
		"9313" + "1401":                CodeUnknownOp,      // op 19
		"9313" + "14c1":                CodeMalformedFrame, // op 19 with a malformed body
		"980601a161c40178c0c001ff":     CodeMalformedFrame, // negative attempt (from the gateway)
	} {
		body, _ := hex.DecodeString(h)
		from := FromClient
		if strings.HasPrefix(h, "9806") {
			from = FromGateway
		}
		if err := dec.DecodeBody(body, from, &f); codeOf(err) != want {
			t.Errorf("%s: want %s, got %v", h, want, err)
		}
	}
	body, _ := hex.DecodeString("931114" + "01")
	if err := dec.DecodeBody(body, FromGateway, &f); codeOf(err) != CodeUnexpectedOp {
		t.Errorf("PROGRESS from the gateway: %v", err)
	}
}

func TestDurableCodes(t *testing.T) {
	for name, want := range map[string]struct {
		code Code
		err  error
	}{
		"INVALID_OPTION":     {309, ErrInvalidOption},
		"UNKNOWN_DELIVERY":   {310, ErrUnknownDelivery},
		"UNKNOWN_STREAM":     {311, ErrUnknownStream},
		"TOO_MANY_CONSUMERS": {407, ErrTooManyConsumers},
		"NOT_STORED":         {504, ErrNotStored},
	} {
		c, ok := CodeByName(name)
		if !ok || c != want.code || c.String() != name || c.Fatal() {
			t.Errorf("%s: %v %v", name, c, ok)
		}
		if !errors.Is(&ProtocolError{Code: c}, want.err) {
			t.Errorf("%s does not match its sentinel", name)
		}
	}
	if OpProgress.String() != "PROGRESS" || OpTerm.String() != "TERM" || Op(19).String() != "OP(19)" {
		t.Error("op names")
	}
	if err := WithMsgID("a b")(&pubConfig{}); codeOf(err) != CodeInvalidOption {
		t.Errorf("WithMsgID(\"a b\"): %v", err)
	}
	if !validDurableName("a-b_C9") || validDurableName("a.b") || validDurableName("") || validDurableName(strings.Repeat("x", 65)) {
		t.Error("durable names")
	}
}
