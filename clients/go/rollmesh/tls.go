package rollmesh

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"log"
	"os"
	"sync"
)

// The environment variables of the TLS settings, the same in every rollmesh process.
const (
	EnvTLSCert = "ROLLMESH_TLS_CERT"
	EnvTLSKey  = "ROLLMESH_TLS_KEY"
	EnvTLSCA   = "ROLLMESH_TLS_CA"
)

// ServerNameSuffix: a server certificate for service kind K names K.rollmesh (see ServerName).
const ServerNameSuffix = ".rollmesh"

// ServerName is the name a client checks a server's certificate for: the service's kind ("env",
// "inference", "rubric", "nats"), not its address, so that an address is trusted only if its
// certificate was issued to serve that kind.
func ServerName(kind string) string { return kind + ServerNameSuffix }

// TLS is a process's transport security: PEM files of its certificate and key (who it is) and
// of the CA bundle it trusts. A client with a CA verifies servers against it (else against the
// system's roots) and presents its certificate when it has one; a server with a CA requires
// every caller to present a certificate that CA signed (mutual TLS), whose organizational units
// are the caller's roles. `rollmesh certs init DIR` makes a development CA and certificates.
type TLS struct {
	Cert string // this process's certificate (chain), PEM
	Key  string // the certificate's private key, PEM
	CA   string // the CA bundle that signs peers, PEM
}

// TLSFromEnv reads ROLLMESH_TLS_CERT, ROLLMESH_TLS_KEY and ROLLMESH_TLS_CA.
func TLSFromEnv() TLS {
	return TLS{Cert: os.Getenv(EnvTLSCert), Key: os.Getenv(EnvTLSKey), CA: os.Getenv(EnvTLSCA)}
}

// TLSFlags registers --tls-cert, --tls-key and --tls-ca on fs, with the environment variables
// as defaults; the settings are filled in when fs is parsed.
func TLSFlags(fs *flag.FlagSet) *TLS {
	t := TLSFromEnv()
	fs.StringVar(&t.Cert, "tls-cert", t.Cert, "this process's certificate, PEM; turns TLS on (env "+EnvTLSCert+")")
	fs.StringVar(&t.Key, "tls-key", t.Key, "the certificate's private key, PEM (env "+EnvTLSKey+")")
	fs.StringVar(&t.CA, "tls-ca", t.CA, "CA bundle that signs peers; on a server it turns on mutual TLS (env "+EnvTLSCA+")")
	return &t
}

// Enabled reports whether connections use TLS at all (a certificate or a CA is given).
func (t TLS) Enabled() bool { return t.Cert != "" || t.CA != "" }

// Authenticates reports whether a server with these settings knows who calls it: with a CA it
// requires client certificates.
func (t TLS) Authenticates() bool { return t.CA != "" }

// Validate checks that the settings are complete and their files readable; a server (server
// true) that checks its callers needs a certificate of its own.
func (t TLS) Validate(server bool) error {
	if (t.Cert == "") != (t.Key == "") {
		return errors.New("give both --tls-cert and --tls-key, or neither")
	}
	if server && t.CA != "" && t.Cert == "" {
		return errors.New("a server that checks its callers needs its own certificate: give --tls-cert and --tls-key")
	}
	for _, f := range []struct{ path, what string }{{t.Cert, "certificate"}, {t.Key, "private key"}, {t.CA, "CA bundle"}} {
		if f.path == "" {
			continue
		}
		if _, err := os.ReadFile(f.path); err != nil {
			return fmt.Errorf("cannot read the %s %s: %w", f.what, f.path, err)
		}
	}
	return nil
}

func (t TLS) pool() (*x509.CertPool, error) {
	data, err := os.ReadFile(t.CA)
	if err != nil {
		return nil, fmt.Errorf("cannot read the CA bundle %s: %w", t.CA, err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(data) {
		return nil, fmt.Errorf("the CA bundle %s holds no PEM certificate", t.CA)
	}
	return pool, nil
}

func (t TLS) keyPair() (tls.Certificate, error) {
	pair, err := tls.LoadX509KeyPair(t.Cert, t.Key)
	if err != nil {
		return pair, fmt.Errorf("cannot load the certificate %s with the key %s: %w", t.Cert, t.Key, err)
	}
	return pair, nil
}

// ClientConfig is the tls.Config of a client of a server whose certificate must name
// serverName (ServerName(kind) for a rollmesh service): verified against the CA (else the
// system's roots), presenting the certificate when there is one.
func (t TLS) ClientConfig(serverName string) (*tls.Config, error) {
	if err := t.Validate(false); err != nil {
		return nil, err
	}
	cfg := &tls.Config{ServerName: serverName, MinVersion: tls.VersionTLS12}
	if t.CA != "" {
		pool, err := t.pool()
		if err != nil {
			return nil, err
		}
		cfg.RootCAs = pool
	}
	if t.Cert != "" {
		pair, err := t.keyPair()
		if err != nil {
			return nil, err
		}
		cfg.Certificates = []tls.Certificate{pair}
	}
	return cfg, nil
}

// ServerConfig is the tls.Config of a gRPC server (ALPN h2): its certificate, and with a CA,
// client certificates required and verified against it. The files are read again when they
// change (checked at each new handshake), so rotating a certificate is replacing its files; a
// change that does not load keeps the current settings and is logged.
func (t TLS) ServerConfig() (*tls.Config, error) {
	if err := t.Validate(true); err != nil {
		return nil, err
	}
	if t.Cert == "" {
		return nil, errors.New("a TLS server needs a certificate: give --tls-cert and --tls-key")
	}
	r := &reloading{settings: t}
	stamp := r.stamp()
	cfg, err := r.load()
	if err != nil {
		return nil, err
	}
	r.current, r.stamped = cfg, stamp
	return &tls.Config{MinVersion: tls.VersionTLS12, NextProtos: []string{"h2"}, GetConfigForClient: r.forClient}, nil
}

// reloading holds a server's current tls.Config and the files' state it was loaded from.
type reloading struct {
	settings TLS
	mu       sync.Mutex
	current  *tls.Config
	stamped  string
}

func (r *reloading) stamp() string {
	var s string
	for _, path := range []string{r.settings.Cert, r.settings.Key, r.settings.CA} {
		if path == "" {
			continue
		}
		if info, err := os.Stat(path); err == nil {
			s += fmt.Sprintf("%s:%d:%d;", path, info.ModTime().UnixNano(), info.Size())
		} else {
			s += path + ":missing;"
		}
	}
	return s
}

func (r *reloading) load() (*tls.Config, error) {
	pair, err := r.settings.keyPair()
	if err != nil {
		return nil, err
	}
	cfg := &tls.Config{
		MinVersion:   tls.VersionTLS12,
		NextProtos:   []string{"h2"},
		Certificates: []tls.Certificate{pair},
		ClientAuth:   tls.NoClientCert,
	}
	if r.settings.CA != "" {
		if cfg.ClientCAs, err = r.settings.pool(); err != nil {
			return nil, err
		}
		cfg.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return cfg, nil
}

func (r *reloading) forClient(*tls.ClientHelloInfo) (*tls.Config, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	stamp := r.stamp()
	if stamp == r.stamped {
		return r.current, nil
	}
	cfg, err := r.load()
	if err != nil { // half-written files, say: try again at the next handshake
		log.Printf("could not reload the TLS certificate; keeping the current one: %v", err)
		return r.current, nil
	}
	log.Printf("TLS certificate reloaded from %s", r.settings.Cert)
	r.current, r.stamped = cfg, stamp
	return cfg, nil
}
