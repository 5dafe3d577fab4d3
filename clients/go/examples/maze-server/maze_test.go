package main

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/rollmesh/rollmesh/clients/go/envserver"
	pb "github.com/rollmesh/rollmesh/clients/go/rollmeshv1"
)

func TestGenerateIsDeterministicAndSolvable(t *testing.T) {
	a, b := generate(4, 7), generate(4, 7)
	if strings.Join(a.rows, "\n") != strings.Join(b.rows, "\n") {
		t.Fatal("the same seed gave two mazes")
	}
	if strings.Join(a.rows, "") == strings.Join(generate(4, 8).rows, "") {
		t.Error("two seeds gave the same maze")
	}
	if len(a.rows) != 9 || a.rows[1][1] != 'S' || a.rows[7][7] != 'G' {
		t.Errorf("maze:\n%s", strings.Join(a.rows, "\n"))
	}
	parsed, err := parseMaze(a.rows)
	if err != nil || parsed.start != a.start || parsed.goal != a.goal {
		t.Errorf("parse: %v %v", parsed, err)
	}
	if _, err := parseMaze([]string{"#S#", "#x#"}); err == nil {
		t.Error("parsed a maze with an x")
	}
}

func TestEveryTaskSolvableWithinMaxTurns(t *testing.T) {
	env := newEnvironment()
	for split, tasks := range env.Tasks {
		for _, task := range tasks {
			m, err := mazeOf(task)
			if err != nil {
				t.Fatal(err)
			}
			path := m.solve()
			if len(path) == 0 || len(path) > env.MaxTurns || strings.Join(path, ",") != task.Answer {
				t.Errorf("%s/%s: path %v, answer %q", split, task.TaskId, path, task.Answer)
			}
		}
	}
}

func moveCall(id int, direction string) *pb.ToolCall {
	return &pb.ToolCall{Id: fmt.Sprint(id), Name: "move", ArgumentsJson: fmt.Sprintf(`{"direction": %q}`, direction)}
}

func play(t *testing.T, task *pb.Task, actions ...*pb.Message) (*envserver.Result, []*envserver.Result) {
	t.Helper()
	env := newEnvironment()
	ep, err := env.NewEpisode(context.Background(), &envserver.Start{Task: task, MaxTurns: env.MaxTurns})
	if err != nil {
		t.Fatal(err)
	}
	defer ep.Close()
	if msgs, err := ep.Start(context.Background()); err != nil || len(msgs) != 2 || !strings.Contains(msgs[1].Content, "S") {
		t.Fatalf("start: %v %v", msgs, err)
	}
	var results []*envserver.Result
	for i, a := range actions {
		r, err := ep.Act(context.Background(), i+1, a)
		if err != nil {
			t.Fatal(err)
		}
		results = append(results, r)
	}
	return results[len(results)-1], results
}

func TestShortestPathSolves(t *testing.T) {
	task := newEnvironment().Tasks["train"][4]
	var actions []*pb.Message
	for i, d := range strings.Split(task.Answer, ",") {
		actions = append(actions, &pb.Message{Role: "assistant", ToolCalls: []*pb.ToolCall{moveCall(i, d)}})
	}
	last, results := play(t, task, actions...)
	if !last.Done || last.Rewards["solved"] != 1 || last.State["solved"] != true {
		t.Errorf("last result %+v", last)
	}
	for _, r := range results[:len(results)-1] {
		if r.Done || r.Rewards != nil || !strings.HasPrefix(r.Messages[0].Content, "Moved") {
			t.Errorf("intermediate result %+v", r)
		}
	}
	rewards, err := score(context.Background(), &envserver.ScoreRequest{Task: task, Messages: actions})
	if err != nil || rewards["solved"] != 1 {
		t.Errorf("score of the solving conversation: %v %v", rewards, err)
	}
}

func TestWallsBadCallsAndGivingUp(t *testing.T) {
	task := newEnvironment().Tasks["test"][0] // S at (1,1): up is always a wall
	action := &pb.Message{Role: "assistant", ToolCalls: []*pb.ToolCall{
		moveCall(1, "up"), moveCall(2, "sideways"), {Id: "3", Name: "jump"},
	}}
	first, _ := play(t, task, action)
	replies := []string{"A wall blocks the way up", "Error: direction must be one of", `Error: unknown tool "jump"`}
	for i, want := range replies {
		if !strings.HasPrefix(first.Messages[i].Content, want) {
			t.Errorf("reply %d: %q, want %q...", i, first.Messages[i].Content, want)
		}
	}
	last, _ := play(t, task, action, &pb.Message{Role: "assistant", Content: "I give up"})
	if !last.Done || last.Rewards["solved"] != 0 || len(last.Messages) != 0 {
		t.Errorf("giving up: %+v", last)
	}
	rewards, err := score(context.Background(), &envserver.ScoreRequest{Task: task, Messages: []*pb.Message{action}})
	if err != nil || rewards["solved"] != 0 {
		t.Errorf("score: %v %v", rewards, err)
	}
	if _, err := score(context.Background(), &envserver.ScoreRequest{Task: &pb.Task{Answer: "x"}}); err == nil {
		t.Error("scored a task without a maze")
	}
}
