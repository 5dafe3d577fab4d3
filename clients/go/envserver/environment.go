// Package envserver serves rollmesh environments written in Go over the EnvironmentService
// contract (docs/protocol.md): episode limits, an idle timeout, message size limits, paged task
// listing, an ErrorInfo on every error status, health, server reflection, registration in the
// NATS registry and a graceful shutdown.
//
// An author fills in an Environment (its tasks, tools and a NewEpisode constructor) and calls
// Main, or New and Serve for more control. Environment code that wants a particular status
// returns one made with rollmesh.Error (code and reason); any other error, or a panic, ends the
// call with INTERNAL (ENVIRONMENT_FAILED).
package envserver

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"

	pb "github.com/rollmesh/rollmesh/clients/go/rollmeshv1"
)

// Environment is tasks + a harness + rewards, served under Name.
type Environment struct {
	Name        string
	Version     string
	Description string
	// Kind defaults to TOOL when the environment has tools, MULTI_TURN otherwise.
	Kind pb.EnvironmentKind
	// Upper bound on assistant turns; the episode ends with STOP_REASON_MAX_TURNS there.
	MaxTurns int
	Tools    []Tool
	// Tasks by split name. The server serves copies with Task.env and Task.split filled in.
	Tasks map[string][]*pb.Task
	// DefaultSplit is used when a request names no split: "train" when present, else the first
	// in sorted order.
	DefaultSplit string
	// RewardNames lists the rewards the environment reports. A reward's weight in the total
	// reward comes from RewardWeights (1 when absent; 0 makes it a metric only).
	RewardNames   []string
	RewardWeights map[string]float64
	// Digest of the environment's code and data; derived from the binary and tasks when empty.
	Digest   string
	Sampling *pb.SamplingParams

	// NewEpisode prepares one episode of a task. Required.
	NewEpisode func(ctx context.Context, start *Start) (Episode, error)
	// Score rewards a finished conversation; nil makes Score UNIMPLEMENTED (NOT_SUPPORTED).
	Score func(ctx context.Context, req *ScoreRequest) (map[string]float64, error)
}

// Tool is a tool the policy may call.
type Tool struct {
	Name        string
	Description string
	// Parameters is the JSON Schema of the arguments object.
	Parameters string
}

// Start is what the client asked for when it started an episode.
type Start struct {
	EpisodeID string
	Task      *pb.Task
	Seed      int64
	Options   map[string]any
	// MaxTurns is the environment's turn limit: the episode ends after Act of that turn, so
	// report the rewards there.
	MaxTurns int
}

// ScoreRequest is a finished conversation to score.
type ScoreRequest struct {
	Task     *pb.Task
	Messages []*pb.Message
	// State of the episode's final step, when the client passed it on.
	State map[string]any
}

// Episode is the state of one episode. The server calls Start once, then Act once per assistant
// message (turn counts from 1), and Close once however the episode ends.
type Episode interface {
	// Start returns the messages the policy sees first (usually the task's prompt).
	Start(ctx context.Context) ([]*pb.Message, error)
	// Act answers one assistant message.
	Act(ctx context.Context, turn int, action *pb.Message) (*Result, error)
	// Close frees the episode's resources.
	Close()
}

// Result is the environment's answer to one action.
type Result struct {
	// New messages for the policy: tool results, feedback, the next user turn.
	Messages []*pb.Message
	Done     bool
	// StopReason defaults to STOP_REASON_DONE when Done.
	StopReason pb.StopReason
	// Inline rewards; the step's reward is their weighted sum. Nil: no inline reward.
	Rewards map[string]float64
	Metrics map[string]float64
	// State is sent with the final step, for Score. JSON-like values only.
	State map[string]any
}

func (e *Environment) kind() pb.EnvironmentKind {
	switch {
	case e.Kind != pb.EnvironmentKind_ENVIRONMENT_KIND_UNSPECIFIED:
		return e.Kind
	case len(e.Tools) > 0:
		return pb.EnvironmentKind_ENVIRONMENT_KIND_TOOL
	case e.MaxTurns == 1:
		return pb.EnvironmentKind_ENVIRONMENT_KIND_SINGLE_TURN
	}
	return pb.EnvironmentKind_ENVIRONMENT_KIND_MULTI_TURN
}

// defaultSplit is the split of requests that name none: "" when there are no splits.
func (e *Environment) defaultSplit() string {
	if e.DefaultSplit != "" {
		return e.DefaultSplit
	}
	if _, ok := e.Tasks["train"]; ok {
		return "train"
	}
	if names := e.splitNames(); len(names) > 0 {
		return names[0]
	}
	return ""
}

func (e *Environment) splitNames() []string {
	names := make([]string, 0, len(e.Tasks))
	for name := range e.Tasks {
		names = append(names, name)
	}
	sort.Strings(names)
	return names
}

// weightedSum is the total reward: each reward times its weight (1 unless RewardWeights says).
func (e *Environment) weightedSum(rewards map[string]float64) float64 {
	total := 0.0
	for name, value := range rewards {
		weight, ok := e.RewardWeights[name]
		if !ok {
			weight = 1
		}
		total += weight * value
	}
	return total
}

func (e *Environment) toolSpecs() []*pb.ToolSpec {
	specs := make([]*pb.ToolSpec, len(e.Tools))
	for i, t := range e.Tools {
		specs[i] = &pb.ToolSpec{Name: t.Name, Description: t.Description, ParametersJsonSchema: t.Parameters}
	}
	return specs
}

// check reports what is wrong with the definition.
func (e *Environment) check() error {
	if e.Name == "" {
		return fmt.Errorf("an environment needs a name")
	}
	if e.MaxTurns < 1 {
		return fmt.Errorf("environment %q: MaxTurns must be >= 1, got %d", e.Name, e.MaxTurns)
	}
	if e.NewEpisode == nil {
		return fmt.Errorf("environment %q: NewEpisode is required", e.Name)
	}
	if _, ok := e.Tasks[e.DefaultSplit]; e.DefaultSplit != "" && !ok {
		return fmt.Errorf("environment %q: DefaultSplit %q is not one of its splits %v", e.Name, e.DefaultSplit, e.splitNames())
	}
	tools := map[string]bool{}
	for _, t := range e.Tools {
		if t.Name == "" || tools[t.Name] {
			return fmt.Errorf("environment %q: tool names must be set and unique, got %q", e.Name, t.Name)
		}
		tools[t.Name] = true
		var schema map[string]any
		if err := json.Unmarshal([]byte(t.Parameters), &schema); err != nil {
			return fmt.Errorf("environment %q: tool %q: Parameters is not a JSON object: %v", e.Name, t.Name, err)
		}
	}
	for split, tasks := range e.Tasks {
		ids := map[string]bool{}
		for _, t := range tasks {
			if t.TaskId == "" || ids[t.TaskId] {
				return fmt.Errorf("environment %q, split %q: task ids must be set and unique, got %q", e.Name, split, t.TaskId)
			}
			ids[t.TaskId] = true
		}
	}
	return nil
}
