package busgate

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// durableYAML declares streams and consumers for the durable tests (docs/configuration.md
// "Streams and durable consumers").
const durableYAML = `admin: {token: durable-admin-token}
tenants:
  - name: demo
    tokens: [dev-token]
    streams:
      - {name: jobs, subjects: ["jobs.>"], retention: workqueue}
      - {name: dead, subjects: ["deadletter.>"], retention: limits}
      - {name: tiny, subjects: ["tiny.>"], retention: workqueue, max_msgs: 2}
    consumers:
      - {name: workers, stream: jobs, subject: jobs.work, max_inflight: 3, ack_wait_ms: 2000, max_deliveries: 3}
      - {name: wide, stream: jobs, subject: jobs.wide, max_inflight: 100, ack_wait_ms: 10000, max_deliveries: 5}
      - {name: retry, stream: jobs, subject: jobs.retry, max_inflight: 10, ack_wait_ms: 600, max_deliveries: 5}
      - {name: dl, stream: jobs, subject: jobs.dl, max_inflight: 10, ack_wait_ms: 10000, max_deliveries: 3}
    consumer_defaults: {ack_wait_ms: 10000, max_deliveries: 5}
    limits: {max_consumers: 2, max_consumer_inflight: 50}
`

// durableGateway starts a gateway with durableYAML.
func durableGateway(t *testing.T) *gateway {
	t.Helper()
	return startGateway(t, durableYAML)
}

// noAsyncErrors fails the test on any error reported to the ErrorHandler.
func noAsyncErrors(t *testing.T) Option {
	return ErrorHandler(func(_ *Conn, _ *Subscription, err error) { t.Errorf("async error: %v", err) })
}

// nextMsg takes one delivery within 5 s.
func nextMsg(t *testing.T, ds *DurableSubscription) *Msg {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	m, err := ds.Next(ctx)
	if err != nil {
		t.Fatalf("Next on %s: %v", ds.Durable, err)
	}
	return m
}

// nothingFor checks that no delivery arrives within d.
func nothingFor(t *testing.T, ds *DurableSubscription, d time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	if m, err := ds.Next(ctx); err == nil {
		t.Fatalf("unexpected delivery on %s: %q attempt %d", ds.Durable, m.Data, m.Attempt)
	} else if !errors.Is(err, ErrTimeout) {
		t.Fatalf("Next: %v", err)
	}
}

func publishJobs(t *testing.T, ctx context.Context, c *Conn, subject string, n int) []string {
	t.Helper()
	var jobs []string
	for i := 0; i < n; i++ {
		job := fmt.Sprintf("%s-%d", subject, i)
		if err := c.PublishAck(ctx, subject, []byte(job), WithMsgID(job)); err != nil {
			t.Fatalf("publish %s: %v", job, err)
		}
		jobs = append(jobs, job)
	}
	return jobs
}

func TestDurablePublish(t *testing.T) {
	g := durableGateway(t)
	c := connect(t, g.url, noAsyncErrors(t))
	ctx := testCtx(t, 20*time.Second)

	// Stored before anyone subscribes; a re-send with the same key is answered and not stored again.
	for _, k := range []string{"k1", "k1", "k2", "k1"} {
		if err := c.PublishAck(ctx, "jobs.dedupe", []byte("job "+k), WithMsgID(k)); err != nil {
			t.Fatalf("publish %s: %v", k, err)
		}
	}
	// A bad key is refused before anything is sent.
	err := c.PublishAck(ctx, "jobs.dedupe", []byte("x"), WithMsgID("has space"))
	var pe *ProtocolError
	if !errors.As(err, &pe) || pe.Code != CodeInvalidOption || !pe.Local || !errors.Is(err, ErrInvalidOption) {
		t.Fatalf("bad msg_id: %v", err)
	}
	// On a subject no stream stores, the key is ignored.
	short, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	if err := c.PublishAck(short, "plain.subject", []byte("x"), WithMsgID("k1")); err != nil {
		t.Fatalf("msg_id on a plain subject: %v", err)
	}
	if err := c.PublishAck(short, "plain.subject", []byte("x")); err != nil {
		t.Fatalf("acked publish on a plain subject: %v", err)
	}
	// A full workqueue stream refuses instead of dropping: NOT_STORED.
	for i := 0; i < 2; i++ {
		if err := c.PublishAck(ctx, "tiny.a", []byte{byte(i)}); err != nil {
			t.Fatalf("tiny %d: %v", i, err)
		}
	}
	err = c.PublishAck(ctx, "tiny.a", []byte("3rd"))
	if !errors.Is(err, ErrNotStored) || !errors.As(err, &pe) || pe.Local || pe.RefOp != OpPub {
		t.Fatalf("publish into a full stream: %v", err)
	}

	// A consumer created now starts with every retained message (DeliverAll is the default).
	ds, err := c.SubscribeDurable(ctx, "jobs.dedupe", "dedupe")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"job k1", "job k2"} {
		m := nextMsg(t, ds)
		if string(m.Data) != want || m.Subject != "jobs.dedupe" || m.Attempt != 1 || m.DeliveryID == 0 || m.Tenant != "demo" {
			t.Fatalf("got %q subject %s attempt %d delivery %d tenant %q, want %q", m.Data, m.Subject, m.Attempt, m.DeliveryID, m.Tenant, want)
		}
		if err := m.Ack(ctx); err != nil {
			t.Fatalf("ack: %v", err)
		}
	}
	nothingFor(t, ds, 300*time.Millisecond)

	// DeliverNew: a consumer created after a message was stored starts after it.
	if err := c.PublishAck(ctx, "jobs.fresh", []byte("old")); err != nil {
		t.Fatal(err)
	}
	fresh, err := c.SubscribeDurable(ctx, "jobs.fresh", "fresh", DeliverNew())
	if err != nil {
		t.Fatal(err)
	}
	if err := c.PublishAck(ctx, "jobs.fresh", []byte("new")); err != nil {
		t.Fatal(err)
	}
	if m := nextMsg(t, fresh); string(m.Data) != "new" {
		t.Fatalf("DeliverNew got %q", m.Data)
	}
}

func TestDurableSubscribeErrors(t *testing.T) {
	g := durableGateway(t)
	c := connect(t, g.url)
	ctx := testCtx(t, 20*time.Second)

	if _, err := c.SubscribeDurable(ctx, "other.things", "x"); !errors.Is(err, ErrUnknownStream) {
		t.Fatalf("subject outside every stream: %v", err)
	}
	// A declared consumer binds only with its own filter subject.
	if _, err := c.SubscribeDurable(ctx, "jobs.other", "workers"); !errors.Is(err, ErrInvalidOption) {
		t.Fatalf("declared consumer with another subject: %v", err)
	}
	var pe *ProtocolError
	if _, err := c.SubscribeDurable(ctx, "jobs.a", "bad.name"); !errors.As(err, &pe) || pe.Code != CodeInvalidOption || !pe.Local {
		t.Fatalf("bad durable name: %v", err)
	}
	if _, err := c.SubscribeDurable(ctx, "jobs.a", "x", MaxInflight(0)); !errors.Is(err, ErrInvalidArg) {
		t.Fatalf("MaxInflight(0): %v", err)
	}
	// The tenant may create max_consumers (2) consumers; binding to one of them again is fine.
	for _, name := range []string{"c1", "c2", "c1"} {
		if _, err := c.SubscribeDurable(ctx, "jobs."+name, name); err != nil {
			t.Fatalf("consumer %s: %v", name, err)
		}
	}
	if _, err := c.SubscribeDurable(ctx, "jobs.c3", "c3"); !errors.Is(err, ErrTooManyConsumers) {
		t.Fatalf("third client-created consumer: %v", err)
	}
	// The connection is still fine after the refusals.
	if err := c.Flush(ctx); err != nil {
		t.Fatal(err)
	}
}

// A consumer remembers across connections what is done: acknowledged work is gone, work a closed
// connection held is redelivered at once with the next attempt.
func TestDurableAcrossConnections(t *testing.T) {
	g := durableGateway(t)
	ctx := testCtx(t, 20*time.Second)
	p := connect(t, g.url)
	jobs := publishJobs(t, ctx, p, "jobs.wide", 6)

	a := connect(t, g.url, noAsyncErrors(t))
	subA, err := a.SubscribeDurable(ctx, "jobs.wide", "wide")
	if err != nil {
		t.Fatal(err)
	}
	done := nextMsg(t, subA)
	if err := done.Ack(ctx); err != nil {
		t.Fatal(err)
	}
	held := nextMsg(t, subA) // taken, never acknowledged
	if held.Attempt != 1 {
		t.Fatalf("first attempt is %d", held.Attempt)
	}
	a.Close() // the gateway releases what a held

	b := connect(t, g.url, noAsyncErrors(t))
	subB, err := b.SubscribeDurable(ctx, "jobs.wide", "wide", MaxInflight(10))
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]uint64{}
	start := time.Now()
	for len(seen) < len(jobs)-1 {
		m := nextMsg(t, subB)
		if _, dup := seen[string(m.Data)]; dup {
			t.Fatalf("%q delivered twice", m.Data)
		}
		seen[string(m.Data)] = m.Attempt
		if err := m.Ack(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if time.Since(start) > 5*time.Second { // the ack wait is 10 s: released work comes back at once
		t.Fatalf("released work took %v", time.Since(start))
	}
	if _, ok := seen[string(done.Data)]; ok {
		t.Fatalf("acknowledged %q was delivered again", done.Data)
	}
	if seen[string(held.Data)] != 2 {
		t.Fatalf("%q held by the closed connection: attempt %d, want 2", held.Data, seen[string(held.Data)])
	}
	nothingFor(t, subB, 300*time.Millisecond)
}

func TestDurableSettle(t *testing.T) {
	g := durableGateway(t)
	c := connect(t, g.url, noAsyncErrors(t))
	ctx := testCtx(t, 30*time.Second)
	ds, err := c.SubscribeDurable(ctx, "jobs.retry", "retry") // ack wait 600 ms
	if err != nil {
		t.Fatal(err)
	}
	dead, err := c.SubscribeSync("deadletter.retry")
	if err != nil {
		t.Fatal(err)
	}
	if err := dead.Ready(ctx); err != nil {
		t.Fatal(err)
	}

	// NAK with a delay: the next attempt comes after it.
	if err := c.PublishAck(ctx, "jobs.retry", []byte("nak")); err != nil {
		t.Fatal(err)
	}
	m := nextMsg(t, ds)
	if string(m.Data) != "nak" || m.Attempt != 1 {
		t.Fatalf("%q attempt %d", m.Data, m.Attempt)
	}
	nakAt := time.Now()
	if err := m.Nak(ctx, 400*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	m2 := nextMsg(t, ds)
	if string(m2.Data) != "nak" || m2.Attempt != 2 || m2.DeliveryID == m.DeliveryID {
		t.Fatalf("redelivery %q attempt %d delivery %d (first %d)", m2.Data, m2.Attempt, m2.DeliveryID, m.DeliveryID)
	}
	if d := time.Since(nakAt); d < 350*time.Millisecond {
		t.Fatalf("redelivered %v after NAK with a 400 ms delay", d)
	}
	if err := m2.Ack(ctx); err != nil {
		t.Fatal(err)
	}
	if err := m2.Ack(ctx); !errors.Is(err, ErrMsgSettled) {
		t.Fatalf("second ack: %v", err)
	}

	// PROGRESS keeps a delivery alive past the ack wait.
	if err := c.PublishAck(ctx, "jobs.retry", []byte("long")); err != nil {
		t.Fatal(err)
	}
	m = nextMsg(t, ds)
	for end := time.Now().Add(1500 * time.Millisecond); time.Now().Before(end); {
		time.Sleep(150 * time.Millisecond)
		if err := m.InProgress(ctx); err != nil {
			t.Fatalf("in progress: %v", err)
		}
	}
	if n := ds.Pending(); n != 0 {
		t.Fatalf("redelivered while in progress (%d queued)", n)
	}
	if err := m.Ack(ctx); err != nil {
		t.Fatalf("ack after 1.5 s of progress: %v", err)
	}

	// Without PROGRESS the ack wait passes: the message is redelivered and the old delivery is gone.
	if err := c.PublishAck(ctx, "jobs.retry", []byte("slow")); err != nil {
		t.Fatal(err)
	}
	m = nextMsg(t, ds)
	m2 = nextMsg(t, ds)
	if string(m2.Data) != "slow" || m2.Attempt != 2 {
		t.Fatalf("after the ack wait: %q attempt %d", m2.Data, m2.Attempt)
	}
	err = m.Ack(ctx)
	var pe *ProtocolError
	if !errors.Is(err, ErrUnknownDelivery) || !errors.As(err, &pe) || pe.RefOp != OpAck || pe.Local {
		t.Fatalf("ack of an expired delivery: %v", err)
	}
	if err := m2.InProgress(ctx); err != nil {
		t.Fatalf("progress of the live delivery: %v", err)
	}
	if err := m2.Ack(ctx); err != nil {
		t.Fatal(err)
	}
	if err := m2.InProgress(ctx); !errors.Is(err, ErrUnknownDelivery) {
		t.Fatalf("progress after ack: %v", err)
	}

	// TERM: no retry; the message goes to the dead-letter subject with the reason.
	if err := c.PublishMsgAck(ctx, &Msg{Subject: "jobs.retry", Data: []byte("poison"), Header: Header{"job": "7"}}); err != nil {
		t.Fatal(err)
	}
	m = nextMsg(t, ds)
	if err := m.Term(ctx, "bad input"); err != nil {
		t.Fatal(err)
	}
	dl, err := dead.NextMsg(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := Header{"job": "7", "busgate-dead-reason": "terminated: bad input", "busgate-attempts": "1",
		"busgate-subject": "jobs.retry", "busgate-stream": "jobs", "busgate-consumer": "retry"}
	if string(dl.Data) != "poison" || !sameHeader(dl.Header, want) {
		t.Fatalf("dead letter %q %v", dl.Data, dl.Header)
	}
	nothingFor(t, ds, 800*time.Millisecond) // past the ack wait: not redelivered

	// Settling needs a durable delivery.
	plain, _ := c.SubscribeSync("plain.x")
	_ = c.Flush(ctx)
	_ = c.Publish("plain.x", []byte("p"))
	pm, err := plain.NextMsg(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := pm.Ack(ctx); !errors.Is(err, ErrNotDurable) {
		t.Fatalf("ack of a plain message: %v", err)
	}
}

func sameHeader(a, b Header) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range b {
		if a[k] != v {
			return false
		}
	}
	return true
}

func TestDurableDeadLetterAfterMaxDeliveries(t *testing.T) {
	g := durableGateway(t)
	c := connect(t, g.url, noAsyncErrors(t))
	ctx := testCtx(t, 20*time.Second)
	ds, err := c.SubscribeDurable(ctx, "jobs.dl", "dl") // max_deliveries 3, no backoff
	if err != nil {
		t.Fatal(err)
	}
	if err := c.PublishAck(ctx, "jobs.dl", []byte("poison"), WithMsgID("p-1")); err != nil {
		t.Fatal(err)
	}
	for attempt := uint64(1); attempt <= 3; attempt++ {
		m := nextMsg(t, ds)
		if string(m.Data) != "poison" || m.Attempt != attempt {
			t.Fatalf("%q attempt %d, want %d", m.Data, m.Attempt, attempt)
		}
		if err := m.Nak(ctx, 0); err != nil {
			t.Fatal(err)
		}
	}
	nothingFor(t, ds, 400*time.Millisecond)

	// The dead-letter subject is stored by the "dead" stream: a consumer created now reads it.
	dq, err := c.SubscribeDurable(ctx, "deadletter.dl", "dlq")
	if err != nil {
		t.Fatal(err)
	}
	dl := nextMsg(t, dq)
	want := Header{"busgate-dead-reason": "max_deliveries", "busgate-attempts": "3", "busgate-subject": "jobs.dl",
		"busgate-stream": "jobs", "busgate-consumer": "dl"}
	if dl.Subject != "deadletter.dl" || string(dl.Data) != "poison" || !sameHeader(dl.Header, want) {
		t.Fatalf("dead letter %s %q %v", dl.Subject, dl.Data, dl.Header)
	}
	if err := dl.Ack(ctx); err != nil {
		t.Fatal(err)
	}
}

// The client never holds more deliveries than its window: it grants credits as the application
// takes messages.
func TestDurableCreditWindow(t *testing.T) {
	g := durableGateway(t)
	c := connect(t, g.url, noAsyncErrors(t)) // a delivery beyond the credits would be reported
	ctx := testCtx(t, 20*time.Second)
	publishJobs(t, ctx, c, "jobs.wide", 12) // the consumer's cap is 100

	ds, err := c.SubscribeDurable(ctx, "jobs.wide", "wide") // window 1
	if err != nil {
		t.Fatal(err)
	}
	var over atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	watch := func(ds *DurableSubscription) {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			case <-time.After(2 * time.Millisecond):
			}
			if n := ds.Pending(); n > ds.Window() {
				over.Store(int64(n))
			}
		}
	}
	wg.Add(1)
	go watch(ds)
	defer func() {
		close(stop)
		wg.Wait()
		if n := over.Load(); n != 0 {
			t.Errorf("%d deliveries queued, above the window", n)
		}
	}()
	waitPending := func(ds *DurableSubscription, want int) {
		t.Helper()
		deadline := time.Now().Add(3 * time.Second)
		for ds.Pending() != want && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
		}
		time.Sleep(150 * time.Millisecond) // nothing more arrives
		if n := ds.Pending(); n != want {
			t.Fatalf("%d queued, want %d", n, want)
		}
	}
	waitPending(ds, 1)
	var held []*Msg
	for i := 0; i < 3; i++ { // taking (without acknowledging) grants one more
		held = append(held, nextMsg(t, ds))
		waitPending(ds, 1)
	}

	// MaxInflight(4): a window of 4, and at most 4 unsettled on the subscription.
	ds4, err := c.SubscribeDurable(ctx, "jobs.wide", "wide", MaxInflight(4))
	if err != nil {
		t.Fatal(err)
	}
	wg.Add(1)
	go watch(ds4)
	waitPending(ds4, 4)
	a, b := nextMsg(t, ds4), nextMsg(t, ds4)
	waitPending(ds4, 2) // 2 taken + 2 queued = max_inflight
	if err := a.Ack(ctx); err != nil {
		t.Fatal(err)
	}
	waitPending(ds4, 3)
	_ = b.Ack(ctx)
	for _, m := range held {
		_ = m.Ack(ctx)
	}
}

// Consume with more handlers than the consumer's max_inflight (3): the gateway's cap holds across
// both connections, and every job runs once.
func TestDurableConsumeConcurrency(t *testing.T) {
	g := durableGateway(t)
	ctx := testCtx(t, 30*time.Second)
	p := connect(t, g.url)
	jobs := publishJobs(t, ctx, p, "jobs.work", 24)

	var running, peak atomic.Int64
	var mu sync.Mutex
	done := map[string]int{}
	all := make(chan struct{})
	handler := func(_ context.Context, m *Msg) error {
		n := running.Add(1)
		for {
			old := peak.Load()
			if n <= old || peak.CompareAndSwap(old, n) {
				break
			}
		}
		time.Sleep(40 * time.Millisecond)
		running.Add(-1)
		mu.Lock()
		done[string(m.Data)]++
		if len(done) == len(jobs) {
			close(all)
		}
		mu.Unlock()
		if m.Attempt != 1 {
			t.Errorf("%q attempt %d", m.Data, m.Attempt)
		}
		return nil
	}
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	results := make(chan error, 2)
	for i := 0; i < 2; i++ {
		c := connect(t, g.url, noAsyncErrors(t))
		ds, err := c.SubscribeDurable(ctx, "jobs.work", "workers")
		if err != nil {
			t.Fatal(err)
		}
		go func() { results <- ds.Consume(cctx, handler, Concurrency(8), ProgressEvery(500*time.Millisecond)) }()
	}
	recv(t, all, "every job handled")
	cancel()
	for i := 0; i < 2; i++ {
		if err := recv(t, (<-chan error)(results), "Consume returns"); err != nil {
			t.Fatalf("Consume: %v", err)
		}
	}
	for job, n := range done {
		if n != 1 {
			t.Errorf("%s handled %d times", job, n)
		}
	}
	if pk := peak.Load(); pk > 3 {
		t.Fatalf("%d handlers ran at once, above the consumer's max_inflight 3", pk)
	} else if pk < 3 {
		t.Fatalf("at most %d handlers ran at once; the cap of 3 was never used", pk)
	}
}

// Consume naks a failed job with its backoff and keeps a slow job alive with PROGRESS.
func TestDurableConsumeRetryAndProgress(t *testing.T) {
	g := durableGateway(t)
	c := connect(t, g.url, noAsyncErrors(t))
	ctx := testCtx(t, 30*time.Second)
	ds, err := c.SubscribeDurable(ctx, "jobs.retry", "retry") // ack wait 600 ms
	if err != nil {
		t.Fatal(err)
	}
	type run struct {
		job     string
		attempt uint64
		start   time.Time
		end     time.Time
	}
	var mu sync.Mutex
	var runs []run
	finished := make(chan struct{}, 4)
	handler := func(ctx context.Context, m *Msg) error {
		r := run{job: string(m.Data), attempt: m.Attempt, start: time.Now()}
		var err error
		switch {
		case r.job == "flaky" && m.Attempt == 1:
			err = errors.New("temporary failure")
		case r.job == "slow":
			select { // 2.5 times the ack wait
			case <-time.After(1500 * time.Millisecond):
			case <-ctx.Done():
				err = ctx.Err()
			}
		}
		r.end = time.Now()
		mu.Lock()
		runs = append(runs, r)
		mu.Unlock()
		if err == nil {
			finished <- struct{}{}
		}
		return err
	}
	cctx, cancel := context.WithCancel(ctx)
	result := make(chan error, 1)
	go func() {
		result <- ds.Consume(cctx, handler, Concurrency(2), ProgressEvery(150*time.Millisecond), NakBackoff(300*time.Millisecond))
	}()
	for _, job := range []string{"flaky", "slow"} {
		if err := c.PublishAck(ctx, "jobs.retry", []byte(job)); err != nil {
			t.Fatal(err)
		}
	}
	recv(t, finished, "first job done")
	recv(t, finished, "second job done")
	time.Sleep(800 * time.Millisecond) // past an ack wait: nothing is redelivered
	cancel()
	if err := recv(t, (<-chan error)(result), "Consume returns"); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	var flaky []run
	for _, r := range runs {
		switch r.job {
		case "slow":
			if r.attempt != 1 {
				t.Errorf("slow job ran again (attempt %d) although PROGRESS was sent", r.attempt)
			}
		case "flaky":
			flaky = append(flaky, r)
		}
	}
	if len(flaky) != 2 || flaky[1].attempt != 2 {
		t.Fatalf("flaky runs %+v", flaky)
	}
	if gap := flaky[1].start.Sub(flaky[0].end); gap < 250*time.Millisecond {
		t.Fatalf("redelivered %v after the failure, backoff is 300 ms", gap)
	}
	if len(runs) != 3 {
		t.Fatalf("%d runs: %+v", len(runs), runs)
	}
}

// Cancelling Consume lets the running job finish and be acknowledged, and releases the queued jobs
// it has not started at once.
func TestDurableConsumeStopReleases(t *testing.T) {
	g := durableGateway(t)
	ctx := testCtx(t, 30*time.Second)
	a := connect(t, g.url, noAsyncErrors(t))
	subA, err := a.SubscribeDurable(ctx, "jobs.wide", "wide", MaxInflight(3)) // ack wait 10 s
	if err != nil {
		t.Fatal(err)
	}
	publishJobs(t, ctx, a, "jobs.wide", 3)
	started := make(chan string, 3)
	release := make(chan struct{})
	cctx, cancel := context.WithCancel(ctx)
	result := make(chan error, 1)
	go func() {
		result <- subA.Consume(cctx, func(ctx context.Context, m *Msg) error {
			started <- string(m.Data)
			<-release
			return ctx.Err() // not cancelled with Consume's context
		}, Concurrency(1))
	}()
	first := recv(t, started, "first job")
	deadline := time.Now().Add(3 * time.Second)
	for subA.Pending() != 2 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if n := subA.Pending(); n != 2 {
		t.Fatalf("%d queued, want 2", n)
	}
	cancel()
	select {
	case err := <-result:
		t.Fatalf("Consume returned %v while a job was running", err)
	case <-time.After(200 * time.Millisecond):
	}

	b := connect(t, g.url, noAsyncErrors(t))
	subB, err := b.SubscribeDurable(ctx, "jobs.wide", "wide", MaxInflight(10))
	if err != nil {
		t.Fatal(err)
	}
	nothingFor(t, subB, 200*time.Millisecond) // a still holds all three
	close(release)
	if err := recv(t, (<-chan error)(result), "Consume returns"); err != nil {
		t.Fatal(err)
	}
	if subA.IsValid() {
		t.Fatal("subscription still live after Consume returned")
	}
	releasedAt := time.Now()
	got := map[string]bool{}
	for i := 0; i < 2; i++ {
		m := nextMsg(t, subB)
		if string(m.Data) == first {
			t.Fatalf("the job that finished was delivered again")
		}
		if m.Attempt != 2 {
			t.Fatalf("%q attempt %d, want 2 (a release counts)", m.Data, m.Attempt)
		}
		got[string(m.Data)] = true
		_ = m.Ack(ctx)
	}
	if d := time.Since(releasedAt); d > 3*time.Second {
		t.Fatalf("released jobs came after %v (the ack wait is 10 s)", d)
	}
	select {
	case s := <-started:
		t.Fatalf("Consume started %q after its context ended", s)
	default:
	}
	nothingFor(t, subB, 300*time.Millisecond)
}

// adminCloseSession closes the gateway connection whose session id is sid (admin API).
func adminCloseSession(t *testing.T, g *gateway, sid string) {
	t.Helper()
	req, _ := http.NewRequest("GET", "http://"+g.httpAddr+"/admin/connections", nil)
	req.Header.Set("Authorization", "Bearer durable-admin-token")
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var list struct {
		Connections []struct {
			ID        uint64 `json:"id"`
			SessionID string `json:"session_id"`
		} `json:"connections"`
	}
	err = json.NewDecoder(res.Body).Decode(&list)
	res.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	for _, conn := range list.Connections {
		if conn.SessionID == sid {
			req, _ := http.NewRequest("POST", fmt.Sprintf("http://%s/admin/connections/%d/close", g.httpAddr, conn.ID), nil)
			req.Header.Set("Authorization", "Bearer durable-admin-token")
			res, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			res.Body.Close()
			if res.StatusCode != 200 {
				t.Fatalf("admin close: %s", res.Status)
			}
			return
		}
	}
	t.Fatalf("no connection with session %s", sid)
}

// After a reconnect the durable subscription is made again; what the old connection held is
// redelivered, and settling it reports that it is stale.
func TestDurableReconnect(t *testing.T) {
	g := durableGateway(t)
	ctx := testCtx(t, 30*time.Second)
	reconnected := make(chan struct{}, 2)
	c := connect(t, g.url, fastReconnect(), ReconnectHandler(func(*Conn) { reconnected <- struct{}{} }),
		ErrorHandler(func(_ *Conn, _ *Subscription, err error) {
			if !strings.Contains(err.Error(), "CLOSED_BY_ADMIN") {
				t.Errorf("async error: %v", err)
			}
		}))
	ds, err := c.SubscribeDurable(ctx, "jobs.wide", "wide", MaxInflight(2)) // ack wait 10 s
	if err != nil {
		t.Fatal(err)
	}
	jobs := publishJobs(t, ctx, c, "jobs.wide", 3)
	m := nextMsg(t, ds)
	if m.Attempt != 1 {
		t.Fatalf("attempt %d", m.Attempt)
	}
	adminCloseSession(t, g, c.ServerInfo().SessionID)
	recv(t, reconnected, "reconnect")
	if err := m.Ack(ctx); !errors.Is(err, ErrStaleDelivery) {
		t.Fatalf("ack of a delivery from the closed connection: %v", err)
	}
	seen := map[string]uint64{}
	for len(seen) < len(jobs) {
		m2 := nextMsg(t, ds)
		if _, dup := seen[string(m2.Data)]; dup {
			t.Fatalf("%q twice", m2.Data)
		}
		seen[string(m2.Data)] = m2.Attempt
		if err := m2.Ack(ctx); err != nil {
			t.Fatalf("ack after reconnect: %v", err)
		}
		if n := ds.Pending(); n > ds.Window() {
			t.Fatalf("%d queued, window %d", n, ds.Window())
		}
	}
	if seen[string(m.Data)] != 2 {
		t.Fatalf("%q after the reconnect: attempt %d, want 2", m.Data, seen[string(m.Data)])
	}
	nothingFor(t, ds, 300*time.Millisecond)
}

// A delivery taken before the gateway sent GOAWAY is settled on the draining connection, which
// stays open for it.
func TestDurableGoAway(t *testing.T) {
	cfg := strings.Replace(durableYAML, "admin:", "timeouts: {goaway_delay_ms: 2000, drain_ms: 4000}\nadmin:", 1)
	g := startGateway(t, cfg)
	ctx := testCtx(t, 20*time.Second)
	goaway := make(chan GoAway, 1)
	c := connect(t, g.url, fastReconnect(), OnGoAway(func(_ *Conn, ga GoAway) { goaway <- ga }))
	ds, err := c.SubscribeDurable(ctx, "jobs.wide", "wide", MaxInflight(2))
	if err != nil {
		t.Fatal(err)
	}
	publishJobs(t, ctx, c, "jobs.wide", 2)
	m := nextMsg(t, ds)
	g.term()
	recv(t, goaway, "GOAWAY")
	if err := m.Ack(ctx); err != nil {
		t.Fatalf("ack on the draining connection: %v", err)
	}
	// The delivery queued before GOAWAY is still handed out and can be settled there too.
	m2 := nextMsg(t, ds)
	if m2.Attempt != 1 {
		t.Fatalf("attempt %d", m2.Attempt)
	}
	if err := m2.Term(ctx, "shutting down"); err != nil {
		t.Fatalf("term on the draining connection: %v", err)
	}
	g.waitExit(t, 10*time.Second)
	if err := m2.Ack(ctx); !errors.Is(err, ErrMsgSettled) {
		t.Fatalf("ack after term: %v", err)
	}
}
