package busgate

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sync"
	"sync/atomic"
	"time"
)

// Durable consumption (docs/protocol.md section 16): publishing into streams with an idempotency
// key, durable subscriptions with credit flow, and settling deliveries with ACK, NAK, PROGRESS and
// TERM.

// DefaultDurableWindow is the credit window of a durable subscription made without MaxInflight:
// the client holds at most this many deliveries that the application has not taken yet.
const DefaultDurableWindow = 1

// DefaultProgressInterval is how often Consume sends PROGRESS for a running handler. It suits the
// default ack wait of 30 s; set ProgressEvery to about a third of the consumer's ack_wait_ms.
const DefaultProgressInterval = 10 * time.Second

// PubOpt is an option of PublishAck and PublishMsgAck.
type PubOpt func(*pubConfig) error

type pubConfig struct {
	msgID string
}

// WithMsgID sets the message's idempotency key (PUB msg_id, section 16.5): a stream stores the
// message once per key within its duplicate window, and answers a re-send with the same key with
// OK without storing it again. The key is 1 to 128 bytes of printable ASCII without spaces.
func WithMsgID(id string) PubOpt {
	return func(p *pubConfig) error {
		if !validMsgID(id) {
			return protoErr(CodeInvalidOption, fmt.Sprintf("msg_id %q: 1 to 128 printable ASCII characters without spaces", id))
		}
		p.msgID = id
		return nil
	}
}

// DurableOpt is an option of SubscribeDurable.
type DurableOpt func(*durableConfig) error

type durableConfig struct {
	maxInflight uint64
	deliver     string
}

// MaxInflight bounds the subscription to n outstanding deliveries (SUB max_inflight): the gateway
// never has more than n of its deliveries unsettled, and the client grants credits so that it never
// holds more than n deliveries the application has not taken. A SUB that creates the consumer also
// sets the consumer's cap with it (section 16.1). Without it the gateway applies only the
// consumer's cap and the client's window is DefaultDurableWindow.
func MaxInflight(n int) DurableOpt {
	return func(d *durableConfig) error {
		if n <= 0 || uint64(n) > math.MaxUint32 {
			return fmt.Errorf("%w: max inflight must be between 1 and 2^32-1", ErrInvalidArg)
		}
		d.maxInflight = uint64(n)
		return nil
	}
}

// DeliverAll makes a consumer created by this subscription start with every message its stream
// retains (the default).
func DeliverAll() DurableOpt {
	return func(d *durableConfig) error { d.deliver = "all"; return nil }
}

// DeliverNew makes a consumer created by this subscription start with the messages stored from now
// on. It has no effect on a consumer that exists already.
func DeliverNew() DurableOpt {
	return func(d *durableConfig) error { d.deliver = "new"; return nil }
}

// durableState is the durable part of a Subscription. The client keeps
//
//	window = deliveries queued for the application + credits the gateway holds on each connection + owed
//
// where owed are credits not granted yet: taking a delivery adds one, and so does every credit and
// queued delivery of a connection that ended. Owed credits go to the current connection once the
// SUB is live there.
type durableState struct {
	name      string
	opts      Map
	window    uint64
	consuming atomic.Bool

	// Guarded by conn.mu.
	owed      uint64
	credit    map[*link]uint64 // connections where the SUB is live: the credits the gateway holds there
	unsettled map[*link]int    // deliveries received on a connection and not settled or dropped yet
	excess    bool             // a MSG arrived without a credit for it (reported once)
}

// DurableSubscription takes messages from a durable consumer (section 16): each stored message is
// delivered to one subscriber of the consumer at a time, until a subscriber acknowledges it (Ack),
// gives up on it (Term), or it has failed max_deliveries times and is dead-lettered. Read with
// Next or Consume; settle each message with Ack, Nak or Term.
//
// The client manages credit flow (section 16.4): it grants one credit per delivery the application
// takes, so it never holds more than its window of deliveries that were not taken. After a
// reconnect the subscription is made again on the new connection; deliveries of the old
// connection were released by the gateway and are redelivered (settling one returns
// ErrStaleDelivery).
type DurableSubscription struct {
	Subject string // the subject filter
	Durable string // the consumer's name

	s *Subscription
}

// SubscribeDurable subscribes to the durable consumer named durable, on subject (section 16.1),
// and returns once the gateway has answered. If the operator declared the consumer, subject must
// be its filter subject; otherwise the SUB creates the consumer (or binds to the one an earlier SUB
// created) with subject as its filter. Refusals are *ProtocolError: ErrUnknownStream (no stream of
// the tenant stores subject), ErrInvalidOption, ErrTooManyConsumers, ErrPermissionDenied,
// ErrNotSupported (a gateway without durable consumption).
func (c *Conn) SubscribeDurable(ctx context.Context, subject, durable string, opts ...DurableOpt) (*DurableSubscription, error) {
	var cfg durableConfig
	for _, o := range opts {
		if o == nil {
			continue
		}
		if err := o(&cfg); err != nil {
			return nil, err
		}
	}
	if code := checkSubject(subject, true); code != 0 {
		return nil, protoErr(code, fmt.Sprintf("subject %q", subject))
	}
	if !validDurableName(durable) {
		return nil, protoErr(CodeInvalidOption, fmt.Sprintf("durable name %q: 1 to 64 ASCII letters, digits, '-' and '_'", durable))
	}
	d := &durableState{
		name:      durable,
		window:    DefaultDurableWindow,
		credit:    make(map[*link]uint64),
		unsettled: make(map[*link]int),
	}
	d.opts = Map{{"durable", durable}}
	if cfg.maxInflight > 0 {
		d.window = cfg.maxInflight
		d.opts = append(d.opts, MapEntry{"max_inflight", cfg.maxInflight})
	}
	if cfg.deliver != "" {
		d.opts = append(d.opts, MapEntry{"deliver", cfg.deliver})
	}
	d.opts = append(d.opts, MapEntry{"flow", "credit"})
	d.owed = d.window

	s := c.newSub(subject, "", subDurable)
	s.d = d
	// Credits bound what is queued, and the application takes messages: no delivery goroutine.
	s.msgLimit, s.bytesLimit = math.MaxInt, math.MaxInt
	close(s.done)
	if err := c.addSub(s); err != nil {
		return nil, err
	}
	ds := &DurableSubscription{Subject: subject, Durable: durable, s: s}
	if err := s.Ready(ctx); err != nil {
		if s.IsValid() { // ctx ended before the answer
			_ = s.Unsubscribe()
		}
		return nil, err
	}
	return ds, nil
}

// validDurableName checks a consumer name: 1 to 64 ASCII letters, digits, '-' and '_'.
func validDurableName(n string) bool {
	if len(n) == 0 || len(n) > 64 {
		return false
	}
	for i := 0; i < len(n); i++ {
		c := n[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

// Next returns the next delivery, waiting until one arrives, the subscription ends or ctx ends.
// Taking it grants the gateway one more credit. Settle it with Ack, Nak or Term (and InProgress
// while working on it) before the consumer's ack wait passes.
func (ds *DurableSubscription) Next(ctx context.Context) (*Msg, error) {
	s := ds.s
	c := s.conn
	for {
		m, err := s.next(ctx)
		if err != nil {
			return nil, err
		}
		c.mu.Lock()
		s.d.owed++
		stale := m.l.isDone()
		if stale {
			c.forgetDelivery(s, m.l)
		}
		c.grant(s)
		c.mu.Unlock()
		if !stale {
			return m, nil
		}
	}
}

// Unsubscribe ends the subscription: the gateway releases its outstanding deliveries for
// redelivery at once (section 16.1), including those the application holds, and the deliveries
// queued in the client are dropped. The consumer and its stored messages remain.
func (ds *DurableSubscription) Unsubscribe() error { return ds.s.Unsubscribe() }

// IsValid reports whether the subscription is live.
func (ds *DurableSubscription) IsValid() bool { return ds.s.IsValid() }

// Pending returns the number of deliveries queued in the client that the application has not
// taken yet; it never exceeds the window.
func (ds *DurableSubscription) Pending() int {
	n, _ := ds.s.Pending()
	return n
}

// Window returns the subscription's credit window: MaxInflight, or DefaultDurableWindow.
func (ds *DurableSubscription) Window() int { return int(ds.s.d.window) }

// grant sends the owed credits on the current connection once s is live there. c.mu is held.
func (c *Conn) grant(s *Subscription) {
	d := s.d
	l := c.cur
	if l == nil || d.owed == 0 || c.status == StatusClosed {
		return
	}
	if _, live := d.credit[l]; !live || c.lookupSub(s.sid) != s {
		return
	}
	f := Frame{Op: OpCredit, SID: s.sid, Credits: d.owed}
	l.wbuf, _ = c.enc.AppendFrame(l.wbuf, &f)
	d.credit[l] += d.owed
	d.owed = 0
	l.signal()
}

// durableLive is called when the gateway confirmed s's SUB on l.
func (c *Conn) durableLive(l *link, s *Subscription) {
	c.mu.Lock()
	if _, ok := s.d.credit[l]; !ok && !l.isDone() {
		s.d.credit[l] = 0
	}
	c.grant(s)
	c.mu.Unlock()
}

// durableDelivered queues a MSG that arrived on l for the durable subscription s.
func (c *Conn) durableDelivered(l *link, s *Subscription, f *Frame) {
	m := &Msg{Subject: f.Subject, Reply: f.ReplyTo, Data: f.Payload, DeliveryID: f.DeliveryID, Attempt: f.Attempt,
		conn: c, l: l, dsub: s}
	m.Header, m.Tenant = headerMap(f.Headers)
	var problem error
	c.mu.Lock()
	d := s.d
	if n := d.credit[l]; n > 0 {
		d.credit[l] = n - 1
	} else if !d.excess {
		d.excess = true
		problem = fmt.Errorf("busgate: durable subscription %q (sid %d) received a delivery without a credit for it", s.Subject, s.sid)
	}
	if f.DeliveryID == 0 && problem == nil {
		problem = fmt.Errorf("busgate: durable subscription %q (sid %d) received a MSG without a delivery_id", s.Subject, s.sid)
	}
	d.unsettled[l]++
	c.mu.Unlock()
	if problem != nil {
		c.asyncError(s, problem)
	}
	s.push(m)
}

// durableLinkLost forgets what l held for every durable subscription: the gateway released its
// deliveries when the connection ended. Its credits and queued deliveries become owed, granted on
// the next connection. c.mu is held.
func (c *Conn) durableLinkLost(l *link) {
	c.subsMu.RLock()
	var subs []*Subscription
	for _, s := range c.subs {
		if s.d != nil {
			subs = append(subs, s)
		}
	}
	c.subsMu.RUnlock()
	for _, s := range subs {
		d := s.d
		if n, ok := d.credit[l]; ok {
			d.owed += n
			delete(d.credit, l)
		}
		d.owed += uint64(s.purge(l))
		delete(d.unsettled, l)
		c.grant(s)
	}
}

// forgetDelivery drops one unsettled delivery of s that arrived on l. c.mu is held.
func (c *Conn) forgetDelivery(s *Subscription, l *link) {
	if n := s.d.unsettled[l]; n > 1 {
		s.d.unsettled[l] = n - 1
	} else if n == 1 {
		delete(s.d.unsettled, l)
		c.notifyState()
	}
}

// durableUnsettled reports whether a live durable subscription has unsettled deliveries from l.
// c.mu is held.
func (c *Conn) durableUnsettled(l *link) bool {
	c.subsMu.RLock()
	defer c.subsMu.RUnlock()
	for _, s := range c.subs {
		if s.d != nil && s.d.unsettled[l] > 0 {
			return true
		}
	}
	return false
}

// durableUnsubOld sends UNSUB for s on the connections other than the current one where it is
// live (connections that received GOAWAY). c.mu is held.
func (c *Conn) durableUnsubOld(s *Subscription) {
	for l := range s.d.credit {
		if l == c.cur || l.isDone() {
			continue
		}
		f := Frame{Op: OpUnsub, SID: s.sid}
		l.wbuf, _ = c.enc.AppendFrame(l.wbuf, &f)
		l.signal()
	}
}

// purge removes the queued messages that arrived on l and returns how many there were.
func (s *Subscription) purge(l *link) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	kept := s.q[:s.head]
	for _, m := range s.q[s.head:] {
		if m.l == l {
			n++
			s.qBytes -= len(m.Data)
			continue
		}
		kept = append(kept, m)
	}
	clear(s.q[len(kept):])
	s.q = kept
	return n
}

// settleWait is a PING sent right after an ACK, NAK, PROGRESS or TERM: an ERR about that frame
// arrives before the PING's PONG (section 7.11), so it is the answer when it comes first.
type settleWait struct {
	op  Op
	sid uint64
	err error
}

// settleFailed records perr, an ERR about an ACK, NAK, PROGRESS or TERM that arrived on l, as the
// answer to the settle call waiting for the next PONG. It reports whether a call was waiting.
func (c *Conn) settleFailed(l *link, perr *ProtocolError) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(l.pongs) == 0 {
		return false
	}
	w := l.settles[l.pongs[0]]
	if w == nil || w.op != perr.RefOp || w.sid != perr.RefID || w.err != nil {
		return false
	}
	w.err = perr
	return true
}

// Ack tells the gateway that the work is done (ACK, section 16.3): the message is never delivered
// again. It waits for the gateway to have processed the ACK; ErrUnknownDelivery means the delivery
// was no longer outstanding (its ack wait had passed, so it was redelivered), ErrStaleDelivery that
// its connection has ended.
func (m *Msg) Ack(ctx context.Context) error {
	return m.settle(ctx, Frame{Op: OpAck}, true)
}

// Nak tells the gateway that the work failed (NAK): the message is delivered again, as the next
// attempt, after delay; a delay of 0 leaves it to the consumer's backoff_ms for this attempt
// (redelivery at once when none is configured). Errors as for Ack.
func (m *Msg) Nak(ctx context.Context, delay time.Duration) error {
	f := Frame{Op: OpNak}
	if delay > 0 {
		f.DelayMS = uint64((delay + time.Millisecond - 1) / time.Millisecond)
	}
	return m.settle(ctx, f, true)
}

// InProgress tells the gateway that the work goes on (PROGRESS): the delivery's ack wait starts
// again. Send it more often than the consumer's ack_wait_ms. Errors as for Ack.
func (m *Msg) InProgress(ctx context.Context) error {
	return m.settle(ctx, Frame{Op: OpProgress}, false)
}

// Term tells the gateway not to retry the message (TERM): it goes to the consumer's dead-letter
// subject with busgate-dead-reason "terminated" plus ": reason" when reason is not empty. Errors as
// for Ack.
func (m *Msg) Term(ctx context.Context, reason string) error {
	return m.settle(ctx, Frame{Op: OpTerm, Reason: reason, HasReason: reason != ""}, true)
}

// settle sends f (ACK, NAK, PROGRESS or TERM) for m's delivery on the connection it arrived on,
// followed by a PING, and waits for the PONG or for an ERR about f before it. final: f ends the
// delivery.
func (m *Msg) settle(ctx context.Context, f Frame, final bool) error {
	s := m.dsub
	if s == nil || m.DeliveryID == 0 {
		return ErrNotDurable
	}
	c := m.conn
	ch := make(chan error, 1)
	c.mu.Lock()
	l := m.l
	var err error
	switch {
	case final && m.settled:
		err = ErrMsgSettled
	case c.status == StatusClosed:
		err = ErrConnectionClosed
	case c.lookupSub(s.sid) != s:
		err = fmt.Errorf("%w: the durable subscription has ended and its deliveries were released", ErrBadSubscription)
	case l.isDone():
		err = ErrStaleDelivery
	}
	if err != nil {
		c.mu.Unlock()
		return err
	}
	if final {
		m.settled = true
		c.forgetDelivery(s, l)
	}
	f.SID, f.DeliveryID = s.sid, m.DeliveryID
	l.wbuf, _ = c.enc.AppendFrame(l.wbuf, &f)
	ping := Frame{Op: OpPing}
	l.wbuf, _ = c.enc.AppendFrame(l.wbuf, &ping)
	l.pongs = append(l.pongs, ch)
	if l.settles == nil {
		l.settles = make(map[chan error]*settleWait)
	}
	l.settles[ch] = &settleWait{op: f.Op, sid: s.sid}
	l.signal()
	c.mu.Unlock()
	select {
	case err := <-ch:
		return err
	case <-ctx.Done():
		return ctxError(ctx.Err())
	}
}

// ConsumeHandler processes one delivery for Consume. Returning nil acknowledges it, returning an
// error naks it. A handler may also settle the message itself (Ack, Nak, Term); Consume then leaves
// it as it is. ctx carries the values of Consume's context but is not cancelled when Consume's
// context is: a job that has started runs to its end. It is cancelled when the delivery is lost (its
// connection ended, or the gateway no longer knows it), since the result can no longer be
// acknowledged.
type ConsumeHandler func(ctx context.Context, m *Msg) error

// ConsumeOpt is an option of Consume.
type ConsumeOpt func(*consumeConfig) error

type consumeConfig struct {
	concurrency int
	progress    time.Duration
	backoff     []time.Duration
}

// Concurrency sets how many handlers Consume runs at once (default 1). The consumer's max_inflight
// still bounds the deliveries in progress across all its subscribers.
func Concurrency(n int) ConsumeOpt {
	return func(c *consumeConfig) error {
		if n <= 0 {
			return fmt.Errorf("%w: concurrency must be positive", ErrInvalidArg)
		}
		c.concurrency = n
		return nil
	}
}

// ProgressEvery sets how often Consume sends PROGRESS for each running handler (default
// DefaultProgressInterval); about a third of the consumer's ack_wait_ms is right. 0 sends none.
func ProgressEvery(d time.Duration) ConsumeOpt {
	return func(c *consumeConfig) error {
		if d < 0 {
			return fmt.Errorf("%w: negative progress interval", ErrInvalidArg)
		}
		c.progress = d
		return nil
	}
}

// NakBackoff sets the redelivery delays Consume asks for when a handler fails: delays[attempt-1],
// the last one repeating. Without it a failed delivery is nakked without a delay, so the
// consumer's backoff_ms applies.
func NakBackoff(delays ...time.Duration) ConsumeOpt {
	return func(c *consumeConfig) error {
		for _, d := range delays {
			if d < 0 {
				return fmt.Errorf("%w: negative backoff", ErrInvalidArg)
			}
		}
		c.backoff = append([]time.Duration(nil), delays...)
		return nil
	}
}

func (c *consumeConfig) nakDelay(attempt uint64) time.Duration {
	if len(c.backoff) == 0 {
		return 0
	}
	i := len(c.backoff) - 1
	if attempt >= 1 && attempt-1 < uint64(i) {
		i = int(attempt - 1)
	}
	return c.backoff[i]
}

// Consume runs handler for the subscription's deliveries, at most Concurrency at a time, until
// ctx ends or the subscription ends. It takes a delivery only when a handler is free. For each
// delivery it sends PROGRESS while the handler runs, then ACK when the handler returns nil and NAK
// (with NakBackoff's delay) when it returns an error; failures to settle go to the ErrorHandler.
//
// When ctx ends, Consume stops taking deliveries, waits for the running handlers and settles their
// deliveries, then ends the subscription: the deliveries it had not started are released for
// redelivery at once. It returns nil then, or the error that ended the subscription.
func (ds *DurableSubscription) Consume(ctx context.Context, handler ConsumeHandler, opts ...ConsumeOpt) error {
	if handler == nil {
		return fmt.Errorf("%w: nil handler", ErrInvalidArg)
	}
	cfg := consumeConfig{concurrency: 1, progress: DefaultProgressInterval}
	for _, o := range opts {
		if o == nil {
			continue
		}
		if err := o(&cfg); err != nil {
			return err
		}
	}
	if !ds.s.d.consuming.CompareAndSwap(false, true) {
		return ErrConsumeActive
	}
	defer ds.s.d.consuming.Store(false)
	slots := make(chan struct{}, cfg.concurrency)
	var wg sync.WaitGroup
	var endErr error
take:
	for {
		select {
		case slots <- struct{}{}:
		case <-ctx.Done():
			break take
		}
		m, err := ds.Next(ctx)
		if err != nil {
			<-slots
			if ctx.Err() == nil {
				endErr = err
			}
			break
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			ds.handle(ctx, m, handler, &cfg)
			<-slots
		}()
	}
	wg.Wait()
	if err := ds.Unsubscribe(); err != nil && endErr == nil && !errors.Is(err, ErrBadSubscription) &&
		!errors.Is(err, ErrConnectionClosed) {
		endErr = err
	}
	return endErr
}

// handle runs handler for m with PROGRESS while it runs, then settles m.
func (ds *DurableSubscription) handle(ctx context.Context, m *Msg, handler ConsumeHandler, cfg *consumeConfig) {
	c := ds.s.conn
	base := context.WithoutCancel(ctx)
	hctx, cancel := context.WithCancel(base)
	defer cancel()
	done := make(chan struct{})
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		var tick <-chan time.Time
		if cfg.progress > 0 {
			t := time.NewTicker(cfg.progress)
			defer t.Stop()
			tick = t.C
		}
		for {
			select {
			case <-done:
				return
			case <-m.l.done:
				cancel()
				return
			case <-tick:
				if err := m.InProgress(hctx); lostDelivery(err) {
					cancel()
					return
				}
			}
		}
	}()
	herr := handler(hctx, m)
	close(done)
	<-watched
	c.mu.Lock()
	settled := m.settled
	c.mu.Unlock()
	if settled {
		return
	}
	var err error
	if herr == nil {
		err = m.Ack(base)
	} else {
		err = m.Nak(base, cfg.nakDelay(m.Attempt))
	}
	if err != nil && !errors.Is(err, ErrMsgSettled) {
		c.asyncError(ds.s, fmt.Errorf("busgate: settling delivery %d (attempt %d) of %q: %w", m.DeliveryID, m.Attempt, m.Subject, err))
	}
}

// lostDelivery reports whether err says that a delivery can no longer be settled.
func lostDelivery(err error) bool {
	var pe *ProtocolError
	return errors.Is(err, ErrStaleDelivery) || errors.Is(err, ErrBadSubscription) || errors.Is(err, ErrConnectionLost) ||
		errors.Is(err, ErrConnectionClosed) ||
		errors.As(err, &pe) && (pe.Code == CodeUnknownDelivery || pe.Code == CodeUnknownSID)
}
