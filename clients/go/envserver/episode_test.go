package envserver

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	pb "github.com/rollmesh/rollmesh/clients/go/rollmeshv1"
	"google.golang.org/grpc/codes"
)

func TestEpisodeToDoneThenHalfClose(t *testing.T) {
	var closed atomic.Int32
	client, _, srv := serve(t, Limits{}, counter(&closed))
	stream := started(t, client, ctxFor(t))
	waitActive(t, srv, 1)

	first := step(t, stream, "go on")
	if first.Done || first.Turn != 1 || first.HasReward || first.Messages[0].Content != "turn 1" {
		t.Errorf("first step %v", first)
	}
	last := step(t, stream, "stop")
	if !last.Done || last.Turn != 2 || last.StopReason != pb.StopReason_STOP_REASON_DONE {
		t.Errorf("last step %v", last)
	}
	if !last.HasReward || last.Reward != 3 || last.Metrics["turns"] != 2 { // turns 2 + 0.5 * bonus 2
		t.Errorf("reward %v, rewards %v, metrics %v", last.Reward, last.Rewards, last.Metrics)
	}
	if last.State.AsMap()["last"] != "stop" {
		t.Errorf("state %v", last.State)
	}
	if code, msg := finalCode(t, stream, actionReq("more")); code != codes.FailedPrecondition {
		t.Errorf("action after done: %v %s", code, msg)
	}
	waitActive(t, srv, 0)
	if closed.Load() != 1 {
		t.Errorf("Close called %d times", closed.Load())
	}

	stream = started(t, client, ctxFor(t))
	step(t, stream, "stop")
	if code, msg := closeAndWait(t, stream); code != codes.OK {
		t.Errorf("half-close after done: %v %s", code, msg)
	}
}

func TestEpisodeStopsAtMaxTurns(t *testing.T) {
	client, _, _ := serve(t, Limits{}, counter(nil))
	stream := started(t, client, ctxFor(t))
	step(t, stream, "a")
	step(t, stream, "b")
	last := step(t, stream, "c")
	if !last.Done || last.StopReason != pb.StopReason_STOP_REASON_MAX_TURNS || last.Reward != 4 {
		t.Errorf("turn 3 of 3: %v", last)
	}
}

func TestEpisodeErrors(t *testing.T) {
	client, _, srv := serve(t, Limits{MaxMessageBytes: 1 << 20}, counter(nil))
	inline := &pb.EpisodeRequest{Kind: &pb.EpisodeRequest_Start{Start: &pb.StartEpisode{Env: "counter", Task: &pb.Task{}}}}
	empty := &pb.EpisodeRequest{Kind: &pb.EpisodeRequest_Action{Action: &pb.Action{}}}
	for _, c := range []struct {
		name    string
		started bool
		reqs    []*pb.EpisodeRequest
		want    codes.Code
	}{
		{"unknown env", false, []*pb.EpisodeRequest{startReq("nope", "t001")}, codes.NotFound},
		{"empty env", false, []*pb.EpisodeRequest{startReq("", "t001")}, codes.InvalidArgument},
		{"unknown task", false, []*pb.EpisodeRequest{startReq("counter", "nope")}, codes.NotFound},
		{"no task", false, []*pb.EpisodeRequest{startReq("counter", "")}, codes.InvalidArgument},
		{"inline task without prompt", false, []*pb.EpisodeRequest{inline}, codes.InvalidArgument},
		{"action first", false, []*pb.EpisodeRequest{actionReq("hi")}, codes.InvalidArgument},
		{"no start, half-close", false, nil, codes.OK},
		{"second start", true, []*pb.EpisodeRequest{startReq("counter", "t001")}, codes.InvalidArgument},
		{"action without message", true, []*pb.EpisodeRequest{empty}, codes.InvalidArgument},
		{"empty action", true, []*pb.EpisodeRequest{actionReq("")}, codes.InvalidArgument},
		{"environment fails", true, []*pb.EpisodeRequest{actionReq("fail")}, codes.Internal},
		{"environment panics", true, []*pb.EpisodeRequest{actionReq("panic")}, codes.Internal},
		{"environment's status", true, []*pb.EpisodeRequest{actionReq("bad")}, codes.InvalidArgument},
		{"oversized reply", true, []*pb.EpisodeRequest{actionReq("huge")}, codes.ResourceExhausted},
		{"oversized action", true, []*pb.EpisodeRequest{actionReq(string(make([]byte, 1<<20)))}, codes.ResourceExhausted},
	} {
		ctx := ctxFor(t)
		var stream pb.EnvironmentService_EpisodeClient
		if c.started {
			stream = started(t, client, ctx)
		} else {
			var err error
			if stream, err = client.Episode(ctx); err != nil {
				t.Fatal(err)
			}
		}
		if code, msg := closeAndWait(t, stream, c.reqs...); code != c.want {
			t.Errorf("%s: %v (%s), want %v", c.name, code, msg, c.want)
		}
	}
	waitActive(t, srv, 0)
}

func TestEpisodeLimit(t *testing.T) {
	client, _, srv := serve(t, Limits{MaxConcurrentEpisodes: 2}, counter(nil))
	ctx := ctxFor(t)
	started(t, client, ctx)
	second := started(t, client, ctx)
	third, err := client.Episode(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if code, _ := finalCode(t, third, startReq("counter", "t001")); code != codes.ResourceExhausted {
		t.Errorf("third episode: %v", code)
	}
	step(t, second, "stop")
	closeAndWait(t, second)
	waitActive(t, srv, 1)
	started(t, client, ctx) // room again
}

func TestIdleTimeout(t *testing.T) {
	var closed atomic.Int32
	client, _, srv := serve(t, Limits{IdleTimeout: 200 * time.Millisecond}, counter(&closed))
	stream := started(t, client, ctxFor(t))
	step(t, stream, "one")
	begin := time.Now()
	if code, _ := finalCode(t, stream); code != codes.DeadlineExceeded {
		t.Errorf("idle client: %v", code)
	}
	if waited := time.Since(begin); waited < 150*time.Millisecond || waited > 3*time.Second {
		t.Errorf("idle timeout after %s", waited)
	}
	waitActive(t, srv, 0)
	if closed.Load() != 1 {
		t.Errorf("Close called %d times", closed.Load())
	}
}

func TestCancelFreesEpisode(t *testing.T) {
	var closed atomic.Int32
	client, _, srv := serve(t, Limits{}, counter(&closed))
	ctx, cancel := context.WithCancel(ctxFor(t))
	stream := started(t, client, ctx)
	step(t, stream, "one")
	waitActive(t, srv, 1)
	cancel()
	waitActive(t, srv, 0)
	if closed.Load() != 1 {
		t.Errorf("Close called %d times", closed.Load())
	}
}
