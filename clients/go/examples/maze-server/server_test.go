package main

import (
	"context"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/rollmesh/rollmesh/clients/go/envserver"
	"github.com/rollmesh/rollmesh/clients/go/rollmesh"
	pb "github.com/rollmesh/rollmesh/clients/go/rollmeshv1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// TestPlayOverGRPC plays a maze through a real server with the Go EnvClient.
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
	client, err := rollmesh.DialEnv(ctx, lis.Addr().String(), rollmesh.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()

	tasks, err := client.ListTasks(ctx, "maze", "test")
	if err != nil || len(tasks) != 20 {
		t.Fatalf("tasks: %d %v", len(tasks), err)
	}
	ep, err := client.StartTask(ctx, "maze", tasks[2].TaskId, "test")
	if err != nil {
		t.Fatal(err)
	}
	started := ep.Started()
	if len(started.Tools) != 1 || started.Tools[0].Name != "move" || started.Task.Split != "test" || len(ep.Messages()) != 2 {
		t.Fatalf("started %v", started)
	}
	for i, d := range strings.Split(started.Task.Answer, ",") {
		if _, err := ep.Act(rollmesh.Calls(moveCall(i, d))); err != nil {
			t.Fatal(err)
		}
	}
	last := ep.Last()
	if !ep.Done() || !last.HasReward || last.Reward != 1 || last.StopReason != pb.StopReason_STOP_REASON_DONE {
		t.Errorf("last step %v", last)
	}
	if got := fmt.Sprint(last.State.AsMap()["solved"]); got != "true" {
		t.Errorf("state %v", last.State)
	}
	if err := ep.Close(); err != nil {
		t.Errorf("close after done: %v", err)
	}
	score, err := client.Score(ctx, "maze", started.Task, ep.Messages(), last.State)
	if err != nil || score.Reward != 1 {
		t.Errorf("score %v %v", score, err)
	}

	// An inline task without a maze is the client's mistake: INVALID_TASK.
	inline := &pb.Task{Prompt: []*pb.Message{rollmesh.Text("user", "walk")}}
	_, err = client.Start(ctx, &pb.StartEpisode{Env: "maze", Task: inline})
	if status.Code(err) != codes.InvalidArgument || rollmesh.Reason(err) != pb.ErrorReason_INVALID_TASK {
		t.Errorf("inline task without a maze: %v", err)
	}
}
