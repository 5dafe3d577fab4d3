// Package rollmesh holds the Go clients of the rollmesh services: EnvClient (environments and
// their episodes), InferenceClient (token-exact generation) and RubricClient (scoring), plus the
// error convention every rollmesh server follows (Error, ErrorInfo, Reason).
//
// Every call takes a context; unary calls without a deadline get the client's Timeout. Clients
// connect over TLS when ROLLMESH_TLS_CA or ROLLMESH_TLS_CERT is set (or Options.TLS says so)
// and check that the server's certificate names its kind: env.rollmesh, inference.rollmesh,
// rubric.rollmesh (ServerName).
package rollmesh

import (
	"context"
	"errors"
	"fmt"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
)

// ProtocolVersion is the rollmesh protocol this module speaks (module version 1.x = v1).
const ProtocolVersion = "v1"

// Version is this module's version.
const Version = "1.3.0"

// Options tune a client. The zero value is usable.
type Options struct {
	// Timeout of a unary call whose context has no deadline (default 30 s; < 0: none).
	Timeout time.Duration
	// ConnectTimeout bounds Dial when its context has no deadline (default 10 s).
	ConnectTimeout time.Duration
	// MaxMessageBytes is the largest message the client receives or sends (default 64 MiB).
	MaxMessageBytes int
	// TLS is the transport security: nil takes it from the environment (TLSFromEnv:
	// ROLLMESH_TLS_CA, ROLLMESH_TLS_CERT, ROLLMESH_TLS_KEY); connections are plaintext when it
	// names neither a CA nor a certificate. With a CA the server is verified against it, with a
	// certificate the client presents it (servers with a CA require one: mutual TLS).
	TLS *TLS
	// ServerName is the name the server's certificate must hold (default ServerName(kind):
	// "env.rollmesh" for DialEnv, "inference.rollmesh", "rubric.rollmesh"), whatever the address.
	ServerName string
	// DialOptions are added to the defaults (the transport security above, blocking dial).
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

// transport is the transport security of a client of a server of kind.
func (o Options) transport(kind string) (grpc.DialOption, error) {
	settings := TLSFromEnv()
	if o.TLS != nil {
		settings = *o.TLS
	}
	if !settings.Enabled() {
		return grpc.WithInsecure(), nil
	}
	name := o.ServerName
	if name == "" {
		name = ServerName(kind)
	}
	cfg, err := settings.ClientConfig(name)
	if err != nil {
		return nil, err
	}
	return grpc.WithTransportCredentials(credentials.NewTLS(cfg)), nil
}

// dial connects to a rollmesh server of kind ("env", "inference", "rubric") at address
// ("host:port"); it fails when the server cannot be reached before ctx's deadline (or
// ConnectTimeout), saying why the last attempt failed (e.g. a certificate it does not trust).
func dial(ctx context.Context, address, kind string, o Options) (*grpc.ClientConn, error) {
	transport, err := o.transport(kind)
	if err != nil {
		return nil, err
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, o.ConnectTimeout)
		defer cancel()
	}
	opts := append([]grpc.DialOption{
		transport,
		grpc.WithBlock(),
		grpc.WithReturnConnectionError(),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(o.MaxMessageBytes), grpc.MaxCallSendMsgSize(o.MaxMessageBytes)),
	}, o.DialOptions...)
	conn, err := grpc.DialContext(ctx, address, opts...)
	if err != nil {
		if ctx.Err() != nil && !errors.Is(err, ctx.Err()) { // the last attempt's error, e.g. the handshake's
			return nil, fmt.Errorf("cannot reach a rollmesh server at %s: %w (last attempt: %v)", address, ctx.Err(), err)
		}
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
