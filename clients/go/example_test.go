package busgate_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"time"

	busgate "github.com/busgate/busgate/clients/go"
)

// The README's example; compiled by go test, not run (it needs a gateway on port 7422).
func Example() {
	nc, err := busgate.Connect("busgate://127.0.0.1:7422", busgate.Token("dev-token"), busgate.Name("worker-1"))
	if err != nil {
		log.Fatal(err) // errors.Is(err, busgate.ErrAuthFailed) for a bad token
	}
	defer nc.Close()

	// A responder.
	_, _ = nc.Subscribe("svc.echo", func(m *busgate.Msg) { _ = m.Respond(append([]byte("echo: "), m.Data...)) })

	// Pub/sub.
	sub, _ := nc.SubscribeSync("orders.*")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = nc.Flush(ctx) // PING/PONG barrier: both subscriptions are live now
	_ = nc.Publish("orders.created", []byte("hello"))
	m, err := sub.NextMsg(ctx)
	if err == nil {
		fmt.Println(m.Subject, string(m.Data), m.Tenant) // orders.created hello demo
	}

	// Request/reply: the context's deadline becomes the REQ timeout.
	reply, err := nc.Request(ctx, "svc.echo", []byte("ping"))
	if errors.Is(err, busgate.ErrNoResponders) {
		return // nobody subscribed
	}
	if err == nil {
		fmt.Println(string(reply.Data)) // echo: ping
	}

	_ = nc.Drain(ctx) // unsubscribe, let handlers finish, wait for requests, close
}

// A durable work queue on the embedded default gateway (stream "jobs" stores jobs.>, consumer
// "workers"); compiled by go test, not run.
func Example_workQueue() {
	nc, err := busgate.Connect("busgate://127.0.0.1:7422", busgate.Token("dev-token"))
	if err != nil {
		log.Fatal(err)
	}
	defer nc.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	// Producer: returns once the stream has stored the job; a re-send with the same key is not
	// stored twice.
	err = nc.PublishAck(ctx, "jobs.resize", []byte("img-1"), busgate.WithMsgID("resize-img-1"))
	if errors.Is(err, busgate.ErrNotStored) {
		log.Fatal("the stream is full")
	}

	// Worker: at most 4 jobs at once; a failed job comes back after 1 s, then 10 s.
	sub, err := nc.SubscribeDurable(ctx, "jobs.>", "workers", busgate.MaxInflight(4))
	if err != nil {
		log.Fatal(err) // busgate.ErrUnknownStream, busgate.ErrInvalidOption, ...
	}
	err = sub.Consume(ctx, func(ctx context.Context, m *busgate.Msg) error {
		// Returning nil ACKs the job, an error NAKs it.
		fmt.Println(m.Subject, string(m.Data), m.Attempt) // jobs.resize img-1 1
		return nil
	}, busgate.Concurrency(4), busgate.NakBackoff(time.Second, 10*time.Second))
	if err != nil {
		log.Fatal(err)
	}
}
