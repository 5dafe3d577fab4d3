package envserver

import (
	"context"
	"fmt"
	"io"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rollmesh/rollmesh/clients/go/rollmesh"
	pb "github.com/rollmesh/rollmesh/clients/go/rollmeshv1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// counter is a test environment: it answers each message with "turn N", ends when the policy
// says "stop" (reward: the number of turns) and fails on "fail", "panic", "bad", "plain status"
// and "huge".
func counter(closed *atomic.Int32) *Environment {
	tasks := make([]*pb.Task, 150)
	for i := range tasks {
		tasks[i] = &pb.Task{TaskId: fmt.Sprintf("t%03d", i), Prompt: []*pb.Message{Text("user", fmt.Sprintf("count %d", i))}}
	}
	return &Environment{
		Name:          "counter",
		MaxTurns:      3,
		Tasks:         map[string][]*pb.Task{"train": tasks, "test": tasks[:5]},
		RewardNames:   []string{"turns", "bonus"},
		RewardWeights: map[string]float64{"bonus": 0.5},
		NewEpisode: func(_ context.Context, s *Start) (Episode, error) {
			return &counting{start: s, closed: closed}, nil
		},
		Score: func(_ context.Context, r *ScoreRequest) (map[string]float64, error) {
			return map[string]float64{"turns": float64(len(r.Messages)), "bonus": 2}, nil
		},
	}
}

type counting struct {
	start  *Start
	closed *atomic.Int32
}

func (c *counting) Start(context.Context) ([]*pb.Message, error) { return c.start.Task.Prompt, nil }

func (c *counting) Close() {
	if c.closed != nil {
		c.closed.Add(1)
	}
}

func (c *counting) Act(_ context.Context, turn int, action *pb.Message) (*Result, error) {
	switch action.Content {
	case "fail":
		return nil, fmt.Errorf("boom")
	case "panic":
		panic("boom")
	case "bad":
		return nil, rollmesh.Error(codes.InvalidArgument, pb.ErrorReason_INVALID_FIELD, map[string]string{"field": "action.message.content"}, "bad move")
	case "plain status":
		return nil, status.Error(codes.InvalidArgument, "a status without a reason")
	case "huge":
		return &Result{Messages: []*pb.Message{Text("user", strings.Repeat("x", 2<<20))}}, nil
	}
	r := &Result{Messages: []*pb.Message{Text("user", fmt.Sprintf("turn %d", turn))}, Done: action.Content == "stop"}
	if r.Done || turn == c.start.MaxTurns {
		r.Rewards = map[string]float64{"turns": float64(turn), "bonus": 2}
		r.State = map[string]any{"last": action.Content}
	}
	return r, nil
}

// serve starts a server on a loopback port and returns a client of it.
func serve(t *testing.T, limits Limits, envs ...*Environment) (pb.EnvironmentServiceClient, *grpc.ClientConn, *Server) {
	t.Helper()
	srv, err := New(envs, limits)
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(lis)
	conn, err := grpc.Dial(lis.Addr().String(), grpc.WithInsecure(), grpc.WithBlock(),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64<<20), grpc.MaxCallSendMsgSize(64<<20)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		conn.Close()
		srv.Shutdown(0)
	})
	return pb.NewEnvironmentServiceClient(conn), conn, srv
}

func ctxFor(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func startReq(env, taskID string) *pb.EpisodeRequest {
	return &pb.EpisodeRequest{Kind: &pb.EpisodeRequest_Start{Start: &pb.StartEpisode{Env: env, TaskId: taskID}}}
}

func actionReq(content string) *pb.EpisodeRequest {
	return &pb.EpisodeRequest{Kind: &pb.EpisodeRequest_Action{Action: &pb.Action{Message: Text("assistant", content)}}}
}

// started opens an episode of the counter and reads `started`.
func started(t *testing.T, client pb.EnvironmentServiceClient, ctx context.Context) pb.EnvironmentService_EpisodeClient {
	t.Helper()
	stream, err := client.Episode(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(startReq("counter", "t001")); err != nil {
		t.Fatal(err)
	}
	resp, err := stream.Recv()
	if err != nil || resp.GetStarted() == nil {
		t.Fatalf("no started: %v %v", resp, err)
	}
	return stream
}

// step sends an action and returns its step.
func step(t *testing.T, stream pb.EnvironmentService_EpisodeClient, content string) *pb.Step {
	t.Helper()
	if err := stream.Send(actionReq(content)); err != nil {
		t.Fatal(err)
	}
	resp, err := stream.Recv()
	if err != nil {
		t.Fatalf("action %q: %v", content, err)
	}
	return resp.GetStep()
}

// ended is how a stream or call ended: its code, reason and message.
type ended struct {
	code   codes.Code
	reason pb.ErrorReason
	info   map[string]string // the ErrorInfo's metadata; nil without an ErrorInfo
	msg    string
}

func endOf(err error) ended {
	if err == nil || err == io.EOF {
		return ended{code: codes.OK}
	}
	e := ended{code: status.Code(err), reason: rollmesh.Reason(err), msg: status.Convert(err).Message()}
	if info := rollmesh.ErrorInfo(err); info != nil {
		e.info = info.Metadata
		if e.info == nil {
			e.info = map[string]string{}
		}
	}
	return e
}

// finalStatus sends requests, then reads to the end of the stream and returns how it ended.
func finalStatus(t *testing.T, stream pb.EnvironmentService_EpisodeClient, reqs ...*pb.EpisodeRequest) ended {
	t.Helper()
	for _, r := range reqs {
		if err := stream.Send(r); err != nil {
			break // the server ended the stream: Recv reports its status
		}
	}
	for {
		if _, err := stream.Recv(); err != nil {
			return endOf(err)
		}
	}
}

// closeAndWait sends requests, half-closes, and returns how the stream ended.
func closeAndWait(t *testing.T, stream pb.EnvironmentService_EpisodeClient, reqs ...*pb.EpisodeRequest) ended {
	t.Helper()
	for _, r := range reqs {
		if err := stream.Send(r); err != nil {
			return finalStatus(t, stream)
		}
	}
	stream.CloseSend()
	return finalStatus(t, stream)
}

// waitActive waits until the server counts n open episodes.
func waitActive(t *testing.T, srv *Server, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for srv.ActiveEpisodes() != n {
		if time.Now().After(deadline) {
			t.Fatalf("active episodes %d, want %d", srv.ActiveEpisodes(), n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// rawCodec sends and receives bytes as they are, to send what is not a valid message.
type rawCodec struct{}

func (rawCodec) Marshal(v interface{}) ([]byte, error)      { return *v.(*[]byte), nil }
func (rawCodec) Unmarshal(data []byte, v interface{}) error { *v.(*[]byte) = data; return nil }
func (rawCodec) Name() string                               { return "proto" }

// garbage is not a protobuf message: field 1 claims 5 bytes and has 1.
var garbage = &[]byte{0x0a, 0x05, 0x01}
