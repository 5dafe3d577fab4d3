package envserver

import (
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/rollmesh/rollmesh/clients/go/registry"
	"github.com/rollmesh/rollmesh/clients/go/rollmesh"
	pb "github.com/rollmesh/rollmesh/clients/go/rollmeshv1"
	"github.com/rollmesh/rollmesh/clients/go/security"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// Config is how Run serves: the command line of Main.
type Config struct {
	Host   string
	Port   int
	Limits Limits
	// Grace is how long open episodes get to finish on SIGTERM or SIGINT.
	Grace time.Duration
	// NATS, when set, is the URL of the NATS server whose registry lists this server.
	NATS string
	// AdvertiseHost is the host other machines reach this server at (default: Host).
	AdvertiseHost string
	// TLS: serve over TLS with TLS.Cert; with TLS.CA, mutual TLS and the role check (see
	// WithTLS). The NATS connection of the registry uses the same settings.
	TLS rollmesh.TLS
	// Insecure lets Run listen beyond loopback without TLS and a CA (it warns); without it, Run
	// refuses to.
	Insecure bool
}

// Main serves the environments as a command with the flags every rollmesh environment server
// has:
//
//	NAME [--host 127.0.0.1] [--port 50051] [--max-episodes 1024] [--idle-timeout 300]
//	     [--max-message-mb 16] [--grace 10] [--nats URL] [--advertise-host HOST]
//	     [--tls-cert FILE --tls-key FILE] [--tls-ca FILE] [--insecure]
//
// The TLS flags default to ROLLMESH_TLS_CERT, ROLLMESH_TLS_KEY and ROLLMESH_TLS_CA. A --host
// other than loopback needs TLS and a CA, or --insecure. Once listening it prints "rollmesh env
// server on HOST:PORT: NAMES" to stderr; on SIGTERM or SIGINT it shuts down gracefully and exits 0.
func Main(envs ...*Environment) {
	host := flag.String("host", "127.0.0.1", "interface to bind")
	port := flag.Int("port", 50051, "port; 0 picks a free one")
	maxEpisodes := flag.Int("max-episodes", DefaultLimits.MaxConcurrentEpisodes, "concurrent episodes before RESOURCE_EXHAUSTED")
	idle := flag.Float64("idle-timeout", DefaultLimits.IdleTimeout.Seconds(), "seconds an episode may wait for the client's next message (0: no limit)")
	maxMB := flag.Float64("max-message-mb", float64(DefaultLimits.MaxMessageBytes)/(1<<20), "largest gRPC message, MiB")
	grace := flag.Float64("grace", 10, "seconds in-flight episodes get to finish on SIGTERM")
	natsURL := flag.String("nats", os.Getenv("ROLLMESH_NATS_URL"), "NATS URL of the registry, e.g. nats://127.0.0.1:4222 (env ROLLMESH_NATS_URL)")
	advertise := flag.String("advertise-host", "", "host other machines reach this server at (registry; default: --host)")
	settings := rollmesh.TLSFlags(flag.CommandLine)
	insecure := flag.Bool("insecure", false, "allow serving a non-loopback address without TLS and caller authentication (warns)")
	flag.Parse()

	if *maxEpisodes < 1 || *idle < 0 || *maxMB <= 0 || *grace < 0 {
		log.Fatalf("--max-episodes must be >= 1, --idle-timeout and --grace >= 0, --max-message-mb > 0")
	}
	limits := Limits{MaxConcurrentEpisodes: *maxEpisodes, IdleTimeout: seconds(*idle), MaxMessageBytes: int(*maxMB * (1 << 20))}
	if *idle == 0 {
		limits.IdleTimeout = NoIdleTimeout
	}
	cfg := Config{Host: *host, Port: *port, Limits: limits, Grace: seconds(*grace), NATS: *natsURL, AdvertiseHost: *advertise,
		TLS: *settings, Insecure: *insecure}
	if err := Run(envs, cfg); err != nil {
		log.Fatal(err)
	}
}

// Run serves the environments until SIGTERM or SIGINT; then it reports NOT_SERVING,
// deregisters, refuses new episodes and gives open ones cfg.Grace before it returns.
func Run(envs []*Environment, cfg Config) error {
	if err := cfg.TLS.Validate(true); err != nil {
		return err
	}
	if err := security.CheckBind(cfg.Host, "environments", cfg.TLS, cfg.Insecure); err != nil {
		return err
	}
	srv, err := New(envs, cfg.Limits, WithTLS(cfg.TLS))
	if err != nil {
		return err
	}
	lis, err := net.Listen("tcp", net.JoinHostPort(cfg.Host, strconv.Itoa(cfg.Port)))
	if err != nil {
		return err
	}
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(lis) }()

	var reg *registry.Registration
	if cfg.NATS != "" {
		settings := cfg.TLS
		nc, err := security.ConnectNATS(cfg.NATS, "rollmesh-env-"+strings.Join(srv.Names(), ","), &settings)
		if err != nil {
			srv.Shutdown(0)
			return err
		}
		defer nc.Close()
		host := cfg.AdvertiseHost
		if host == "" {
			host = cfg.Host
		}
		_, port, _ := net.SplitHostPort(lis.Addr().String())
		if reg, err = registry.Register(nc, 0, srv.records(net.JoinHostPort(host, port))...); err != nil {
			srv.Shutdown(0)
			return err
		}
	}
	fmt.Fprintf(os.Stderr, "rollmesh env server on %s: %s\n", lis.Addr(), strings.Join(srv.Names(), ", "))

	select {
	case err := <-served:
		return err
	case sig := <-signals:
		log.Printf("%s: shutting down, %d episode(s) open, grace %s", sig, srv.ActiveEpisodes(), cfg.Grace)
		srv.Drain()
		if reg != nil {
			if err := reg.Close(); err != nil {
				log.Print(err) // the bucket's TTL expires the records
			}
		}
		srv.Shutdown(cfg.Grace)
		return nil
	}
}

// records are the registry records of the server: one per environment, one instance id.
func (s *Server) records(address string) []*pb.ServiceRecord {
	started := timestamppb.Now()
	records := make([]*pb.ServiceRecord, 0, len(s.service.names))
	for _, name := range s.service.names {
		records = append(records, &pb.ServiceRecord{
			Kind:            pb.ServiceKind_SERVICE_KIND_ENVIRONMENT,
			Name:            name,
			Version:         s.service.envs[name].Version,
			Address:         address,
			Capacity:        int32(s.service.limits.MaxConcurrentEpisodes),
			InstanceId:      s.service.instanceID,
			StartedAt:       started,
			ProtocolVersion: ProtocolVersion,
		})
	}
	return records
}

func seconds(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }
