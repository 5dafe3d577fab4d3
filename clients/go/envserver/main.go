package envserver

import (
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

// Main serves the environments as a command:
//
//	NAME-server [--host 127.0.0.1] [--port 50051] [--max-episodes 1024] [--idle-timeout 300] [--grace 10]
//
// Once listening it prints "rollmesh env server on HOST:PORT: NAMES" to stderr; on SIGTERM or
// SIGINT it shuts down gracefully and exits 0.
func Main(envs ...*Environment) {
	host := flag.String("host", "127.0.0.1", "address to listen on")
	port := flag.Int("port", 50051, "port to listen on (0: any free port)")
	maxEpisodes := flag.Int("max-episodes", DefaultLimits.MaxConcurrentEpisodes, "maximum concurrent episodes")
	idle := flag.Float64("idle-timeout", DefaultLimits.IdleTimeout.Seconds(), "seconds an episode may wait for the client")
	maxBytes := flag.Int("max-message-bytes", DefaultLimits.MaxMessageBytes, "maximum gRPC message size")
	grace := flag.Float64("grace", 10, "seconds open episodes get to finish on shutdown")
	flag.Parse()

	limits := Limits{
		MaxConcurrentEpisodes: *maxEpisodes,
		IdleTimeout:           seconds(*idle),
		MaxMessageBytes:       *maxBytes,
	}
	if err := Run(envs, *host, *port, limits, seconds(*grace)); err != nil {
		log.Fatal(err)
	}
}

// Run serves the environments on host:port until SIGTERM or SIGINT.
func Run(envs []*Environment, host string, port int, limits Limits, grace time.Duration) error {
	srv, err := New(envs, limits)
	if err != nil {
		return err
	}
	lis, err := net.Listen("tcp", net.JoinHostPort(host, fmt.Sprint(port)))
	if err != nil {
		return err
	}
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(lis) }()
	fmt.Fprintf(os.Stderr, "rollmesh env server on %s: %s\n", lis.Addr(), strings.Join(srv.Names(), ", "))

	select {
	case err := <-served:
		return err
	case sig := <-signals:
		log.Printf("%s: shutting down, %d episode(s) open, grace %s", sig, srv.ActiveEpisodes(), grace)
		srv.Shutdown(grace)
		return nil
	}
}

func seconds(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }
