package security

import (
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/rollmesh/rollmesh/clients/go/rollmesh"
)

// NATSOptions are the options of a NATS connection with these TLS settings: none when TLS is
// off; else the server is verified against the CA (the URL's host must be one its certificate
// names) and the certificate is presented, which a mesh's nats-server maps to a user with the
// certificate's roles' permissions (verify_and_map).
func NATSOptions(settings rollmesh.TLS) ([]nats.Option, error) {
	if !settings.Enabled() {
		return nil, nil
	}
	if err := settings.Validate(false); err != nil {
		return nil, err
	}
	var opts []nats.Option
	if settings.CA != "" {
		opts = append(opts, nats.RootCAs(settings.CA))
	}
	if settings.Cert != "" {
		opts = append(opts, nats.ClientCert(settings.Cert, settings.Key))
	}
	return opts, nil
}

// ConnectNATS connects to the NATS server(s) at url (comma-separated) with the TLS settings
// (nil: from the environment, rollmesh.TLSFromEnv), failing when the first connect does; once
// connected it reconnects forever. opts come last and may override these.
func ConnectNATS(url, name string, settings *rollmesh.TLS, opts ...nats.Option) (*nats.Conn, error) {
	t := rollmesh.TLSFromEnv()
	if settings != nil {
		t = *settings
	}
	secure, err := NATSOptions(t)
	if err != nil {
		return nil, err
	}
	all := append([]nats.Option{nats.Name(name), nats.MaxReconnects(-1), nats.ReconnectWait(500 * time.Millisecond)}, secure...)
	nc, err := nats.Connect(url, append(all, opts...)...)
	if err != nil {
		return nil, fmt.Errorf("cannot reach NATS at %s: %w; is nats-server running?", url, err)
	}
	return nc, nil
}
