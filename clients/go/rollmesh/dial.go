// Package rollmesh holds the Go clients of the rollmesh services: EnvClient (environments and
// their episodes), InferenceClient (token-exact generation) and RubricClient (scoring), plus the
// error convention every rollmesh server follows (Error, ErrorInfo, Reason).
//
// Every call takes a context; unary calls without a deadline get the client's Timeout.
package rollmesh

import (
	"context"
	"fmt"
	"time"

	"google.golang.org/grpc"
)

// ProtocolVersion is the rollmesh protocol this module speaks (module version 1.x = v1).
const ProtocolVersion = "v1"

// Version is this module's version.
const Version = "1.0.0"

// Options tune a client. The zero value is usable.
type Options struct {
	// Timeout of a unary call whose context has no deadline (default 30 s; < 0: none).
	Timeout time.Duration
	// ConnectTimeout bounds Dial when its context has no deadline (default 10 s).
	ConnectTimeout time.Duration
	// MaxMessageBytes is the largest message the client receives or sends (default 64 MiB).
	MaxMessageBytes int
	// DialOptions are added to the defaults (insecure transport, blocking dial).
	DialOptions []grpc.DialOption
}

func (o Options) withDefaults() Options {
	if o.Timeout == 0 {
		o.Timeout = 30 * time.Second
	}
	if o.ConnectTimeout <= 0 {
		o.ConnectTimeout = 10 * time.Second
	}
	if o.MaxMessageBytes <= 0 {
		o.MaxMessageBytes = 64 << 20
	}
	return o
}

// dial connects to a rollmesh server at address ("host:port"); it fails when the server cannot
// be reached before ctx's deadline (or ConnectTimeout).
func dial(ctx context.Context, address string, o Options) (*grpc.ClientConn, error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, o.ConnectTimeout)
		defer cancel()
	}
	opts := append([]grpc.DialOption{
		grpc.WithInsecure(),
		grpc.WithBlock(),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(o.MaxMessageBytes), grpc.MaxCallSendMsgSize(o.MaxMessageBytes)),
	}, o.DialOptions...)
	conn, err := grpc.DialContext(ctx, address, opts...)
	if err != nil {
		return nil, fmt.Errorf("cannot reach a rollmesh server at %s: %w", address, err)
	}
	return conn, nil
}

// callContext gives a unary call the client's Timeout unless ctx has a deadline already.
func callContext(ctx context.Context, o Options) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok || o.Timeout < 0 {
		return ctx, func() {}
	}
	return context.WithTimeout(ctx, o.Timeout)
}
