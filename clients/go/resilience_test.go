package busgate

import (
	"errors"
	"testing"
	"time"
)

func fastReconnect() Option { return ReconnectBackoff(10*time.Millisecond, 100*time.Millisecond, 0.5) }

func TestReconnect(t *testing.T) {
	g := startGateway(t, "")
	addr := g.addr
	disconnected := make(chan error, 4)
	reconnected := make(chan struct{}, 4)
	c := connect(t, g.url, fastReconnect(),
		DisconnectErrHandler(func(_ *Conn, err error) { disconnected <- err }),
		ReconnectHandler(func(*Conn) { reconnected <- struct{}{} }))
	ctx := testCtx(t, 20*time.Second)

	s, err := c.SubscribeSync("orders.>")
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Ready(ctx); err != nil {
		t.Fatal(err)
	}
	// A request in flight when the connection drops fails at once.
	gotReq := make(chan struct{}, 1)
	if _, err := c.Subscribe("svc.silent", func(*Msg) { gotReq <- struct{}{} }); err != nil {
		t.Fatal(err)
	}
	if err := c.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	reqErr := make(chan error, 1)
	go func() {
		_, err := c.Request(ctx, "svc.silent", nil)
		reqErr <- err
	}()
	recv(t, gotReq, "request delivered")

	g.kill()
	recv(t, disconnected, "disconnect")
	if err := recv(t, (<-chan error)(reqErr), "request failure"); !errors.Is(err, ErrConnectionLost) {
		t.Fatalf("request in flight: %v", err)
	}
	if st := c.Status(); st != StatusReconnecting {
		t.Fatalf("status %v", st)
	}
	// Publishes while disconnected are buffered and sent after the resubscription.
	if err := c.Publish("orders.buffered", []byte("b1")); err != nil {
		t.Fatal(err)
	}

	g2 := startGatewayAt(t, addr, "")
	recv(t, reconnected, "reconnect")
	if !c.IsConnected() {
		t.Fatalf("status %v", c.Status())
	}
	m, err := s.NextMsg(ctx)
	if err != nil || m.Subject != "orders.buffered" || string(m.Data) != "b1" {
		t.Fatalf("buffered publish: %v %v", m, err)
	}
	p := connect(t, g2.url)
	if err := p.Publish("orders.new", []byte("after")); err != nil {
		t.Fatal(err)
	}
	if m, err := s.NextMsg(ctx); err != nil || m.Subject != "orders.new" {
		t.Fatalf("after reconnect: %v %v", m, err)
	}
	if c.ServerInfo().SessionID == "" {
		t.Fatal("no session after reconnect")
	}
}

func TestReconnectLimits(t *testing.T) {
	g := startGateway(t, "")
	closed := make(chan struct{})
	lost := make(chan error, 1)
	c := connect(t, g.url, fastReconnect(), ReconnectBufSize(64), MaxReconnects(2),
		ClosedHandler(func(*Conn) { close(closed) }), DisconnectErrHandler(func(_ *Conn, err error) { lost <- err }))
	disconnected := make(chan struct{})
	g2 := connect(t, g.url, NoReconnect(), ClosedHandler(func(*Conn) { close(disconnected) }))
	g.kill()
	recv(t, disconnected, "NoReconnect client closed")
	if !g2.IsClosed() {
		t.Fatal("NoReconnect client not closed")
	}
	recv(t, lost, "disconnect")
	// The reconnect buffer is bounded.
	if err := c.Publish("a", make([]byte, 40)); err != nil {
		t.Fatalf("first buffered publish: %v", err)
	}
	if err := c.Publish("a", make([]byte, 40)); !errors.Is(err, ErrReconnectBufExceeded) {
		t.Fatalf("second buffered publish: %v", err)
	}
	// Nobody listens any more: after MaxReconnects rounds the client gives up.
	recv(t, closed, "give up")
}

func TestReconnectAuthFailureCloses(t *testing.T) {
	g := startGateway(t, "")
	addr := g.addr
	closed := make(chan struct{})
	c := connect(t, g.url, fastReconnect(), ClosedHandler(func(*Conn) { close(closed) }))
	g.kill()
	// The restarted gateway no longer knows the token: the client stops instead of looping.
	startGatewayAt(t, addr, "tenants: [{name: demo, tokens: [another-token]}]\n")
	recv(t, closed, "closed after AUTH_FAILED")
	if err := c.LastError(); !errors.Is(err, ErrAuthFailed) {
		t.Fatalf("last error %v", err)
	}
}

func TestGoAway(t *testing.T) {
	cfg := "timeouts: {goaway_delay_ms: 1500, drain_ms: 3000}\ntenants: [{name: demo, tokens: [dev-token]}]\n"
	a := startGateway(t, cfg)
	b := startGateway(t, cfg)
	ctx := testCtx(t, 20*time.Second)

	// A responder and a requester on gateway a, both told about gateway b.
	responderMoved := make(chan struct{}, 1)
	responder := connect(t, a.url, Servers(b.url), fastReconnect(),
		ErrorHandler(func(_ *Conn, _ *Subscription, err error) { t.Logf("responder async error: %v", err) }),
		DisconnectErrHandler(func(_ *Conn, err error) { t.Logf("responder disconnected: %v", err) }),
		ReconnectHandler(func(*Conn) { responderMoved <- struct{}{} }))
	gotReq := make(chan *Msg, 4)
	if _, err := responder.Subscribe("svc.slow", func(m *Msg) { gotReq <- m }); err != nil {
		t.Fatal(err)
	}
	if err := responder.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	goaway := make(chan GoAway, 2)
	moved := make(chan struct{}, 2)
	c := connect(t, a.url, Servers(b.url), fastReconnect(),
		ErrorHandler(func(_ *Conn, _ *Subscription, err error) { t.Logf("requester async error: %v", err) }),
		DisconnectErrHandler(func(_ *Conn, err error) { t.Logf("requester disconnected: %v", err) }),
		OnGoAway(func(_ *Conn, g GoAway) { goaway <- g }),
		ReconnectHandler(func(*Conn) { moved <- struct{}{} }))
	news, err := c.SubscribeSync("news")
	if err != nil {
		t.Fatal(err)
	}
	if err := news.Ready(ctx); err != nil {
		t.Fatal(err)
	}
	type result struct {
		m   *Msg
		err error
	}
	inflight := make(chan result, 1)
	go func() {
		m, err := c.Request(ctx, "svc.slow", []byte("before goaway"))
		inflight <- result{m, err}
	}()
	req := recv(t, gotReq, "request before GOAWAY")

	a.term()
	g := recv(t, goaway, "GOAWAY")
	if g.Delay != 1500*time.Millisecond || g.Reason == "" {
		t.Fatalf("GOAWAY %+v", g)
	}
	recv(t, moved, "move to the other gateway")
	if u := c.ConnectedURL(); u != b.url {
		t.Fatalf("connected to %q, want %q", u, b.url)
	}
	// New work goes to b: the subscription was re-created there.
	if err := c.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	p := connect(t, b.url)
	if err := p.Publish("news", []byte("from b")); err != nil {
		t.Fatal(err)
	}
	if m, err := news.NextMsg(ctx); err != nil || string(m.Data) != "from b" {
		t.Fatalf("on b: %v %v", m, err)
	}
	// The request sent before GOAWAY is still answered on the old connection: the responder's reply
	// goes out on the connection that holds the grant.
	if err := req.Respond([]byte("late answer")); err != nil {
		t.Fatal(err)
	}
	r := recv(t, inflight, "reply to the request in flight")
	if r.err != nil || string(r.m.Data) != "late answer" {
		t.Fatalf("request in flight: %v %v", r.m, r.err)
	}
	// A new request goes through b, where the responder has moved too.
	recv(t, responderMoved, "responder moved")
	if err := responder.Flush(ctx); err != nil { // its subscription is live on b
		t.Fatal(err)
	}
	go func() {
		m := recv(t, gotReq, "request after GOAWAY")
		_ = m.Respond([]byte("from b"))
	}()
	reply, err := c.Request(ctx, "svc.slow", []byte("after goaway"))
	if err != nil || string(reply.Data) != "from b" {
		t.Fatalf("request after the move: %v %v", reply, err)
	}
	a.waitExit(t, 10*time.Second)
	if !c.IsConnected() {
		t.Fatalf("status %v after a exited", c.Status())
	}
}
