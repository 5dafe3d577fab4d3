package monitor

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	pb "github.com/rollmesh/rollmesh/clients/go/rollmeshv1"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// PublisherOptions tune a Publisher. The zero value is usable.
type PublisherOptions struct {
	// CreateStream creates the MONITOR stream (MonitorStream) when no stream captures the
	// subject; without it, publishing then fails.
	CreateStream bool
	// AckTimeout bounds the wait for JetStream's ack when the context has no deadline (10 s).
	AckTimeout time.Duration
}

// Published is JetStream's receipt of a trace.
type Published struct {
	TraceID  string
	Stream   string
	Sequence uint64
	// Duplicate: the stream had this trace_id already (within its duplicate window) and did
	// not store it again.
	Duplicate bool
}

// Publisher publishes traces on one NATS connection. It is safe for concurrent use.
type Publisher struct {
	js   nats.JetStreamContext
	nc   *nats.Conn
	opts PublisherOptions

	mu       sync.Mutex
	captured map[string]time.Time // subject -> when a stream was last seen capturing it
}

// streamRecheck is how long a stream found for a subject is trusted without asking again.
const streamRecheck = time.Minute

// NewPublisher is a publisher on nc, which stays the caller's to close.
func NewPublisher(nc *nats.Conn, opts PublisherOptions) (*Publisher, error) {
	js, err := nc.JetStream()
	if err != nil {
		return nil, err
	}
	if opts.AckTimeout <= 0 {
		opts.AckTimeout = 10 * time.Second
	}
	return &Publisher{js: js, nc: nc, opts: opts, captured: map[string]time.Time{}}, nil
}

// PublishTrace stores one trace in the MONITOR stream on "rollmesh.monitor.<trace.App>" with
// header Nats-Msg-Id = trace_id, and waits for JetStream's ack. An empty trace_id or created_at
// is filled in (in trace itself). It never falls back to a plain NATS publish: when no stream
// captures the subject it creates MONITOR (CreateStream) or fails.
func (p *Publisher) PublishTrace(ctx context.Context, trace *pb.MonitorTrace) (*Published, error) {
	if err := checkApp(trace.App); err != nil {
		return nil, err
	}
	if len(trace.Messages) == 0 {
		return nil, fmt.Errorf("trace %q has no messages", trace.TraceId)
	}
	if trace.TraceId == "" {
		trace.TraceId = randomID()
	}
	if trace.CreatedAt == nil {
		trace.CreatedAt = timestamppb.Now()
	}
	subject := MonitorPrefix + trace.App
	data, err := proto.Marshal(trace)
	if err != nil {
		return nil, err
	}
	if limit := p.nc.MaxPayload(); int64(len(data)) > limit {
		return nil, fmt.Errorf("trace %s is %d bytes, over the NATS server's max_payload of %d bytes", trace.TraceId, len(data), limit)
	}
	if err := p.checkStream(subject); err != nil {
		return nil, err
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, p.opts.AckTimeout)
		defer cancel()
	}
	ack, err := p.js.Publish(subject, data, nats.MsgId(trace.TraceId), nats.Context(ctx))
	if errors.Is(err, nats.ErrNoStreamResponse) { // the stream went away since checkStream
		p.forget(subject)
		return nil, fmt.Errorf("no JetStream stream stored trace %s on %s: %w", trace.TraceId, subject, err)
	}
	if err != nil {
		return nil, fmt.Errorf("JetStream did not acknowledge trace %s on %s: %w", trace.TraceId, subject, err)
	}
	return &Published{TraceID: trace.TraceId, Stream: ack.Stream, Sequence: ack.Sequence, Duplicate: ack.Duplicate}, nil
}

// PublishTrace publishes one trace with a Publisher made for the call.
func PublishTrace(ctx context.Context, nc *nats.Conn, trace *pb.MonitorTrace, opts PublisherOptions) (*Published, error) {
	p, err := NewPublisher(nc, opts)
	if err != nil {
		return nil, err
	}
	return p.PublishTrace(ctx, trace)
}

func (p *Publisher) checkStream(subject string) error {
	p.mu.Lock()
	seen, ok := p.captured[subject]
	p.mu.Unlock()
	if ok && time.Since(seen) < streamRecheck {
		return nil
	}
	if _, err := streamFor(p.js, subject, MonitorStream, p.opts.CreateStream); err != nil {
		return err
	}
	p.mu.Lock()
	p.captured[subject] = time.Now()
	p.mu.Unlock()
	return nil
}

func (p *Publisher) forget(subject string) {
	p.mu.Lock()
	delete(p.captured, subject)
	p.mu.Unlock()
}

func randomID() string {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}
