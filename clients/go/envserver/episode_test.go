package envserver

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	pb "github.com/rollmesh/rollmesh/clients/go/rollmeshv1"
	"google.golang.org/grpc"
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
	if e := finalStatus(t, stream, actionReq("more")); e.code != codes.FailedPrecondition || e.reason != pb.ErrorReason_EPISODE_DONE {
		t.Errorf("action after done: %+v", e)
	}
	waitActive(t, srv, 0)
	if closed.Load() != 1 {
		t.Errorf("Close called %d times", closed.Load())
	}

	stream = started(t, client, ctxFor(t))
	step(t, stream, "stop")
	if e := closeAndWait(t, stream); e.code != codes.OK {
		t.Errorf("half-close after done: %+v", e)
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

// An assistant message with empty content is a move like any other, not an error.
func TestEmptyContentIsAValidAction(t *testing.T) {
	client, _, _ := serve(t, Limits{}, counter(nil))
	stream := started(t, client, ctxFor(t))
	if s := step(t, stream, ""); s.Turn != 1 || s.Done || s.Messages[0].Content != "turn 1" {
		t.Errorf("step of an empty reply: %v", s)
	}
	noRole := &pb.EpisodeRequest{Kind: &pb.EpisodeRequest_Action{Action: &pb.Action{Message: &pb.Message{}}}}
	if err := stream.Send(noRole); err != nil {
		t.Fatal(err)
	}
	if resp, err := stream.Recv(); err != nil || resp.GetStep().GetTurn() != 2 {
		t.Errorf("an empty message without a role: %v %v", resp, err)
	}
}

func TestInlineTaskTakesPrecedence(t *testing.T) {
	client, _, _ := serve(t, Limits{}, counter(nil))
	stream, err := client.Episode(ctxFor(t))
	if err != nil {
		t.Fatal(err)
	}
	inline := &pb.Task{TaskId: "mine", Prompt: []*pb.Message{Text("user", "count inline")}}
	start := &pb.StartEpisode{Env: "counter", TaskId: "no such task", Split: "no such split", Task: inline, EpisodeId: "ep-1"}
	if err := stream.Send(&pb.EpisodeRequest{Kind: &pb.EpisodeRequest_Start{Start: start}}); err != nil {
		t.Fatal(err)
	}
	resp, err := stream.Recv()
	if err != nil {
		t.Fatalf("inline task with a bad task_id and split: %v", err)
	}
	got := resp.GetStarted()
	if got.EpisodeId != "ep-1" || got.Task.TaskId != "mine" || got.Task.Env != "counter" || got.Messages[0].Content != "count inline" {
		t.Errorf("started %v", got)
	}
}

func TestEpisodeErrors(t *testing.T) {
	client, conn, srv := serve(t, Limits{MaxMessageBytes: 1 << 20}, counter(nil))
	inline := &pb.EpisodeRequest{Kind: &pb.EpisodeRequest_Start{Start: &pb.StartEpisode{Env: "counter", Task: &pb.Task{TaskId: "x"}}}}
	empty := &pb.EpisodeRequest{Kind: &pb.EpisodeRequest_Action{Action: &pb.Action{}}}
	userRole := &pb.EpisodeRequest{Kind: &pb.EpisodeRequest_Action{Action: &pb.Action{Message: Text("user", "hi")}}}
	unnamedCall := &pb.EpisodeRequest{Kind: &pb.EpisodeRequest_Action{Action: &pb.Action{Message: &pb.Message{ToolCalls: []*pb.ToolCall{{Id: "1"}}}}}}
	badSplit := &pb.EpisodeRequest{Kind: &pb.EpisodeRequest_Start{Start: &pb.StartEpisode{Env: "counter", TaskId: "t001", Split: "nope"}}}
	for _, c := range []struct {
		name    string
		started bool
		reqs    []*pb.EpisodeRequest
		code    codes.Code
		reason  pb.ErrorReason
	}{
		{"unknown env", false, []*pb.EpisodeRequest{startReq("nope", "t001")}, codes.NotFound, pb.ErrorReason_UNKNOWN_ENVIRONMENT},
		{"empty env", false, []*pb.EpisodeRequest{startReq("", "t001")}, codes.InvalidArgument, pb.ErrorReason_NO_ENVIRONMENT},
		{"unknown split", false, []*pb.EpisodeRequest{badSplit}, codes.NotFound, pb.ErrorReason_UNKNOWN_SPLIT},
		{"unknown task", false, []*pb.EpisodeRequest{startReq("counter", "nope")}, codes.NotFound, pb.ErrorReason_UNKNOWN_TASK},
		{"no task", false, []*pb.EpisodeRequest{startReq("counter", "")}, codes.InvalidArgument, pb.ErrorReason_NO_TASK},
		{"inline task without prompt", false, []*pb.EpisodeRequest{inline}, codes.InvalidArgument, pb.ErrorReason_INVALID_TASK},
		{"action first", false, []*pb.EpisodeRequest{actionReq("hi")}, codes.InvalidArgument, pb.ErrorReason_NOT_STARTED},
		{"no start, half-close", false, nil, codes.OK, 0},
		{"second start", true, []*pb.EpisodeRequest{startReq("counter", "t001")}, codes.InvalidArgument, pb.ErrorReason_ALREADY_STARTED},
		{"action without message", true, []*pb.EpisodeRequest{empty}, codes.InvalidArgument, pb.ErrorReason_EMPTY_ACTION},
		{"action of a user", true, []*pb.EpisodeRequest{userRole}, codes.InvalidArgument, pb.ErrorReason_INVALID_FIELD},
		{"tool call without a name", true, []*pb.EpisodeRequest{unnamedCall}, codes.InvalidArgument, pb.ErrorReason_INVALID_FIELD},
		{"environment fails", true, []*pb.EpisodeRequest{actionReq("fail")}, codes.Internal, pb.ErrorReason_ENVIRONMENT_FAILED},
		{"environment panics", true, []*pb.EpisodeRequest{actionReq("panic")}, codes.Internal, pb.ErrorReason_ENVIRONMENT_FAILED},
		{"environment's own status", true, []*pb.EpisodeRequest{actionReq("bad")}, codes.InvalidArgument, pb.ErrorReason_INVALID_FIELD},
		{"environment's status without reason", true, []*pb.EpisodeRequest{actionReq("plain status")}, codes.Internal, pb.ErrorReason_ENVIRONMENT_FAILED},
		{"oversized reply", true, []*pb.EpisodeRequest{actionReq("huge")}, codes.ResourceExhausted, pb.ErrorReason_MESSAGE_TOO_LARGE},
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
		e := closeAndWait(t, stream, c.reqs...)
		if e.code != c.code || e.reason != c.reason {
			t.Errorf("%s: %v %v (%s), want %v %v", c.name, e.code, e.reason, e.msg, c.code, c.reason)
		}
		if c.code != codes.OK && e.info == nil {
			t.Errorf("%s: no ErrorInfo of domain rollmesh.dev", c.name)
		}
		switch c.reason {
		case pb.ErrorReason_UNKNOWN_ENVIRONMENT, pb.ErrorReason_NO_ENVIRONMENT:
			if e.info["environments"] != "counter" {
				t.Errorf("%s: metadata %v", c.name, e.info)
			}
		case pb.ErrorReason_UNKNOWN_SPLIT:
			if e.info["splits"] != "test,train" {
				t.Errorf("%s: metadata %v", c.name, e.info)
			}
		case pb.ErrorReason_MESSAGE_TOO_LARGE:
			if e.info["limit_bytes"] != "1048576" {
				t.Errorf("%s: metadata %v", c.name, e.info)
			}
		}
	}

	// gRPC itself refuses a message over the limit on receipt: a transport status, no details.
	stream := started(t, client, ctxFor(t))
	if e := closeAndWait(t, stream, actionReq(string(make([]byte, 1<<20)))); e.code != codes.ResourceExhausted || e.info != nil {
		t.Errorf("oversized action: %+v", e)
	}

	// Bytes that are not an EpisodeRequest.
	raw, err := conn.NewStream(ctxFor(t), &grpc.StreamDesc{ClientStreams: true, ServerStreams: true},
		"/rollmesh.v1.EnvironmentService/Episode", grpc.ForceCodec(rawCodec{}))
	if err != nil {
		t.Fatal(err)
	}
	if err := raw.SendMsg(garbage); err != nil {
		t.Fatal(err)
	}
	if e := endOf(raw.RecvMsg(new([]byte))); e.code != codes.InvalidArgument || e.reason != pb.ErrorReason_MALFORMED_REQUEST {
		t.Errorf("undecodable episode request: %+v", e)
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
	e := finalStatus(t, third, startReq("counter", "t001"))
	if e.code != codes.ResourceExhausted || e.reason != pb.ErrorReason_EPISODE_LIMIT || e.info["limit"] != "2" {
		t.Errorf("third episode: %+v", e)
	}
	step(t, second, "stop")
	closeAndWait(t, second)
	waitActive(t, srv, 1)
	started(t, client, ctx) // room again
}

func TestIdleTimeout(t *testing.T) {
	var closed atomic.Int32
	client, _, srv := serve(t, Limits{IdleTimeout: 200 * time.Millisecond}, counter(&closed))
	for _, c := range []struct {
		name  string
		ready func(stream pb.EnvironmentService_EpisodeClient)
	}{
		{"before start", func(pb.EnvironmentService_EpisodeClient) {}},
		{"between actions", func(stream pb.EnvironmentService_EpisodeClient) {
			if err := stream.Send(startReq("counter", "t001")); err != nil {
				t.Fatal(err)
			}
			if _, err := stream.Recv(); err != nil {
				t.Fatal(err)
			}
			step(t, stream, "one")
		}},
		{"after done", func(stream pb.EnvironmentService_EpisodeClient) {
			if err := stream.Send(startReq("counter", "t001")); err != nil {
				t.Fatal(err)
			}
			if _, err := stream.Recv(); err != nil {
				t.Fatal(err)
			}
			step(t, stream, "stop")
		}},
	} {
		stream, err := client.Episode(ctxFor(t))
		if err != nil {
			t.Fatal(err)
		}
		c.ready(stream)
		begin := time.Now()
		e := finalStatus(t, stream)
		if e.code != codes.DeadlineExceeded || e.reason != pb.ErrorReason_IDLE_TIMEOUT || e.info["idle_timeout_s"] != "0.2" {
			t.Errorf("idle client %s: %+v", c.name, e)
		}
		if waited := time.Since(begin); waited < 150*time.Millisecond || waited > 3*time.Second {
			t.Errorf("idle timeout %s after %s", c.name, waited)
		}
	}
	waitActive(t, srv, 0)
	if closed.Load() != 2 {
		t.Errorf("Close called %d times for 2 episodes", closed.Load())
	}
}

func TestNoIdleTimeout(t *testing.T) {
	client, _, _ := serve(t, Limits{IdleTimeout: NoIdleTimeout}, counter(nil))
	resp, err := client.Describe(ctxFor(t), &pb.DescribeRequest{})
	if err != nil || resp.Limits.EpisodeIdleTimeoutS != 0 {
		t.Fatalf("describe: %v %v", resp, err)
	}
	stream := started(t, client, ctxFor(t))
	time.Sleep(400 * time.Millisecond)
	if s := step(t, stream, "stop"); !s.Done {
		t.Errorf("step after a pause: %v", s)
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
