package main

import (
	"context"
	"fmt"
	"strings"

	"github.com/rollmesh/rollmesh/clients/go/envserver"
	"github.com/rollmesh/rollmesh/clients/go/rollmesh"
	pb "github.com/rollmesh/rollmesh/clients/go/rollmeshv1"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/structpb"
)

const systemPrompt = "You are in a maze drawn with # for walls and . for open squares. " +
	"Call move(direction) with up, down, left or right to move one square. " +
	"Reach G to win. Answer without a tool call to give up."

const moveSchema = `{"type":"object","properties":{"direction":{"type":"string",` +
	`"enum":["up","down","left","right"],"description":"where to move one square"}},` +
	`"required":["direction"],"additionalProperties":false}`

// newEnvironment is the "maze" environment: 100 train and 20 test mazes of 3 to 5 rooms a side.
func newEnvironment() *envserver.Environment {
	return &envserver.Environment{
		Name:        "maze",
		Version:     "0.1.0",
		Description: "Find the way out of a small maze by calling move(direction).",
		Kind:        pb.EnvironmentKind_ENVIRONMENT_KIND_TOOL,
		MaxTurns:    64,
		Tools:       []envserver.Tool{{Name: "move", Description: "Move one square in a direction.", Parameters: moveSchema}},
		Tasks:       map[string][]*pb.Task{"train": tasks("train", 100, 1), "test": tasks("test", 20, 1_000_003)},
		RewardNames: []string{"solved"},
		NewEpisode:  newEpisode,
		Score:       score,
	}
}

// tasks generates n mazes; the answer is a shortest path, comma-separated.
func tasks(split string, n int, seed uint64) []*pb.Task {
	out := make([]*pb.Task, n)
	for i := range out {
		m := generate(3+i%3, seed+uint64(i))
		rows := make([]any, len(m.rows))
		for r, row := range m.rows {
			rows[r] = row
		}
		info, err := structpb.NewStruct(map[string]any{"maze": rows})
		if err != nil {
			panic(err)
		}
		out[i] = &pb.Task{
			TaskId: fmt.Sprintf("%s-%03d", split, i),
			Prompt: []*pb.Message{
				envserver.Text("system", systemPrompt),
				envserver.Text("user", fmt.Sprintf("Find the way from S to G.\n\n%s\n\nYou are at S (row %d, column %d); G is at row %d, column %d.",
					strings.Join(m.rows, "\n"), m.start.row, m.start.col, m.goal.row, m.goal.col)),
			},
			Answer: strings.Join(m.solve(), ","),
			Info:   info,
		}
	}
	return out
}

// mazeOf reads the maze of a task from its info.
func mazeOf(task *pb.Task) (*maze, error) {
	var rows []string
	for _, v := range task.GetInfo().GetFields()["maze"].GetListValue().GetValues() {
		rows = append(rows, v.GetStringValue())
	}
	if len(rows) == 0 {
		return nil, rollmesh.Error(codes.InvalidArgument, pb.ErrorReason_INVALID_TASK, nil, "a maze task needs info.maze: the rows of the maze")
	}
	m, err := parseMaze(rows)
	if err != nil {
		return nil, rollmesh.Error(codes.InvalidArgument, pb.ErrorReason_INVALID_TASK, nil, "%v", err)
	}
	return m, nil
}

// episode is one walk through a maze.
type episode struct {
	task     *pb.Task
	maze     *maze
	maxTurns int
	at       point
	moves    int
	solved   bool
}

func newEpisode(_ context.Context, start *envserver.Start) (envserver.Episode, error) {
	m, err := mazeOf(start.Task)
	if err != nil {
		return nil, err
	}
	return &episode{task: start.Task, maze: m, maxTurns: start.MaxTurns, at: m.start}, nil
}

func (e *episode) Start(context.Context) ([]*pb.Message, error) { return e.task.Prompt, nil }

func (e *episode) Close() {}

// Act answers the move calls of an action; a message without tool calls ends the episode.
func (e *episode) Act(_ context.Context, turn int, action *pb.Message) (*envserver.Result, error) {
	result := &envserver.Result{}
	if len(action.ToolCalls) == 0 {
		result.Done = true
	} else {
		result.Messages = envserver.AnswerToolCalls(action, map[string]envserver.ToolFunc{"move": e.move})
		result.Done = e.solved
	}
	if result.Done || turn >= e.maxTurns {
		result.Rewards = map[string]float64{"solved": boolFloat(e.solved)}
		result.Metrics = map[string]float64{"moves": float64(e.moves), "shortest": float64(len(e.maze.solve()))}
		result.State = map[string]any{"row": e.at.row, "col": e.at.col, "moves": e.moves, "solved": e.solved}
	}
	return result, nil
}

func (e *episode) move(call *pb.ToolCall) (string, error) {
	var args struct{ Direction string }
	if err := envserver.ParseArguments(call, &args); err != nil {
		return "", err
	}
	if e.solved {
		return "The maze is solved already; no more moves.", nil
	}
	if _, ok := offsets[args.Direction]; !ok {
		return "", fmt.Errorf("direction must be one of %s, got %q", strings.Join(directions, ", "), args.Direction)
	}
	next := e.at.step(args.Direction)
	if !e.maze.open(next) {
		return fmt.Sprintf("A wall blocks the way %s. You are still at row %d, column %d; open: %s.",
			args.Direction, e.at.row, e.at.col, strings.Join(e.maze.exits(e.at), ", ")), nil
	}
	e.at, e.moves = next, e.moves+1
	if e.at == e.maze.goal {
		e.solved = true
		return fmt.Sprintf("You reached G in %d moves. Solved!", e.moves), nil
	}
	return fmt.Sprintf("Moved %s to row %d, column %d; open: %s.",
		args.Direction, e.at.row, e.at.col, strings.Join(e.maze.exits(e.at), ", ")), nil
}

// score replays the move calls of a conversation: solved is 1 when they reach G.
func score(_ context.Context, req *envserver.ScoreRequest) (map[string]float64, error) {
	m, err := mazeOf(req.Task)
	if err != nil {
		return nil, err
	}
	replay := &episode{maze: m, at: m.start}
	for _, msg := range req.Messages {
		if msg.Role == "assistant" {
			envserver.AnswerToolCalls(msg, map[string]envserver.ToolFunc{"move": replay.move})
		}
	}
	return map[string]float64{"solved": boolFloat(replay.solved)}, nil
}

func boolFloat(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
