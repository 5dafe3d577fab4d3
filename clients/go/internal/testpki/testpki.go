// Package testpki makes certificates for tests, of the shape `rollmesh certs init` issues: a CA,
// and per identity a certificate with CN = the name, one OU per role, O = rollmesh; server
// certificates also name <kind>.rollmesh, localhost, 127.0.0.1 and ::1.
package testpki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/rollmesh/rollmesh/clients/go/rollmesh"
)

// CA is a certificate authority in a directory: DIR/ca.pem, and DIR/NAME.pem, DIR/NAME-key.pem
// per identity it issues.
type CA struct {
	Dir  string
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	t    testing.TB
}

// New makes a CA in a fresh temporary directory of the test.
func New(t testing.TB) *CA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	template := &x509.Certificate{
		SerialNumber:          serial(t),
		Subject:               pkix.Name{Organization: []string{"rollmesh"}, CommonName: "rollmesh test CA"},
		NotBefore:             time.Now().Add(-5 * time.Minute),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		MaxPathLenZero:        true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, template, template, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	ca := &CA{Dir: t.TempDir(), cert: cert, key: key, t: t}
	ca.write("ca.pem", "CERTIFICATE", der)
	return ca
}

// Path is DIR/ca.pem.
func (ca *CA) Path() string { return filepath.Join(ca.Dir, "ca.pem") }

// Issue writes a certificate for name with roles; serves lists the service kinds it may serve
// ("env": it names env.rollmesh). It returns the settings of that identity with this CA.
func (ca *CA) Issue(name string, roles []string, serves ...string) rollmesh.TLS {
	t := ca.t
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	template := &x509.Certificate{
		SerialNumber:          serial(t),
		Subject:               pkix.Name{Organization: []string{"rollmesh"}, OrganizationalUnit: roles, CommonName: name},
		NotBefore:             time.Now().Add(-5 * time.Minute),
		NotAfter:              time.Now().Add(24 * time.Hour),
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	if len(serves) > 0 {
		template.ExtKeyUsage = append(template.ExtKeyUsage, x509.ExtKeyUsageServerAuth)
		for _, kind := range serves {
			template.DNSNames = append(template.DNSNames, rollmesh.ServerName(kind))
		}
		template.DNSNames = append(template.DNSNames, "localhost")
		template.IPAddresses = []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}
	}
	der, err := x509.CreateCertificate(rand.Reader, template, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	pkcs8, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	ca.write(name+".pem", "CERTIFICATE", der)
	ca.write(name+"-key.pem", "PRIVATE KEY", pkcs8)
	return ca.Settings(name)
}

// Settings are the TLS settings of an identity issued before.
func (ca *CA) Settings(name string) rollmesh.TLS {
	return rollmesh.TLS{
		Cert: filepath.Join(ca.Dir, name+".pem"),
		Key:  filepath.Join(ca.Dir, name+"-key.pem"),
		CA:   ca.Path(),
	}
}

func (ca *CA) write(name, kind string, der []byte) {
	data := pem.EncodeToMemory(&pem.Block{Type: kind, Bytes: der})
	if err := os.WriteFile(filepath.Join(ca.Dir, name), data, 0o600); err != nil {
		ca.t.Fatal(err)
	}
}

func serial(t testing.TB) *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	if err != nil {
		t.Fatal(err)
	}
	return n
}
