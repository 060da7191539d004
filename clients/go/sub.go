package busgate

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
)

// ErrMaxMessages is returned by NextMsg once a subscription limited by AutoUnsubscribe has
// delivered its messages.
var ErrMaxMessages = errors.New("busgate: subscription reached its message limit")

type subKind uint8

const (
	subAsync subKind = iota
	subChan
	subSync
	subDurable // read through a DurableSubscription
)

// Subscription is interest in a subject (section 7.4). Messages arrive on a goroutine of the
// subscription (Subscribe, QueueSubscribe), on a channel (ChanSubscribe), or through NextMsg
// (SubscribeSync). Each subscription queues at most PendingLimits messages; beyond that messages
// are dropped and ErrSlowConsumer is reported to the error handler.
type Subscription struct {
	Subject string
	Queue   string

	conn    *Conn
	sid     uint64
	kind    subKind
	handler MsgHandler
	ch      chan<- *Msg
	d       *durableState // durable subscriptions only

	mu         sync.Mutex
	q          []*Msg
	head       int
	spare      []*Msg
	qBytes     int
	waiting    int
	notify     chan struct{}
	closed     bool
	closedCh   chan struct{}
	discard    atomic.Bool
	err        error
	max        uint64
	delivered  uint64
	dropped    int
	slow       bool
	msgLimit   int
	bytesLimit int

	readyOnce sync.Once
	ready     chan struct{}
	readyErr  error
	done      chan struct{} // closed when the delivery goroutine has finished
}

// Subscribe expresses interest in subject (wildcards `*` and `>` allowed) and calls handler for
// each message, one at a time, on a goroutine of the subscription. It does not wait for the
// gateway; use Ready or Conn.Flush to know that the subscription is live.
func (c *Conn) Subscribe(subject string, handler MsgHandler) (*Subscription, error) {
	if handler == nil {
		return nil, fmt.Errorf("%w: nil handler", ErrInvalidArg)
	}
	return c.subscribe(subject, "", subAsync, handler, nil)
}

// QueueSubscribe is Subscribe as a member of a queue group: each message goes to one member of the
// group (section 10).
func (c *Conn) QueueSubscribe(subject, queue string, handler MsgHandler) (*Subscription, error) {
	if handler == nil {
		return nil, fmt.Errorf("%w: nil handler", ErrInvalidArg)
	}
	return c.subscribe(subject, queue, subAsync, handler, nil)
}

// ChanSubscribe delivers the messages on subject to ch. The channel is not closed by the client.
func (c *Conn) ChanSubscribe(subject string, ch chan<- *Msg) (*Subscription, error) {
	if ch == nil {
		return nil, fmt.Errorf("%w: nil channel", ErrInvalidArg)
	}
	return c.subscribe(subject, "", subChan, nil, ch)
}

// ChanQueueSubscribe is ChanSubscribe as a member of a queue group.
func (c *Conn) ChanQueueSubscribe(subject, queue string, ch chan<- *Msg) (*Subscription, error) {
	if ch == nil {
		return nil, fmt.Errorf("%w: nil channel", ErrInvalidArg)
	}
	return c.subscribe(subject, queue, subChan, nil, ch)
}

// SubscribeSync subscribes to subject; messages are read with NextMsg.
func (c *Conn) SubscribeSync(subject string) (*Subscription, error) {
	return c.subscribe(subject, "", subSync, nil, nil)
}

// QueueSubscribeSync is SubscribeSync as a member of a queue group.
func (c *Conn) QueueSubscribeSync(subject, queue string) (*Subscription, error) {
	return c.subscribe(subject, queue, subSync, nil, nil)
}

func (c *Conn) subscribe(subject, queue string, kind subKind, h MsgHandler, ch chan<- *Msg) (*Subscription, error) {
	if code := checkSubject(subject, true); code != 0 {
		return nil, protoErr(code, fmt.Sprintf("subject %q", subject))
	}
	if queue != "" {
		if code := checkQueue(queue); code != 0 {
			return nil, protoErr(code, fmt.Sprintf("queue %q", queue))
		}
	}
	s := c.newSub(subject, queue, kind)
	s.handler, s.ch = h, ch
	if err := c.addSub(s); err != nil {
		return nil, err
	}
	if kind != subSync {
		go s.deliverLoop()
	} else {
		close(s.done)
	}
	return s, nil
}

func (c *Conn) newSub(subject, queue string, kind subKind) *Subscription {
	return &Subscription{
		Subject:    subject,
		Queue:      queue,
		conn:       c,
		kind:       kind,
		notify:     make(chan struct{}, 1),
		closedCh:   make(chan struct{}),
		ready:      make(chan struct{}),
		done:       make(chan struct{}),
		msgLimit:   c.opts.PendingMsgsLimit,
		bytesLimit: c.opts.PendingBytesLimit,
	}
}

// addSub gives s a sid, registers it and sends its SUB (or leaves it for the next connection).
func (c *Conn) addSub(s *Subscription) error {
	c.mu.Lock()
	switch {
	case c.status == StatusClosed:
		c.mu.Unlock()
		return ErrConnectionClosed
	case c.draining:
		c.mu.Unlock()
		return ErrConnectionDraining
	}
	c.subsMu.Lock()
	if max := c.info.Limits.MaxSubs; max > 0 && len(c.subs) >= max {
		c.subsMu.Unlock()
		c.mu.Unlock()
		return protoErr(CodeTooManySubscriptions, fmt.Sprintf("max_subs is %d", max))
	}
	s.sid = c.allocID(&c.nextSID, func(id uint64) bool { _, used := c.subs[id]; return used })
	c.subs[s.sid] = s
	c.subsMu.Unlock()
	if l := c.cur; l != nil {
		f := s.subFrame()
		l.wbuf, _ = c.enc.AppendFrame(l.wbuf, &f)
		l.signal()
	} // else the SUB is sent when the next link is installed
	c.mu.Unlock()
	return nil
}

// subFrame is the SUB that creates s on a connection.
func (s *Subscription) subFrame() Frame {
	f := Frame{Op: OpSub, SID: s.sid, Subject: s.Subject, Queue: s.Queue, HasQueue: s.Queue != ""}
	if s.d != nil {
		f.Opts = s.d.opts
	}
	return f
}

func (c *Conn) lookupSub(sid uint64) *Subscription {
	c.subsMu.RLock()
	defer c.subsMu.RUnlock()
	return c.subs[sid]
}

// removeSub forgets s; later MSGs for its sid are dropped. It reports whether s was live.
func (c *Conn) removeSub(s *Subscription) bool {
	c.subsMu.Lock()
	defer c.subsMu.Unlock()
	if c.subs[s.sid] != s {
		return false
	}
	delete(c.subs, s.sid)
	return true
}

// push queues a delivered message. It reports whether the AutoUnsubscribe limit is now reached.
func (s *Subscription) push(m *Msg) bool {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return false
	}
	s.delivered++
	reached := s.max > 0 && s.delivered >= s.max
	if len(s.q)-s.head >= s.msgLimit || s.qBytes+len(m.Data) > s.bytesLimit {
		s.dropped++
		report := !s.slow
		s.slow = true
		s.mu.Unlock()
		if report {
			s.conn.asyncError(s, fmt.Errorf("%w: subscription %q dropped messages above its pending limits", ErrSlowConsumer, s.Subject))
		}
		return reached
	}
	s.q = append(s.q, m)
	s.qBytes += len(m.Data)
	wake := s.waiting > 0
	s.mu.Unlock()
	if wake {
		select {
		case s.notify <- struct{}{}:
		default:
		}
	}
	return reached
}

// deliverLoop hands queued messages to the handler or channel, in order.
func (s *Subscription) deliverLoop() {
	defer close(s.done)
	for {
		s.mu.Lock()
		for s.head == len(s.q) {
			if s.closed {
				s.mu.Unlock()
				return
			}
			s.slow = false
			s.waiting++
			s.mu.Unlock()
			select {
			case <-s.notify:
			case <-s.closedCh:
			}
			s.mu.Lock()
			s.waiting--
		}
		batch := s.q[s.head:]
		s.q, s.spare = s.spare[:0], nil
		s.head, s.qBytes = 0, 0
		s.mu.Unlock()
		for _, m := range batch {
			if s.discard.Load() {
				break
			}
			if s.kind == subChan {
				select {
				case s.ch <- m:
				case <-s.closedCh:
					if s.discard.Load() {
						return
					}
					s.ch <- m // draining: the remaining messages are still delivered
				}
			} else {
				s.handler(m)
			}
		}
		clear(batch)
		s.mu.Lock()
		if s.spare == nil {
			s.spare = batch[:0]
		}
		s.mu.Unlock()
		if s.discard.Load() {
			return
		}
	}
}

// terminate ends the subscription. With drain, messages already queued are still delivered;
// otherwise they are dropped. err is what NextMsg returns afterwards.
func (s *Subscription) terminate(err error, drain bool) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.closed = true
	s.err = err
	if !drain {
		s.discard.Store(true)
		clear(s.q)
		s.q, s.head, s.qBytes = nil, 0, 0
	}
	close(s.closedCh)
	s.mu.Unlock()
}

// waitDrained waits until an asynchronous subscription's queued messages were handled.
func (s *Subscription) waitDrained(ctx context.Context) error {
	select {
	case <-s.done:
		return nil
	case <-ctx.Done():
		return ctxError(ctx.Err())
	}
}

func (s *Subscription) confirm(err error) {
	s.readyOnce.Do(func() {
		s.readyErr = err
		close(s.ready)
	})
}

// remaining is how many messages an AutoUnsubscribe limit still allows, or 0 for no limit.
func (s *Subscription) remaining() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.max == 0 {
		return 0
	}
	if s.delivered >= s.max {
		return 1
	}
	return s.max - s.delivered
}

// Ready waits until the gateway has answered the SUB: nil once the subscription is live, or the
// *ProtocolError it was refused with (ErrPermissionDenied, ErrBadSubject, ErrTooManySubscriptions...).
func (s *Subscription) Ready(ctx context.Context) error {
	select {
	case <-s.ready:
		return s.readyErr
	case <-s.closedCh:
		select {
		case <-s.ready:
			return s.readyErr
		default:
		}
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.err
	case <-ctx.Done():
		return ctxError(ctx.Err())
	}
}

// NextMsg returns the next message of a SubscribeSync subscription, waiting until one arrives or
// ctx ends. After the subscription ended it returns why (the gateway's *ProtocolError,
// ErrBadSubscription after Unsubscribe, ErrConnectionClosed, ErrMaxMessages).
func (s *Subscription) NextMsg(ctx context.Context) (*Msg, error) {
	if s.kind != subSync {
		return nil, ErrSyncSubRequired
	}
	return s.next(ctx)
}

// next takes the oldest queued message, waiting until one arrives, the subscription ends or ctx
// ends.
func (s *Subscription) next(ctx context.Context) (*Msg, error) {
	s.mu.Lock()
	for s.head == len(s.q) {
		if s.closed {
			err := s.err
			s.mu.Unlock()
			return nil, err
		}
		s.waiting++
		s.mu.Unlock()
		select {
		case <-s.notify:
		case <-s.closedCh:
		case <-ctx.Done():
			s.mu.Lock()
			s.waiting--
			s.mu.Unlock()
			return nil, ctxError(ctx.Err())
		}
		s.mu.Lock()
		s.waiting--
	}
	m := s.q[s.head]
	s.q[s.head] = nil
	s.head++
	s.qBytes -= len(m.Data)
	if s.head == len(s.q) {
		s.q, s.head, s.slow = s.q[:0], 0, false
	} else if s.waiting > 0 {
		select {
		case s.notify <- struct{}{}:
		default:
		}
	}
	s.mu.Unlock()
	return m, nil
}

// Unsubscribe ends the subscription now; queued messages are dropped.
func (s *Subscription) Unsubscribe() error {
	c := s.conn
	c.mu.Lock()
	if c.status == StatusClosed {
		c.mu.Unlock()
		return ErrConnectionClosed
	}
	if !c.removeSub(s) {
		c.mu.Unlock()
		return ErrBadSubscription
	}
	if l := c.cur; l != nil {
		f := Frame{Op: OpUnsub, SID: s.sid}
		l.wbuf, _ = c.enc.AppendFrame(l.wbuf, &f)
		l.signal()
	}
	if s.d != nil {
		c.durableUnsubOld(s)
	}
	c.mu.Unlock()
	s.terminate(ErrBadSubscription, false)
	return nil
}

// AutoUnsubscribe ends the subscription after max messages in total have been delivered on it
// (UNSUB with max_msgs, section 7.5).
func (s *Subscription) AutoUnsubscribe(max int) error {
	if max <= 0 {
		return fmt.Errorf("%w: max must be positive", ErrInvalidArg)
	}
	c := s.conn
	c.mu.Lock()
	if c.lookupSub(s.sid) != s {
		c.mu.Unlock()
		return ErrBadSubscription
	}
	s.mu.Lock()
	s.max = uint64(max)
	delivered := s.delivered
	s.mu.Unlock()
	if delivered >= uint64(max) {
		c.mu.Unlock()
		return s.Unsubscribe()
	}
	if l := c.cur; l != nil {
		f := Frame{Op: OpUnsub, SID: s.sid, MaxMsgs: uint64(max) - delivered}
		l.wbuf, _ = c.enc.AppendFrame(l.wbuf, &f)
		l.signal()
	}
	c.mu.Unlock()
	return nil
}

// Drain unsubscribes and lets the messages already queued be delivered; it returns once they have
// been handled (asynchronous subscriptions) or at once (SubscribeSync: NextMsg returns them).
func (s *Subscription) Drain(ctx context.Context) error {
	c := s.conn
	c.mu.Lock()
	if c.lookupSub(s.sid) != s {
		c.mu.Unlock()
		return ErrBadSubscription
	}
	if l := c.cur; l != nil {
		f := Frame{Op: OpUnsub, SID: s.sid}
		l.wbuf, _ = c.enc.AppendFrame(l.wbuf, &f)
		l.signal()
	}
	c.mu.Unlock()
	err := c.Flush(ctx) // after the PONG no MSG for the sid follows
	c.removeSub(s)
	s.terminate(ErrBadSubscription, true)
	if err != nil {
		return err
	}
	return s.waitDrained(ctx)
}

// IsValid reports whether the subscription is live.
func (s *Subscription) IsValid() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return !s.closed
}

// Pending returns the number of messages and bytes queued and not yet handled.
func (s *Subscription) Pending() (int, int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.q) - s.head, s.qBytes
}

// Dropped returns the number of messages dropped because the pending limits were reached.
func (s *Subscription) Dropped() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.dropped
}

// SetPendingLimits sets this subscription's limits of queued messages and bytes.
func (s *Subscription) SetPendingLimits(msgs, bytes int) error {
	if msgs <= 0 || bytes <= 0 {
		return fmt.Errorf("%w: pending limits must be positive", ErrInvalidArg)
	}
	s.mu.Lock()
	s.msgLimit, s.bytesLimit = msgs, bytes
	s.mu.Unlock()
	return nil
}
