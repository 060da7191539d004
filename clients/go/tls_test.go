package busgate

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"io"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// testCert makes a self-signed certificate for localhost and writes it and its key as PEM files.
func testCert(t *testing.T) (tls.Certificate, *x509.CertPool, string, string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "localhost"},
		DNSNames:              []string{"localhost"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IsCA:                  true,
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, pool, certFile, keyFile
}

func TestTLS(t *testing.T) {
	_, pool, certFile, keyFile := testCert(t)
	g := startGatewayAt(t, "127.0.0.1:0", "", "--tls", "127.0.0.1:0", "--tls-cert", certFile, "--tls-key", keyFile)
	if g.tlsAddr == "" {
		t.Fatalf("no TLS listener in the log:\n%s", g.logText())
	}
	_, port, _ := net.SplitHostPort(g.tlsAddr)
	url := "busgate+tls://localhost:" + port
	ctx := testCtx(t, 10*time.Second)

	c := connect(t, url, TLSConfig(&tls.Config{RootCAs: pool}))
	s, err := c.SubscribeSync("secure.>")
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	p := connect(t, g.url) // a plain TCP client of the same gateway
	if err := p.Publish("secure.x", []byte("over tls")); err != nil {
		t.Fatal(err)
	}
	if m, err := s.NextMsg(ctx); err != nil || string(m.Data) != "over tls" || m.Tenant != "demo" {
		t.Fatalf("%v %v", m, err)
	}

	// The certificate is verified: without the test CA the handshake fails.
	_, err = Connect(url, Token("dev-token"), TLSConfig(&tls.Config{}))
	var uerr x509.UnknownAuthorityError
	if err == nil || !errors.As(err, &uerr) && !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("unverified certificate accepted: %v", err)
	}
	// ... and checked against the host name of the URL.
	if _, err := Connect("busgate+tls://"+g.tlsAddr, Token("dev-token"), TLSConfig(&tls.Config{RootCAs: pool})); err == nil {
		t.Fatal("certificate for localhost accepted for 127.0.0.1")
	}
	// ... unless verification is explicitly turned off.
	c2 := connect(t, url, TLSConfig(&tls.Config{InsecureSkipVerify: true}))
	if err := c2.Flush(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestTLSSendsSNI checks the SNI the client sends (section 2.3) with a TLS-terminating proxy in
// front of the plain listener, which records the ClientHello.
func TestTLSSendsSNI(t *testing.T) {
	g := startGateway(t, "")
	cert, pool, _, _ := testCert(t)
	var mu sync.Mutex
	var sni []string
	cfg := &tls.Config{
		Certificates: []tls.Certificate{cert},
		GetConfigForClient: func(h *tls.ClientHelloInfo) (*tls.Config, error) {
			mu.Lock()
			sni = append(sni, h.ServerName)
			mu.Unlock()
			return nil, nil
		},
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var conns []net.Conn
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			in, err := ln.Accept()
			if err != nil {
				return
			}
			out, err := net.Dial("tcp", g.addr)
			if err != nil {
				in.Close()
				continue
			}
			mu.Lock()
			conns = append(conns, in, out)
			mu.Unlock()
			wg.Add(2)
			go func() { defer wg.Done(); _, _ = io.Copy(out, in); out.Close() }()
			go func() { defer wg.Done(); _, _ = io.Copy(in, out); in.Close() }()
		}
	}()
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	c := connect(t, "busgate+tls://localhost:"+port, TLSConfig(&tls.Config{RootCAs: pool}))
	if err := c.Flush(testCtx(t, 5*time.Second)); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(sni) == 0 || sni[0] != "localhost" {
		t.Fatalf("SNI %q, want localhost", sni)
	}
}
