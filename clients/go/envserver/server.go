package envserver

import (
	"net"
	"time"

	"github.com/rollmesh/rollmesh/clients/go/rollmesh"
	pb "github.com/rollmesh/rollmesh/clients/go/rollmeshv1"
	"github.com/rollmesh/rollmesh/clients/go/security"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/reflection"
)

// ServiceName is the full name of the EnvironmentService, as health checks name it.
const ServiceName = "rollmesh.v1.EnvironmentService"

// NoIdleTimeout as Limits.IdleTimeout turns the idle timeout off.
const NoIdleTimeout time.Duration = -1

// Limits are the server's limits; zero fields take the defaults of DefaultLimits.
type Limits struct {
	MaxConcurrentEpisodes int
	// An episode with no client message for this long (before start, between actions, after
	// the final step) ends with DEADLINE_EXCEEDED (IDLE_TIMEOUT). NoIdleTimeout: never.
	IdleTimeout     time.Duration
	MaxMessageBytes int
}

// DefaultLimits are the Python reference server's defaults.
var DefaultLimits = Limits{MaxConcurrentEpisodes: 1024, IdleTimeout: 300 * time.Second, MaxMessageBytes: 16 << 20}

func (l Limits) withDefaults() Limits {
	if l.MaxConcurrentEpisodes <= 0 {
		l.MaxConcurrentEpisodes = DefaultLimits.MaxConcurrentEpisodes
	}
	if l.IdleTimeout == 0 {
		l.IdleTimeout = DefaultLimits.IdleTimeout
	}
	if l.MaxMessageBytes <= 0 {
		l.MaxMessageBytes = DefaultLimits.MaxMessageBytes
	}
	return l
}

// idleTimeoutSeconds is the idle timeout as Describe reports it: 0 for none.
func (l Limits) idleTimeoutSeconds() float64 {
	if l.IdleTimeout < 0 {
		return 0
	}
	return l.IdleTimeout.Seconds()
}

// Server hosts environments on a gRPC server with health and server reflection.
type Server struct {
	grpc    *grpc.Server
	health  *health.Server
	service *service
}

// An Option changes how New builds a server.
type Option func(*options)

type options struct {
	tls        rollmesh.TLS
	authorizer *security.Authorizer
}

// WithTLS serves over TLS with settings.Cert; with settings.CA, callers must present a
// certificate that CA signed (mutual TLS) and every call is checked against the role table
// (security.MethodRoles): Describe and ListTasks need orchestrator or reader, episodes and Score
// orchestrator, health checks nothing. Settings without a certificate or CA change nothing.
func WithTLS(settings rollmesh.TLS) Option { return func(o *options) { o.tls = settings } }

// WithAuthorizer checks every call with a (with WithTLS and a CA, the default is
// &security.Authorizer{}: the role table, audit lines to the log package). It needs callers'
// certificates: without a CA every call that needs a role is refused.
func WithAuthorizer(a *security.Authorizer) Option { return func(o *options) { o.authorizer = a } }

// New checks the environments and builds a server; Serve starts it.
func New(envs []*Environment, limits Limits, opts ...Option) (*Server, error) {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	limits = limits.withDefaults()
	svc, err := newService(envs, limits)
	if err != nil {
		return nil, err
	}
	check := sizeCheck(limits.MaxMessageBytes)
	unary := []grpc.UnaryServerInterceptor{check.unary}
	stream := []grpc.StreamServerInterceptor{check.stream}
	var transport []grpc.ServerOption
	if o.tls.Enabled() {
		cfg, err := o.tls.ServerConfig()
		if err != nil {
			return nil, err
		}
		transport = append(transport, grpc.Creds(credentials.NewTLS(cfg)))
		if o.tls.Authenticates() && o.authorizer == nil {
			o.authorizer = &security.Authorizer{}
		}
	}
	if a := o.authorizer; a != nil { // first: nothing runs for a caller that may not call
		unary = append([]grpc.UnaryServerInterceptor{a.UnaryInterceptor()}, unary...)
		stream = append([]grpc.StreamServerInterceptor{a.StreamInterceptor()}, stream...)
	}
	// The transport's stream cap sits well above the episode limit: a client that opens every
	// episode on one connection must still get EPISODE_LIMIT, and its Describe calls, through.
	streams := uint32(2 * limits.MaxConcurrentEpisodes)
	if streams < 1024 {
		streams = 1024
	}
	g := grpc.NewServer(append(transport,
		grpc.CustomCodec(newCodec()), //nolint:staticcheck // supported throughout gRPC 1.x
		grpc.ChainUnaryInterceptor(unary...),
		grpc.ChainStreamInterceptor(stream...),
		grpc.MaxRecvMsgSize(limits.MaxMessageBytes),
		grpc.MaxSendMsgSize(limits.MaxMessageBytes),
		grpc.MaxConcurrentStreams(streams),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
	)...)
	pb.RegisterEnvironmentServiceServer(g, svc)
	hs := health.NewServer()
	hs.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	hs.SetServingStatus(ServiceName, healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(g, hs)
	reflection.Register(g)
	return &Server{grpc: g, health: hs, service: svc}, nil
}

// Serve answers on lis until Shutdown.
func (s *Server) Serve(lis net.Listener) error { return s.grpc.Serve(lis) }

// Names lists the hosted environments in the order given to New.
func (s *Server) Names() []string { return append([]string(nil), s.service.names...) }

// InstanceID is unique to this server process (Describe's instance_id, the registry's key).
func (s *Server) InstanceID() string { return s.service.instanceID }

// ActiveEpisodes is the number of episodes open right now.
func (s *Server) ActiveEpisodes() int { return int(s.service.active.Load()) }

// Drain reports NOT_SERVING and refuses new episodes (UNAVAILABLE, DRAINING); open ones go on.
func (s *Server) Drain() {
	s.service.draining.Store(true)
	s.health.Shutdown()
}

// Shutdown drains, lets open episodes finish for up to grace (new calls are still answered,
// new episodes with DRAINING), then stops the server, cancelling whatever is left.
func (s *Server) Shutdown(grace time.Duration) {
	s.Drain()
	deadline := time.Now().Add(grace)
	for s.ActiveEpisodes() > 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	stopped := make(chan struct{})
	go func() {
		s.grpc.GracefulStop() // waits for calls in flight, e.g. a stream that never started
		close(stopped)
	}()
	select {
	case <-stopped:
	case <-time.After(time.Until(deadline)):
		s.grpc.Stop()
		<-stopped
	}
}
