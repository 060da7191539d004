package busgate

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"
)

const readBufSize = 64 * 1024

// writeBufSize is the size of each of a link's two write buffers: publishers fill one while the
// flusher writes the other, and wait when both are full.
var writeBufSize = 64 * 1024

// link is one transport connection to a gateway and its goroutines: a read loop that decodes and
// dispatches frames, a flusher that writes everything queued in one write, and a heartbeat timer.
// A Conn has one current link, plus links that received GOAWAY and are finishing their work.
type link struct {
	c         *Conn
	t         transport
	url       serverURL
	dec       *Decoder
	info      ServerInfo
	maxFrame  int
	heartbeat time.Duration

	// Guarded by c.mu.
	wbuf         []byte
	spare        []byte
	flushPending bool
	pongs        []chan error // one entry per PING sent, FIFO; nil for heartbeat PINGs
	goaway       bool
	synced       bool // the PONG after the resubscriptions arrived
	syncPong     chan error
	settles      map[chan error]*settleWait // PINGs sent right after an ACK, NAK, PROGRESS or TERM

	flushSig chan struct{}
	done     chan struct{}
	once     sync.Once
	errMu    sync.Mutex
	err      error
	received atomic.Uint64 // frames received, for the heartbeat
	grants   atomic.Int64  // requests delivered on this link and not yet answered
}

func (l *link) isDone() bool {
	select {
	case <-l.done:
		return true
	default:
		return false
	}
}

func newLink(c *Conn, t transport, u serverURL) *link {
	return &link{
		c:        c,
		t:        t,
		url:      u,
		dec:      NewDecoder(),
		maxFrame: MaxFrameBeforeWelcome,
		flushSig: make(chan struct{}, 1),
		done:     make(chan struct{}),
		wbuf:     make([]byte, 0, writeBufSize),
		spare:    make([]byte, 0, writeBufSize),
	}
}

// signal wakes the flusher unless a flush is already pending. c.mu is held.
func (l *link) signal() {
	if !l.flushPending {
		l.flushPending = true
		select {
		case l.flushSig <- struct{}{}:
		default:
		}
	}
}

// shutdown ends the link once; the first reason is kept.
func (l *link) shutdown(err error) {
	l.once.Do(func() {
		l.errMu.Lock()
		l.err = err
		l.errMu.Unlock()
		close(l.done)
		// The client's own close is orderly; anything else (a lost or stale connection, a fatal
		// error) closes at once.
		var pe *ProtocolError
		graceful := err == ErrConnectionClosed || errors.As(err, &pe) && pe.Local && pe.Code == CodeShuttingDown
		l.t.close(graceful)
	})
}

func (l *link) reason() error {
	l.errMu.Lock()
	defer l.errMu.Unlock()
	return l.err
}

func (l *link) readFrame(max int) ([]byte, int, error) { return l.t.readFrame(max) }

func (l *link) release(n int) { l.t.release(n) }

// handshake sends HELLO and waits for WELCOME (section 6.2).
func (l *link) handshake(ctx context.Context) error {
	if dl, ok := ctx.Deadline(); ok {
		l.t.setDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { l.t.setDeadline(time.Unix(1, 0)) })
	defer stop()
	hello, err := NewEncoder().AppendFrame(nil, l.c.helloFrame())
	if err != nil {
		return err
	}
	if err := l.t.write(hello); err != nil {
		return err
	}
	var f Frame
	for {
		body, n, err := l.readFrame(MaxFrameBeforeWelcome)
		if err != nil {
			if ctx.Err() != nil {
				return fmt.Errorf("busgate: handshake with %s: %w", l.url.raw, ctxError(ctx.Err()))
			}
			if errors.Is(err, io.EOF) {
				return fmt.Errorf("busgate: %s closed the connection during the handshake: %w", l.url.raw, err)
			}
			return err
		}
		err = l.dec.DecodeBody(body, FromGateway, &f)
		l.release(n)
		if err != nil {
			var pe *ProtocolError
			if errors.As(err, &pe) && (pe.Code == CodeUnknownOp || pe.Code == CodeUnexpectedOp) {
				continue
			}
			return err
		}
		switch f.Op {
		case OpErr:
			return &ProtocolError{Code: f.Code, Message: f.Message, RefOp: f.RefOp, RefID: f.RefID}
		case OpWelcome:
			if f.Version != 1 {
				return fmt.Errorf("%w: gateway chose version %d", ErrUnsupportedVersion, f.Version)
			}
			l.info = ServerInfo{Version: f.Version, SessionID: f.SessionID, NodeID: f.NodeID, Tenant: f.Tenant,
				URL: l.url.raw, Limits: parseLimits(f.Limits)}
			l.maxFrame = l.info.Limits.MaxFrame
			l.heartbeat = l.info.Limits.Heartbeat
			l.t.setDeadline(time.Time{})
			return nil
		}
		// Nothing else is expected before WELCOME; the client sends nothing until then.
	}
}

func parseLimits(m Map) Limits {
	get := func(k string) int {
		v, ok := m.Uint(k)
		if !ok || v > 1<<40 {
			return 0
		}
		return int(v)
	}
	lim := Limits{
		MaxFrame:       get("max_frame"),
		MaxPayload:     get("max_payload"),
		Heartbeat:      time.Duration(get("heartbeat_ms")) * time.Millisecond,
		MaxSubs:        get("max_subs"),
		MaxInflight:    get("max_inflight"),
		MaxPending:     get("max_pending"),
		RequestTimeout: time.Duration(get("request_timeout_ms")) * time.Millisecond,
		MaxTimeout:     time.Duration(get("max_timeout_ms")) * time.Millisecond,
		Raw:            m,
	}
	if lim.MaxFrame == 0 {
		lim.MaxFrame = DefaultMaxFrame
	}
	return lim
}

func (l *link) readLoop() {
	c := l.c
	defer c.wg.Done()
	l.dec.reuse = true
	var f Frame
	for {
		body, n, err := l.readFrame(l.maxFrame)
		if err != nil {
			l.shutdown(err)
			break
		}
		l.received.Add(1)
		err = l.dec.DecodeBody(body, FromGateway, &f)
		l.release(n)
		if err != nil {
			var pe *ProtocolError
			if errors.As(err, &pe) && (pe.Code == CodeUnknownOp || pe.Code == CodeUnexpectedOp) {
				continue // skipped silently (section 3.4)
			}
			l.shutdown(err)
			break
		}
		if fatal := l.process(&f); fatal != nil {
			l.shutdown(fatal)
			break
		}
	}
	c.linkLost(l, l.reason())
}

// process acts on one frame from the gateway. It returns an error that ends the link.
func (l *link) process(f *Frame) error {
	c := l.c
	switch f.Op {
	case OpMsg:
		c.subsMu.RLock()
		s := c.subs[f.SID]
		c.subsMu.RUnlock()
		if s == nil {
			return nil // a sid this client no longer knows (section 7.4)
		}
		if s.d != nil {
			c.durableDelivered(l, s, f)
			return nil
		}
		m := &Msg{Subject: f.Subject, Reply: f.ReplyTo, Data: f.Payload, DeliveryID: f.DeliveryID, Sub: s, conn: c, l: l}
		m.Header, m.Tenant = headerMap(f.Headers)
		if f.HasReplyTo && isInbox(f.ReplyTo) {
			m.granted = true // not yet shared: no lock needed
			l.grants.Add(1)
		}
		if s.push(m) { // AutoUnsubscribe limit reached; the gateway has ended it too
			c.removeSub(s)
			s.terminate(ErrMaxMessages, true)
		}
	case OpRes:
		c.mu.Lock()
		op := c.reqs[f.ReqID]
		if op != nil {
			delete(c.reqs, f.ReqID)
			c.releaseSlot()
			c.notifyState()
		}
		c.mu.Unlock()
		if op != nil {
			op.res <- opResult{f: &Frame{Status: f.Status, Payload: f.Payload, Headers: append([]HeaderField(nil), f.Headers...)}}
		}
	case OpOK:
		switch f.RefOp {
		case OpPub:
			c.mu.Lock()
			op := c.acks[f.RefID]
			delete(c.acks, f.RefID)
			c.notifyState()
			c.mu.Unlock()
			if op != nil {
				op.res <- opResult{}
			}
		case OpSub:
			if s := c.lookupSub(f.RefID); s != nil {
				if s.d != nil {
					c.durableLive(l, s)
				}
				s.confirm(nil)
			}
		}
	case OpErr:
		return l.processErr(f)
	case OpPing:
		c.mu.Lock()
		pong := Frame{Op: OpPong}
		l.wbuf, _ = c.enc.AppendFrame(l.wbuf, &pong)
		l.signal()
		c.mu.Unlock()
	case OpPong:
		c.mu.Lock()
		if len(l.pongs) > 0 {
			ch := l.pongs[0]
			l.pongs = l.pongs[1:]
			if ch != nil {
				if ch == l.syncPong {
					l.synced = true
					c.notifyState()
				}
				var err error
				if w := l.settles[ch]; w != nil {
					delete(l.settles, ch)
					err = w.err
				}
				ch <- err
			}
		}
		c.mu.Unlock()
	case OpGoAway:
		c.goAway(l, f)
	}
	return nil
}

func (l *link) processErr(f *Frame) error {
	c := l.c
	perr := &ProtocolError{Code: f.Code, Message: f.Message, RefOp: f.RefOp, RefID: f.RefID}
	if f.Code.Fatal() {
		return perr // the gateway closes after a fatal ERR
	}
	switch f.RefOp {
	case OpPub:
		if f.RefID != 0 {
			c.mu.Lock()
			op := c.acks[f.RefID]
			delete(c.acks, f.RefID)
			c.notifyState()
			c.mu.Unlock()
			if op != nil {
				op.res <- opResult{err: perr}
				return nil
			}
		}
		c.asyncError(nil, perr)
	case OpSub:
		s := c.lookupSub(f.RefID)
		if s == nil {
			c.asyncError(nil, perr)
			return nil
		}
		if f.Code == CodePayloadTooLarge { // a delivery that did not fit; the subscription lives on
			c.asyncError(s, perr)
			return nil
		}
		c.removeSub(s)
		s.confirm(perr)
		s.terminate(perr, false)
		c.asyncError(s, perr)
	case OpAck, OpNak, OpProgress, OpTerm:
		if !c.settleFailed(l, perr) {
			c.asyncError(c.lookupSub(f.RefID), perr)
		}
	case OpCredit:
		c.asyncError(c.lookupSub(f.RefID), perr)
	default:
		c.asyncError(nil, perr)
	}
	return nil
}

// notifyState wakes goroutines waiting for pending operations to finish. c.mu is held.
func (c *Conn) notifyState() {
	if c.stateCh != nil {
		close(c.stateCh)
		c.stateCh = nil
	}
}

// flushLoop writes everything queued on the link, one write per buffer: publishers fill one buffer
// while the other is being written.
func (l *link) flushLoop() {
	c := l.c
	defer c.wg.Done()
	for {
		select {
		case <-l.flushSig:
		case <-l.done:
			return
		}
		c.mu.Lock()
		for len(l.wbuf) > 0 {
			buf := l.wbuf
			l.wbuf, l.spare = l.spare[:0], nil
			if c.waiters > 0 {
				c.cond.Broadcast()
			}
			c.mu.Unlock()
			if err := l.t.write(buf); err != nil {
				l.shutdown(err)
				return
			}
			if cap(buf) > 4*writeBufSize { // grown for a large frame: do not keep it
				buf = make([]byte, 0, writeBufSize)
			}
			c.mu.Lock()
			l.spare = buf[:0]
		}
		l.flushPending = false
		c.mu.Unlock()
	}
}

// heartbeatLoop detects a dead gateway (section 13): after heartbeat_ms without a frame it sends
// PING, and after another heartbeat_ms without a frame it ends the link.
func (l *link) heartbeatLoop() {
	c := l.c
	defer c.wg.Done()
	hb := l.heartbeat
	if hb <= 0 {
		<-l.done
		return
	}
	t := time.NewTicker(max(hb/4, 5*time.Millisecond))
	defer t.Stop()
	last := l.received.Load()
	idleSince := time.Now()
	var pingAt time.Time
	for {
		select {
		case <-l.done:
			return
		case now := <-t.C:
			if n := l.received.Load(); n != last {
				last, idleSince, pingAt = n, now, time.Time{}
				continue
			}
			switch {
			case pingAt.IsZero() && now.Sub(idleSince) >= hb:
				c.mu.Lock()
				ping := Frame{Op: OpPing}
				l.wbuf, _ = c.enc.AppendFrame(l.wbuf, &ping)
				l.pongs = append(l.pongs, nil)
				l.signal()
				c.mu.Unlock()
				pingAt = now
			case !pingAt.IsZero() && now.Sub(pingAt) >= hb:
				l.shutdown(ErrStaleConnection)
				return
			}
		}
	}
}

// retire closes a link that received GOAWAY once the new link's subscriptions are live and the
// link's requests and grants are answered, or at the deadline, whichever comes first (section 14).
// Before closing it waits for a PONG on the link, so that frames still queued on it (a reply to a
// request that arrived there) have reached the gateway.
func (l *link) retire(deadline time.Time) {
	c := l.c
	defer c.wg.Done()
	t := time.NewTimer(time.Until(deadline))
	defer t.Stop()
	for {
		c.mu.Lock()
		ready := c.cur != nil && c.cur.synced && !c.hasPending(l) && l.grants.Load() <= 0
		var ch chan struct{}
		if !ready {
			if c.stateCh == nil {
				c.stateCh = make(chan struct{})
			}
			ch = c.stateCh
		}
		c.mu.Unlock()
		if ready {
			break
		}
		select {
		case <-ch:
			continue
		case <-l.done:
			return
		case <-t.C:
			l.shutdown(protoErr(CodeShuttingDown, "connection retired at the GOAWAY deadline"))
			return
		}
	}
	pong := make(chan error, 1)
	c.mu.Lock()
	ping := Frame{Op: OpPing}
	l.wbuf, _ = c.enc.AppendFrame(l.wbuf, &ping)
	l.pongs = append(l.pongs, pong)
	l.signal()
	c.mu.Unlock()
	select {
	case <-pong:
	case <-l.done:
		return
	case <-t.C:
	}
	l.shutdown(protoErr(CodeShuttingDown, "connection retired after GOAWAY"))
}

// hasPending reports whether requests or acked publishes sent on l are unanswered. c.mu is held.
func (c *Conn) hasPending(l *link) bool {
	for _, op := range c.reqs {
		if op.l == l {
			return true
		}
	}
	for _, op := range c.acks {
		if op.l == l {
			return true
		}
	}
	return c.durableUnsettled(l)
}
