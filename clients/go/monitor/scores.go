package monitor

import (
	"context"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go"
	pb "github.com/rollmesh/rollmesh/clients/go/rollmeshv1"
	"google.golang.org/protobuf/proto"
)

// ScoreReaderOptions tune a ScoreReader. The zero value reads new scores only.
type ScoreReaderOptions struct {
	// DeliverAll starts from the oldest score the SCORES stream retains instead of from now.
	DeliverAll bool
	// CreateStream creates the SCORES stream (ScoresStream) when no stream captures the subject.
	CreateStream bool
}

// ScoreReader follows the MonitorScores of one app with a JetStream ordered consumer (ephemeral:
// it leaves nothing behind on the server).
type ScoreReader struct {
	sub     *nats.Subscription
	subject string
}

// ReadScores starts reading the scores of app ("*" for every app) on nc, which stays the
// caller's to close. Close the reader when done.
func ReadScores(nc *nats.Conn, app string, opts ScoreReaderOptions) (*ScoreReader, error) {
	if app != "*" {
		if err := checkApp(app); err != nil {
			return nil, err
		}
	}
	js, err := nc.JetStream()
	if err != nil {
		return nil, err
	}
	subject := ScoresPrefix + app
	if _, err := streamFor(js, subject, ScoresStream, opts.CreateStream); err != nil {
		return nil, err
	}
	deliver := nats.DeliverNew()
	if opts.DeliverAll {
		deliver = nats.DeliverAll()
	}
	sub, err := js.SubscribeSync(subject, nats.OrderedConsumer(), deliver)
	if err != nil {
		return nil, fmt.Errorf("cannot read the scores on %s: %w", subject, err)
	}
	return &ScoreReader{sub: sub, subject: subject}, nil
}

// Next waits for the next score, until ctx ends. A message that is not a MonitorScore is an
// error naming its sequence; the reader goes on with the next one after it.
func (r *ScoreReader) Next(ctx context.Context) (*pb.MonitorScore, error) {
	msg, err := r.sub.NextMsgWithContext(ctx)
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
			return nil, fmt.Errorf("no score on %s: %w", r.subject, err)
		}
		return nil, fmt.Errorf("reading the scores on %s: %w", r.subject, err)
	}
	score := &pb.MonitorScore{}
	if err := proto.Unmarshal(msg.Data, score); err != nil {
		seq := uint64(0)
		if meta, merr := msg.Metadata(); merr == nil {
			seq = meta.Sequence.Stream
		}
		return nil, fmt.Errorf("message %d on %s is not a rollmesh.v1.MonitorScore: %w", seq, msg.Subject, err)
	}
	return score, nil
}

// Close stops reading and removes the consumer.
func (r *ScoreReader) Close() error { return r.sub.Unsubscribe() }
