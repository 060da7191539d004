package busgate

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

type vectorCase struct {
	ID          string          `json:"id"`
	Description string          `json:"description"`
	From        string          `json:"from"`
	Hex         string          `json:"hex"`
	Valid       bool            `json:"valid"`
	Decoded     json.RawMessage `json:"decoded"`
	Error       string          `json:"error"`
	Canonical   *bool           `json:"canonical"`
	MaxFrame    int             `json:"max_frame"`
}

type vectorFile struct {
	Area  string       `json:"area"`
	Cases []vectorCase `json:"cases"`
}

func vectorsDir() string {
	if d := os.Getenv("BUSGATE_VECTORS"); d != "" {
		return d
	}
	return filepath.Join("..", "..", "conformance", "vectors")
}

// normJSON re-serializes JSON text compactly, keeping member order, so texts can be compared.
func normJSON(t *testing.T, text []byte) string {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(text))
	dec.UseNumber()
	v, err := jsonValue(dec, 0)
	if err != nil {
		t.Fatalf("cannot parse JSON %s: %v", text, err)
	}
	return string(appendJSONValue(nil, v))
}

// TestConformanceVectors runs every case of conformance/vectors/*.json (docs/protocol.md section 19).
func TestConformanceVectors(t *testing.T) {
	files, err := filepath.Glob(filepath.Join(vectorsDir(), "*.json"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no vector files in %s", vectorsDir())
	}
	total := 0
	for _, path := range files {
		if filepath.Base(path) == "schema.json" {
			continue
		}
		raw, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		var vf vectorFile
		if err := json.Unmarshal(raw, &vf); err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		for _, c := range vf.Cases {
			total++
			t.Run(vf.Area+"/"+c.ID, func(t *testing.T) { runVector(t, c) })
		}
	}
	if total < 200 {
		t.Fatalf("only %d vector cases found", total)
	}
}

func runVector(t *testing.T, c vectorCase) {
	data, err := hex.DecodeString(c.Hex)
	if err != nil {
		t.Fatal(err)
	}
	from := FromClient
	if c.From == "gateway" {
		from = FromGateway
	}
	maxFrame := DefaultMaxFrame
	if c.MaxFrame != 0 {
		maxFrame = c.MaxFrame
	}
	dec := NewDecoder()
	var f Frame
	n, err := dec.DecodeFrame(data, from, maxFrame, &f)
	if !c.Valid {
		want, ok := CodeByName(c.Error)
		if !ok {
			t.Fatalf("unknown error name %q", c.Error)
		}
		var pe *ProtocolError
		if !errors.As(err, &pe) {
			t.Fatalf("%s: want %s, got %v", c.Description, c.Error, err)
		}
		if pe.Code != want {
			t.Fatalf("%s: want %s, got %s (%s)", c.Description, c.Error, pe.Code, pe.Message)
		}
		return
	}
	if err != nil {
		t.Fatalf("%s: decode: %v", c.Description, err)
	}
	if n != len(data) {
		t.Fatalf("decode used %d of %d bytes", n, len(data))
	}
	got := string(AppendJSON(nil, &f))
	want := normJSON(t, c.Decoded)
	if got != want {
		t.Fatalf("%s:\n got  %s\n want %s", c.Description, got, want)
	}

	// The JSON mapping reads `decoded` back into the same frame.
	jf, err := ParseJSON(c.Decoded, from)
	if err != nil {
		t.Fatalf("ParseJSON(decoded): %v", err)
	}
	if j := string(AppendJSON(nil, jf)); j != want {
		t.Fatalf("JSON round trip:\n got  %s\n want %s", j, want)
	}

	enc := NewEncoder()
	fromDecoded, err := enc.AppendFrame(nil, &f)
	if err != nil {
		t.Fatalf("encode: %v", err)
	}
	fromJSON, err := enc.AppendFrame(nil, jf)
	if err != nil {
		t.Fatalf("encode from JSON: %v", err)
	}
	if !bytes.Equal(fromDecoded, fromJSON) {
		t.Fatalf("encodings differ:\n decoded %x\n json    %x", fromDecoded, fromJSON)
	}
	if c.Canonical == nil || *c.Canonical {
		if !bytes.Equal(fromDecoded, data) {
			t.Fatalf("%s: canonical encoding\n got  %x\n want %x", c.Description, fromDecoded, data)
		}
	} else {
		// A non-canonical input re-encodes to a canonical frame with the same meaning.
		var g Frame
		if _, err := dec.DecodeFrame(fromDecoded, from, maxFrame, &g); err != nil {
			t.Fatalf("re-decode: %v", err)
		}
		if j := string(AppendJSON(nil, &g)); j != want {
			t.Fatalf("re-encoded frame means %s, want %s", j, want)
		}
		if bytes.Equal(fromDecoded, data) {
			t.Fatalf("case is marked non-canonical but re-encodes to the same bytes")
		}
	}
}
