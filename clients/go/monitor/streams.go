// Package monitor puts production traces on the rollmesh bus and reads their scores back
// (docs/protocol.md, "11. The bus"): PublishTrace stores a rollmesh.v1.MonitorTrace in the
// MONITOR stream with a JetStream publish and awaits the ack; ScoreReader follows the
// rollmesh.v1.MonitorScore messages that the rubric service publishes for an app.
package monitor

import (
	"errors"
	"fmt"
	"regexp"
	"time"

	"github.com/nats-io/nats.go"
)

const (
	// MonitorPrefix and ScoresPrefix start the subjects "rollmesh.monitor.<app>" and
	// "rollmesh.scores.<app>".
	MonitorPrefix = "rollmesh.monitor."
	ScoresPrefix  = "rollmesh.scores."
)

const day = 24 * time.Hour

// MonitorStream is the MONITOR stream's configuration, exactly as every rollmesh component makes it.
var MonitorStream = nats.StreamConfig{
	Name:       "MONITOR",
	Subjects:   []string{"rollmesh.monitor.>"},
	Storage:    nats.FileStorage,
	Retention:  nats.LimitsPolicy,
	Discard:    nats.DiscardOld,
	MaxAge:     7 * day,
	MaxBytes:   -1,
	Duplicates: 10 * time.Minute,
}

// ScoresStream is the SCORES stream's configuration.
var ScoresStream = nats.StreamConfig{
	Name:       "SCORES",
	Subjects:   []string{"rollmesh.scores.>"},
	Storage:    nats.FileStorage,
	Retention:  nats.LimitsPolicy,
	Discard:    nats.DiscardOld,
	MaxAge:     7 * day,
	MaxBytes:   -1,
	Duplicates: 2 * time.Minute,
}

// An app is one subject token: no '.', spaces or wildcards.
var appToken = regexp.MustCompile(`^[A-Za-z0-9_\-=]+$`)

func checkApp(app string) error {
	if !appToken.MatchString(app) {
		return fmt.Errorf("invalid app %q: use letters, digits, '-', '_' or '=' (it is a NATS subject token)", app)
	}
	return nil
}

// streamFor is the name of the stream that captures subject. When none does, it creates the
// stream of cfg if create is set, and fails with a clear error otherwise.
func streamFor(js nats.JetStreamContext, subject string, cfg nats.StreamConfig, create bool) (string, error) {
	name, err := js.StreamNameBySubject(subject)
	if err == nil {
		return name, nil
	}
	if !errors.Is(err, nats.ErrNoMatchingStream) {
		return "", fmt.Errorf("cannot look up the JetStream stream of %s: %w", subject, err)
	}
	if !create {
		return "", fmt.Errorf("no JetStream stream captures %s: create the %s stream (subjects %v), e.g. by starting "+
			"the rubric service with --nats, or opt in to CreateStream", subject, cfg.Name, cfg.Subjects)
	}
	if _, err := js.AddStream(&cfg); err != nil {
		return "", fmt.Errorf("cannot create the %s stream for %s: %w", cfg.Name, subject, err)
	}
	return cfg.Name, nil
}
