package security

import (
	"fmt"
	"log"
	"net"
	"strings"

	"github.com/rollmesh/rollmesh/clients/go/rollmesh"
)

// IsLoopback reports whether host (a name or an address; "" is every interface) reaches this
// machine only.
func IsLoopback(host string) bool {
	if host == "" {
		return false
	}
	if host == "localhost" {
		return true
	}
	if ip := net.ParseIP(strings.Trim(host, "[]")); ip != nil {
		return ip.IsLoopback()
	}
	addrs, err := net.LookupIP(host)
	if err != nil || len(addrs) == 0 {
		return false
	}
	for _, ip := range addrs {
		if !ip.IsLoopback() {
			return false
		}
	}
	return true
}

// CheckBind refuses to serve what (e.g. "environments") on host beyond this machine without
// TLS and caller authentication (a CA), unless insecure, which only logs a warning.
func CheckBind(host, what string, settings rollmesh.TLS, insecure bool) error {
	if IsLoopback(host) || (settings.Enabled() && settings.Authenticates()) {
		return nil
	}
	missing := "TLS and caller authentication"
	if settings.Enabled() {
		missing = "caller authentication (--tls-ca)"
	}
	shown := host
	if shown == "" {
		shown = "every interface"
	}
	if !insecure {
		return fmt.Errorf("refusing to serve %s on %s without %s: anyone who reaches the address could use it. "+
			"Give --tls-cert/--tls-key/--tls-ca (`rollmesh certs init` makes them), or --insecure to accept the risk",
			what, shown, missing)
	}
	log.Printf("serving %s on %s without %s (--insecure): anyone who reaches it can use it", what, shown, missing)
	return nil
}
