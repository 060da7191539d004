// Command bench compares the busgate Go client, through a busgate gateway (dev mode, memory bus),
// with nats.go talking directly to a nats-server, on the same machine in one run.
//
// Two measurements per payload size:
//
//   - publish: one connection publishes N messages and then flushes (PING/PONG); msgs/s over that
//     time. Nobody is subscribed.
//   - receive: one connection subscribes, another publishes N messages with at most -window
//     messages outstanding (published but not yet received), so neither server has to drop or
//     disconnect a slow consumer; msgs/s at the subscriber from the first to the last message.
//
// Each measurement is repeated -runs times and the best run is reported.
//
//	go run . [-gateway PATH] [-nats-server PATH] [-n N] [-sizes 16,128,1024] [-runs 3]
package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"log"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	busgate "github.com/busgate/busgate/clients/go"
	"github.com/nats-io/nats.go"
)

var (
	gatewayBin = flag.String("gateway", defaultGateway(), "busgate gateway binary (env BUSGATE_BIN)")
	natsBin    = flag.String("nats-server", "nats-server", "nats-server binary")
	count      = flag.Int("n", 500000, "messages per measurement (1024-byte payloads use n/2)")
	sizesFlag  = flag.String("sizes", "16,128,1024", "payload sizes in bytes")
	runs       = flag.Int("runs", 3, "repetitions per measurement; the best is reported")
	window     = flag.Int("window", 20000, "receive test: messages in flight at most (also at most 2 MiB of payload)")
	only       = flag.String("only", "", "run only 'busgate' or 'nats'")
	cpuProfile = flag.String("cpuprofile", "", "write a CPU profile of the busgate measurements here")
	markdown   = flag.Bool("markdown", false, "print the table as Markdown")
)

func defaultGateway() string {
	if b := os.Getenv("BUSGATE_BIN"); b != "" {
		return b
	}
	return filepath.Join("..", "..", "build", "bin", "busgate")
}

// server is a child process that logs its listening address on stderr.
type server struct {
	cmd  *exec.Cmd
	addr string
}

func startServer(bin string, args []string, addrRE *regexp.Regexp, readyText string) (*server, error) {
	cmd := exec.Command(bin, args...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	s := &server{cmd: cmd}
	ready := make(chan error, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		sent := false
		for sc.Scan() {
			line := sc.Text()
			if m := addrRE.FindStringSubmatch(line); m != nil {
				s.addr = m[1]
			}
			if !sent && strings.Contains(line, readyText) && s.addr != "" {
				ready <- nil
				sent = true
			}
		}
		if !sent {
			ready <- fmt.Errorf("%s exited before it was ready", bin)
		}
	}()
	select {
	case err := <-ready:
		if err != nil {
			return nil, err
		}
	case <-time.After(15 * time.Second):
		s.stop()
		return nil, fmt.Errorf("%s not ready after 15 s", bin)
	}
	return s, nil
}

func (s *server) stop() {
	_ = s.cmd.Process.Kill()
	_ = s.cmd.Wait()
}

// client is what a measurement needs from either library.
type client interface {
	publish(subject string, data []byte) error
	flush() error
	subscribe(subject string, cb func()) error
	close()
}

type bgClient struct{ c *busgate.Conn }

func (b bgClient) publish(s string, d []byte) error { return b.c.Publish(s, d) }
func (b bgClient) flush() error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	return b.c.Flush(ctx)
}
func (b bgClient) subscribe(s string, cb func()) error {
	sub, err := b.c.Subscribe(s, func(*busgate.Msg) { cb() })
	if err != nil {
		return err
	}
	_ = sub.SetPendingLimits(1<<24, 1<<30)
	return b.flush()
}
func (b bgClient) close() { b.c.Close() }

type natsClient struct{ c *nats.Conn }

func (n natsClient) publish(s string, d []byte) error { return n.c.Publish(s, d) }
func (n natsClient) flush() error                     { return n.c.FlushTimeout(time.Minute) }
func (n natsClient) subscribe(s string, cb func()) error {
	sub, err := n.c.Subscribe(s, func(*nats.Msg) { cb() })
	if err != nil {
		return err
	}
	_ = sub.SetPendingLimits(1<<24, 1<<30)
	return n.c.Flush()
}
func (n natsClient) close() { n.c.Close() }

type system struct {
	name    string
	connect func() (client, error)
	server  *server
}

// cpuTime returns the CPU time (user + system) used so far by this process and by the server.
func cpuTime(s *server) (self, srv time.Duration) {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	self = time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", s.cmd.Process.Pid))
	if err == nil {
		f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
		ut, _ := strconv.ParseInt(f[11], 10, 64) // fields 14 and 15 of stat, in clock ticks
		st, _ := strconv.ParseInt(f[12], 10, 64)
		srv = time.Duration(ut+st) * 10 * time.Millisecond
	}
	return self, srv
}

type result struct {
	rate              float64
	clientCPU, srvCPU time.Duration // per run
	n                 int
}

func measurePublish(sys system, size, n int) (float64, error) {
	c, err := sys.connect()
	if err != nil {
		return 0, err
	}
	defer c.close()
	data := make([]byte, size)
	start := time.Now()
	for i := 0; i < n; i++ {
		if err := c.publish("bench.pub", data); err != nil {
			return 0, err
		}
	}
	if err := c.flush(); err != nil {
		return 0, err
	}
	return float64(n) / time.Since(start).Seconds(), nil
}

func measureReceive(sys system, size, n int) (float64, error) {
	sub, err := sys.connect()
	if err != nil {
		return 0, err
	}
	defer sub.close()
	pub, err := sys.connect()
	if err != nil {
		return 0, err
	}
	defer pub.close()
	var got atomic.Int64
	var first, last atomic.Int64
	done := make(chan struct{})
	wake := make(chan struct{}, 1)
	if err := sub.subscribe("bench.recv", func() {
		k := got.Add(1)
		if k == 1 {
			first.Store(time.Now().UnixNano())
		}
		if k%1024 == 0 {
			select {
			case wake <- struct{}{}:
			default:
			}
		}
		if k == int64(n) {
			last.Store(time.Now().UnixNano())
			close(done)
		}
	}); err != nil {
		return 0, err
	}
	data := make([]byte, size)
	win := int64(min(*window, max(2<<20/max(size, 1), 64)))
	for i := 0; i < n; i++ {
		for int64(i)-got.Load() >= win {
			select {
			case <-wake:
			case <-done:
			case <-time.After(10 * time.Second):
				return 0, fmt.Errorf("%s: receiver stalled at %d of %d", sys.name, got.Load(), n)
			}
		}
		if err := pub.publish("bench.recv", data); err != nil {
			return 0, err
		}
	}
	if err := pub.flush(); err != nil {
		return 0, err
	}
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		return 0, fmt.Errorf("%s: received %d of %d", sys.name, got.Load(), n)
	}
	return float64(n-1) / (time.Duration(last.Load() - first.Load())).Seconds(), nil
}

func best(sys system, n int, f func() (float64, error)) (result, error) {
	var b result
	for i := 0; i < *runs; i++ {
		c0, s0 := cpuTime(sys.server)
		r, err := f()
		if err != nil {
			return b, err
		}
		c1, s1 := cpuTime(sys.server)
		if r > b.rate {
			b = result{rate: r, clientCPU: c1 - c0, srvCPU: s1 - s0, n: n}
		}
	}
	return b, nil
}

func main() {
	flag.Parse()
	log.SetFlags(0)
	var sizes []int
	for _, s := range strings.Split(*sizesFlag, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 0 {
			log.Fatalf("bad size %q", s)
		}
		sizes = append(sizes, n)
	}

	gw, err := startServer(*gatewayBin, []string{"--tcp", "127.0.0.1:0", "--http", "127.0.0.1:0"},
		regexp.MustCompile(`tcp listening on (\S+)`), "ready (bus:")
	if err != nil {
		log.Fatalf("gateway: %v", err)
	}
	defer gw.stop()
	ns, err := startServer(*natsBin, []string{"-a", "127.0.0.1", "-p", "-1"},
		regexp.MustCompile(`Listening for client connections on (\S+)`), "Server is ready")
	if err != nil {
		gw.stop()
		log.Fatalf("nats-server: %v", err)
	}
	defer ns.stop()
	fail := func(format string, args ...any) {
		gw.stop()
		ns.stop()
		log.Fatalf(format, args...)
	}

	bg := system{"busgate", func() (client, error) {
		c, err := busgate.Connect("busgate://"+gw.addr, busgate.Token("dev-token"), busgate.Name("bench"))
		return bgClient{c}, err
	}, gw}
	nt := system{"nats", func() (client, error) {
		c, err := nats.Connect("nats://"+ns.addr, nats.Name("bench"))
		return natsClient{c}, err
	}, ns}

	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			log.Fatal(err)
		}
		_ = pprof.StartCPUProfile(f)
		defer pprof.StopCPUProfile()
	}

	type row struct {
		test           string
		size           int
		busgate, nats_ result
	}
	var rows []row
	for _, test := range []string{"publish", "receive"} {
		for _, size := range sizes {
			n := *count
			if size >= 1024 {
				n /= 2
			}
			r := row{test: test, size: size}
			for _, sys := range []system{bg, nt} {
				if *only != "" && *only != sys.name {
					continue
				}
				f := func() (float64, error) { return measurePublish(sys, size, n) }
				if test == "receive" {
					f = func() (float64, error) { return measureReceive(sys, size, n) }
				}
				res, err := best(sys, n, f)
				if err != nil {
					fail("%s %s %d B: %v", sys.name, test, size, err)
				}
				if sys.name == "busgate" {
					r.busgate = res
				} else {
					r.nats_ = res
				}
			}
			rows = append(rows, r)
			fmt.Fprintf(os.Stderr, "  %-8s %5d B  busgate %10.0f  nats %10.0f msgs/s\n", test, size, r.busgate.rate, r.nats_.rate)
		}
	}

	fmt.Printf("busgate Go client via gateway (memory bus) vs nats.go direct to nats-server; %d cores, %s, best of %d\n\n",
		runtime.NumCPU(), runtime.Version(), *runs)
	// CPU columns: CPU time per message of the client process (both connections of a receive test)
	// and of the server process (gateway or nats-server), in nanoseconds.
	perMsg := func(d time.Duration, n int) float64 {
		if n == 0 {
			return 0
		}
		return float64(d.Nanoseconds()) / float64(n)
	}
	if *markdown {
		fmt.Println("| test | payload | busgate msgs/s | nats.go msgs/s | ratio | busgate client ns/msg | nats.go client ns/msg | gateway ns/msg | nats-server ns/msg |")
		fmt.Println("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
	} else {
		fmt.Printf("%-8s %8s %15s %15s %7s   %s\n", "test", "payload", "busgate msgs/s", "nats.go msgs/s", "ratio",
			"CPU ns/msg: busgate client, nats.go client, gateway, nats-server")
	}
	for _, r := range rows {
		ratio := 0.0
		if r.nats_.rate > 0 {
			ratio = r.busgate.rate / r.nats_.rate
		}
		bc, nc := perMsg(r.busgate.clientCPU, r.busgate.n), perMsg(r.nats_.clientCPU, r.nats_.n)
		gs, ns := perMsg(r.busgate.srvCPU, r.busgate.n), perMsg(r.nats_.srvCPU, r.nats_.n)
		if *markdown {
			fmt.Printf("| %s | %d B | %.0f | %.0f | %.2f× | %.0f | %.0f | %.0f | %.0f |\n",
				r.test, r.size, r.busgate.rate, r.nats_.rate, ratio, bc, nc, gs, ns)
		} else {
			fmt.Printf("%-8s %6d B %15.0f %15.0f %6.2fx   %5.0f %5.0f %5.0f %5.0f\n",
				r.test, r.size, r.busgate.rate, r.nats_.rate, ratio, bc, nc, gs, ns)
		}
	}
}
