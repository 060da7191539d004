package busgate

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"net"
	"sort"
	"sync"
	"sync/atomic"
	"time"
)

// Status is the state of a Conn.
type Status int

const (
	StatusConnecting   Status = iota // Connect has not returned yet
	StatusConnected                  // a connection is open and takes new work
	StatusReconnecting               // lost or draining (GOAWAY): new work is buffered for the next connection
	StatusDraining                   // Drain is in progress
	StatusClosed                     // closed for good
)

func (s Status) String() string {
	switch s {
	case StatusConnecting:
		return "CONNECTING"
	case StatusConnected:
		return "CONNECTED"
	case StatusReconnecting:
		return "RECONNECTING"
	case StatusDraining:
		return "DRAINING"
	case StatusClosed:
		return "CLOSED"
	}
	return "UNKNOWN"
}

// Limits are the values the gateway announced in WELCOME for this connection (section 6.5).
type Limits struct {
	MaxFrame       int
	MaxPayload     int
	Heartbeat      time.Duration
	MaxSubs        int
	MaxInflight    int
	MaxPending     int
	RequestTimeout time.Duration
	MaxTimeout     time.Duration
	Raw            Map // every key, including those this client does not know
}

// ServerInfo describes the gateway session of the current connection.
type ServerInfo struct {
	Version   uint64
	SessionID string
	NodeID    string
	Tenant    string
	URL       string
	Limits    Limits
}

// Conn is a client connection to a busgate gateway. It reconnects by itself after a lost
// connection and moves to a new connection when the gateway sends GOAWAY. All methods are safe for
// concurrent use.
type Conn struct {
	opts    Options
	servers []serverURL

	mu       sync.Mutex
	cond     *sync.Cond // publishers waiting for the write buffer to drain
	waiters  int        // goroutines waiting on cond
	status   Status
	draining bool
	cur      *link   // takes new work; nil while reconnecting
	old      []*link // links that received GOAWAY and are finishing their requests
	pend     []byte  // frames for the next link while cur == nil
	pendPong []chan error
	info     ServerInfo
	enc      *Encoder
	hdrTmp   []HeaderField
	lastErr  error
	closeCh  chan struct{}
	wg       sync.WaitGroup
	reconn   bool // a reconnect loop is running
	stateCh  chan struct{}

	reqs      map[uint64]*pendingOp
	nextReq   uint64
	inflight  int
	slotFreed chan struct{}
	acks      map[uint64]*pendingOp
	nextAck   uint64

	lastSubject atomic.Pointer[string] // the last publish subject that passed the grammar check

	subsMu  sync.RWMutex
	subs    map[uint64]*Subscription
	nextSID uint64

	cbs *callbacks
}

// pendingOp is a REQ or a PUB with ack waiting for its answer.
type pendingOp struct {
	l   *link // the link it was sent on; nil while in the reconnect buffer
	res chan opResult
}

type opResult struct {
	f   *Frame
	err error
}

// Connect opens a connection to the gateway at url and completes the HELLO/WELCOME handshake. url
// is busgate://host[:port] or busgate+tls://host[:port] (default port 7422), or a WebSocket URL
// ws://host[:port]/v1/ws or wss://host[:port]/v1/ws (default ports 80 and 443, default path /v1/ws).
func Connect(url string, opts ...Option) (*Conn, error) {
	o := GetDefaultOptions()
	o.URL = url
	for _, opt := range opts {
		if opt == nil {
			continue
		}
		if err := opt(&o); err != nil {
			return nil, err
		}
	}
	return o.Connect()
}

// Connect opens a connection with these options.
func (o Options) Connect() (*Conn, error) {
	c := &Conn{
		opts:    o,
		closeCh: make(chan struct{}),
		reqs:    make(map[uint64]*pendingOp),
		acks:    make(map[uint64]*pendingOp),
		subs:    make(map[uint64]*Subscription),
		enc:     NewEncoder(),
		status:  StatusConnecting,
	}
	c.cond = sync.NewCond(&c.mu)
	for _, s := range append([]string{o.URL}, o.Servers...) {
		if s == "" {
			continue
		}
		u, err := parseURL(s)
		if err != nil {
			return nil, err
		}
		c.servers = append(c.servers, u)
	}
	if len(c.servers) == 0 {
		return nil, fmt.Errorf("%w: no URL given", ErrInvalidURL)
	}
	if o.Timeout <= 0 {
		c.opts.Timeout = DefaultTimeout
	}
	c.cbs = newCallbacks()
	var lastErr error
	for _, u := range c.servers {
		l, err := c.dial(u)
		if err == nil {
			c.mu.Lock()
			c.install(l)
			c.mu.Unlock()
			return c, nil
		}
		lastErr = err
		var pe *ProtocolError
		if errors.As(err, &pe) && !retryable(pe.Code) {
			break
		}
	}
	c.cbs.close()
	if errors.Is(lastErr, ErrNoServers) {
		return nil, lastErr
	}
	return nil, fmt.Errorf("%w: %w", ErrNoServers, lastErr)
}

// retryable reports whether a fatal handshake error may succeed on another try.
func retryable(c Code) bool {
	switch c {
	case CodeAuthFailed, CodeAuthRevoked, CodeAuthMethodUnsupported, CodeUnsupportedVersion:
		return false
	}
	return true
}

// dial opens a transport to u and runs the handshake.
func (c *Conn) dial(u serverURL) (*link, error) {
	ctx, cancel := context.WithTimeout(context.Background(), c.opts.Timeout)
	defer cancel()
	go func() { // Close cancels a dial in progress
		select {
		case <-c.closeCh:
			cancel()
		case <-ctx.Done():
		}
	}()
	var cfg *tls.Config
	if u.tls {
		cfg = c.tlsConfig(u)
	}
	var t transport
	if u.ws {
		wt, err := dialWS(ctx, u, cfg)
		if err != nil {
			return nil, err
		}
		t = wt
	} else {
		var d net.Dialer
		nc, err := d.DialContext(ctx, "tcp", u.addr)
		if err != nil {
			return nil, err
		}
		if cfg != nil {
			tc := tls.Client(nc, cfg)
			if err := tc.HandshakeContext(ctx); err != nil {
				nc.Close()
				return nil, err
			}
			nc = tc
		}
		t = newStreamTransport(nc)
	}
	l := newLink(c, t, u)
	if err := l.handshake(ctx); err != nil {
		t.close(false)
		return nil, err
	}
	return l, nil
}

// tlsConfig is the TLS configuration for u: a copy of Options.TLSConfig (at least TLS 1.2), with
// the RootCAs and client certificates of the options added and the URL's host as ServerName for
// SNI and certificate verification (section 2.3).
func (c *Conn) tlsConfig(u serverURL) *tls.Config {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if c.opts.TLSConfig != nil {
		cfg = c.opts.TLSConfig.Clone()
		if cfg.MinVersion == 0 {
			cfg.MinVersion = tls.VersionTLS12
		}
	}
	if c.opts.RootCAs != nil {
		cfg.RootCAs = c.opts.RootCAs
	}
	if len(c.opts.ClientCerts) > 0 {
		cfg.Certificates = append(append([]tls.Certificate(nil), cfg.Certificates...), c.opts.ClientCerts...)
	}
	if cfg.ServerName == "" {
		cfg.ServerName = u.host
	}
	if u.ws {
		cfg.NextProtos = []string{"http/1.1"} // the WebSocket upgrade is an HTTP/1.1 request
	}
	return cfg
}

// helloFrame builds this client's HELLO (section 7.1).
func (c *Conn) helloFrame() *Frame {
	opts := Map{}
	if c.opts.MaxFrame > 0 {
		opts = append(opts, MapEntry{"max_frame", uint64(c.opts.MaxFrame)})
	}
	if c.opts.Heartbeat > 0 {
		opts = append(opts, MapEntry{"heartbeat_ms", uint64(c.opts.Heartbeat / time.Millisecond)})
	}
	opts = append(opts, MapEntry{"lang", "go"}, MapEntry{"version", Version})
	f := &Frame{
		Op:       OpHello,
		Versions: []uint64{1},
		Auth:     Map{{"method", "token"}, {"token", c.opts.Token}},
		Opts:     opts,
	}
	if c.opts.Name != "" {
		f.Name, f.HasName = c.opts.Name, true
	}
	return f
}

// install makes l the current link: it re-creates the subscriptions, sends what was buffered while
// disconnected, and starts l's goroutines. c.mu is held.
func (c *Conn) install(l *link) {
	if c.status == StatusClosed {
		l.shutdown(ErrConnectionClosed)
		return
	}
	first := c.status == StatusConnecting
	c.info = l.info
	// Resubscribe, in sid order, before anything buffered.
	c.subsMu.RLock()
	subs := make([]*Subscription, 0, len(c.subs))
	for _, s := range c.subs {
		subs = append(subs, s)
	}
	c.subsMu.RUnlock()
	sort.Slice(subs, func(i, j int) bool { return subs[i].sid < subs[j].sid })
	for _, s := range subs {
		f := s.subFrame()
		l.wbuf, _ = c.enc.AppendFrame(l.wbuf, &f)
		if left := s.remaining(); left > 0 {
			f = Frame{Op: OpUnsub, SID: s.sid, MaxMsgs: left}
			l.wbuf, _ = c.enc.AppendFrame(l.wbuf, &f)
		}
	}
	if first {
		l.synced = true
	} else {
		// A PING after the resubscriptions: its PONG tells that they are live, so a link that got
		// GOAWAY can be retired.
		ping := Frame{Op: OpPing}
		l.wbuf, _ = c.enc.AppendFrame(l.wbuf, &ping)
		l.syncPong = make(chan error, 1)
		l.pongs = append(l.pongs, l.syncPong)
	}
	l.wbuf = append(l.wbuf, c.pend...)
	c.pend = c.pend[:0]
	l.pongs = append(l.pongs, c.pendPong...)
	c.pendPong = nil
	for _, op := range c.reqs {
		if op.l == nil {
			op.l = l
		}
	}
	for _, op := range c.acks {
		if op.l == nil {
			op.l = l
		}
	}
	c.cur = l
	c.notifyState()
	if c.draining {
		c.status = StatusDraining
	} else {
		c.status = StatusConnected
	}
	c.wg.Add(3)
	go l.readLoop()
	go l.flushLoop()
	go l.heartbeatLoop()
	l.signal()
	c.cond.Broadcast()
	if !first && c.opts.ReconnectedCB != nil {
		cb := c.opts.ReconnectedCB
		c.cbs.push(func() { cb(c) })
	}
}

// linkLost is called by l's read loop when l has ended.
func (c *Conn) linkLost(l *link, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	lost := ErrConnectionLost
	if l.goaway {
		lost = protoErr(CodeShuttingDown, "the draining connection closed before the answer arrived")
	}
	if c.status == StatusClosed {
		lost = ErrConnectionClosed
	}
	for _, ch := range l.pongs {
		if ch != nil {
			ch <- lost
		}
	}
	l.pongs = nil
	for id, op := range c.reqs {
		if op.l == l {
			delete(c.reqs, id)
			c.releaseSlot()
			op.res <- opResult{err: lost}
		}
	}
	for id, op := range c.acks {
		if op.l == l {
			delete(c.acks, id)
			op.res <- opResult{err: lost}
		}
	}
	c.durableLinkLost(l)
	for i, o := range c.old {
		if o == l {
			c.old = append(c.old[:i], c.old[i+1:]...)
			break
		}
	}
	c.cond.Broadcast() // publishers waiting for l's buffer go elsewhere
	if c.cur != l || c.status == StatusClosed {
		return
	}
	c.cur = nil
	c.lastErr = err
	if cb := c.opts.DisconnectedErrCB; cb != nil {
		c.cbs.push(func() { cb(c, err) })
	}
	var pe *ProtocolError
	if !c.opts.AllowReconnect || c.draining || errors.As(err, &pe) && !pe.Local && !retryable(pe.Code) {
		go c.Close()
		return
	}
	c.status = StatusReconnecting
	c.startReconnect(nil)
}

// startReconnect starts the reconnect loop unless one runs. c.mu is held.
func (c *Conn) startReconnect(first []string) {
	if c.reconn {
		return
	}
	c.reconn = true
	c.wg.Add(1)
	go c.reconnectLoop(first)
}

// reconnectLoop tries the candidate servers in rounds, with exponential backoff and jitter between
// rounds, until one accepts the handshake. The first round starts at once. Candidates: the servers
// of a GOAWAY, then the current URL, then the configured ones.
func (c *Conn) reconnectLoop(first []string) {
	defer c.wg.Done()
	var cands []serverURL
	seen := map[string]bool{}
	add := func(u serverURL) {
		if !seen[u.key()] {
			seen[u.key()] = true
			cands = append(cands, u)
		}
	}
	for _, s := range first {
		if u, err := parseURL(s); err == nil {
			add(u)
		}
	}
	c.mu.Lock()
	curURL := c.info.URL
	c.mu.Unlock()
	if u, err := parseURL(curURL); err == nil {
		add(u)
	}
	for _, u := range c.servers {
		add(u)
	}
	for round := 0; ; round++ {
		if round > 0 {
			if c.opts.MaxReconnects >= 0 && round > c.opts.MaxReconnects {
				c.mu.Lock()
				c.reconn = false
				if c.lastErr == nil {
					c.lastErr = ErrNoServers
				}
				c.mu.Unlock()
				go c.Close()
				return
			}
			t := time.NewTimer(c.backoff(round))
			select {
			case <-t.C:
			case <-c.closeCh:
				t.Stop()
				c.endReconnect()
				return
			}
		}
		for _, u := range cands {
			select {
			case <-c.closeCh:
				c.endReconnect()
				return
			default:
			}
			l, err := c.dial(u)
			if err != nil {
				c.mu.Lock()
				c.lastErr = err
				c.mu.Unlock()
				var pe *ProtocolError
				if errors.As(err, &pe) && !retryable(pe.Code) {
					c.endReconnect()
					go c.Close()
					return
				}
				continue
			}
			c.mu.Lock()
			c.reconn = false
			c.install(l)
			c.mu.Unlock()
			return
		}
	}
}

func (c *Conn) endReconnect() {
	c.mu.Lock()
	c.reconn = false
	c.mu.Unlock()
}

// backoff is the wait before reconnect round n (n >= 1): ReconnectWait doubled each round up to
// MaxReconnectWait, of which the ReconnectJitter fraction is random.
func (c *Conn) backoff(n int) time.Duration {
	d := c.opts.ReconnectWait
	for i := 1; i < n && d < c.opts.MaxReconnectWait; i++ {
		d *= 2
	}
	d = min(d, c.opts.MaxReconnectWait)
	j := c.opts.ReconnectJitter
	return time.Duration(float64(d) * (1 - j*rand.Float64()))
}

// goAway handles GOAWAY on l (section 14): new work goes to a new connection at once; l keeps
// delivering and answering until its requests are done, and is closed before delay_ms.
func (c *Conn) goAway(l *link, f *Frame) {
	c.mu.Lock()
	if cb := c.opts.GoAwayCB; cb != nil && c.cur == l {
		g := GoAway{Delay: time.Duration(f.DelayMS) * time.Millisecond, Reason: f.Reason, Servers: f.Servers}
		c.cbs.push(func() { cb(c, g) })
	}
	if c.cur != l || c.status == StatusClosed || !c.opts.AllowReconnect {
		c.mu.Unlock() // without reconnecting, the connection is used until the gateway closes it
		return
	}
	l.goaway = true
	c.cur = nil
	c.old = append(c.old, l)
	c.cond.Broadcast() // publishers waiting for l's buffer go to the reconnect buffer
	if !c.draining {
		c.status = StatusReconnecting
	}
	c.startReconnect(f.Servers)
	c.mu.Unlock()

	delay := time.Duration(f.DelayMS) * time.Millisecond
	margin := min(delay/10, time.Second)
	c.wg.Add(1)
	go l.retire(time.Now().Add(delay - margin))
}

// releaseSlot frees a request slot. c.mu is held.
func (c *Conn) releaseSlot() {
	c.inflight--
	if c.slotFreed != nil {
		close(c.slotFreed)
		c.slotFreed = nil
	}
}

// Status returns the connection's state.
func (c *Conn) Status() Status {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.status
}

// IsConnected reports whether a connection is open and takes new work.
func (c *Conn) IsConnected() bool { return c.Status() == StatusConnected }

// IsClosed reports whether the Conn is closed for good.
func (c *Conn) IsClosed() bool { return c.Status() == StatusClosed }

// ServerInfo returns what the gateway announced in the latest WELCOME.
func (c *Conn) ServerInfo() ServerInfo {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.info
}

// ConnectedURL returns the URL of the current connection, or "" while disconnected.
func (c *Conn) ConnectedURL() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cur == nil {
		return ""
	}
	return c.info.URL
}

// LastError returns the error that ended the latest connection, if any.
func (c *Conn) LastError() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lastErr
}

// Close closes the connection at once: subscriptions end, waiting calls fail with
// ErrConnectionClosed, and messages still queued for handlers are dropped. Use Drain to finish
// work first.
func (c *Conn) Close() {
	c.mu.Lock()
	if c.status == StatusClosed {
		c.mu.Unlock()
		return
	}
	c.status = StatusClosed
	close(c.closeCh)
	links := append([]*link(nil), c.old...)
	if c.cur != nil {
		links = append(links, c.cur)
	}
	c.cur = nil
	for id, op := range c.reqs {
		delete(c.reqs, id)
		op.res <- opResult{err: ErrConnectionClosed}
	}
	c.inflight = 0
	if c.slotFreed != nil {
		close(c.slotFreed)
		c.slotFreed = nil
	}
	for id, op := range c.acks {
		delete(c.acks, id)
		op.res <- opResult{err: ErrConnectionClosed}
	}
	for _, ch := range c.pendPong {
		ch <- ErrConnectionClosed
	}
	c.pendPong = nil
	c.pend = nil
	c.cond.Broadcast()
	c.mu.Unlock()

	for _, l := range links {
		l.shutdown(ErrConnectionClosed)
	}
	c.subsMu.Lock()
	subs := make([]*Subscription, 0, len(c.subs))
	for sid, s := range c.subs {
		subs = append(subs, s)
		delete(c.subs, sid)
	}
	c.subsMu.Unlock()
	for _, s := range subs {
		s.terminate(ErrConnectionClosed, false)
	}
	c.wg.Wait()
	if cb := c.opts.ClosedCB; cb != nil {
		c.cbs.push(func() { cb(c) })
	}
	c.cbs.close()
}

// Flush waits until the gateway has processed every frame sent before it: a PING/PONG barrier
// (section 7.11). Errors about earlier frames have then been received, and earlier SUBs are live.
func (c *Conn) Flush(ctx context.Context) error {
	ch := make(chan error, 1)
	c.mu.Lock()
	if c.status == StatusClosed {
		c.mu.Unlock()
		return ErrConnectionClosed
	}
	ping := Frame{Op: OpPing}
	if l := c.cur; l != nil {
		l.wbuf, _ = c.enc.AppendFrame(l.wbuf, &ping)
		l.pongs = append(l.pongs, ch)
		l.signal()
	} else {
		c.pend, _ = c.enc.AppendFrame(c.pend, &ping)
		c.pendPong = append(c.pendPong, ch)
	}
	c.mu.Unlock()
	select {
	case err := <-ch:
		return err
	case <-ctx.Done():
		return ctxError(ctx.Err())
	}
}

// buffer returns where new work goes: the current link's write buffer or, while disconnected, the
// reconnect buffer. It waits while the write buffer is over its limit. c.mu is held.
func (c *Conn) buffer() (*[]byte, *link, error) {
	for {
		switch {
		case c.status == StatusClosed:
			return nil, nil, ErrConnectionClosed
		case c.cur != nil:
			if len(c.cur.wbuf) < writeBufSize {
				return &c.cur.wbuf, c.cur, nil
			}
			c.waiters++
			c.cur.signal()
			c.cond.Wait()
			c.waiters--
		default:
			if c.opts.ReconnectBufSize < 0 {
				return nil, nil, ErrReconnectBufExceeded
			}
			return &c.pend, nil, nil
		}
	}
}

// commit checks the frame just appended at buf[start:] against the limits and either keeps it
// (signalling the flusher) or removes it. c.mu is held.
func (c *Conn) commit(buf *[]byte, l *link, start int) error {
	n := len(*buf) - start - 4
	if max := c.info.Limits.MaxFrame; max > 0 && n > max {
		*buf = (*buf)[:start]
		return protoErr(CodeFrameTooLarge, fmt.Sprintf("frame of %d bytes above max_frame %d", n, max))
	}
	if l == nil {
		if len(*buf) > c.opts.ReconnectBufSize {
			*buf = (*buf)[:start]
			return ErrReconnectBufExceeded
		}
		return nil
	}
	l.signal()
	return nil
}

// headerFields converts h to frame headers in c.hdrTmp. c.mu is held.
func (c *Conn) headerFields(h Header) []HeaderField {
	c.hdrTmp = c.hdrTmp[:0]
	if len(h) == 0 {
		return nil
	}
	for k, v := range h {
		c.hdrTmp = append(c.hdrTmp, HeaderField{k, v})
	}
	return c.hdrTmp
}

func (c *Conn) checkPublish(subject, reply string, h Header) error {
	// The subject of the previous publish was valid: publishers repeat subjects, and this saves
	// the grammar check on the hot path.
	if last := c.lastSubject.Load(); last == nil || *last != subject {
		if code := checkSubject(subject, false); code != 0 {
			return protoErr(code, fmt.Sprintf("subject %q", subject))
		}
		valid := subject // allocated only here, not on every call
		c.lastSubject.Store(&valid)
	}
	if reply != "" {
		if code := checkSubject(reply, false); code != 0 {
			return protoErr(code, fmt.Sprintf("reply subject %q", reply))
		}
	}
	if len(h) > 0 {
		if code := checkHeaderMap(h); code != 0 {
			return protoErr(code, "headers")
		}
	}
	return nil
}

func (c *Conn) checkPayload(n int) error {
	if max := c.info.Limits.MaxPayload; max > 0 && n > max {
		return protoErr(CodePayloadTooLarge, fmt.Sprintf("payload of %d bytes above max_payload %d", n, max))
	}
	return nil
}

// Publish sends data to subject. It returns once the message is queued; errors the gateway reports
// later go to the ErrorHandler. Use PublishAck to wait for the gateway's answer.
func (c *Conn) Publish(subject string, data []byte) error {
	return c.publish(subject, "", nil, data)
}

// PublishMsg sends m (Subject, Reply, Header, Data).
func (c *Conn) PublishMsg(m *Msg) error {
	return c.publish(m.Subject, m.Reply, m.Header, m.Data)
}

// PublishRequest sends data to subject with reply as the subject receivers should answer on.
func (c *Conn) PublishRequest(subject, reply string, data []byte) error {
	return c.publish(subject, reply, nil, data)
}

func (c *Conn) publish(subject, reply string, h Header, data []byte) error {
	return c.publishVia(nil, subject, reply, h, data)
}

// publishVia publishes on via when it is a link that received GOAWAY and is still open, else on the
// current link.
func (c *Conn) publishVia(via *link, subject, reply string, h Header, data []byte) error {
	if err := c.checkPublish(subject, reply, h); err != nil {
		return err
	}
	c.mu.Lock()
	err := c.checkPayload(len(data))
	if err == nil {
		var buf *[]byte
		var l *link
		if via != nil && via.goaway && via != c.cur && !via.isDone() && c.status != StatusClosed {
			buf, l = &via.wbuf, via
		} else {
			buf, l, err = c.buffer()
		}
		if err == nil {
			start := len(*buf)
			*buf = c.enc.appendPub(*buf, subject, data, c.headerFields(h), reply, 0)
			err = c.commit(buf, l, start)
		}
	}
	c.mu.Unlock()
	return err
}

// PublishAck sends data to subject and waits for the gateway to confirm that the bus accepted it
// (PUB with ack, section 7.3); on a subject a stream stores, that the stream has stored it
// (section 16.5). Rejections come back as *ProtocolError (ErrPermissionDenied, ErrRateLimited,
// ErrMaxPayload, ErrNotStored, ...). WithMsgID gives the message an idempotency key.
func (c *Conn) PublishAck(ctx context.Context, subject string, data []byte, opts ...PubOpt) error {
	return c.PublishMsgAck(ctx, &Msg{Subject: subject, Data: data}, opts...)
}

// PublishMsgAck is PublishAck for a Msg with headers or a reply subject.
//
// With WithMsgID, a publish whose connection is lost before the answer arrives is sent again on
// the next connection until the answer arrives or ctx ends: the stream stores the key once within
// its duplicate window, so the re-send is safe. Without it, such a publish fails with
// ErrConnectionLost and the caller decides whether to send it again.
func (c *Conn) PublishMsgAck(ctx context.Context, m *Msg, opts ...PubOpt) error {
	var po pubConfig
	for _, o := range opts {
		if o == nil {
			continue
		}
		if err := o(&po); err != nil {
			return err
		}
	}
	if err := c.checkPublish(m.Subject, m.Reply, m.Header); err != nil {
		return err
	}
	for {
		err := c.publishAckOnce(ctx, m, po.msgID)
		if po.msgID == "" || ctx.Err() != nil || !lostBeforeAnswer(err) {
			return err
		}
	}
}

// lostBeforeAnswer reports whether err says that the connection ended before the gateway answered.
func lostBeforeAnswer(err error) bool {
	if errors.Is(err, ErrConnectionLost) {
		return true
	}
	var pe *ProtocolError
	return errors.As(err, &pe) && pe.Local && pe.Code == CodeShuttingDown // a link retired after GOAWAY
}

func (c *Conn) publishAckOnce(ctx context.Context, m *Msg, msgID string) error {
	op := &pendingOp{res: make(chan opResult, 1)}
	c.mu.Lock()
	if err := c.checkPayload(len(m.Data)); err != nil {
		c.mu.Unlock()
		return err
	}
	buf, l, err := c.buffer()
	if err != nil {
		c.mu.Unlock()
		return err
	}
	id := c.allocID(&c.nextAck, func(id uint64) bool { _, used := c.acks[id]; return used })
	start := len(*buf)
	*buf = c.enc.appendStoredPub(*buf, m.Subject, m.Data, c.headerFields(m.Header), m.Reply, id, msgID)
	if err := c.commit(buf, l, start); err != nil {
		c.mu.Unlock()
		return err
	}
	op.l = l
	c.acks[id] = op
	c.mu.Unlock()
	select {
	case r := <-op.res:
		return r.err
	case <-ctx.Done():
		c.mu.Lock()
		delete(c.acks, id)
		c.mu.Unlock()
		return ctxError(ctx.Err())
	}
}

// allocID returns the next id in 1..2^32-1 that used does not report in use. c.mu is held.
func (c *Conn) allocID(next *uint64, used func(uint64) bool) uint64 {
	for {
		*next++
		if *next > math.MaxUint32 {
			*next = 1
		}
		if !used(*next) {
			return *next
		}
	}
}

// Request sends a request and waits for one reply (section 12). The context's deadline, if any,
// becomes the REQ timeout_ms; without one the gateway's request_timeout_ms applies. Failures are
// *ProtocolError values matching ErrNoResponders, ErrTimeout, ErrPermissionDenied, ...
func (c *Conn) Request(ctx context.Context, subject string, data []byte) (*Msg, error) {
	return c.RequestMsg(ctx, &Msg{Subject: subject, Data: data})
}

// RequestMsg is Request with headers (m.Subject, m.Header, m.Data; m.Reply is not used).
func (c *Conn) RequestMsg(ctx context.Context, m *Msg) (*Msg, error) {
	if err := c.checkPublish(m.Subject, "", m.Header); err != nil {
		return nil, err
	}
	var timeoutMS uint64
	if dl, ok := ctx.Deadline(); ok {
		left := time.Until(dl)
		if left <= 0 {
			return nil, ctxError(context.DeadlineExceeded)
		}
		timeoutMS = uint64((left + time.Millisecond - 1) / time.Millisecond)
	}
	op := &pendingOp{res: make(chan opResult, 1)}
	c.mu.Lock()
	if err := c.checkPayload(len(m.Data)); err != nil {
		c.mu.Unlock()
		return nil, err
	}
	// Queue locally at the tenant's concurrency cap (section 12.2).
	for c.info.Limits.MaxInflight > 0 && c.inflight >= c.info.Limits.MaxInflight && c.status != StatusClosed {
		if c.slotFreed == nil {
			c.slotFreed = make(chan struct{})
		}
		ch := c.slotFreed
		c.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, ctxError(ctx.Err())
		}
		c.mu.Lock()
	}
	buf, l, err := c.buffer()
	if err != nil {
		c.mu.Unlock()
		return nil, err
	}
	id := c.allocID(&c.nextReq, func(id uint64) bool { _, used := c.reqs[id]; return used })
	start := len(*buf)
	*buf = c.enc.appendReq(*buf, id, m.Subject, m.Data, c.headerFields(m.Header), timeoutMS)
	if err := c.commit(buf, l, start); err != nil {
		c.mu.Unlock()
		return nil, err
	}
	op.l = l
	c.reqs[id] = op
	c.inflight++
	// Safety net slightly above the effective timeout (section 20) when ctx has no deadline.
	var safety <-chan time.Time
	if timeoutMS == 0 {
		eff := c.info.Limits.RequestTimeout
		if eff <= 0 {
			eff = 5 * time.Second
		}
		t := time.NewTimer(eff + eff/10 + 500*time.Millisecond)
		defer t.Stop()
		safety = t.C
	}
	c.mu.Unlock()

	select {
	case r := <-op.res:
		if r.err != nil {
			return nil, r.err
		}
		f := r.f
		if f.Status != 0 {
			return nil, &ProtocolError{Code: f.Status, Message: string(f.Payload), RefOp: OpReq, RefID: id}
		}
		reply := &Msg{Subject: m.Subject, Data: f.Payload, conn: c}
		reply.Header, reply.Tenant = headerMap(f.Headers)
		return reply, nil
	case <-ctx.Done():
		c.abandon(id)
		return nil, ctxError(ctx.Err())
	case <-safety:
		c.abandon(id)
		return nil, &timeoutError{ctxErr: context.DeadlineExceeded}
	}
}

func (c *Conn) abandon(id uint64) {
	c.mu.Lock()
	if _, ok := c.reqs[id]; ok {
		delete(c.reqs, id)
		c.releaseSlot()
	}
	c.mu.Unlock()
}

// headerMap converts received headers: busgate-tenant becomes the tenant, the others a Header
// (nil when there are none, which saves a map per message in the common case).
func headerMap(h []HeaderField) (Header, string) {
	var tenant string
	var m Header
	for _, f := range h {
		if f.Key == HeaderTenant {
			tenant = f.Value
			continue
		}
		if m == nil {
			m = make(Header, len(h))
		}
		m[f.Key] = f.Value
	}
	return m, tenant
}

// Drain ends the connection gracefully: it unsubscribes everything, lets the handlers process the
// messages already received, waits for requests in flight and for earlier publishes to reach the
// gateway, then closes. New subscriptions are refused meanwhile; publishing (e.g. replies from
// handlers) still works. If ctx ends first, the connection is closed anyway and the context's
// error is returned.
func (c *Conn) Drain(ctx context.Context) error {
	c.mu.Lock()
	if c.status == StatusClosed {
		c.mu.Unlock()
		return ErrConnectionClosed
	}
	if c.draining {
		c.mu.Unlock()
		return ErrConnectionDraining
	}
	c.draining = true
	if c.status == StatusConnected {
		c.status = StatusDraining
	}
	c.subsMu.RLock()
	subs := make([]*Subscription, 0, len(c.subs))
	for _, s := range c.subs {
		subs = append(subs, s)
	}
	c.subsMu.RUnlock()
	for _, s := range subs {
		if l := c.cur; l != nil {
			f := Frame{Op: OpUnsub, SID: s.sid}
			l.wbuf, _ = c.enc.AppendFrame(l.wbuf, &f)
			l.signal()
		}
	}
	c.mu.Unlock()

	err := c.Flush(ctx) // after the PONG, no MSG for those sids follows
	for _, s := range subs {
		c.removeSub(s)
		// The UNSUB released a durable subscription's deliveries: they are not handed out any more.
		s.terminate(ErrConnectionClosed, s.d == nil)
	}
	for _, s := range subs {
		if err != nil {
			break
		}
		err = s.waitDrained(ctx)
	}
	for err == nil {
		c.mu.Lock()
		n := c.inflight
		ch := c.slotFreed
		if n > 0 && ch == nil {
			c.slotFreed = make(chan struct{})
			ch = c.slotFreed
		}
		c.mu.Unlock()
		if n == 0 {
			break
		}
		select {
		case <-ch:
		case <-ctx.Done():
			err = ctxError(ctx.Err())
		}
	}
	if err == nil {
		err = c.Flush(ctx)
	}
	if err != nil { // out of time: handlers do not get the messages still queued
		for _, s := range subs {
			s.discard.Store(true)
		}
	}
	c.Close()
	return err
}

// callbacks runs connection callbacks one at a time, in order, outside every lock.
type callbacks struct {
	mu     sync.Mutex
	q      []func()
	wake   chan struct{}
	closed bool
	done   chan struct{}
}

func newCallbacks() *callbacks {
	cb := &callbacks{wake: make(chan struct{}, 1), done: make(chan struct{})}
	go cb.run()
	return cb
}

func (cb *callbacks) push(f func()) {
	cb.mu.Lock()
	if !cb.closed {
		cb.q = append(cb.q, f)
	}
	cb.mu.Unlock()
	select {
	case cb.wake <- struct{}{}:
	default:
	}
}

func (cb *callbacks) close() {
	cb.mu.Lock()
	cb.closed = true
	cb.mu.Unlock()
	select {
	case cb.wake <- struct{}{}:
	default:
	}
}

func (cb *callbacks) run() {
	defer close(cb.done)
	for {
		cb.mu.Lock()
		q := cb.q
		cb.q = nil
		closed := cb.closed
		cb.mu.Unlock()
		for _, f := range q {
			f()
		}
		if closed && len(q) == 0 {
			return
		}
		if len(q) == 0 {
			<-cb.wake
		}
	}
}

func (c *Conn) asyncError(s *Subscription, err error) {
	if cb := c.opts.AsyncErrorCB; cb != nil {
		c.cbs.push(func() { cb(c, s, err) })
	}
}
