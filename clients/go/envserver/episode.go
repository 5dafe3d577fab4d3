package envserver

import (
	"fmt"
	"io"
	"strconv"
	"time"

	"github.com/rollmesh/rollmesh/clients/go/rollmesh"
	pb "github.com/rollmesh/rollmesh/clients/go/rollmeshv1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"
)

// Episode runs one episode over one stream: start, then one step per action. The stream ends
// with OK when the client half-closes, or with a status and its reason (docs/protocol.md,
// "3. Episodes").
func (s *service) Episode(stream pb.EnvironmentService_EpisodeServer) (err error) {
	defer recoverAsInternal(&err, "Episode")
	ctx := stream.Context()
	next := s.reader(stream)

	first, err := next()
	if err != nil || first == nil {
		return err // nil: the client closed without starting
	}
	if s.draining.Load() {
		return rollmesh.Error(codes.Unavailable, pb.ErrorReason_DRAINING, nil,
			"server is shutting down; start the episode on another replica")
	}
	if !s.acquire() {
		return rollmesh.Error(codes.ResourceExhausted, pb.ErrorReason_EPISODE_LIMIT,
			map[string]string{"limit": strconv.Itoa(s.limits.MaxConcurrentEpisodes)},
			"server at its limit of %d concurrent episodes; retry later or use another replica", s.limits.MaxConcurrentEpisodes)
	}
	defer s.active.Add(-1)

	e, start, err := s.startOf(first)
	if err != nil {
		return err
	}
	episode, err := e.NewEpisode(ctx, start)
	if err != nil {
		return envError(err, fmt.Sprintf("environment %q failed to create an episode", e.Name))
	}
	defer episode.Close()
	messages, err := episode.Start(ctx)
	if err != nil {
		return envError(err, fmt.Sprintf("environment %q failed to start the episode", e.Name))
	}
	started := &pb.EpisodeStarted{
		EpisodeId: start.EpisodeID,
		Task:      start.Task,
		Messages:  messages,
		Tools:     e.toolSpecs(),
		MaxTurns:  int32(e.MaxTurns),
	}
	if err := stream.Send(&pb.EpisodeResponse{Kind: &pb.EpisodeResponse_Started{Started: started}}); err != nil {
		return err
	}

	turn, done := 0, false
	for {
		req, err := next()
		if err != nil || req == nil {
			return err // nil: the client half-closed
		}
		action, ok := req.Kind.(*pb.EpisodeRequest_Action)
		if !ok {
			return rollmesh.Error(codes.InvalidArgument, pb.ErrorReason_ALREADY_STARTED, nil,
				"the episode has started; send actions, not another start")
		}
		if action.Action.GetMessage() == nil {
			return rollmesh.Error(codes.InvalidArgument, pb.ErrorReason_EMPTY_ACTION, nil, "an action needs a message")
		}
		if done {
			return rollmesh.Error(codes.FailedPrecondition, pb.ErrorReason_EPISODE_DONE, nil,
				"episode %s is done (turn %d); start a new episode", start.EpisodeID, turn)
		}
		message, err := validateAction(action.Action.Message)
		if err != nil {
			return err
		}
		turn++
		result, err := episode.Act(ctx, turn, message)
		if err != nil {
			return envError(err, fmt.Sprintf("environment %q failed at turn %d", e.Name, turn))
		}
		step, err := stepOf(e, turn, result)
		if err != nil {
			return err
		}
		done = step.Done
		if err := stream.Send(&pb.EpisodeResponse{Kind: &pb.EpisodeResponse_Step{Step: step}}); err != nil {
			return err
		}
	}
}

// acquire counts a new episode unless the server is at its limit.
func (s *service) acquire() bool {
	for {
		n := s.active.Load()
		if int(n) >= s.limits.MaxConcurrentEpisodes {
			return false
		}
		if s.active.CompareAndSwap(n, n+1) {
			return true
		}
	}
}

// reader returns a function that reads the next request, nil at the client's half-close. It
// fails with DEADLINE_EXCEEDED when the client sends nothing for the idle timeout.
func (s *service) reader(stream pb.EnvironmentService_EpisodeServer) func() (*pb.EpisodeRequest, error) {
	type received struct {
		req *pb.EpisodeRequest
		err error
	}
	ctx := stream.Context()
	ch := make(chan received)
	go func() {
		for {
			req, err := recv(stream)
			select {
			case ch <- received{req, err}:
			case <-ctx.Done():
				return
			}
			if err != nil {
				return
			}
		}
	}()
	return func() (*pb.EpisodeRequest, error) {
		var idle <-chan time.Time // nil: no idle timeout
		if s.limits.IdleTimeout > 0 {
			timer := time.NewTimer(s.limits.IdleTimeout)
			defer timer.Stop()
			idle = timer.C
		}
		select {
		case r := <-ch:
			if r.err == io.EOF {
				return nil, nil
			}
			return r.req, r.err
		case <-idle:
			seconds := s.limits.idleTimeoutSeconds()
			return nil, rollmesh.Error(codes.DeadlineExceeded, pb.ErrorReason_IDLE_TIMEOUT,
				map[string]string{"idle_timeout_s": strconv.FormatFloat(seconds, 'g', -1, 64)},
				"no message from the client for %g s; episode closed", seconds)
		case <-ctx.Done():
			// The client cancelled or its deadline passed: the status is gRPC's own, and the
			// client, gone, does not read it.
			return nil, status.FromContextError(ctx.Err()).Err()
		}
	}
}

// recv reads the next request; one that does not decode is INVALID_ARGUMENT (MALFORMED_REQUEST).
func recv(stream pb.EnvironmentService_EpisodeServer) (*pb.EpisodeRequest, error) {
	var f frame
	if err := stream.RecvMsg(&f); err != nil {
		return nil, err
	}
	req := &pb.EpisodeRequest{}
	if err := proto.Unmarshal(f.data, req); err != nil {
		return nil, malformedFrame(err)
	}
	return req, nil
}

// startOf resolves the first request to an environment and the start of an episode. An inline
// task takes precedence over task_id and split.
func (s *service) startOf(req *pb.EpisodeRequest) (*Environment, *Start, error) {
	first, ok := req.Kind.(*pb.EpisodeRequest_Start)
	if !ok {
		return nil, nil, rollmesh.Error(codes.InvalidArgument, pb.ErrorReason_NOT_STARTED, nil,
			"the first message of an episode must be `start`")
	}
	start := first.Start
	e, err := s.env(start.Env)
	if err != nil {
		return nil, nil, err
	}
	var task *pb.Task
	switch {
	case start.Task != nil:
		if len(start.Task.Prompt) == 0 {
			return nil, nil, rollmesh.Error(codes.InvalidArgument, pb.ErrorReason_INVALID_TASK, nil, "an inline task needs a prompt")
		}
		task = start.Task
		if task.Env == "" {
			task.Env = e.Name
		}
	case start.TaskId != "":
		if task, err = s.task(e, start.TaskId, start.Split); err != nil {
			return nil, nil, err
		}
	default:
		return nil, nil, rollmesh.Error(codes.InvalidArgument, pb.ErrorReason_NO_TASK, nil,
			"start needs a task_id (see ListTasks) or an inline task")
	}
	id := start.EpisodeId
	if id == "" {
		id = randomHex(16)
	}
	return e, &Start{EpisodeID: id, Task: task, Seed: start.Seed, Options: start.Options.AsMap(), MaxTurns: e.MaxTurns}, nil
}

// validateAction checks that an action is an assistant message. Empty content without tool
// calls is a valid move: the environment answers it like any other.
func validateAction(m *pb.Message) (*pb.Message, error) {
	if m.Role != "" && m.Role != "assistant" {
		return nil, rollmesh.Error(codes.InvalidArgument, pb.ErrorReason_INVALID_FIELD, map[string]string{"field": "action.message.role"},
			"an action is an assistant message, got role %s", rollmesh.Quoted(m.Role))
	}
	for _, call := range m.ToolCalls {
		if call.Name == "" {
			return nil, rollmesh.Error(codes.InvalidArgument, pb.ErrorReason_INVALID_FIELD,
				map[string]string{"field": "action.message.tool_calls.name"}, "every tool call needs a function name")
		}
	}
	m.Role = "assistant"
	return m, nil
}

// stepOf turns an environment's result into the Step of the given turn.
func stepOf(e *Environment, turn int, r *Result) (*pb.Step, error) {
	if r == nil {
		r = &Result{}
	}
	step := &pb.Step{Messages: r.Messages, Done: r.Done, StopReason: r.StopReason, Turn: int32(turn), Metrics: r.Metrics}
	if step.Done && step.StopReason == pb.StopReason_STOP_REASON_UNSPECIFIED {
		step.StopReason = pb.StopReason_STOP_REASON_DONE
	}
	if !step.Done && turn >= e.MaxTurns {
		step.Done, step.StopReason = true, pb.StopReason_STOP_REASON_MAX_TURNS
	}
	if r.Rewards != nil {
		step.Rewards, step.Reward, step.HasReward = r.Rewards, e.weightedSum(r.Rewards), true
	}
	if step.Done {
		metrics := map[string]float64{"turns": float64(turn)}
		for k, v := range r.Metrics {
			metrics[k] = v
		}
		step.Metrics = metrics
		state, err := structpb.NewStruct(r.State)
		if err != nil {
			return nil, rollmesh.Error(codes.Internal, pb.ErrorReason_ENVIRONMENT_FAILED, nil,
				"environment %q returned a state that is not JSON-like: %v", e.Name, err)
		}
		step.State = state
	}
	return step, nil
}
