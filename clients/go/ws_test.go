package busgate

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

func wsURLOf(g *gateway) string { return "ws://" + g.httpAddr + "/v1/ws" }

// checkPubSubRequest runs publish/subscribe and request/reply between c and a plain TCP client p
// of the same gateway, in both directions.
func checkPubSubRequest(t *testing.T, c, p *Conn) {
	t.Helper()
	ctx := testCtx(t, 10*time.Second)
	s, err := c.SubscribeSync("ws.>")
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Ready(ctx); err != nil {
		t.Fatal(err)
	}
	if err := p.Publish("ws.in", []byte("to ws")); err != nil {
		t.Fatal(err)
	}
	if m, err := s.NextMsg(ctx); err != nil || m.Subject != "ws.in" || string(m.Data) != "to ws" || m.Tenant != "demo" {
		t.Fatalf("ws subscriber: %v %v", m, err)
	}
	ps, err := p.SubscribeSync("tcp.>")
	if err != nil {
		t.Fatal(err)
	}
	if err := ps.Ready(ctx); err != nil {
		t.Fatal(err)
	}
	// Several frames in one flush, each one WebSocket message, and a large payload.
	big := bytes.Repeat([]byte("0123456789abcdef"), 300*1024/16)
	for i := 0; i < 3; i++ {
		if err := c.Publish("tcp.out", []byte{byte('a' + i)}); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.PublishAck(ctx, "tcp.big", big); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		if m, err := ps.NextMsg(ctx); err != nil || string(m.Data) != string(rune('a'+i)) {
			t.Fatalf("tcp subscriber, message %d: %v %v", i, m, err)
		}
	}
	if m, err := ps.NextMsg(ctx); err != nil || !bytes.Equal(m.Data, big) {
		t.Fatalf("large message from ws: %v", err)
	}
	if err := p.Publish("ws.big", big); err != nil {
		t.Fatal(err)
	}
	if m, err := s.NextMsg(ctx); err != nil || !bytes.Equal(m.Data, big) {
		t.Fatalf("large message to ws: %v", err)
	}
	// Requests both ways.
	if _, err := c.Subscribe("svc.ws", func(m *Msg) { _ = m.Respond(append([]byte("ws:"), m.Data...)) }); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Subscribe("svc.tcp", func(m *Msg) { _ = m.Respond(append([]byte("tcp:"), m.Data...)) }); err != nil {
		t.Fatal(err)
	}
	if err := c.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if err := p.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if r, err := p.Request(ctx, "svc.ws", []byte("q1")); err != nil || string(r.Data) != "ws:q1" {
		t.Fatalf("request to the ws responder: %v %v", r, err)
	}
	if r, err := c.Request(ctx, "svc.tcp", []byte("q2")); err != nil || string(r.Data) != "tcp:q2" {
		t.Fatalf("request from ws: %v %v", r, err)
	}
	if _, err := c.Request(ctx, "svc.nobody", nil); !errors.Is(err, ErrNoResponders) {
		t.Fatalf("request without responders: %v", err)
	}
}

func TestWebSocket(t *testing.T) {
	g := startGateway(t, "")
	if g.httpAddr == "" {
		t.Fatalf("no HTTP listener in the log:\n%s", g.logText())
	}
	url := wsURLOf(g)
	c := connect(t, url)
	if info := c.ServerInfo(); info.URL != url || info.Tenant != "demo" || info.SessionID == "" {
		t.Fatalf("server info %+v", info)
	}
	checkPubSubRequest(t, c, connect(t, g.url))

	// Without a path the client uses /v1/ws.
	c2 := connect(t, "ws://"+g.httpAddr)
	if err := c2.Flush(testCtx(t, 5*time.Second)); err != nil {
		t.Fatal(err)
	}
	// Another path is not the WebSocket endpoint: the upgrade is refused.
	if _, err := Connect("ws://"+g.httpAddr+"/nope", Token("dev-token"), Timeout(2*time.Second)); !errors.Is(err, ErrNoServers) {
		t.Fatalf("wrong path: %v", err)
	}
	// A fatal ERR during the handshake (then a Close frame) is reported as over TCP.
	_, err := Connect(url, Token("wrong-token"))
	var pe *ProtocolError
	if !errors.Is(err, ErrAuthFailed) || !errors.As(err, &pe) || pe.Local {
		t.Fatalf("bad token over ws: %v", err)
	}
	// Close is orderly and ends everything.
	c.Close()
	if err := c.Publish("ws.x", nil); !errors.Is(err, ErrConnectionClosed) {
		t.Fatalf("publish after close: %v", err)
	}
}

func TestWebSocketGatewayErrors(t *testing.T) { checkGatewayErrors(t, wsURLOf) }

func TestWebSocketHeartbeat(t *testing.T) {
	g := startGateway(t, "timeouts: {heartbeat_ms: 200, min_heartbeat_ms: 50}\n"+
		"tenants: [{name: demo, tokens: [dev-token]}]\n")
	disconnected := make(chan error, 1)
	c := connect(t, wsURLOf(g), Heartbeat(200*time.Millisecond),
		DisconnectErrHandler(func(_ *Conn, err error) { disconnected <- err }))
	if hb := c.ServerInfo().Limits.Heartbeat; hb != 200*time.Millisecond {
		t.Fatalf("heartbeat %v", hb)
	}
	ctx := testCtx(t, 10*time.Second)
	// Idle for well over 2 × heartbeat: PING/PONG in both directions keep the connection.
	time.Sleep(time.Second)
	select {
	case err := <-disconnected:
		t.Fatalf("disconnected while idle: %v", err)
	default:
	}
	if err := c.Flush(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestWebSocketReconnect(t *testing.T) {
	g := startGateway(t, "")
	httpAddr := g.httpAddr
	disconnected := make(chan error, 4)
	reconnected := make(chan struct{}, 4)
	c := connect(t, wsURLOf(g), fastReconnect(),
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
	g.kill()
	recv(t, disconnected, "disconnect")
	if err := c.Publish("orders.buffered", []byte("b1")); err != nil {
		t.Fatal(err)
	}
	g2 := startGatewayAt(t, "127.0.0.1:0", "", "--http", httpAddr)
	recv(t, reconnected, "reconnect")
	if m, err := s.NextMsg(ctx); err != nil || string(m.Data) != "b1" {
		t.Fatalf("buffered publish: %v %v", m, err)
	}
	p := connect(t, g2.url)
	if err := p.Publish("orders.new", []byte("after")); err != nil {
		t.Fatal(err)
	}
	if m, err := s.NextMsg(ctx); err != nil || m.Subject != "orders.new" {
		t.Fatalf("after reconnect: %v %v", m, err)
	}
	if u := c.ConnectedURL(); u != wsURLOf(g2) {
		t.Fatalf("connected to %q", u)
	}
}

func TestWebSocketGoAway(t *testing.T) {
	cfg := "timeouts: {goaway_delay_ms: 500, drain_ms: 2000}\ntenants: [{name: demo, tokens: [dev-token]}]\n"
	a := startGateway(t, cfg)
	b := startGateway(t, cfg)
	ctx := testCtx(t, 20*time.Second)
	goaway := make(chan GoAway, 2)
	moved := make(chan struct{}, 2)
	c := connect(t, wsURLOf(a), Servers(wsURLOf(b)), fastReconnect(),
		OnGoAway(func(_ *Conn, g GoAway) { goaway <- g }),
		ReconnectHandler(func(*Conn) { moved <- struct{}{} }))
	s, err := c.SubscribeSync("news")
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Ready(ctx); err != nil {
		t.Fatal(err)
	}
	a.term()
	recv(t, goaway, "GOAWAY")
	recv(t, moved, "move to the other gateway")
	if err := c.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if err := connect(t, b.url).Publish("news", []byte("from b")); err != nil {
		t.Fatal(err)
	}
	if m, err := s.NextMsg(ctx); err != nil || string(m.Data) != "from b" {
		t.Fatalf("on b: %v %v", m, err)
	}
	a.waitExit(t, 10*time.Second)
	if !c.IsConnected() {
		t.Fatalf("status %v after a exited", c.Status())
	}
}

func TestWebSocketTLS(t *testing.T) {
	_, pool, certFile, keyFile := testCert(t)
	g := startGatewayAt(t, "127.0.0.1:0", "", "--https", "127.0.0.1:0", "--tls-cert", certFile, "--tls-key", keyFile)
	if g.httpsAddr == "" {
		t.Fatalf("no HTTPS listener in the log:\n%s", g.logText())
	}
	_, port, _ := net.SplitHostPort(g.httpsAddr)
	url := "wss://localhost:" + port + "/v1/ws"
	c := connect(t, url, TLSConfig(&tls.Config{RootCAs: pool}))
	checkPubSubRequest(t, c, connect(t, g.url))

	// The same CA from a file with RootCAs.
	c2 := connect(t, url, RootCAs(certFile))
	if err := c2.Flush(testCtx(t, 5*time.Second)); err != nil {
		t.Fatal(err)
	}
	// The certificate is verified, against the host name too.
	if _, err := Connect(url, Token("dev-token"), TLSConfig(&tls.Config{})); err == nil {
		t.Fatal("unverified certificate accepted")
	}
	if _, err := Connect("wss://"+g.httpsAddr+"/v1/ws", Token("dev-token"), RootCAs(certFile)); err == nil {
		t.Fatal("certificate for localhost accepted for 127.0.0.1")
	}
}

// testPKI is a test CA and a client certificate it signed, as PEM files.
type testPKI struct {
	caFile, certFile, keyFile string
	cert                      tls.Certificate
}

func newTestPKI(t *testing.T) testPKI {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(10),
		Subject:               pkix.Name{CommonName: "busgate test client CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		IsCA:                  true,
		BasicConstraintsValid: true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(11),
		Subject:      pkix.Name{CommonName: "busgate test client"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	p := testPKI{caFile: filepath.Join(dir, "ca.pem"), certFile: filepath.Join(dir, "client.pem"), keyFile: filepath.Join(dir, "client-key.pem"),
		cert: tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}}
	for file, block := range map[string]*pem.Block{
		p.caFile:   {Type: "CERTIFICATE", Bytes: caDER},
		p.certFile: {Type: "CERTIFICATE", Bytes: der},
		p.keyFile:  {Type: "EC PRIVATE KEY", Bytes: kder},
	} {
		if err := os.WriteFile(file, pem.EncodeToMemory(block), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return p
}

func TestMutualTLS(t *testing.T) {
	_, pool, certFile, keyFile := testCert(t)
	pki := newTestPKI(t)
	other := newTestPKI(t) // a client certificate from a CA the gateway does not trust
	g := startGatewayAt(t, "127.0.0.1:0", "", "--tls", "127.0.0.1:0", "--https", "127.0.0.1:0",
		"--tls-cert", certFile, "--tls-key", keyFile, "--tls-client-ca", pki.caFile)
	if g.tlsAddr == "" || g.httpsAddr == "" {
		t.Fatalf("no TLS or HTTPS listener in the log:\n%s", g.logText())
	}
	_, tlsPort, _ := net.SplitHostPort(g.tlsAddr)
	_, httpsPort, _ := net.SplitHostPort(g.httpsAddr)
	for _, url := range []string{"busgate+tls://localhost:" + tlsPort, "wss://localhost:" + httpsPort + "/v1/ws"} {
		t.Run(url[:3], func(t *testing.T) {
			ctx := testCtx(t, 10*time.Second)
			// Accepted with a client certificate: from files, or in a tls.Config, or loaded.
			for i, opts := range [][]Option{
				{RootCAs(certFile), ClientCert(pki.certFile, pki.keyFile)},
				{TLSConfig(&tls.Config{RootCAs: pool, Certificates: []tls.Certificate{pki.cert}})},
				{TLSConfig(&tls.Config{RootCAs: pool}), ClientCertificate(pki.cert)},
			} {
				c := connect(t, url, opts...)
				if err := c.Flush(ctx); err != nil {
					t.Fatalf("options %d: %v", i, err)
				}
				if i == 0 {
					checkPubSubRequest(t, c, connect(t, g.url))
				}
				c.Close()
			}
			// Refused without one, and with one the gateway's CA did not sign.
			for i, opts := range [][]Option{
				{RootCAs(certFile)},
				{RootCAs(certFile), ClientCert(other.certFile, other.keyFile)},
			} {
				start := time.Now()
				_, err := Connect(url, append([]Option{Token("dev-token"), Timeout(3 * time.Second)}, opts...)...)
				if err == nil || !errors.Is(err, ErrNoServers) {
					t.Fatalf("case %d: connected without an accepted client certificate: %v", i, err)
				}
				if d := time.Since(start); d > 2*time.Second {
					t.Fatalf("case %d: refusal took %v", i, d)
				}
				t.Logf("case %d refused: %v", i, err)
			}
		})
	}
	if _, err := Connect("busgate+tls://localhost:"+tlsPort, ClientCert(pki.keyFile, pki.certFile)); !errors.Is(err, ErrInvalidArg) {
		t.Fatalf("bad key pair files: %v", err)
	}
}

func TestWebSocketDeadGatewayDetected(t *testing.T) { checkDeadGatewayDetected(t, wsURLOf) }

// TestWebSocketCloseUnresponsive checks that Close does not wait long for the close handshake with
// a gateway that does not answer.
func TestWebSocketCloseUnresponsive(t *testing.T) {
	g := startGateway(t, "")
	c := connect(t, wsURLOf(g))
	if err := c.Flush(testCtx(t, 5*time.Second)); err != nil {
		t.Fatal(err)
	}
	_ = g.cmd.Process.Signal(syscall.SIGSTOP)
	t.Cleanup(func() { _ = g.cmd.Process.Signal(syscall.SIGCONT) })
	start := time.Now()
	c.Close()
	if d := time.Since(start); d > wsCloseTimeout+time.Second {
		t.Fatalf("Close took %v", d)
	}
}
