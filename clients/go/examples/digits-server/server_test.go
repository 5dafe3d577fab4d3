package main

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/rollmesh/rollmesh/clients/go/envserver"
	"github.com/rollmesh/rollmesh/clients/go/rollmesh"
	pb "github.com/rollmesh/rollmesh/clients/go/rollmeshv1"
)

// TestPlayOverGRPC describes the environment and plays listed and inline tasks through a real
// server with the Go EnvClient.
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
	client, err := rollmesh.DialEnv(ctx, lis.Addr().String(), rollmesh.Options{TLS: &rollmesh.TLS{}})
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()

	described, err := client.Describe(ctx)
	if err != nil || len(described.Environments) != 1 {
		t.Fatalf("describe: %v %v", described, err)
	}
	info := described.Environments[0]
	if info.Name != "digits" || info.Version != "0.1.0" || info.Description != description ||
		info.Kind != pb.EnvironmentKind_ENVIRONMENT_KIND_SINGLE_TURN || info.MaxTurns != 1 || !info.HasScore ||
		info.DefaultSplit != "train" || info.Splits["train"] != 200 || info.Splits["test"] != 50 ||
		len(info.RewardNames) != 2 || info.RewardNames[0] != "digits" || info.RewardNames[1] != "number" ||
		info.DefaultSampling.GetMaxTokens() != 8 {
		t.Errorf("environment %v", info)
	}

	tasks, err := client.ListTasks(ctx, "digits", "test")
	if err != nil || len(tasks) != 50 || tasks[0].TaskId != "d0200" {
		t.Fatalf("tasks: %d %v", len(tasks), err)
	}
	ep, err := client.StartTask(ctx, "digits", tasks[3].TaskId, "test")
	if err != nil {
		t.Fatal(err)
	}
	if msgs := ep.Messages(); len(msgs) != 2 || msgs[0].Content != systemPrompt || msgs[1].Content != tasks[3].Prompt[1].Content {
		t.Fatalf("messages %v", msgs)
	}
	last, err := ep.Reply("42")
	if err != nil {
		t.Fatal(err)
	}
	if !last.Done || !last.HasReward || last.Reward != 1 || last.StopReason != pb.StopReason_STOP_REASON_DONE ||
		last.Rewards["digits"] != 1 || last.Rewards["number"] != 1 || last.Metrics["turns"] != 1 {
		t.Errorf("last step %v", last)
	}
	if err := ep.Close(); err != nil {
		t.Errorf("close after done: %v", err)
	}
	scored, err := client.Score(ctx, "digits", ep.Started().Task, ep.Messages(), last.State)
	if err != nil || scored.Reward != 1 || scored.Rewards["number"] != 1 {
		t.Errorf("score %v %v", scored, err)
	}

	// An inline task, as an orchestrator sends one listed by another replica: its prompt is played.
	inline := &pb.Task{TaskId: "d0001", Split: "train", Prompt: []*pb.Message{
		rollmesh.Text("system", systemPrompt), rollmesh.Text("user", "Pick a number between 3 and 9."),
	}}
	ep, err = client.Start(ctx, &pb.StartEpisode{Env: "digits", Task: inline})
	if err != nil {
		t.Fatal(err)
	}
	defer ep.Close()
	if msgs := ep.Messages(); len(msgs) != 2 || msgs[1].Content != "Pick a number between 3 and 9." {
		t.Fatalf("inline task's messages %v", msgs)
	}
	last, err = ep.Reply("4a")
	if err != nil {
		t.Fatal(err)
	}
	// number has weight 0: a metric among the rewards, not in the reward
	if !last.Done || last.Reward != 0.5 || last.Rewards["digits"] != 0.5 || last.Rewards["number"] != 0 {
		t.Errorf("last step %v", last)
	}
	scored, err = client.Score(ctx, "digits", inline, append(inline.Prompt, rollmesh.Text("assistant", "-7")), nil)
	if err != nil || scored.Reward != 0.5 || scored.Rewards["number"] != 1 {
		t.Errorf("score %v %v", scored, err)
	}
}
