package security

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"log"
	"net"
	"os"
	"strings"
	"testing"

	"github.com/rollmesh/rollmesh/clients/go/internal/testpki"
	"github.com/rollmesh/rollmesh/clients/go/rollmesh"
	pb "github.com/rollmesh/rollmesh/clients/go/rollmeshv1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

const (
	describe = "/rollmesh.v1.EnvironmentService/Describe"
	episode  = "/rollmesh.v1.EnvironmentService/Episode"
)

func TestRoleTable(t *testing.T) {
	cases := []struct {
		method string
		roles  []string
		allow  bool
	}{
		{describe, []string{RoleOrchestrator}, true},
		{describe, []string{RoleReader}, true},
		{describe, []string{RoleTrainer}, false},
		{episode, []string{RoleOrchestrator}, true},
		{episode, []string{RoleReader}, false},
		{episode, []string{RoleServer}, false},
		{episode, []string{RoleReader, RoleOrchestrator}, true},
		{episode, nil, false},
		{episode, []string{RoleOperator}, true},
		{"/rollmesh.v1.EnvironmentService/Score", []string{RoleOrchestrator}, true},
		{"/rollmesh.v1.EnvironmentService/RunEpisode", []string{RoleReader}, false},
		{"/rollmesh.v1.EnvironmentService/ListTasks", []string{RoleReader}, true},
		{"/grpc.health.v1.Health/Check", nil, true},
		{"/grpc.health.v1.Health/Watch", nil, true},
		{"/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", []string{RoleTrainer}, true},
		{"/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", []string{RolePublisher}, false},
		{"/rollmesh.v1.InferenceService/UpdateWeights", []string{RoleOrchestrator}, false},
		{"/rollmesh.v1.InferenceService/UpdateWeights", []string{RoleTrainer}, true},
		// a method nobody listed: operators only
		{"/rollmesh.v1.EnvironmentService/Unlisted", []string{RoleOrchestrator, RoleReader, RoleTrainer}, false},
		{"/rollmesh.v1.EnvironmentService/Unlisted", []string{RoleOperator}, true},
	}
	for _, c := range cases {
		required, known := RequiredRoles(c.method)
		if got := Allows(c.roles, required, known); got != c.allow {
			t.Errorf("%v calling %s: allowed %t, want %t", c.roles, c.method, got, c.allow)
		}
	}
	for method, roles := range MethodRoles {
		for _, r := range roles {
			if !isRole(r) {
				t.Errorf("%s lists the unknown role %q", method, r)
			}
		}
	}
}

// called is ctx as a server sees a call from a peer that showed cert (nil: none).
func called(cert *x509.Certificate) context.Context {
	state := tls.ConnectionState{}
	if cert != nil {
		state.VerifiedChains = [][]*x509.Certificate{{cert}}
		state.PeerCertificates = []*x509.Certificate{cert}
	}
	addr := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 40000}
	return peer.NewContext(context.Background(), &peer.Peer{Addr: addr, AuthInfo: credentials.TLSInfo{State: state}})
}

func certificate(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(data)
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

func TestIdentityFromTheCertificate(t *testing.T) {
	ca := testpki.New(t)
	cert := certificate(t, ca.Issue("rubric", []string{RoleServer, RoleOrchestrator, "sales"}, "rubric").Cert)
	id := IdentityFromCertificate(cert)
	if id.Name != "rubric" || strings.Join(id.Roles, ",") != "server,orchestrator" {
		t.Errorf("identity %+v: want rubric with roles server, orchestrator (OUs that are no role are ignored)", id)
	}
	if got, ok := PeerIdentity(called(cert)); !ok || got.Name != "rubric" {
		t.Errorf("peer identity %+v %t", got, ok)
	}
	if _, ok := PeerIdentity(called(nil)); ok {
		t.Error("a peer without a verified certificate has an identity")
	}
	if _, ok := PeerIdentity(context.Background()); ok {
		t.Error("a context without a peer has an identity")
	}
}

func TestCheckRefusesWithReasonsAndAudits(t *testing.T) {
	ca := testpki.New(t)
	reader := certificate(t, ca.Issue("reader", []string{RoleReader}).Cert)
	orchestrator := certificate(t, ca.Issue("orchestrator", []string{RoleOrchestrator}).Cert)
	operator := certificate(t, ca.Issue("operator", []string{RoleOperator}).Cert)
	var audit bytes.Buffer
	a := &Authorizer{Audit: log.New(&audit, "", 0)}

	// a known identity without the role: PERMISSION_DENIED, MISSING_ROLE, who and what
	_, _, err := a.Check(called(reader), episode)
	info := rollmesh.ErrorInfo(err)
	if status.Code(err) != codes.PermissionDenied || rollmesh.Reason(err) != pb.ErrorReason_MISSING_ROLE || info == nil {
		t.Fatalf("reader calling Episode: %v", err)
	}
	if info.Metadata["identity"] != "reader" || info.Metadata["required"] != "orchestrator" || info.Domain != "rollmesh.dev" {
		t.Errorf("ErrorInfo %v", info)
	}
	want := "'reader' may not call /rollmesh.v1.EnvironmentService/Episode: it needs one of the roles orchestrator"
	if msg := status.Convert(err).Message(); msg != want {
		t.Errorf("message %q, want %q", msg, want)
	}
	line := "audit: access denied: /rollmesh.v1.EnvironmentService/Episode by reader from 127.0.0.1:40000 (MISSING_ROLE)\n"
	if audit.String() != line {
		t.Errorf("audit log %q, want %q", audit.String(), line)
	}

	// no certificate: UNAUTHENTICATED, NO_CREDENTIALS
	audit.Reset()
	_, _, err = a.Check(called(nil), describe)
	if status.Code(err) != codes.Unauthenticated || rollmesh.Reason(err) != pb.ErrorReason_NO_CREDENTIALS {
		t.Errorf("no certificate: %v", err)
	}
	if !strings.Contains(audit.String(), "access denied: "+describe+" by unknown from 127.0.0.1:40000 (NO_CREDENTIALS)") {
		t.Errorf("audit log %q", audit.String())
	}

	// an unlisted method names operator as the role it needs
	_, _, err = a.Check(called(orchestrator), "/rollmesh.v1.EnvironmentService/Unlisted")
	if info := rollmesh.ErrorInfo(err); info == nil || info.Metadata["required"] != "operator" {
		t.Errorf("unlisted method: %v", err)
	}

	// allowed: no error, no audit line, the identity
	audit.Reset()
	for _, c := range []struct {
		cert   *x509.Certificate
		method string
	}{{reader, describe}, {orchestrator, episode}, {operator, episode}, {operator, "/x.Y/Z"}} {
		id, ok, err := a.Check(called(c.cert), c.method)
		if err != nil || !ok || id.Name != c.cert.Subject.CommonName {
			t.Errorf("%s calling %s: %+v %t %v", c.cert.Subject.CommonName, c.method, id, ok, err)
		}
	}
	// open: health needs no identity
	if _, ok, err := a.Check(called(nil), "/grpc.health.v1.Health/Check"); err != nil || ok {
		t.Errorf("health without a certificate: %t %v", ok, err)
	}
	if audit.Len() != 0 {
		t.Errorf("audit lines for allowed calls: %q", audit.String())
	}
	// calls only trainers may make are logged when allowed
	trainer := certificate(t, ca.Issue("trainer", []string{RoleTrainer}).Cert)
	if _, _, err := a.Check(called(trainer), "/rollmesh.v1.InferenceService/UpdateWeights"); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(audit.String(), "access granted: /rollmesh.v1.InferenceService/UpdateWeights by trainer") {
		t.Errorf("audit log %q", audit.String())
	}
}

func TestInterceptorsPassTheCaller(t *testing.T) {
	ca := testpki.New(t)
	reader := certificate(t, ca.Issue("reader", []string{RoleReader}).Cert)
	a := &Authorizer{Audit: log.New(&bytes.Buffer{}, "", 0)}
	var seen Identity
	handler := func(ctx context.Context, _ interface{}) (interface{}, error) {
		seen, _ = Caller(ctx)
		return "ok", nil
	}
	unary := a.UnaryInterceptor()
	if _, err := unary(called(reader), nil, &grpc.UnaryServerInfo{FullMethod: describe}, handler); err != nil || seen.Name != "reader" {
		t.Errorf("Describe: %v, caller %+v", err, seen)
	}
	ran := false
	refused := func(context.Context, interface{}) (interface{}, error) { ran = true; return nil, nil }
	if _, err := unary(called(reader), nil, &grpc.UnaryServerInfo{FullMethod: episode}, refused); status.Code(err) != codes.PermissionDenied || ran {
		t.Errorf("a refused call ran (%t) or was not refused: %v", ran, err)
	}
	stream := a.StreamInterceptor()
	streamed := func(_ interface{}, ss grpc.ServerStream) error {
		seen, _ = Caller(ss.Context())
		ran = true
		return nil
	}
	seen, ran = Identity{}, false
	if err := stream(nil, fakeStream{called(reader)}, &grpc.StreamServerInfo{FullMethod: "/rollmesh.v1.EnvironmentService/ListTasks"}, streamed); err != nil || seen.Name != "reader" {
		t.Errorf("ListTasks: %v, caller %+v", err, seen)
	}
	ran = false
	if err := stream(nil, fakeStream{called(reader)}, &grpc.StreamServerInfo{FullMethod: episode}, streamed); status.Code(err) != codes.PermissionDenied || ran {
		t.Errorf("a refused stream ran (%t) or was not refused: %v", ran, err)
	}
}

type fakeStream struct{ ctx context.Context }

func (f fakeStream) Context() context.Context   { return f.ctx }
func (fakeStream) SetHeader(metadata.MD) error  { return nil }
func (fakeStream) SendHeader(metadata.MD) error { return nil }
func (fakeStream) SetTrailer(metadata.MD)       {}
func (fakeStream) SendMsg(interface{}) error    { return nil }
func (fakeStream) RecvMsg(interface{}) error    { return nil }

func TestQuotedNames(t *testing.T) {
	for name, want := range map[string]string{
		"reader":  "'reader'",
		"o'brien": `"o'brien"`,
		"a\nb":    `"a\nb"`,
		"ünïcödé": "'ünïcödé'",
	} {
		if got := quoted(name); got != want {
			t.Errorf("quoted(%q) = %s, want %s", name, got, want)
		}
	}
	if got := quoted(strings.Repeat("x", 100)); !strings.HasSuffix(got, "... (100 bytes)") {
		t.Errorf("a long name: %s", got)
	}
}

func TestCheckBind(t *testing.T) {
	ca := testpki.New(t)
	secure := ca.Issue("env", []string{RoleServer}, "env")
	tlsOnly := rollmesh.TLS{Cert: secure.Cert, Key: secure.Key}
	for _, host := range []string{"127.0.0.1", "localhost", "::1", "[::1]", "127.0.0.2"} {
		if err := CheckBind(host, "environments", rollmesh.TLS{}, false); err != nil {
			t.Errorf("loopback %s refused: %v", host, err)
		}
	}
	for _, host := range []string{"0.0.0.0", "", "::", "192.0.2.1"} {
		err := CheckBind(host, "environments", rollmesh.TLS{}, false)
		if err == nil || !strings.Contains(err.Error(), "without TLS and caller authentication") || !strings.Contains(err.Error(), "--insecure") {
			t.Errorf("%q without TLS: %v", host, err)
		}
		if err := CheckBind(host, "environments", tlsOnly, false); err == nil || !strings.Contains(err.Error(), "without caller authentication (--tls-ca)") {
			t.Errorf("%q with TLS and no CA: %v", host, err)
		}
		if err := CheckBind(host, "environments", secure, false); err != nil {
			t.Errorf("%q with mutual TLS: %v", host, err)
		}
		if err := CheckBind(host, "environments", rollmesh.TLS{}, true); err != nil {
			t.Errorf("%q with --insecure: %v", host, err)
		}
	}
}
