package busgate

import (
	"bufio"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// gateway is a running busgate binary started by a test.
type gateway struct {
	t         *testing.T
	cmd       *exec.Cmd
	addr      string // host:port of the TCP listener
	tlsAddr   string // host:port of the TLS listener, when started with --tls
	httpAddr  string // host:port of the HTTP listener (WebSocket /v1/ws)
	httpsAddr string // host:port of the HTTPS listener (wss://), when started with --https
	url       string
	exited    chan struct{}

	mu  sync.Mutex
	log []string
}

var listenRE = regexp.MustCompile(`(tcp|tls|https|http) listening on (\S+)`)

func gatewayBinary(t *testing.T) string {
	t.Helper()
	bin := os.Getenv("BUSGATE_BIN")
	if bin == "" {
		bin = filepath.Join("..", "..", "build", "bin", "busgate")
	}
	abs, err := filepath.Abs(bin)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(abs); err != nil {
		t.Fatalf("gateway binary %s not found (build it with `make build`, or set BUSGATE_BIN): %v", abs, err)
	}
	return abs
}

// startGateway starts the gateway on 127.0.0.1:0 with config (YAML; "" for dev mode: memory bus,
// tenant demo, token dev-token) and stops it when the test ends.
func startGateway(t *testing.T, config string) *gateway {
	t.Helper()
	return startGatewayAt(t, "127.0.0.1:0", config)
}

// startGatewayAt starts the gateway with its TCP listener on addr; extra are more arguments. The
// HTTP listener is on 127.0.0.1:0 unless extra has --http.
func startGatewayAt(t *testing.T, addr, config string, extra ...string) *gateway {
	t.Helper()
	args := []string{"--tcp", addr, "--threads", "2"}
	if !slices.Contains(extra, "--http") {
		args = append(args, "--http", "127.0.0.1:0")
	}
	args = append(args, extra...)
	if config != "" {
		path := filepath.Join(t.TempDir(), "gateway.yaml")
		if err := os.WriteFile(path, []byte(config), 0o600); err != nil {
			t.Fatal(err)
		}
		args = append(args, "--config", path)
	}
	g := &gateway{t: t, exited: make(chan struct{})}
	g.cmd = exec.Command(gatewayBinary(t), args...)
	stderr, err := g.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := g.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	ready := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(stderr)
		once := sync.Once{}
		for sc.Scan() {
			line := sc.Text()
			g.mu.Lock()
			g.log = append(g.log, line)
			if m := listenRE.FindStringSubmatch(line); m != nil {
				switch m[1] {
				case "tcp":
					g.addr = m[2]
				case "tls":
					g.tlsAddr = m[2]
				case "http":
					g.httpAddr = m[2]
				case "https":
					g.httpsAddr = m[2]
				}
			}
			g.mu.Unlock()
			if strings.Contains(line, "ready (bus:") {
				once.Do(func() { close(ready) })
			}
		}
		_ = g.cmd.Wait()
		close(g.exited)
	}()
	t.Cleanup(g.kill)
	select {
	case <-ready:
	case <-g.exited:
		t.Fatalf("gateway exited before it was ready:\n%s", g.logText())
	case <-time.After(15 * time.Second):
		g.kill()
		t.Fatalf("gateway not ready after 15 s:\n%s", g.logText())
	}
	g.mu.Lock()
	g.url = "busgate://" + g.addr
	g.mu.Unlock()
	return g
}

func (g *gateway) logText() string {
	g.mu.Lock()
	defer g.mu.Unlock()
	return strings.Join(g.log, "\n")
}

// kill stops the gateway at once (SIGKILL) and waits for it to exit.
func (g *gateway) kill() {
	select {
	case <-g.exited:
		return
	default:
	}
	_ = g.cmd.Process.Kill()
	<-g.exited
}

// term sends SIGTERM: the gateway drains with GOAWAY, then exits.
func (g *gateway) term() {
	_ = g.cmd.Process.Signal(syscall.SIGTERM)
}

func (g *gateway) waitExit(t *testing.T, d time.Duration) {
	t.Helper()
	select {
	case <-g.exited:
	case <-time.After(d):
		t.Fatalf("gateway still running after %v", d)
	}
}

// connect opens a client to g and closes it when the test ends.
func connect(t *testing.T, url string, opts ...Option) *Conn {
	t.Helper()
	opts = append([]Option{Token("dev-token"), Name(t.Name())}, opts...)
	c, err := Connect(url, opts...)
	if err != nil {
		t.Fatalf("connect %s: %v", url, err)
	}
	t.Cleanup(c.Close)
	return c
}

// testCtx returns a context bounded by d that ends with the test.
func testCtx(t *testing.T, d time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// recv waits for a value on ch.
func recv[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(10 * time.Second):
		t.Fatalf("timed out waiting for %s", what)
		var zero T
		return zero
	}
}
