package busgate

import (
	"bufio"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"
)

// Client-only benchmarks against an in-process fake gateway, so that the client's own cost is
// measured without a real gateway in the loop (bench/go compares with nats.go end to end).

// fakeGateway accepts connections, answers HELLO with WELCOME and PING with PONG, discards
// everything else, and, when a SUB arrives and burst > 0, sends burst MSG frames for its sid.
type fakeGateway struct {
	ln    net.Listener
	burst int
	size  int
}

func startFakeGateway(tb testing.TB, burst, size int) *fakeGateway {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	g := &fakeGateway{ln: ln, burst: burst, size: size}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go g.serve(c)
		}
	}()
	tb.Cleanup(func() { ln.Close() })
	return g
}

func (g *fakeGateway) serve(nc net.Conn) {
	defer nc.Close()
	br := bufio.NewReaderSize(nc, 256*1024)
	enc := NewEncoder()
	dec := NewDecoder()
	var out []byte
	welcome := Frame{Op: OpWelcome, Version: 1, SessionID: "s", NodeID: "fake", Tenant: "demo", Limits: Map{
		{"max_frame", uint64(DefaultMaxFrame)}, {"max_payload", uint64(1 << 20)}, {"heartbeat_ms", uint64(30000)},
		{"max_subs", uint64(1000)}, {"max_inflight", uint64(1000)}, {"max_pending", uint64(8 << 20)},
		{"request_timeout_ms", uint64(5000)}, {"max_timeout_ms", uint64(60000)}}}
	first := true
	hdr := make([]byte, 4)
	body := make([]byte, 0, 64*1024)
	for {
		if _, err := io.ReadFull(br, hdr); err != nil {
			return
		}
		n := int(binary.BigEndian.Uint32(hdr))
		if cap(body) < n {
			body = make([]byte, n)
		}
		body = body[:n]
		if _, err := io.ReadFull(br, body); err != nil {
			return
		}
		if first {
			first = false
			out, _ = enc.AppendFrame(out[:0], &welcome)
			if _, err := nc.Write(out); err != nil {
				return
			}
			continue
		}
		switch {
		case n == 2 && body[1] == byte(OpPing):
			if _, err := nc.Write([]byte{0, 0, 0, 2, 0x91, byte(OpPong)}); err != nil {
				return
			}
		case body[1] == byte(OpSub) && g.burst > 0:
			var f Frame
			if err := dec.DecodeBody(body, FromClient, &f); err != nil {
				return
			}
			go g.blast(nc, f.SID)
		}
	}
}

func (g *fakeGateway) blast(nc net.Conn, sid uint64) {
	enc := NewEncoder()
	msg := Frame{Op: OpMsg, SID: sid, Subject: "bench.recv", Payload: make([]byte, g.size),
		Headers: []HeaderField{{HeaderTenant, "demo"}}}
	one, _ := enc.AppendFrame(nil, &msg)
	batch := make([]byte, 0, 256*1024)
	for len(batch)+len(one) <= cap(batch) {
		batch = append(batch, one...)
	}
	per := len(batch) / len(one)
	for sent := 0; sent < g.burst; sent += per {
		k := min(per, g.burst-sent)
		if _, err := nc.Write(batch[:k*len(one)]); err != nil {
			return
		}
	}
}

func BenchmarkPublish(b *testing.B) {
	for _, size := range []int{16, 128, 1024} {
		b.Run(fmt.Sprintf("%dB", size), func(b *testing.B) {
			g := startFakeGateway(b, 0, 0)
			c, err := Connect("busgate://"+g.ln.Addr().String(), Token("t"))
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			data := make([]byte, size)
			b.SetBytes(int64(size))
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if err := c.Publish("bench.pub", data); err != nil {
					b.Fatal(err)
				}
			}
			if err := c.Flush(context.Background()); err != nil {
				b.Fatal(err)
			}
		})
	}
}

func BenchmarkReceive(b *testing.B) {
	for _, size := range []int{16, 128, 1024} {
		b.Run(fmt.Sprintf("%dB", size), func(b *testing.B) {
			g := startFakeGateway(b, b.N, size)
			c, err := Connect("busgate://"+g.ln.Addr().String(), Token("t"))
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			var got atomic.Int64
			done := make(chan struct{})
			b.SetBytes(int64(size))
			b.ReportAllocs()
			b.ResetTimer()
			sub, err := c.Subscribe("bench.recv", func(*Msg) {
				if got.Add(1) == int64(b.N) {
					close(done)
				}
			})
			if err != nil {
				b.Fatal(err)
			}
			_ = sub.SetPendingLimits(1<<30, 1<<40)
			select {
			case <-done:
			case <-time.After(time.Minute):
				b.Fatalf("received %d of %d", got.Load(), b.N)
			}
		})
	}
}
