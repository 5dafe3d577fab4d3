package registry_test

import (
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/rollmesh/rollmesh/clients/go/internal/testpki"
	"github.com/rollmesh/rollmesh/clients/go/internal/testservers"
	"github.com/rollmesh/rollmesh/clients/go/registry"
	"github.com/rollmesh/rollmesh/clients/go/rollmesh"
	pb "github.com/rollmesh/rollmesh/clients/go/rollmeshv1"
	"github.com/rollmesh/rollmesh/clients/go/security"
)

func record(name string) *pb.ServiceRecord {
	return &pb.ServiceRecord{
		Kind: pb.ServiceKind_SERVICE_KIND_ENVIRONMENT, Name: name, Version: "0.1.0",
		Address: "127.0.0.1:50051", Capacity: 8, InstanceId: "abc123",
	}
}

func TestRegisterHeartbeatAndDeregister(t *testing.T) {
	nc, err := nats.Connect(testservers.NATS(t))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()

	// The first user creates the bucket with its TTL; later ones keep it.
	reg, err := registry.Register(nc, 1500*time.Millisecond, record("maze"), record("reverse"))
	if err != nil {
		t.Fatal(err)
	}
	if keys := reg.Keys(); len(keys) != 2 || keys[0] != "environment.maze.abc123" {
		t.Errorf("keys %v", keys)
	}
	if _, ttl, err := registry.Open(nc, time.Hour); err != nil || ttl != 1500*time.Millisecond {
		t.Errorf("the bucket's TTL: %v %v", ttl, err)
	}

	records, err := registry.List(nc, pb.ServiceKind_SERVICE_KIND_ENVIRONMENT, "")
	if err != nil || len(records) != 2 {
		t.Fatalf("listed %v %v", records, err)
	}
	first := records[0]
	if first.Name != "maze" || first.ProtocolVersion != "v1" || first.StartedAt == nil || first.HeartbeatAt == nil || first.Capacity != 8 {
		t.Errorf("record %v", first)
	}

	time.Sleep(3 * time.Second) // two TTLs: only the heartbeat keeps the records
	records, err = registry.List(nc, pb.ServiceKind_SERVICE_KIND_ENVIRONMENT, "maze")
	if err != nil || len(records) != 1 || !records[0].HeartbeatAt.AsTime().After(first.HeartbeatAt.AsTime()) ||
		!records[0].StartedAt.AsTime().Equal(first.StartedAt.AsTime()) {
		t.Fatalf("after two TTLs: %v %v", records, err)
	}
	if none, err := registry.List(nc, pb.ServiceKind_SERVICE_KIND_INFERENCE, ""); err != nil || len(none) != 0 {
		t.Errorf("inference servers %v %v", none, err)
	}

	if err := reg.Close(); err != nil {
		t.Fatal(err)
	}
	if left, err := registry.List(nc, pb.ServiceKind_SERVICE_KIND_UNSPECIFIED, ""); err != nil || len(left) != 0 {
		t.Errorf("after deregistering: %v %v", left, err)
	}
}

func TestExpiredWithoutHeartbeat(t *testing.T) {
	nc, err := nats.Connect(testservers.NATS(t))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	kv, _, err := registry.Open(nc, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Put("environment.dead.x1", []byte{}); err != nil { // a server that died at once
		t.Fatal(err)
	}
	time.Sleep(2 * time.Second)
	if left, err := registry.List(nc, pb.ServiceKind_SERVICE_KIND_UNSPECIFIED, ""); err != nil || len(left) != 0 {
		t.Errorf("expired records listed: %v %v", left, err)
	}
}

func TestKeys(t *testing.T) {
	if key, err := registry.Key(record("a/b-c_d=e")); err != nil || key != "environment.a/b-c_d=e.abc123" {
		t.Errorf("key %q %v", key, err)
	}
	bad := []*pb.ServiceRecord{record("a.b"), record("with space"), record(""), {Name: "x", InstanceId: "y"}}
	for _, r := range bad {
		if key, err := registry.Key(r); err == nil {
			t.Errorf("key %q for %v", key, r)
		}
	}
}

func TestRegisterOverTLSWithAClientCertificate(t *testing.T) {
	ca := testpki.New(t)
	server := ca.Issue("nats", nil, "nats")
	env := ca.Issue("env", []string{security.RoleServer}, "env")
	url := testservers.SecureNATS(t, server.Cert, server.Key, server.CA)

	nc, err := security.ConnectNATS(url, "registry-test", &env)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	if !nc.TLSRequired() {
		t.Error("the connection is not over TLS")
	}
	reg, err := registry.Register(nc, 0, record("maze"))
	if err != nil {
		t.Fatal(err)
	}
	records, err := registry.List(nc, pb.ServiceKind_SERVICE_KIND_ENVIRONMENT, "maze")
	if err != nil || len(records) != 1 {
		t.Errorf("listed %v %v", records, err)
	}
	if err := reg.Close(); err != nil {
		t.Error(err)
	}

	// no client certificate, another CA's, or none of TLS: no connection
	other := testpki.New(t)
	foreign := other.Issue("env", []string{security.RoleServer}, "env")
	foreign.CA = ca.Path()
	for what, settings := range map[string]*rollmesh.TLS{
		"no client certificate":    {CA: ca.Path()},
		"another CA's certificate": &foreign,
		"plaintext":                {},
	} {
		if nc, err := security.ConnectNATS(url, "registry-test", settings, nats.Timeout(2*time.Second)); err == nil {
			// with TLS 1.3 the server may refuse the certificate after the client's handshake
			if _, err := nc.Request("x", nil, 2*time.Second); err == nil || nc.IsConnected() {
				t.Errorf("%s: connected (%v)", what, err)
			}
			nc.Close()
		}
	}
}
