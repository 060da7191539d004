// Command natsload is a load generator for a NATS server, written with nats.go: the direct-NATS
// baseline of busgate-bench (bench/busgate_bench.cpp). It runs the same workloads with the same
// method and prints the same JSON line, so bench/run.py reads either.
//
//	natsload --target nats://HOST:PORT --workload pub|pubsub|fanout|reqrep|openloop
//	         [--size B] [--count N] [--subs N] [--seconds S] [--rate R] [--subject S]
//	         [--responder nats://HOST:PORT]
//
// Workloads:
//
//   - pub: one connection publishes --count messages, then flushes; msgs/s over that time.
//   - pubsub, fanout: one publisher, 1 or --subs subscribers (each its own connection, pending
//     limits off); delivered msgs/s, all subscribers together, from the first publish to the last
//     delivery (at most 60 s), and how many were lost.
//   - reqrep: closed loop, one request at a time for --seconds, against a responder on its own
//     connection that answers with the request's payload; latency percentiles in µs.
//   - openloop: requests at a fixed --rate for --seconds, never waiting for replies; each latency
//     is measured from the request's scheduled send time (no coordinated omission).
package main

import (
	"flag"
	"fmt"
	"math"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"github.com/nats-io/nats.go"
)

type options struct {
	target, workload, subject, responder string
	size                                 int
	count                                uint64
	subs                                 int
	seconds, rate                        float64
}

// histogram is log-linear (HDR-style: about 1% relative precision from 1 µs to ~100 s), the same
// buckets and percentile rule as busgate-bench's, so the two tools' figures compare exactly.
type histogram struct {
	counts [1900]uint64
	n      uint64
	max    float64
}

func (h *histogram) record(us float64) {
	if us < 1 {
		us = 1
	}
	b := int(math.Log(us) / math.Log(1.01))
	h.counts[min(b, len(h.counts)-1)]++
	h.n++
	h.max = math.Max(h.max, us)
}

func (h *histogram) percentile(p float64) float64 {
	if h.n == 0 {
		return 0
	}
	want := uint64(math.Ceil(p / 100 * float64(h.n)))
	var seen uint64
	for b, c := range h.counts {
		seen += c
		if seen >= want {
			return math.Pow(1.01, float64(b)+0.5)
		}
	}
	return h.max
}

// cpp formats a float like C++'s std::to_string(double).
func cpp(x float64) string { return strconv.FormatFloat(x, 'f', 6, 64) }

func emit(o *options, fields string) {
	fmt.Printf("{\"target\":\"%s\",\"workload\":\"%s\",\"size\":%d,%s}\n", o.target, o.workload, o.size, fields)
}

func latencyFields(h *histogram, elapsed float64) string {
	return fmt.Sprintf("\"requests\":%d,\"per_sec\":%.1f,\"p50_us\":%.1f,\"p90_us\":%.1f,\"p99_us\":%.1f,\"p999_us\":%.1f",
		h.n, float64(h.n)/elapsed, h.percentile(50), h.percentile(90), h.percentile(99), h.percentile(99.9))
}

func connect(url string) *nats.Conn {
	nc, err := nats.Connect(url, nats.Name("natsload"))
	if err != nil {
		fail(fmt.Errorf("cannot connect to %s: %w", url, err))
	}
	return nc
}

func fail(err error) {
	fmt.Fprintf(os.Stderr, "natsload: %v\n", err)
	os.Exit(1)
}

func must(err error) {
	if err != nil {
		fail(err)
	}
}

// flush waits for the server to have processed everything sent so far (PING/PONG).
func flush(nc *nats.Conn) { must(nc.FlushTimeout(60 * time.Second)) }

func workloadPub(o *options) {
	nc := connect(o.target)
	defer nc.Close()
	payload := make([]byte, o.size)
	for i := range payload {
		payload[i] = 'x'
	}
	t0 := time.Now()
	for i := uint64(0); i < o.count; i++ {
		must(nc.Publish(o.subject, payload))
	}
	flush(nc)
	rate := float64(o.count) / time.Since(t0).Seconds()
	emit(o, "\"msgs_per_sec\":"+cpp(rate))
}

// counter is one subscriber's tally; lastNs is the time of its latest delivery, relative to base.
type counter struct {
	n      atomic.Uint64
	lastNs atomic.Int64
	_      [48]byte // one cache line each
}

func workloadDelivery(o *options, subs int) {
	base := time.Now()
	counters := make([]counter, subs)
	want := o.count * uint64(subs)
	conns := make([]*nats.Conn, 0, subs)
	for i := 0; i < subs; i++ {
		nc := connect(o.target)
		c := &counters[i]
		s, err := nc.Subscribe(o.subject, func(*nats.Msg) {
			c.n.Add(1)
			c.lastNs.Store(int64(time.Since(base)))
		})
		must(err)
		must(s.SetPendingLimits(-1, -1))
		flush(nc)
		conns = append(conns, nc)
	}
	pub := connect(o.target)
	payload := make([]byte, o.size)
	for i := range payload {
		payload[i] = 'x'
	}
	start := int64(time.Since(base))
	for i := uint64(0); i < o.count; i++ {
		must(pub.Publish(o.subject, payload))
	}
	flush(pub)
	deadline := time.Now().Add(60 * time.Second)
	total := func() (n uint64) {
		for i := range counters {
			n += counters[i].n.Load()
		}
		return n
	}
	for total() < want && time.Now().Before(deadline) {
		time.Sleep(2 * time.Millisecond)
	}
	for _, nc := range conns {
		nc.Close()
	}
	pub.Close()
	got, last := uint64(0), start
	for i := range counters {
		got += counters[i].n.Load()
		last = max(last, counters[i].lastNs.Load())
	}
	rate := 0.0
	if elapsed := float64(last-start) / 1e9; elapsed > 0 {
		rate = float64(got) / elapsed
	}
	emit(o, fmt.Sprintf("\"subs\":%d,\"delivered_per_sec\":%s,\"lost\":%d", subs, cpp(rate), want-min(want, got)))
}

// startResponder answers every request on bench.svc with its payload, on its own connection.
func startResponder(o *options) *nats.Conn {
	where := o.responder
	if where == "" {
		where = o.target
	}
	nc := connect(where)
	_, err := nc.Subscribe("bench.svc", func(m *nats.Msg) { _ = m.Respond(m.Data) })
	must(err)
	flush(nc)
	return nc
}

func workloadReqrep(o *options) {
	responder := startResponder(o)
	defer responder.Close()
	nc := connect(o.target)
	defer nc.Close()
	payload := make([]byte, o.size)
	for i := range payload {
		payload[i] = 'x'
	}
	var h histogram
	t0 := time.Now()
	end := t0.Add(time.Duration(o.seconds * 1e9))
	for time.Now().Before(end) {
		s := time.Now()
		if _, err := nc.Request("bench.svc", payload, 2*time.Second); err == nil {
			h.record(float64(time.Since(s).Nanoseconds()) / 1e3)
		}
	}
	emit(o, latencyFields(&h, time.Since(t0).Seconds()))
}

// alarm wakes a goroutine at a given time with the kernel timer's precision (tens of µs, like C++'s
// sleep_until). time.Sleep wakes through the runtime's network poller, whose timeout is whole
// milliseconds, so it would oversleep a 500 µs gap by ~0.5 ms and that lateness would count in every
// open-loop latency; a thread blocked in nanosleep(2) would keep one of the runtime's processors
// from the connections' goroutines. A timerfd read parks the goroutine in the poller instead, which
// returns as soon as the timer fires.
type alarm struct {
	fd uintptr  // for timerfd_settime (os.File.Fd would make reads block the thread)
	f  *os.File // reads through the poller
}

func newAlarm() (*alarm, error) {
	const clockMonotonic, tfdNonblock, tfdCloexec = 1, 0x800, 0x80000
	fd, _, errno := syscall.Syscall(syscall.SYS_TIMERFD_CREATE, clockMonotonic, tfdNonblock|tfdCloexec, 0)
	if errno != 0 {
		return nil, fmt.Errorf("timerfd_create: %w", errno)
	}
	return &alarm{fd, os.NewFile(fd, "timerfd")}, nil
}

// sleepUntil returns at t or a little later.
func (a *alarm) sleepUntil(t time.Time) error {
	d := time.Until(t)
	if d <= 0 {
		return nil
	}
	spec := struct{ interval, value syscall.Timespec }{value: syscall.NsecToTimespec(int64(d))}
	if _, _, errno := syscall.Syscall6(syscall.SYS_TIMERFD_SETTIME, a.fd, 0, uintptr(unsafe.Pointer(&spec)), 0, 0, 0); errno != 0 {
		return fmt.Errorf("timerfd_settime: %w", errno)
	}
	var expirations [8]byte
	_, err := a.f.Read(expirations[:])
	return err
}

// workloadOpenloop sends requests at fixed times, all of them whatever the replies do (any number
// in flight), with reply subjects _BENCH.<i> under one wildcard subscription; a reply's latency is
// measured from request i's scheduled time, so a stall delays the measurement of every request
// scheduled behind it. Replies get 10 s after the last request.
func workloadOpenloop(o *options) {
	responder := startResponder(o)
	defer responder.Close()
	payload := make([]byte, o.size)
	for i := range payload {
		payload[i] = 'x'
	}
	total := uint64(o.rate * o.seconds)
	t0 := time.Now().Add(20 * time.Millisecond)
	scheduled := make([]time.Time, total)
	for i := range scheduled {
		scheduled[i] = t0.Add(time.Duration(float64(i) * 1e9 / o.rate))
	}
	var (
		h    histogram
		hm   sync.Mutex
		done atomic.Uint64
	)
	nc := connect(o.target)
	defer nc.Close()
	inbox, err := nc.Subscribe("_BENCH.>", func(m *nats.Msg) {
		now := time.Now()
		i, err := strconv.ParseUint(m.Subject[len("_BENCH."):], 10, 64)
		if err != nil || i >= total {
			return
		}
		lat := float64(now.Sub(scheduled[i]).Nanoseconds()) / 1e3
		hm.Lock()
		h.record(lat)
		hm.Unlock()
		done.Add(1)
	})
	must(err)
	must(inbox.SetPendingLimits(-1, -1))
	flush(nc)
	al, err := newAlarm()
	must(err)
	defer al.f.Close()
	reply := make([]byte, 0, 32)
	for i := uint64(0); i < total; i++ {
		must(al.sleepUntil(scheduled[i]))
		reply = strconv.AppendUint(append(reply[:0], "_BENCH."...), i, 10)
		must(nc.PublishRequest("bench.svc", string(reply), payload))
	}
	deadline := time.Now().Add(10 * time.Second)
	for done.Load() < total && time.Now().Before(deadline) {
		time.Sleep(2 * time.Millisecond)
	}
	_ = inbox.Unsubscribe()
	hm.Lock()
	defer hm.Unlock()
	emit(o, "\"rate\":"+cpp(o.rate)+","+latencyFields(&h, o.seconds))
}

func main() {
	o := &options{}
	flag.StringVar(&o.target, "target", "", "the NATS server, nats://HOST:PORT (required)")
	flag.StringVar(&o.workload, "workload", "pubsub", "pub|pubsub|fanout|reqrep|openloop")
	flag.IntVar(&o.size, "size", 128, "payload bytes")
	flag.Uint64Var(&o.count, "count", 200000, "messages published (pub, pubsub, fanout)")
	flag.IntVar(&o.subs, "subs", 1, "subscribers (fanout)")
	flag.Float64Var(&o.seconds, "seconds", 3, "duration (reqrep, openloop)")
	flag.Float64Var(&o.rate, "rate", 5000, "requests per second (openloop)")
	flag.StringVar(&o.subject, "subject", "bench.x", "the subject published to (pub, pubsub, fanout)")
	flag.StringVar(&o.responder, "responder", "", "where the responder connects, nats://HOST:PORT (default: the target)")
	flag.Parse()
	if flag.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "unexpected argument %s\n", flag.Arg(0))
		os.Exit(2)
	}
	if o.target == "" {
		fmt.Fprintln(os.Stderr, "--target is required")
		os.Exit(2)
	}
	if !strings.HasPrefix(o.target, "nats://") || (o.responder != "" && !strings.HasPrefix(o.responder, "nats://")) {
		fail(fmt.Errorf("only nats:// targets and responders"))
	}
	if o.size < 0 || o.subs < 1 || o.seconds <= 0 || o.rate <= 0 {
		fail(fmt.Errorf("--size must be >= 0, --subs >= 1, --seconds and --rate > 0"))
	}
	switch o.workload {
	case "pub":
		workloadPub(o)
	case "pubsub":
		workloadDelivery(o, 1)
	case "fanout":
		workloadDelivery(o, o.subs)
	case "reqrep":
		workloadReqrep(o)
	case "openloop":
		workloadOpenloop(o)
	default:
		fail(fmt.Errorf("unknown workload %s", o.workload))
	}
}
