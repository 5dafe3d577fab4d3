package monitor_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/rollmesh/rollmesh/clients/go/internal/testpki"
	"github.com/rollmesh/rollmesh/clients/go/internal/testservers"
	"github.com/rollmesh/rollmesh/clients/go/monitor"
	"github.com/rollmesh/rollmesh/clients/go/rollmesh"
	pb "github.com/rollmesh/rollmesh/clients/go/rollmeshv1"
	"github.com/rollmesh/rollmesh/clients/go/security"
	"google.golang.org/protobuf/proto"
)

func connect(t *testing.T, url string) (*nats.Conn, nats.JetStreamContext) {
	t.Helper()
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := nc.JetStream()
	if err != nil {
		t.Fatal(err)
	}
	return nc, js
}

func trace(app, id, said string) *pb.MonitorTrace {
	return &pb.MonitorTrace{
		App:     app,
		TraceId: id,
		Messages: []*pb.Message{
			rollmesh.Text("user", "What is 2 + 2?"),
			rollmesh.Text("assistant", said),
		},
		Answer: "4",
		Labels: map[string]string{"lang": "go"},
	}
}

// sameStream compares the settings rules.md fixes (the server fills in the rest).
func sameStream(t *testing.T, got, want nats.StreamConfig) {
	t.Helper()
	if got.Name != want.Name || fmt.Sprint(got.Subjects) != fmt.Sprint(want.Subjects) || got.Storage != nats.FileStorage ||
		got.Retention != nats.LimitsPolicy || got.Discard != nats.DiscardOld || got.MaxAge != 7*24*time.Hour ||
		got.Duplicates != want.Duplicates || got.MaxBytes != -1 {
		t.Errorf("stream config %+v, want %+v", got, want)
	}
}

func TestPublishNeedsAStream(t *testing.T) {
	nc, js := connect(t, testservers.NATS(t))
	ctx := testservers.Context(t)
	core, err := nc.SubscribeSync("rollmesh.monitor.>") // would see a plain publish
	if err != nil {
		t.Fatal(err)
	}
	nc.Flush()

	_, err = monitor.PublishTrace(ctx, nc, trace("shop", "t-1", "4"), monitor.PublisherOptions{})
	if err == nil || !strings.Contains(err.Error(), "no JetStream stream captures rollmesh.monitor.shop") {
		t.Fatalf("publish without a stream: %v", err)
	}
	if msg, err := core.NextMsg(300 * time.Millisecond); err == nil {
		t.Fatalf("something was published without a stream: %v", msg)
	}

	for _, bad := range []string{"", "a.b", "shop *", ">"} {
		if _, err := monitor.PublishTrace(ctx, nc, trace(bad, "t-x", "4"), monitor.PublisherOptions{CreateStream: true}); err == nil {
			t.Errorf("app %q accepted", bad)
		}
	}

	publisher, err := monitor.NewPublisher(nc, monitor.PublisherOptions{CreateStream: true})
	if err != nil {
		t.Fatal(err)
	}
	noID := trace("shop", "", "4")
	first, err := publisher.PublishTrace(ctx, noID)
	if err != nil || first.Stream != "MONITOR" || first.Duplicate || len(first.TraceID) != 32 || noID.TraceId != first.TraceID {
		t.Fatalf("publish creating MONITOR: %+v %v", first, err)
	}
	info, err := js.StreamInfo("MONITOR")
	if err != nil {
		t.Fatal(err)
	}
	sameStream(t, info.Config, monitor.MonitorStream)

	stored, err := js.GetLastMsg("MONITOR", "rollmesh.monitor.shop")
	if err != nil {
		t.Fatal(err)
	}
	got := &pb.MonitorTrace{}
	if err := proto.Unmarshal(stored.Data, got); err != nil || got.TraceId != first.TraceID || got.App != "shop" ||
		got.CreatedAt == nil || time.Since(got.CreatedAt.AsTime()) > time.Minute || got.Messages[1].Content != "4" {
		t.Errorf("stored trace %v %v", got, err)
	}
	if stored.Header.Get("Nats-Msg-Id") != first.TraceID {
		t.Errorf("Nats-Msg-Id %q", stored.Header.Get("Nats-Msg-Id"))
	}
	again, err := publisher.PublishTrace(ctx, noID) // the same trace_id: JetStream drops it
	if err != nil || !again.Duplicate || again.Sequence != first.Sequence {
		t.Errorf("republished trace: %+v %v", again, err)
	}
	if msg, err := core.NextMsg(time.Second); err != nil || msg.Subject != "rollmesh.monitor.shop" {
		t.Errorf("the stored trace on the subject: %v %v", msg, err)
	}
}

func TestScoreReader(t *testing.T) {
	nc, js := connect(t, testservers.NATS(t))
	ctx := testservers.Context(t)
	if _, err := monitor.ReadScores(nc, "shop", monitor.ScoreReaderOptions{}); err == nil ||
		!strings.Contains(err.Error(), "no JetStream stream captures rollmesh.scores.shop") {
		t.Fatalf("reader without a stream: %v", err)
	}
	publish := func(app string, data []byte) {
		t.Helper()
		if _, err := js.Publish("rollmesh.scores."+app, data); err != nil {
			t.Fatal(err)
		}
	}
	score := func(id string, reward float64) []byte {
		data, _ := proto.Marshal(&pb.MonitorScore{TraceId: id, App: "shop", Rubric: "rules", Reward: reward, Rewards: map[string]float64{"correct": reward}})
		return data
	}

	fromNow, err := monitor.ReadScores(nc, "shop", monitor.ScoreReaderOptions{CreateStream: true})
	if err != nil {
		t.Fatal(err)
	}
	defer fromNow.Close()
	info, err := js.StreamInfo("SCORES")
	if err != nil {
		t.Fatal(err)
	}
	sameStream(t, info.Config, monitor.ScoresStream)

	publish("shop", score("s-1", 1))
	publish("other", score("o-1", 1)) // another app: not this reader's
	publish("shop", []byte("not a score"))
	publish("shop", score("s-2", 0))
	if got, err := fromNow.Next(ctx); err != nil || got.TraceId != "s-1" || got.Rewards["correct"] != 1 {
		t.Errorf("first score %v %v", got, err)
	}
	if _, err := fromNow.Next(ctx); err == nil || !strings.Contains(err.Error(), "is not a rollmesh.v1.MonitorScore") {
		t.Errorf("an undecodable message: %v", err)
	}
	if got, err := fromNow.Next(ctx); err != nil || got.TraceId != "s-2" {
		t.Errorf("the score after it: %v %v", got, err)
	}

	later, err := monitor.ReadScores(nc, "shop", monitor.ScoreReaderOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer later.Close()
	all, err := monitor.ReadScores(nc, "shop", monitor.ScoreReaderOptions{DeliverAll: true})
	if err != nil {
		t.Fatal(err)
	}
	defer all.Close()
	publish("shop", score("s-3", 1))
	if got, err := later.Next(ctx); err != nil || got.TraceId != "s-3" {
		t.Errorf("new scores only: %v %v", got, err)
	}
	if got, err := all.Next(ctx); err != nil || got.TraceId != "s-1" {
		t.Errorf("all scores, from the oldest: %v %v", got, err)
	}
	short, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	if got, err := later.Next(short); err == nil {
		t.Errorf("a score out of nothing: %v", got)
	}
}

// Go publishes traces, the Python rubric service scores them live, Go reads the scores.
func TestTraceToScoreRoundTrip(t *testing.T) {
	nc, _ := connect(t, testservers.Address(t, testservers.RubricNATS))
	ctx := testservers.Context(t)
	app := fmt.Sprintf("go-%d", time.Now().UnixNano())
	scores, err := monitor.ReadScores(nc, app, monitor.ScoreReaderOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer scores.Close()
	// The rubric service made MONITOR: no CreateStream here.
	publisher, err := monitor.NewPublisher(nc, monitor.PublisherOptions{})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]float64{app + "-right": 1.5, app + "-wrong": 0.5} // correct 1 + polite 0.5
	if _, err := publisher.PublishTrace(ctx, trace(app, app+"-right", "Thanks for asking: 4")); err != nil {
		t.Fatal(err)
	}
	if _, err := publisher.PublishTrace(ctx, trace(app, app+"-wrong", "Thanks for asking: 5")); err != nil {
		t.Fatal(err)
	}
	for range want {
		score, err := scores.Next(ctx)
		if err != nil {
			t.Fatal(err)
		}
		reward, ok := want[score.TraceId]
		if !ok || score.App != app || score.Rubric != "rules" || score.Reward != reward || score.Labels["lang"] != "go" || len(score.Errors) != 0 {
			t.Errorf("score %v", score)
		}
		delete(want, score.TraceId)
	}
}

func TestMonitorOverTLS(t *testing.T) {
	ca := testpki.New(t)
	server := ca.Issue("nats", nil, "nats")
	publisher := ca.Issue("publisher", []string{security.RolePublisher})
	nc, err := security.ConnectNATS(testservers.SecureNATS(t, server.Cert, server.Key, server.CA), "monitor-test", &publisher)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	ctx := testservers.Context(t)
	scores, err := monitor.ReadScores(nc, "shop", monitor.ScoreReaderOptions{CreateStream: true})
	if err != nil {
		t.Fatal(err)
	}
	defer scores.Close()
	published, err := monitor.PublishTrace(ctx, nc, trace("shop", "", "4"), monitor.PublisherOptions{CreateStream: true})
	if err != nil || published.Stream != monitor.MonitorStream.Name {
		t.Fatalf("published %+v %v", published, err)
	}
}
