// Package testservers gives the Go tests real servers: a nats-server of their own, and the
// addresses of the rollmesh servers that tests/test_polyglot_go.py starts. Without them a test
// skips, saying which variable it needs; the pytest checks that none skipped.
package testservers

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"testing"
	"time"
)

// The variables tests/test_polyglot_go.py sets.
const (
	EnvAddress       = "ROLLMESH_TEST_ENV"         // `rollmesh env serve guess-number`
	InferenceAddress = "ROLLMESH_TEST_INFERENCE"   // `rollmesh inference serve` of the tiny model
	RubricAddress    = "ROLLMESH_TEST_RUBRIC"      // `rollmesh rubric serve`, rubric "rules"
	RubricNATS       = "ROLLMESH_TEST_NATS"        // the NATS the rubric service live-scores
	NATSServer       = "ROLLMESH_TEST_NATS_SERVER" // a nats-server binary (else one on PATH)
	// `rollmesh env serve arithmetic` with mutual TLS, and the directory of `rollmesh certs
	// init` whose env.pem it serves with (ca.pem, orchestrator.pem, reader.pem, ...)
	TLSEnvAddress = "ROLLMESH_TEST_TLS_ENV"
	CertsDir      = "ROLLMESH_TEST_CERTS"
)

// Address is the value of a variable above; the test skips when it is unset.
func Address(t testing.TB, variable string) string {
	t.Helper()
	value := os.Getenv(variable)
	if value == "" {
		t.Skipf("%s is not set: tests/test_polyglot_go.py sets it to a live server", variable)
	}
	return value
}

// Context is a context that ends with the test (or after 60 s).
func Context(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

var listening = regexp.MustCompile(`Listening for client connections on (\S+:\d+)`)

// NATS starts a nats-server with JetStream for this test alone (a free port, a temporary store)
// and returns its URL; it stops when the test ends.
func NATS(t testing.TB) string {
	t.Helper()
	return startNATS(t)
}

// SecureNATS is NATS over TLS only, with the server certificate cert/key, and client
// certificates of the CA ca required.
func SecureNATS(t testing.TB, cert, key, ca string) string {
	t.Helper()
	config := filepath.Join(t.TempDir(), "nats.conf")
	body := fmt.Sprintf("tls {\n  cert_file: %q\n  key_file: %q\n  ca_file: %q\n  verify: true\n  timeout: 5\n}\n", cert, key, ca)
	if err := os.WriteFile(config, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return startNATS(t, "-c", config)
}

func startNATS(t testing.TB, args ...string) string {
	t.Helper()
	binary := os.Getenv(NATSServer)
	if binary == "" {
		var err error
		if binary, err = exec.LookPath("nats-server"); err != nil {
			t.Skipf("no nats-server: set %s or put nats-server on PATH", NATSServer)
		}
	}
	cmd := exec.Command(binary, append([]string{"-js", "-a", "127.0.0.1", "-p", "-1", "-sd", t.TempDir()}, args...)...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("cannot start %s: %v", binary, err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	found := make(chan string, 1)
	go func() {
		lines := bufio.NewScanner(stderr)
		for lines.Scan() {
			if m := listening.FindStringSubmatch(lines.Text()); m != nil {
				found <- m[1]
				break
			}
		}
		for lines.Scan() { // keep the pipe drained
		}
	}()
	select {
	case address := <-found:
		return "nats://" + address
	case <-time.After(20 * time.Second):
		t.Fatalf("%s printed no address within 20 s", binary)
		return ""
	}
}
