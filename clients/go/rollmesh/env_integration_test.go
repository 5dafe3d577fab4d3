package rollmesh_test

import (
	"context"
	"fmt"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/rollmesh/rollmesh/clients/go/internal/testservers"
	"github.com/rollmesh/rollmesh/clients/go/rollmesh"
	pb "github.com/rollmesh/rollmesh/clients/go/rollmeshv1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// The Python reference server hosts guess-number: 400 train and 100 test tasks, a secret in
// [1, 100] found from "Higher."/"Lower." feedback within 10 turns.

func dialEnv(t *testing.T) *rollmesh.EnvClient {
	t.Helper()
	address := testservers.Address(t, testservers.EnvAddress)
	client, err := rollmesh.DialEnv(testservers.Context(t), address, rollmesh.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	return client
}

func TestDescribeAndListTasksOfThePythonServer(t *testing.T) {
	client := dialEnv(t)
	ctx := testservers.Context(t)
	describe, err := client.Describe(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if describe.Server.ProtocolVersion != rollmesh.ProtocolVersion || describe.Server.Language != "python" {
		t.Errorf("server %v", describe.Server)
	}
	env := describe.Environments[0]
	if env.Name != "guess-number" || env.DefaultSplit != "train" || env.Splits["train"] != 400 || env.Splits["test"] != 100 || !env.HasScore {
		t.Errorf("environment %v", env)
	}

	it := client.Tasks(ctx, "guess-number", "test", 7) // 15 pages
	seen := map[string]bool{}
	for it.Next() {
		if task := it.Task(); task.Split != "test" || seen[task.TaskId] {
			t.Errorf("task %v (seen before: %v)", task, seen[task.TaskId])
		}
		seen[it.Task().TaskId] = true
	}
	if it.Err() != nil || len(seen) != 100 || it.Total() != 100 {
		t.Errorf("paged listing: %d tasks, total %d, %v", len(seen), it.Total(), it.Err())
	}
	train, err := client.ListTasks(ctx, "guess-number", "") // the default split
	if err != nil || len(train) != 400 || train[0].Split != "train" {
		t.Errorf("default split: %d tasks, %v", len(train), err)
	}
}

// bisect plays an episode with binary search on the environment's feedback.
func bisect(t *testing.T, ep *rollmesh.Episode) int {
	t.Helper()
	low, high, guesses := 1, 100, 0
	for !ep.Done() {
		guess := (low + high) / 2
		step, err := ep.Reply(fmt.Sprint(guess))
		if err != nil {
			t.Fatal(err)
		}
		guesses++
		switch feedback := step.Messages[len(step.Messages)-1].Content; {
		case strings.HasPrefix(feedback, "Higher"):
			low = guess + 1
		case strings.HasPrefix(feedback, "Lower"):
			high = guess - 1
		case !strings.HasPrefix(feedback, "Correct"):
			t.Fatalf("feedback %q", feedback)
		}
	}
	return guesses
}

func TestPlayEpisodesWithBinarySearch(t *testing.T) {
	client := dialEnv(t)
	ctx := testservers.Context(t)
	tasks, err := client.ListTasks(ctx, "guess-number", "test")
	if err != nil {
		t.Fatal(err)
	}
	for _, task := range tasks[:5] {
		ep, err := client.StartTask(ctx, "guess-number", task.TaskId, "test")
		if err != nil {
			t.Fatal(err)
		}
		if ep.Started().Task.TaskId != task.TaskId || len(ep.Messages()) == 0 || ep.Started().MaxTurns != 10 {
			t.Fatalf("started %v", ep.Started())
		}
		guesses := bisect(t, ep)
		last := ep.Last()
		efficiency := 1 / float64(guesses)
		if last.StopReason != pb.StopReason_STOP_REASON_DONE || !last.HasReward || int(last.Turn) != guesses ||
			last.Rewards["solved"] != 1 || math.Abs(last.Rewards["efficiency"]-efficiency) > 1e-9 ||
			math.Abs(last.Reward-(1+0.2*efficiency)) > 1e-9 {
			t.Errorf("task %s (answer %s) in %d guesses: %v", task.TaskId, task.Answer, guesses, last)
		}
		if err := ep.Close(); err != nil {
			t.Errorf("close after done: %v", err)
		}
		// 1 prompt message, then one action and one reply per guess
		if n := len(ep.Messages()); n != len(ep.Started().Messages)+2*guesses {
			t.Errorf("%d messages after %d guesses", n, guesses)
		}
		score, err := client.Score(ctx, "guess-number", ep.Started().Task, ep.Messages(), last.State)
		if err != nil || score.Rewards["solved"] != 1 || math.Abs(score.Reward-last.Reward) > 1e-9 {
			t.Errorf("score %v %v", score, err)
		}
	}
}

func TestReasonsFromThePythonServer(t *testing.T) {
	client := dialEnv(t)
	ctx := testservers.Context(t)
	_, err := client.StartTask(ctx, "guess-number", "no-such-task", "test")
	if status.Code(err) != codes.NotFound || rollmesh.Reason(err) != pb.ErrorReason_UNKNOWN_TASK {
		t.Errorf("unknown task: %v (reason %v)", err, rollmesh.Reason(err))
	}
	_, err = client.StartTask(ctx, "", "g00001", "")
	info := rollmesh.ErrorInfo(err)
	if rollmesh.Reason(err) != pb.ErrorReason_NO_ENVIRONMENT || info.Domain != rollmesh.Domain || info.Metadata["environments"] != "guess-number" {
		t.Errorf("no environment: %v, info %v", err, info)
	}
	if bad := client.Tasks(ctx, "guess-number", "test", -1); bad.Next() || rollmesh.Reason(bad.Err()) != pb.ErrorReason_INVALID_PAGE_SIZE {
		t.Errorf("page size -1: %v", bad.Err())
	}

	// An action after the final step: the episode is done.
	ep, err := client.StartTask(ctx, "guess-number", "g00000", "test")
	if err != nil {
		t.Fatal(err)
	}
	bisect(t, ep)
	if _, err := ep.Reply("50"); status.Code(err) != codes.FailedPrecondition || rollmesh.Reason(err) != pb.ErrorReason_EPISODE_DONE {
		t.Errorf("action after done: %v", err)
	}
}

func TestContextDeadlines(t *testing.T) {
	client := dialEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Millisecond)
	defer cancel()
	<-ctx.Done()
	_, err := client.Describe(ctx)
	if status.Code(err) != codes.DeadlineExceeded || rollmesh.ErrorInfo(err) != nil {
		t.Errorf("describe past its deadline: %v", err) // the client's own deadline: no server details
	}

	// The context of Start bounds the whole episode.
	ctx, cancel = context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	ep, err := client.StartTask(ctx, "guess-number", "g00001", "test")
	if err != nil {
		t.Fatal(err)
	}
	<-ctx.Done()
	if _, err := ep.Reply("50"); status.Code(err) != codes.DeadlineExceeded {
		t.Errorf("action past the episode's deadline: %v", err)
	}

	if _, err := rollmesh.DialEnv(context.Background(), "127.0.0.1:1", rollmesh.Options{ConnectTimeout: 300 * time.Millisecond}); err == nil ||
		!strings.Contains(err.Error(), "cannot reach a rollmesh server at 127.0.0.1:1") {
		t.Errorf("dial of a closed port: %v", err)
	}
}
