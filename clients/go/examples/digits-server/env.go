package main

import (
	"context"
	"fmt"
	"strconv"
	"strings"

	"github.com/rollmesh/rollmesh/clients/go/envserver"
	pb "github.com/rollmesh/rollmesh/clients/go/rollmeshv1"
	"google.golang.org/protobuf/proto"
)

// What the Python environment says and reports, word for word: a replica must look the same.
const (
	name         = "digits"
	version      = "0.1.0"
	description  = "Reply with a number; graded reward (share of digits): the tiny-model RL quickstart."
	systemPrompt = "Reply with a number and nothing else."
	maxTokens    = 8
	numTrain     = 200
	numTest      = 50
)

// The questions: the Python environment's ASKS and THINGS.
var (
	asks = []string{
		"Give me a number.",
		"Say a number.",
		"Pick a number between {a} and {b}.",
		"How many {thing} are there?",
		"Reply with any integer.",
		"What is your favourite number?",
	}
	things = []string{"stars", "apples", "birds", "days in a week", "robots", "steps"}
)

// newEnvironment is the "digits" environment: 200 train tasks (d0000..d0199) and 50 test tasks
// (d0200..d0249). The rewards are `digits` (weight 1) and `number` (weight 0: a metric).
func newEnvironment() *envserver.Environment {
	all := tasks(numTrain+numTest, 0)
	return &envserver.Environment{
		Name:          name,
		Version:       version,
		Description:   description,
		Kind:          pb.EnvironmentKind_ENVIRONMENT_KIND_SINGLE_TURN,
		MaxTurns:      1,
		Tasks:         map[string][]*pb.Task{"train": all[:numTrain], "test": all[numTrain:]},
		RewardNames:   []string{"digits", "number"},
		RewardWeights: map[string]float64{"digits": 1, "number": 0},
		Sampling:      &pb.SamplingParams{MaxTokens: proto.Int32(maxTokens)},
		NewEpisode:    newEpisode,
		Score:         score,
	}
}

// tasks generates n questions as the Python environment's load_environment(seed=seed) does,
// draw for draw: the same seed gives the same tasks here and there.
func tasks(n int, seed uint32) []*pb.Task {
	rng := newPyRandom(seed)
	out := make([]*pb.Task, n)
	for i := range out {
		a := rng.randint(0, 50)
		ask := asks[rng.choice(len(asks))]
		b := a + rng.randint(1, 50)
		thing := things[rng.choice(len(things))]
		question := strings.NewReplacer("{a}", strconv.Itoa(a), "{b}", strconv.Itoa(b), "{thing}", thing).Replace(ask)
		out[i] = &pb.Task{
			TaskId: fmt.Sprintf("d%04d", i),
			Prompt: []*pb.Message{envserver.Text("system", systemPrompt), envserver.Text("user", question)},
		}
	}
	return out
}

// episode is one reply to one task. It plays the prompt of the task it is given (an inline task
// of the client's, or one of this server's by id), never one looked up by id behind the client's
// back.
type episode struct {
	task *pb.Task
	seed int64
	opts map[string]any
}

func newEpisode(_ context.Context, start *envserver.Start) (envserver.Episode, error) {
	return &episode{task: start.Task, seed: start.Seed, opts: start.Options}, nil
}

func (e *episode) Start(context.Context) ([]*pb.Message, error) { return e.task.Prompt, nil }

func (e *episode) Close() {}

// Act rewards the one reply and ends the episode, with the state the Python environment reports.
func (e *episode) Act(_ context.Context, turn int, action *pb.Message) (*envserver.Result, error) {
	opts := e.opts
	if opts == nil {
		opts = map[string]any{}
	}
	return &envserver.Result{
		Done:    true,
		Rewards: rewards(action.Content),
		State:   map[string]any{"seed": e.seed, "options": opts, "turn": turn},
	}, nil
}

// score rewards the last assistant message after the task's prompt, as the Python rubric does
// with its completion (the messages past the prompt): none, an empty reply.
func score(_ context.Context, req *envserver.ScoreRequest) (map[string]float64, error) {
	reply := ""
	if n := len(req.Task.GetPrompt()); len(req.Messages) > n {
		completion := req.Messages[n:]
		for i := len(completion) - 1; i >= 0; i-- {
			if completion[i].Role == "assistant" {
				reply = completion[i].Content
				break
			}
		}
	}
	return rewards(reply), nil
}
