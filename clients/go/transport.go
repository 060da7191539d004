package busgate

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/coder/websocket"
)

// transport carries frames between a link and a gateway: a byte stream of length-prefixed frames
// over TCP or TLS (docs/protocol.md section 2.1), or one WebSocket message per frame (section
// 2.4). The protocol logic (handshake, dispatch, flushing, heartbeats) is in link and is the same
// for every transport.
type transport interface {
	// readFrame returns the next frame's body, checked against max before it is buffered. The
	// body is valid until release(n) is called with the n returned.
	readFrame(max int) (body []byte, n int, err error)
	release(n int)
	// write sends buf, a sequence of whole length-prefixed frames as the Encoder appends them.
	write(buf []byte) error
	// setDeadline bounds reads and writes (the handshake); a time in the past aborts them, the
	// zero time removes the bound.
	setDeadline(t time.Time)
	// close ends the transport. graceful asks for an orderly close (WebSocket close code 1000)
	// when the client itself ends the connection.
	close(graceful bool)
}

// streamTransport is busgate framing over a TCP or TLS connection.
type streamTransport struct {
	nc  net.Conn
	br  *bufio.Reader
	big []byte
}

func newStreamTransport(nc net.Conn) *streamTransport {
	return &streamTransport{nc: nc, br: bufio.NewReaderSize(nc, readBufSize)}
}

// readFrame checks the length prefix against max before reading the body (section 2.1).
func (s *streamTransport) readFrame(max int) ([]byte, int, error) {
	hdr, err := s.br.Peek(4)
	if err != nil {
		return nil, 0, err
	}
	n := int(binary.BigEndian.Uint32(hdr))
	if n == 0 {
		return nil, 0, malformed("zero-length frame from the gateway")
	}
	if n > max {
		return nil, 0, protoErr(CodeFrameTooLarge, fmt.Sprintf("frame of %d bytes from the gateway, above %d", n, max))
	}
	_, _ = s.br.Discard(4)
	if n <= s.br.Size() {
		body, err := s.br.Peek(n)
		if err != nil {
			return nil, 0, err
		}
		return body, n, nil
	}
	if cap(s.big) < n {
		s.big = make([]byte, n)
	}
	body := s.big[:n]
	if _, err := io.ReadFull(s.br, body); err != nil {
		return nil, 0, err
	}
	return body, 0, nil
}

func (s *streamTransport) release(n int) {
	if n > 0 {
		_, _ = s.br.Discard(n)
	}
}

func (s *streamTransport) write(buf []byte) error {
	_, err := s.nc.Write(buf)
	return err
}

func (s *streamTransport) setDeadline(t time.Time) { _ = s.nc.SetDeadline(t) }

func (s *streamTransport) close(bool) { s.nc.Close() }

// WSSubprotocol is the WebSocket subprotocol this client speaks: binary messages, each one msgpack
// frame body without the length prefix (section 2.4).
const WSSubprotocol = "busgate.v1"

// wsCloseTimeout bounds the WebSocket close handshake.
var wsCloseTimeout = time.Second

// wsTransport is busgate over WebSocket with the busgate.v1 subprotocol.
type wsTransport struct {
	ws  *websocket.Conn
	raw net.Conn // the TCP connection under ws, to bound the close handshake
	buf []byte

	mu    sync.Mutex
	timer *time.Timer // the deadline set by setDeadline
}

// dialWS opens a WebSocket to u and checks that the gateway selected busgate.v1. cfg is the TLS
// configuration for wss:// (nil for ws://).
func dialWS(ctx context.Context, u serverURL, cfg *tls.Config) (*wsTransport, error) {
	var d net.Dialer
	var rawMu sync.Mutex
	var raw net.Conn
	tr := &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			nc, err := d.DialContext(ctx, network, addr)
			if err == nil {
				rawMu.Lock()
				raw = nc
				rawMu.Unlock()
			}
			return nc, err
		},
		TLSClientConfig:   cfg,
		DisableKeepAlives: true,
	}
	defer tr.CloseIdleConnections()
	ws, resp, err := websocket.Dial(ctx, u.wsURL(), &websocket.DialOptions{
		HTTPClient:      &http.Client{Transport: tr},
		Subprotocols:    []string{WSSubprotocol},
		CompressionMode: websocket.CompressionDisabled,
	})
	if err != nil {
		if resp != nil && resp.StatusCode != http.StatusSwitchingProtocols {
			return nil, fmt.Errorf("busgate: WebSocket upgrade at %s refused with HTTP %s: %w", u.raw, resp.Status, err)
		}
		return nil, err
	}
	if p := ws.Subprotocol(); p != WSSubprotocol {
		ws.CloseNow()
		return nil, fmt.Errorf("busgate: %s selected WebSocket subprotocol %q, want %q", u.raw, p, WSSubprotocol)
	}
	rawMu.Lock()
	defer rawMu.Unlock()
	return &wsTransport{ws: ws, raw: raw}, nil
}

// readFrame reads one message, which is one frame body (section 2.4), without buffering more than
// max+1 bytes of it.
func (w *wsTransport) readFrame(limit int) ([]byte, int, error) {
	w.ws.SetReadLimit(int64(limit) + 1) // we stop at max+1 ourselves, before the library's limit
	typ, r, err := w.ws.Reader(context.Background())
	if err != nil {
		return nil, 0, err
	}
	if typ != websocket.MessageBinary {
		return nil, 0, malformed("text message from the gateway under " + WSSubprotocol)
	}
	n := 0
	for {
		if n == len(w.buf) {
			if n > limit {
				return nil, 0, protoErr(CodeFrameTooLarge, fmt.Sprintf("message of more than %d bytes from the gateway", limit))
			}
			size := min(max(2*len(w.buf), 4096), limit+1)
			nb := make([]byte, size)
			copy(nb, w.buf[:n])
			w.buf = nb
		}
		k, err := r.Read(w.buf[n:])
		n += k
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, 0, err
		}
	}
	if n == 0 {
		return nil, 0, malformed("empty message from the gateway")
	}
	if n > limit {
		return nil, 0, protoErr(CodeFrameTooLarge, fmt.Sprintf("message of more than %d bytes from the gateway", limit))
	}
	body := w.buf[:n]
	if cap(w.buf) > 4*readBufSize { // grown for a large frame: do not keep it once body is used
		w.buf = nil
	}
	return body, 0, nil
}

func (w *wsTransport) release(int) {}

// write sends each length-prefixed frame of buf as one binary message, without its prefix.
func (w *wsTransport) write(buf []byte) error {
	for len(buf) > 0 {
		if len(buf) < 4 {
			return errors.New("busgate: internal error: partial frame in the write buffer")
		}
		n := int(binary.BigEndian.Uint32(buf))
		if len(buf) < 4+n {
			return errors.New("busgate: internal error: partial frame in the write buffer")
		}
		if err := w.ws.Write(context.Background(), websocket.MessageBinary, buf[4:4+n]); err != nil {
			return err
		}
		buf = buf[4+n:]
	}
	return nil
}

// setDeadline closes the WebSocket at t: the handshake ends with an error either way.
func (w *wsTransport) setDeadline(t time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.timer != nil {
		w.timer.Stop()
		w.timer = nil
	}
	if !t.IsZero() {
		w.timer = time.AfterFunc(time.Until(t), func() { _ = w.ws.CloseNow() })
	}
}

func (w *wsTransport) close(graceful bool) {
	w.setDeadline(time.Time{})
	if graceful && w.raw != nil {
		// The close handshake (code 1000, section 2.4), bounded: a gateway that does not answer
		// does not hold up Close.
		t := time.AfterFunc(wsCloseTimeout, func() { _ = w.raw.Close() })
		_ = w.ws.Close(websocket.StatusNormalClosure, "")
		t.Stop()
	} else {
		_ = w.ws.CloseNow()
	}
}
