package rollmesh_test

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rollmesh/rollmesh/clients/go/internal/testservers"
	"github.com/rollmesh/rollmesh/clients/go/rollmesh"
	pb "github.com/rollmesh/rollmesh/clients/go/rollmeshv1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// The Python reference server hosts arithmetic with mutual TLS: its certificate names
// env.rollmesh, and it requires client certificates of the same CA.

// identity is the TLS settings of an identity of the certificates directory.
func identity(dir, name string) *rollmesh.TLS {
	return &rollmesh.TLS{
		Cert: filepath.Join(dir, name+".pem"),
		Key:  filepath.Join(dir, name+"-key.pem"),
		CA:   filepath.Join(dir, "ca.pem"),
	}
}

func TestMutualTLSWithThePythonServer(t *testing.T) {
	address := testservers.Address(t, testservers.TLSEnvAddress)
	dir := testservers.Address(t, testservers.CertsDir)
	ctx := testservers.Context(t)

	// the settings from the environment, as every rollmesh process reads them
	t.Setenv(rollmesh.EnvTLSCert, filepath.Join(dir, "orchestrator.pem"))
	t.Setenv(rollmesh.EnvTLSKey, filepath.Join(dir, "orchestrator-key.pem"))
	t.Setenv(rollmesh.EnvTLSCA, filepath.Join(dir, "ca.pem"))
	orchestrator, err := rollmesh.DialEnv(ctx, address, rollmesh.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer orchestrator.Close()
	describe, err := orchestrator.Describe(ctx)
	if err != nil || describe.Environments[0].Name != "arithmetic" {
		t.Fatalf("Describe as orchestrator: %v %v", describe, err)
	}
	tasks, err := orchestrator.ListTasks(ctx, "arithmetic", "test")
	if err != nil || len(tasks) == 0 {
		t.Fatalf("ListTasks as orchestrator: %d %v", len(tasks), err)
	}
	ep, err := orchestrator.StartTask(ctx, "arithmetic", tasks[0].TaskId, "test")
	if err != nil {
		t.Fatal(err)
	}
	last, err := ep.Reply(tasks[0].Answer)
	if err != nil || !last.Done || last.Reward != 1 {
		t.Errorf("the right answer: %v %v", last, err)
	}
	ep.Close()

	// a reader may describe, not play: the Python server's refusal, as Go sees it
	reader, err := rollmesh.DialEnv(ctx, address, rollmesh.Options{TLS: identity(dir, "reader")})
	if err != nil {
		t.Fatal(err)
	}
	defer reader.Close()
	if _, err := reader.Describe(ctx); err != nil {
		t.Errorf("Describe as reader: %v", err)
	}
	_, err = reader.StartTask(ctx, "arithmetic", tasks[0].TaskId, "test")
	info := rollmesh.ErrorInfo(err)
	if status.Code(err) != codes.PermissionDenied || rollmesh.Reason(err) != pb.ErrorReason_MISSING_ROLE || info == nil ||
		info.Metadata["identity"] != "reader" || info.Metadata["required"] != "orchestrator" {
		t.Errorf("Episode as reader: %v (ErrorInfo %v)", err, info)
	}

	// without a client certificate nothing gets through
	anonymous := &rollmesh.TLS{CA: filepath.Join(dir, "ca.pem")}
	short, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if client, err := rollmesh.DialEnv(short, address, rollmesh.Options{TLS: anonymous}); err == nil {
		_, err = client.Describe(short)
		client.Close()
		if err == nil {
			t.Error("Describe without a client certificate answered")
		}
	}

	// the server must hold a certificate for env.rollmesh
	_, err = rollmesh.DialEnv(context.Background(), address,
		rollmesh.Options{TLS: identity(dir, "orchestrator"), ServerName: "rubric.rollmesh", ConnectTimeout: time.Second})
	if err == nil || !strings.Contains(err.Error(), "rubric.rollmesh") {
		t.Errorf("a server certificate for env.rollmesh passed for rubric.rollmesh: %v", err)
	}
}
