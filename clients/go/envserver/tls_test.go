package envserver

import (
	"bytes"
	"context"
	"log"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rollmesh/rollmesh/clients/go/internal/testpki"
	"github.com/rollmesh/rollmesh/clients/go/rollmesh"
	pb "github.com/rollmesh/rollmesh/clients/go/rollmeshv1"
	"github.com/rollmesh/rollmesh/clients/go/security"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	rpb "google.golang.org/grpc/reflection/grpc_reflection_v1alpha"
	"google.golang.org/grpc/status"
)

// syncBuffer collects audit lines written from the server's goroutines.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// mesh is a CA with the identities the tests use.
func mesh(t *testing.T) *testpki.CA {
	ca := testpki.New(t)
	ca.Issue("env", []string{security.RoleServer}, "env")
	ca.Issue("orchestrator", []string{security.RoleOrchestrator})
	ca.Issue("reader", []string{security.RoleReader})
	ca.Issue("publisher", []string{security.RolePublisher})
	return ca
}

// serveTLS serves the counter with settings on a loopback port; the audit lines go to the buffer.
func serveTLS(t *testing.T, settings rollmesh.TLS) (string, *syncBuffer) {
	t.Helper()
	audit := &syncBuffer{}
	srv, err := New([]*Environment{counter(nil)}, Limits{}, WithTLS(settings),
		WithAuthorizer(&security.Authorizer{Audit: log.New(audit, "", 0)}))
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(lis)
	t.Cleanup(func() { srv.Shutdown(0) })
	return lis.Addr().String(), audit
}

func dialAs(t *testing.T, address string, settings rollmesh.TLS, timeout time.Duration) (*rollmesh.EnvClient, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	client, err := rollmesh.DialEnv(ctx, address, rollmesh.Options{TLS: &settings})
	if err == nil {
		t.Cleanup(func() { client.Close() })
	}
	return client, err
}

func TestMutualTLSAndRoles(t *testing.T) {
	ca := mesh(t)
	address, audit := serveTLS(t, ca.Settings("env"))
	ctx := ctxFor(t)

	// the orchestrator may do everything an episode needs
	orchestrator, err := dialAs(t, address, ca.Settings("orchestrator"), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := orchestrator.Describe(ctx); err != nil {
		t.Fatal(err)
	}
	ep, err := orchestrator.StartTask(ctx, "counter", "t001", "")
	if err != nil {
		t.Fatal(err)
	}
	if last, err := ep.Reply("stop"); err != nil || !last.Done {
		t.Fatalf("step %v %v", last, err)
	}
	ep.Close()
	if _, err := orchestrator.Score(ctx, "counter", &pb.Task{TaskId: "t001"}, ep.Messages(), nil); err != nil {
		t.Errorf("Score as orchestrator: %v", err)
	}

	// a reader may look, not play
	reader, err := dialAs(t, address, ca.Settings("reader"), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := reader.Describe(ctx); err != nil {
		t.Errorf("Describe as reader: %v", err)
	}
	if tasks, err := reader.ListTasks(ctx, "counter", "test"); err != nil || len(tasks) != 5 {
		t.Errorf("ListTasks as reader: %d %v", len(tasks), err)
	}
	_, err = reader.StartTask(ctx, "counter", "t001", "")
	info := rollmesh.ErrorInfo(err)
	if status.Code(err) != codes.PermissionDenied || rollmesh.Reason(err) != pb.ErrorReason_MISSING_ROLE || info == nil {
		t.Fatalf("Episode as reader: %v", err)
	}
	if info.Metadata["identity"] != "reader" || info.Metadata["required"] != "orchestrator" {
		t.Errorf("ErrorInfo metadata %v", info.Metadata)
	}
	want := "'reader' may not call /rollmesh.v1.EnvironmentService/Episode: it needs one of the roles orchestrator"
	if msg := status.Convert(err).Message(); msg != want {
		t.Errorf("message %q", msg)
	}
	if _, err := reader.Score(ctx, "counter", &pb.Task{TaskId: "t001"}, nil, nil); rollmesh.Reason(err) != pb.ErrorReason_MISSING_ROLE {
		t.Errorf("Score as reader: %v", err)
	}
	if line := "audit: access denied: /rollmesh.v1.EnvironmentService/Episode by reader from 127.0.0.1:"; !strings.Contains(audit.String(), line) ||
		!strings.Contains(audit.String(), "(MISSING_ROLE)") {
		t.Errorf("audit log %q", audit.String())
	}

	// health is open to any certificate of the CA; reflection is not
	publisher, err := dialAs(t, address, ca.Settings("publisher"), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := ca.Settings("publisher").ClientConfig(rollmesh.ServerName("env"))
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.DialContext(ctx, address, grpc.WithTransportCredentials(credentials.NewTLS(cfg)), grpc.WithBlock())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	health := healthpb.NewHealthClient(conn)
	if resp, err := health.Check(ctx, &healthpb.HealthCheckRequest{Service: ServiceName}); err != nil || resp.Status != healthpb.HealthCheckResponse_SERVING {
		t.Errorf("health as publisher: %v %v", resp, err)
	}
	stream, err := rpb.NewServerReflectionClient(conn).ServerReflectionInfo(ctx)
	if err == nil {
		_, err = stream.Recv()
	}
	if rollmesh.Reason(err) != pb.ErrorReason_MISSING_ROLE {
		t.Errorf("reflection as publisher: %v", err)
	}
	if _, err := publisher.Describe(ctx); rollmesh.Reason(err) != pb.ErrorReason_MISSING_ROLE {
		t.Errorf("Describe as publisher: %v", err)
	}
}

// refused checks that no call gets through a connection made with settings.
func refused(t *testing.T, what, address string, settings rollmesh.TLS) error {
	t.Helper()
	client, err := dialAs(t, address, settings, time.Second)
	if err != nil {
		return err // the handshake failed: TLS 1.2, or a certificate the client does not trust
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err = client.Describe(ctx)
	if err == nil {
		t.Errorf("%s: Describe answered", what)
	}
	return err
}

func TestConnectionsWithoutATrustedCertificateAreRefused(t *testing.T) {
	ca := mesh(t)
	address, _ := serveTLS(t, ca.Settings("env"))
	other := testpki.New(t)
	other.Issue("orchestrator", []string{security.RoleOrchestrator})

	noCert := rollmesh.TLS{CA: ca.Path()}
	if err := refused(t, "no client certificate", address, noCert); err == nil {
		t.Error("a client without a certificate was answered")
	}
	foreign := other.Settings("orchestrator")
	foreign.CA = ca.Path() // trusts the server, but its certificate is another CA's
	if err := refused(t, "another CA's certificate", address, foreign); err == nil {
		t.Error("another CA's certificate was accepted")
	}
	plain := rollmesh.TLS{}
	if err := refused(t, "plaintext", address, plain); err == nil {
		t.Error("a plaintext client was answered")
	}
	// the client checks the server: a certificate that names env.rollmesh, from the CA it trusts
	wrongName := ca.Settings("orchestrator")
	_, err := rollmesh.DialEnv(context.Background(), address, rollmesh.Options{TLS: &wrongName, ServerName: "inference.rollmesh", ConnectTimeout: time.Second})
	if err == nil || !strings.Contains(err.Error(), "inference.rollmesh") {
		t.Errorf("a server certificate for another kind was accepted: %v", err)
	}
	distrust := other.Settings("orchestrator")
	_, err = rollmesh.DialEnv(context.Background(), address, rollmesh.Options{TLS: &distrust, ConnectTimeout: time.Second})
	if err == nil || !strings.Contains(err.Error(), "certificate signed by unknown authority") {
		t.Errorf("a server certificate of an untrusted CA was accepted: %v", err)
	}
}

func TestTLSWithoutACAChecksNoRoles(t *testing.T) {
	ca := mesh(t)
	env := ca.Settings("env")
	address, _ := serveTLS(t, rollmesh.TLS{Cert: env.Cert, Key: env.Key})
	client, err := dialAs(t, address, rollmesh.TLS{CA: ca.Path()}, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	// WithAuthorizer is given: without client certificates, only open methods get through
	if _, err := client.Describe(ctxFor(t)); rollmesh.Reason(err) != pb.ErrorReason_NO_CREDENTIALS || status.Code(err) != codes.Unauthenticated {
		t.Errorf("Describe without a certificate: %v", err)
	}
	srv, err := New([]*Environment{counter(nil)}, Limits{}, WithTLS(rollmesh.TLS{Cert: env.Cert, Key: env.Key}))
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(lis)
	defer srv.Shutdown(0)
	client, err = dialAs(t, lis.Addr().String(), rollmesh.TLS{CA: ca.Path()}, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := client.Describe(ctxFor(t)); err != nil {
		t.Errorf("Describe over TLS without a CA on the server: %v", err)
	}
}

func TestTheCertificateIsReloadedWhenItsFilesChange(t *testing.T) {
	ca := mesh(t)
	ca.Issue("env", []string{security.RoleServer}, "inference") // a certificate for the wrong kind
	address, _ := serveTLS(t, ca.Settings("env"))
	orchestrator := ca.Settings("orchestrator")
	if _, err := rollmesh.DialEnv(context.Background(), address, rollmesh.Options{TLS: &orchestrator, ConnectTimeout: time.Second}); err == nil {
		t.Fatal("a certificate for inference.rollmesh served env")
	}
	ca.Issue("env", []string{security.RoleServer}, "env")
	later := time.Now().Add(time.Second)
	for _, f := range []string{ca.Settings("env").Cert, ca.Settings("env").Key} {
		if err := os.Chtimes(f, later, later); err != nil {
			t.Fatal(err)
		}
	}
	client, err := dialAs(t, address, orchestrator, 5*time.Second)
	if err != nil {
		t.Fatalf("after the certificate changed: %v", err)
	}
	if _, err := client.Describe(ctxFor(t)); err != nil {
		t.Error(err)
	}
}

func TestRunRefusesAnExposedAddressWithoutMutualTLS(t *testing.T) {
	err := Run([]*Environment{counter(nil)}, Config{Host: "0.0.0.0", Port: 0})
	if err == nil || !strings.Contains(err.Error(), "refusing to serve environments on 0.0.0.0 without TLS and caller authentication") {
		t.Errorf("Run on 0.0.0.0 without TLS: %v", err)
	}
	ca := mesh(t)
	env := ca.Settings("env")
	err = Run([]*Environment{counter(nil)}, Config{Host: "0.0.0.0", Port: 0, TLS: rollmesh.TLS{Cert: env.Cert, Key: env.Key}})
	if err == nil || !strings.Contains(err.Error(), "without caller authentication (--tls-ca)") {
		t.Errorf("Run on 0.0.0.0 with TLS and no CA: %v", err)
	}
	err = Run([]*Environment{counter(nil)}, Config{Port: 0, TLS: rollmesh.TLS{CA: env.CA}})
	if err == nil || !strings.Contains(err.Error(), "needs its own certificate") {
		t.Errorf("Run with a CA and no certificate: %v", err)
	}
	err = Run([]*Environment{counter(nil)}, Config{Port: 0, TLS: rollmesh.TLS{Cert: env.Cert}})
	if err == nil || !strings.Contains(err.Error(), "give both --tls-cert and --tls-key") {
		t.Errorf("Run with a certificate and no key: %v", err)
	}
}
