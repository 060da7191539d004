package busgate

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

func TestConnectAndServerInfo(t *testing.T) {
	g := startGateway(t, "")
	c := connect(t, g.url)
	if !c.IsConnected() {
		t.Fatalf("status %v", c.Status())
	}
	info := c.ServerInfo()
	if info.Tenant != "demo" || info.Version != 1 || info.SessionID == "" || info.NodeID == "" {
		t.Fatalf("info %+v", info)
	}
	l := info.Limits
	if l.MaxFrame <= 0 || l.MaxPayload <= 0 || l.Heartbeat <= 0 || l.MaxSubs <= 0 || l.MaxInflight <= 0 ||
		l.MaxPending <= 0 || l.RequestTimeout <= 0 || l.MaxTimeout <= 0 {
		t.Fatalf("limits %+v", l)
	}
	if c.ConnectedURL() != g.url {
		t.Fatalf("connected to %q", c.ConnectedURL())
	}
	if err := c.Flush(testCtx(t, 5*time.Second)); err != nil {
		t.Fatal(err)
	}
	closed := make(chan struct{})
	c2 := connect(t, g.url, ClosedHandler(func(*Conn) { close(closed) }))
	c2.Close()
	recv(t, closed, "closed handler")
	if err := c2.Publish("a.b", nil); !errors.Is(err, ErrConnectionClosed) {
		t.Fatalf("publish after close: %v", err)
	}
	if err := c2.Flush(testCtx(t, time.Second)); !errors.Is(err, ErrConnectionClosed) {
		t.Fatalf("flush after close: %v", err)
	}
}

func TestConnectErrors(t *testing.T) {
	g := startGateway(t, "")
	_, err := Connect(g.url, Token("wrong-token"))
	var pe *ProtocolError
	if !errors.Is(err, ErrAuthFailed) || !errors.As(err, &pe) || pe.Code != CodeAuthFailed || pe.Local {
		t.Fatalf("bad token: %v", err)
	}
	// WebSocket to the plain TCP port: the gateway answers HTTP 400 (section 2.2), so the upgrade
	// fails. (WebSocket to the HTTP port works: ws_test.go.)
	if _, err := Connect("ws://"+g.addr+"/v1/ws", Token("dev-token"), Timeout(2*time.Second)); !errors.Is(err, ErrNoServers) {
		t.Fatalf("ws URL to the TCP port: %v", err)
	}
	if _, err := Connect("http://" + g.addr); !errors.Is(err, ErrInvalidURL) {
		t.Fatalf("http URL: %v", err)
	}
	// A port nobody listens on: the listener of a gateway that was stopped.
	g2 := startGateway(t, "")
	addr := g2.addr
	g2.kill()
	if _, err := Connect("busgate://"+addr, Token("dev-token")); !errors.Is(err, ErrNoServers) {
		t.Fatalf("refused: %v", err)
	}
	// TLS to the plain port: the gateway answers a TLS alert (section 2.2), a handshake failure.
	if _, err := Connect("busgate+tls://"+g.addr, Token("dev-token"), Timeout(2*time.Second)); err == nil ||
		!errors.Is(err, ErrNoServers) {
		t.Fatalf("TLS to the plain port: %v", err)
	}
}

func TestURLs(t *testing.T) {
	for in, want := range map[string]string{
		"busgate://gw.example":          "gw.example:7422",
		"busgate://gw.example:9000":     "gw.example:9000",
		"busgate+tls://gw.example":      "gw.example:7422",
		"busgate://[::1]":               "[::1]:7422",
		"busgate://[::1]:7000":          "[::1]:7000",
		"127.0.0.1:4000":                "127.0.0.1:4000",
		"BUSGATE://gw.example:1/ignore": "gw.example:1",
	} {
		u, err := parseURL(in)
		if err != nil || u.addr != want {
			t.Errorf("%s: got %q, %v; want %s", in, u.addr, err, want)
		}
	}
	for in, want := range map[string]string{
		"ws://gw.example/v1/ws":         "http://gw.example:80/v1/ws",
		"ws://gw.example:7480":          "http://gw.example:7480/v1/ws",
		"ws://gw.example:7480/":         "http://gw.example:7480/v1/ws",
		"WSS://gw.example/v1/ws":        "https://gw.example:443/v1/ws",
		"wss://[::1]:8443/v1/ws?x=1":    "https://[::1]:8443/v1/ws?x=1",
		"wss://gw.example:8443/other/p": "https://gw.example:8443/other/p",
	} {
		u, err := parseURL(in)
		if err != nil || !u.ws || u.wsURL() != want || u.tls != strings.HasPrefix(want, "https") {
			t.Errorf("%s: got %+v (%q), %v; want %s", in, u, u.wsURL(), err, want)
		}
	}
	for _, bad := range []string{"busgate://", "nats://x", "busgate://u:p@host", "busgate://h:70000", "ws://u:p@h/v1/ws", "wss://h:0/v1/ws", "ws:///v1/ws"} {
		if _, err := parseURL(bad); !errors.Is(err, ErrInvalidURL) {
			t.Errorf("%s: %v", bad, err)
		}
	}
}

func TestPubSub(t *testing.T) {
	g := startGateway(t, "")
	c := connect(t, g.url)
	ctx := testCtx(t, 10*time.Second)

	got := make(chan *Msg, 10)
	sub, err := c.Subscribe("orders.*", func(m *Msg) { got <- m })
	if err != nil {
		t.Fatal(err)
	}
	if err := sub.Ready(ctx); err != nil {
		t.Fatal(err)
	}
	p := connect(t, g.url)
	if err := p.PublishMsg(&Msg{Subject: "orders.created", Data: []byte("hello"),
		Header: Header{"trace-id": "abc123"}, Reply: "replies.x"}); err != nil {
		t.Fatal(err)
	}
	if err := p.Publish("orders.created.eu", []byte("not matched")); err != nil {
		t.Fatal(err)
	}
	if err := p.Publish("orders.updated", nil); err != nil {
		t.Fatal(err)
	}
	m := recv(t, got, "message")
	if m.Subject != "orders.created" || string(m.Data) != "hello" || m.Reply != "replies.x" ||
		m.Header.Get("trace-id") != "abc123" || m.Tenant != "demo" || m.Sub != sub {
		t.Fatalf("message %+v", m)
	}
	m = recv(t, got, "second message")
	if m.Subject != "orders.updated" || len(m.Data) != 0 {
		t.Fatalf("message %+v", m)
	}
	if err := sub.Unsubscribe(); err != nil {
		t.Fatal(err)
	}
	if err := sub.Unsubscribe(); !errors.Is(err, ErrBadSubscription) {
		t.Fatalf("second unsubscribe: %v", err)
	}
	if sub.IsValid() {
		t.Fatal("subscription still valid")
	}

	// A binary payload and a large one survive the trip.
	big := make([]byte, 300_000)
	for i := range big {
		big[i] = byte(i * 7)
	}
	s2, err := c.SubscribeSync("blobs.>")
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	for _, data := range [][]byte{{0xff, 0xfe, 0x00, 0x01}, big} {
		if err := p.Publish("blobs.raw", data); err != nil {
			t.Fatal(err)
		}
		m, err := s2.NextMsg(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if string(m.Data) != string(data) {
			t.Fatalf("payload of %d bytes changed", len(data))
		}
	}
}

func TestChanAndSyncSubscriptions(t *testing.T) {
	g := startGateway(t, "")
	c := connect(t, g.url)
	ctx := testCtx(t, 10*time.Second)

	ch := make(chan *Msg, 4)
	cs, err := c.ChanSubscribe("events.>", ch)
	if err != nil {
		t.Fatal(err)
	}
	ss, err := c.SubscribeSync("events.one")
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.Publish("events.one", []byte("1")); err != nil {
		t.Fatal(err)
	}
	if m := recv(t, (<-chan *Msg)(ch), "chan message"); string(m.Data) != "1" || m.Sub != cs {
		t.Fatalf("chan message %+v", m)
	}
	m, err := ss.NextMsg(ctx)
	if err != nil || string(m.Data) != "1" {
		t.Fatalf("NextMsg: %v %v", m, err)
	}
	// NextMsg honours its context: ErrTimeout (and context.DeadlineExceeded) when nothing comes.
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if _, err := ss.NextMsg(short); !errors.Is(err, ErrTimeout) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("NextMsg timeout: %v", err)
	}
	if _, err := cs.NextMsg(ctx); !errors.Is(err, ErrSyncSubRequired) {
		t.Fatalf("NextMsg on a chan subscription: %v", err)
	}

	// AutoUnsubscribe: exactly 3 messages, then the subscription ends.
	as, err := c.SubscribeSync("count.me")
	if err != nil {
		t.Fatal(err)
	}
	if err := as.AutoUnsubscribe(3); err != nil {
		t.Fatal(err)
	}
	if err := c.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 5; i++ {
		if err := c.Publish("count.me", []byte{byte(i)}); err != nil {
			t.Fatal(err)
		}
	}
	for i := 0; i < 3; i++ {
		m, err := as.NextMsg(ctx)
		if err != nil || m.Data[0] != byte(i) {
			t.Fatalf("message %d: %v %v", i, m, err)
		}
	}
	if _, err := as.NextMsg(ctx); !errors.Is(err, ErrMaxMessages) {
		t.Fatalf("after the limit: %v", err)
	}
}

func TestQueueGroups(t *testing.T) {
	g := startGateway(t, "")
	c := connect(t, g.url)
	ctx := testCtx(t, 10*time.Second)
	const n = 40
	var a, b atomic.Int32
	var wg sync.WaitGroup
	wg.Add(n)
	if _, err := c.QueueSubscribe("jobs.resize", "workers", func(*Msg) { a.Add(1); wg.Done() }); err != nil {
		t.Fatal(err)
	}
	if _, err := c.QueueSubscribe("jobs.resize", "workers", func(*Msg) { b.Add(1); wg.Done() }); err != nil {
		t.Fatal(err)
	}
	all, err := c.SubscribeSync("jobs.resize") // not in the group: gets its own copy
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < n; i++ {
		if err := c.Publish("jobs.resize", []byte("img")); err != nil {
			t.Fatal(err)
		}
	}
	for i := 0; i < n; i++ {
		if _, err := all.NextMsg(ctx); err != nil {
			t.Fatal(err)
		}
	}
	wg.Wait()
	if a.Load()+b.Load() != n {
		t.Fatalf("group members got %d + %d messages, want %d in total", a.Load(), b.Load(), n)
	}
	if _, err := c.QueueSubscribe("jobs.x", "bad.queue", func(*Msg) {}); !errors.Is(err, ErrBadQueue) {
		t.Fatalf("bad queue: %v", err)
	}
}

func TestRequestReply(t *testing.T) {
	g := startGateway(t, "")
	responder := connect(t, g.url)
	ctx := testCtx(t, 10*time.Second)
	sub, err := responder.Subscribe("svc.echo", func(m *Msg) {
		h := Header{"echoed-by": "responder"}
		if v := m.Header.Get("trace-id"); v != "" {
			h["trace-id"] = v
		}
		_ = m.RespondMsg(&Msg{Data: append([]byte("echo: "), m.Data...), Header: h})
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := sub.Ready(ctx); err != nil {
		t.Fatal(err)
	}
	c := connect(t, g.url)
	reply, err := c.Request(ctx, "svc.echo", []byte("ping"))
	if err != nil {
		t.Fatal(err)
	}
	if string(reply.Data) != "echo: ping" || reply.Header.Get("echoed-by") != "responder" || reply.Tenant != "demo" {
		t.Fatalf("reply %+v", reply)
	}
	reply, err = c.RequestMsg(ctx, &Msg{Subject: "svc.echo", Data: []byte("x"), Header: Header{"trace-id": "t-1"}})
	if err != nil || reply.Header.Get("trace-id") != "t-1" {
		t.Fatalf("RequestMsg: %+v %v", reply, err)
	}

	// Many concurrent requests, each gets its own reply.
	var wg sync.WaitGroup
	errs := make(chan error, 50)
	for i := 0; i < 50; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			want := fmt.Sprintf("n%d", i)
			r, err := c.Request(ctx, "svc.echo", []byte(want))
			if err == nil && string(r.Data) != "echo: "+want {
				err = fmt.Errorf("request %d got %q", i, r.Data)
			}
			errs <- err
		}(i)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}

	// No responders: a RES status, typed.
	_, err = c.Request(ctx, "svc.nobody", nil)
	var pe *ProtocolError
	if !errors.Is(err, ErrNoResponders) || !errors.As(err, &pe) || pe.Code != CodeNoResponders || pe.Local {
		t.Fatalf("no responders: %v", err)
	}

	// A responder that never answers: the context's deadline becomes the REQ timeout.
	if _, err := responder.Subscribe("svc.silent", func(*Msg) {}); err != nil {
		t.Fatal(err)
	}
	if err := responder.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err = c.Request(short, "svc.silent", nil)
	if !errors.Is(err, ErrTimeout) {
		t.Fatalf("silent responder: %v", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("timeout took %v", d)
	}

	// PublishRequest with our own reply subject (section 12.3, last rule).
	inbox, err := c.SubscribeSync("replies.me")
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.PublishRequest("svc.echo", "replies.me", []byte("async")); err != nil {
		t.Fatal(err)
	}
	m, err := inbox.NextMsg(ctx)
	if err != nil || string(m.Data) != "echo: async" {
		t.Fatalf("reply on replies.me: %v %v", m, err)
	}
}

func TestRequestTimeoutFromGateway(t *testing.T) {
	// Without a deadline on ctx the gateway's request_timeout_ms applies and comes back as
	// RES REQUEST_TIMEOUT.
	g := startGateway(t, "timeouts: {request_ms: 200, max_request_ms: 1000}\n"+
		"tenants: [{name: demo, tokens: [dev-token]}]\n")
	c := connect(t, g.url)
	if _, err := c.Subscribe("svc.silent", func(*Msg) {}); err != nil {
		t.Fatal(err)
	}
	if err := c.Flush(testCtx(t, 5*time.Second)); err != nil {
		t.Fatal(err)
	}
	if c.ServerInfo().Limits.RequestTimeout != 200*time.Millisecond {
		t.Fatalf("limits %+v", c.ServerInfo().Limits)
	}
	_, err := c.Request(context.Background(), "svc.silent", nil)
	var pe *ProtocolError
	if !errors.Is(err, ErrTimeout) || !errors.As(err, &pe) || pe.Code != CodeRequestTimeout {
		t.Fatalf("want RES REQUEST_TIMEOUT, got %v", err)
	}
}

func TestLocalValidation(t *testing.T) {
	g := startGateway(t, "tenants: [{name: demo, tokens: [dev-token], limits: {max_payload: 1000}}]\n")
	c := connect(t, g.url)
	ctx := testCtx(t, 5*time.Second)
	cases := []struct {
		err  error
		code Code
		call func() error
	}{
		{ErrBadSubject, CodeWildcardNotAllowed, func() error { return c.Publish("orders.*", nil) }},
		{ErrBadSubject, CodeInvalidSubject, func() error { return c.Publish("orders..x", nil) }},
		{ErrBadSubject, CodeReservedSubject, func() error { return c.Publish("$SYS.x", nil) }},
		{ErrBadSubject, CodeWildcardNotAllowed, func() error { return c.PublishRequest("a", "r.>", nil) }},
		{ErrBadHeader, CodeReservedHeader, func() error {
			return c.PublishMsg(&Msg{Subject: "a", Header: Header{"Busgate-Tenant": "x"}})
		}},
		{ErrBadHeader, CodeInvalidHeader, func() error {
			return c.PublishMsg(&Msg{Subject: "a", Header: Header{"bad key": "x"}})
		}},
		{ErrBadHeader, CodeInvalidHeader, func() error {
			return c.PublishMsg(&Msg{Subject: "a", Header: Header{"k": "a\r\nb"}})
		}},
		{ErrMaxPayload, CodePayloadTooLarge, func() error { return c.Publish("a", make([]byte, 1001)) }},
		{ErrMaxPayload, CodePayloadTooLarge, func() error {
			_, err := c.Request(ctx, "a", make([]byte, 1001))
			return err
		}},
		{ErrBadSubject, CodeInvalidSubject, func() error { _, err := c.SubscribeSync("a*"); return err }},
		{ErrBadSubject, CodeInvalidSubject, func() error { _, err := c.SubscribeSync(strings.Repeat("x", 257)); return err }},
		{ErrBadQueue, CodeInvalidQueue, func() error { _, err := c.QueueSubscribeSync("a", "q q"); return err }},
		{ErrBadSubject, CodeWildcardNotAllowed, func() error { _, err := c.Request(ctx, "svc.*", nil); return err }},
	}
	for i, tc := range cases {
		err := tc.call()
		var pe *ProtocolError
		if !errors.Is(err, tc.err) || !errors.As(err, &pe) || pe.Code != tc.code || !pe.Local {
			t.Errorf("case %d: want %v (%v), got %v", i, tc.err, tc.code, err)
		}
	}
	if err := c.Publish("a", make([]byte, 1000)); err != nil {
		t.Fatalf("payload at max_payload: %v", err)
	}
	if err := c.Flush(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestGatewayErrors(t *testing.T) {
	checkGatewayErrors(t, func(g *gateway) string { return g.url })
}

// checkGatewayErrors: the gateway's non-fatal errors reach the caller that waits (PUB with ack, SUB,
// REQ) or the error handler (PUB without ack), and the connection stays up; urlOf picks the transport.
func checkGatewayErrors(t *testing.T, urlOf func(*gateway) string) {
	g := startGateway(t, `
tenants:
  - name: demo
    tokens: [dev-token]
    permissions:
      publish: {allow: ["orders.>"]}
      subscribe: {allow: ["orders.>"]}
      request: ["svc.allowed"]
    limits: {max_subscriptions: 2}
`)
	asyncErrs := make(chan error, 10)
	c := connect(t, urlOf(g), ErrorHandler(func(_ *Conn, _ *Subscription, err error) { asyncErrs <- err }))
	ctx := testCtx(t, 10*time.Second)

	// PUB with ack: the gateway's answer comes back to the caller.
	if err := c.PublishAck(ctx, "orders.new", []byte("x")); err != nil {
		t.Fatalf("allowed publish: %v", err)
	}
	err := c.PublishAck(ctx, "billing.x", nil)
	var pe *ProtocolError
	if !errors.Is(err, ErrPermissionDenied) || !errors.As(err, &pe) || pe.Local || pe.RefOp != OpPub || pe.RefID == 0 {
		t.Fatalf("denied publish with ack: %v", err)
	}
	// PUB without ack: the error goes to the error handler.
	if err := c.Publish("billing.y", nil); err != nil {
		t.Fatal(err)
	}
	if err := recv(t, (<-chan error)(asyncErrs), "async error"); !errors.Is(err, ErrPermissionDenied) {
		t.Fatalf("async error: %v", err)
	}
	// SUB refused: Ready returns the gateway's error, NextMsg too.
	s, err := c.SubscribeSync("billing.>")
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Ready(ctx); !errors.Is(err, ErrPermissionDenied) {
		t.Fatalf("denied subscribe: %v", err)
	}
	if _, err := s.NextMsg(ctx); !errors.Is(err, ErrPermissionDenied) {
		t.Fatalf("NextMsg of a refused subscription: %v", err)
	}
	if err := recv(t, (<-chan error)(asyncErrs), "async sub error"); !errors.Is(err, ErrPermissionDenied) {
		t.Fatalf("async error: %v", err)
	}
	// REQ refused: a RES status.
	if _, err := c.Request(ctx, "svc.other", nil); !errors.Is(err, ErrPermissionDenied) {
		t.Fatalf("denied request: %v", err)
	}
	// max_subscriptions is announced as max_subs and checked locally.
	if c.ServerInfo().Limits.MaxSubs != 2 {
		t.Fatalf("max_subs %d", c.ServerInfo().Limits.MaxSubs)
	}
	for i := 0; i < 2; i++ {
		s, err := c.SubscribeSync(fmt.Sprintf("orders.%d", i))
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Ready(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.SubscribeSync("orders.3"); !errors.Is(err, ErrTooManySubscriptions) {
		t.Fatalf("third subscription: %v", err)
	}
	if !c.IsConnected() {
		t.Fatalf("status %v after non-fatal errors", c.Status())
	}
}

func TestFlushAndHeartbeat(t *testing.T) {
	// A short heartbeat: the gateway PINGs an idle client, which must answer to stay connected, and
	// the client PINGs an idle gateway.
	g := startGateway(t, "timeouts: {heartbeat_ms: 200, min_heartbeat_ms: 50}\n"+
		"tenants: [{name: demo, tokens: [dev-token]}]\n")
	disconnected := make(chan error, 1)
	c := connect(t, g.url, Heartbeat(200*time.Millisecond),
		DisconnectErrHandler(func(_ *Conn, err error) { disconnected <- err }))
	if hb := c.ServerInfo().Limits.Heartbeat; hb != 200*time.Millisecond {
		t.Fatalf("heartbeat %v", hb)
	}
	s, err := c.SubscribeSync("tick")
	if err != nil {
		t.Fatal(err)
	}
	ctx := testCtx(t, 10*time.Second)
	// Idle for well over 2 × heartbeat: the connection survives (NextMsg waits on a timer).
	idle, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	if _, err := s.NextMsg(idle); !errors.Is(err, ErrTimeout) {
		t.Fatal(err)
	}
	select {
	case err := <-disconnected:
		t.Fatalf("disconnected while idle: %v", err)
	default:
	}
	if err := c.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if !c.IsConnected() {
		t.Fatal("not connected")
	}
}

func TestDeadGatewayDetected(t *testing.T) {
	checkDeadGatewayDetected(t, func(g *gateway) string { return g.url })
}

// checkDeadGatewayDetected: a gateway that stops answering (SIGSTOP) is detected by the client's
// heartbeat, which then reconnects (section 13); urlOf picks the transport.
func checkDeadGatewayDetected(t *testing.T, urlOf func(*gateway) string) {
	g := startGateway(t, "timeouts: {heartbeat_ms: 100, min_heartbeat_ms: 50}\n"+
		"tenants: [{name: demo, tokens: [dev-token]}]\n")
	disconnected := make(chan error, 1)
	c := connect(t, urlOf(g), Heartbeat(100*time.Millisecond),
		DisconnectErrHandler(func(_ *Conn, err error) { disconnected <- err }))
	_ = g.cmd.Process.Signal(syscall.SIGSTOP)
	t.Cleanup(func() { _ = g.cmd.Process.Signal(syscall.SIGCONT) })
	if err := recv(t, (<-chan error)(disconnected), "stale connection"); !errors.Is(err, ErrStaleConnection) {
		t.Fatalf("disconnect reason %v", err)
	}
	if c.Status() != StatusReconnecting {
		t.Fatalf("status %v", c.Status())
	}
}

func TestDrain(t *testing.T) {
	g := startGateway(t, "")
	closed := make(chan struct{})
	c := connect(t, g.url, ClosedHandler(func(*Conn) { close(closed) }))
	ctx := testCtx(t, 10*time.Second)
	release := make(chan struct{})
	var handled atomic.Int32
	sub, err := c.Subscribe("work", func(*Msg) {
		<-release
		handled.Add(1)
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := sub.Ready(ctx); err != nil {
		t.Fatal(err)
	}
	p := connect(t, g.url)
	for i := 0; i < 10; i++ {
		if err := p.Publish("work", []byte("job")); err != nil {
			t.Fatal(err)
		}
	}
	if err := p.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- c.Drain(ctx) }()
	close(release)
	if err := recv(t, (<-chan error)(done), "drain"); err != nil {
		t.Fatal(err)
	}
	if handled.Load() != 10 {
		t.Fatalf("handled %d of 10 messages", handled.Load())
	}
	recv(t, closed, "closed handler")
	if !c.IsClosed() {
		t.Fatalf("status %v", c.Status())
	}
	if err := c.Drain(ctx); !errors.Is(err, ErrConnectionClosed) {
		t.Fatalf("second drain: %v", err)
	}
}

func TestSlowConsumerLocal(t *testing.T) {
	g := startGateway(t, "")
	errs := make(chan error, 10)
	c := connect(t, g.url, ErrorHandler(func(_ *Conn, _ *Subscription, err error) { errs <- err }))
	ctx := testCtx(t, 10*time.Second)
	s, err := c.SubscribeSync("flood")
	if err != nil {
		t.Fatal(err)
	}
	if err := s.SetPendingLimits(5, 1<<20); err != nil {
		t.Fatal(err)
	}
	if err := c.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 8; i++ {
		if err := c.Publish("flood", []byte{byte(i)}); err != nil {
			t.Fatal(err)
		}
	}
	if err := recv(t, (<-chan error)(errs), "slow consumer"); !errors.Is(err, ErrSlowConsumer) {
		t.Fatalf("got %v", err)
	}
	for i := 0; i < 5; i++ { // the first five were kept, in order
		m, err := s.NextMsg(ctx)
		if err != nil || m.Data[0] != byte(i) {
			t.Fatalf("message %d: %v %v", i, m, err)
		}
	}
	if d := s.Dropped(); d < 1 || d > 3 {
		t.Fatalf("dropped %d", d)
	}
}

func TestNegotiatedMaxFrame(t *testing.T) {
	g := startGateway(t, "")
	errs := make(chan error, 4)
	c := connect(t, g.url, MaxFrame(70000), ErrorHandler(func(_ *Conn, _ *Subscription, err error) { errs <- err }))
	if mf := c.ServerInfo().Limits.MaxFrame; mf != 70000 {
		t.Fatalf("max_frame %d, want 70000", mf)
	}
	ctx := testCtx(t, 10*time.Second)
	// A frame above max_frame is refused locally: sending it would close the connection.
	err := c.Publish("big", make([]byte, 80000))
	var pe *ProtocolError
	if !errors.Is(err, ErrMaxFrame) || !errors.As(err, &pe) || !pe.Local {
		t.Fatalf("publish above max_frame: %v", err)
	}
	// A message that would need a larger MSG frame is not delivered; the gateway reports
	// PAYLOAD_TOO_LARGE about the subscription, which stays live (section 15).
	s, err := c.SubscribeSync("big")
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Ready(ctx); err != nil {
		t.Fatal(err)
	}
	p := connect(t, g.url)
	if err := p.Publish("big", make([]byte, 80000)); err != nil {
		t.Fatal(err)
	}
	err = recv(t, (<-chan error)(errs), "PAYLOAD_TOO_LARGE about the subscription")
	if !errors.As(err, &pe) || pe.Code != CodePayloadTooLarge || pe.RefOp != OpSub || pe.RefID == 0 {
		t.Fatalf("got %v", err)
	}
	if err := p.Publish("big", []byte("small")); err != nil {
		t.Fatal(err)
	}
	if m, err := s.NextMsg(ctx); err != nil || string(m.Data) != "small" {
		t.Fatalf("after the oversized message: %v %v", m, err)
	}
}

func TestTenantLimits(t *testing.T) {
	g := startGateway(t, "tenants: [{name: demo, tokens: [dev-token], limits: {max_connections: 1, publish_msgs_per_sec: 5}}]\n")
	c := connect(t, g.url)
	ctx := testCtx(t, 10*time.Second)
	// The tenant's connection limit: a fatal ERR at HELLO, typed.
	_, err := Connect(g.url, Token("dev-token"))
	var pe *ProtocolError
	if !errors.Is(err, ErrTooManyConnections) || !errors.As(err, &pe) || pe.Code != CodeTooManyConnections {
		t.Fatalf("second connection: %v", err)
	}
	// The publish rate: the bucket holds one second's worth, then RATE_LIMITED.
	var limited error
	for i := 0; i < 20 && limited == nil; i++ {
		limited = c.PublishAck(ctx, "rate.x", nil)
	}
	if !errors.Is(limited, ErrRateLimited) {
		t.Fatalf("rate limit: %v", limited)
	}
	c.Close()

	// max_inflight is announced and requests beyond it wait locally instead of failing.
	g = startGateway(t, "tenants: [{name: demo, tokens: [dev-token], limits: {max_inflight_requests: 2}}]\n")
	c = connect(t, g.url)
	if n := c.ServerInfo().Limits.MaxInflight; n != 2 {
		t.Fatalf("max_inflight %d", n)
	}
	release := make(chan struct{})
	if _, err := c.Subscribe("svc.gate", func(m *Msg) {
		<-release
		_ = m.Respond([]byte("ok"))
	}); err != nil {
		t.Fatal(err)
	}
	if err := c.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	results := make(chan error, 5)
	for i := 0; i < 5; i++ {
		go func() {
			_, err := c.Request(ctx, "svc.gate", nil)
			results <- err
		}()
	}
	close(release)
	for i := 0; i < 5; i++ {
		if err := recv(t, (<-chan error)(results), "request"); err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
	}
}
