package main

import (
	"context"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/rollmesh/rollmesh/clients/go/envserver"
	pb "github.com/rollmesh/rollmesh/clients/go/rollmeshv1"
	"google.golang.org/grpc"
)

// TestPlayOverGRPC plays a maze through a real server with the generated Go client.
func TestPlayOverGRPC(t *testing.T) {
	srv, err := envserver.New([]*envserver.Environment{newEnvironment()}, envserver.Limits{})
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(lis)
	defer srv.Shutdown(time.Second)

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := grpc.DialContext(ctx, lis.Addr().String(), grpc.WithInsecure(), grpc.WithBlock())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client := pb.NewEnvironmentServiceClient(conn)

	stream, err := client.Episode(ctx)
	if err != nil {
		t.Fatal(err)
	}
	start := &pb.StartEpisode{Env: "maze", TaskId: "test-002", Split: "test"}
	if err := stream.Send(&pb.EpisodeRequest{Kind: &pb.EpisodeRequest_Start{Start: start}}); err != nil {
		t.Fatal(err)
	}
	resp, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	started := resp.GetStarted()
	if len(started.Tools) != 1 || started.Tools[0].Name != "move" || started.Task.Split != "test" {
		t.Fatalf("started %v", started)
	}
	var last *pb.Step
	for i, d := range strings.Split(started.Task.Answer, ",") {
		action := &pb.Action{Message: &pb.Message{Role: "assistant", ToolCalls: []*pb.ToolCall{moveCall(i, d)}}}
		if err := stream.Send(&pb.EpisodeRequest{Kind: &pb.EpisodeRequest_Action{Action: action}}); err != nil {
			t.Fatal(err)
		}
		if resp, err = stream.Recv(); err != nil {
			t.Fatal(err)
		}
		last = resp.GetStep()
	}
	if !last.Done || !last.HasReward || last.Reward != 1 || last.StopReason != pb.StopReason_STOP_REASON_DONE {
		t.Errorf("last step %v", last)
	}
	if got := fmt.Sprint(last.State.AsMap()["solved"]); got != "true" {
		t.Errorf("state %v", last.State)
	}
}
