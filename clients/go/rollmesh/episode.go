package rollmesh

import (
	"context"
	"fmt"
	"io"

	pb "github.com/rollmesh/rollmesh/clients/go/rollmeshv1"
)

// Episode is one open episode: one Episode stream (docs/protocol.md, "3. Episodes"). Start it
// with EnvClient.Start, send the policy's messages with Act, and Close it.
type Episode struct {
	stream   pb.EnvironmentService_EpisodeClient
	cancel   context.CancelFunc
	started  *pb.EpisodeStarted
	messages []*pb.Message
	last     *pb.Step
	ended    bool
}

// Start opens an episode: of a dataset task (Env, TaskId, Split) or of an inline Task. ctx
// bounds the whole episode; cancelling it ends the episode on the server.
func (c *EnvClient) Start(ctx context.Context, start *pb.StartEpisode) (*Episode, error) {
	ctx, cancel := context.WithCancel(ctx)
	stream, err := c.rpc.Episode(ctx)
	if err != nil {
		cancel()
		return nil, err
	}
	e := &Episode{stream: stream, cancel: cancel}
	resp, err := e.exchange(&pb.EpisodeRequest{Kind: &pb.EpisodeRequest_Start{Start: start}})
	if err != nil {
		return nil, err
	}
	if e.started = resp.GetStarted(); e.started == nil {
		e.end()
		return nil, fmt.Errorf("the server answered start with %v instead of `started`", resp)
	}
	e.messages = append(e.messages, e.started.Messages...)
	return e, nil
}

// StartTask opens an episode of a task of the environment's dataset ("" split: the default).
func (c *EnvClient) StartTask(ctx context.Context, env, taskID, split string) (*Episode, error) {
	return c.Start(ctx, &pb.StartEpisode{Env: env, TaskId: taskID, Split: split})
}

// Started is the server's `started`: episode id, task, prompt, tools and max turns.
func (e *Episode) Started() *pb.EpisodeStarted { return e.started }

// Messages is the conversation so far: the prompt, each action and the environment's replies.
// Send the prompt to the model as it is: it holds the system prompt already.
func (e *Episode) Messages() []*pb.Message { return e.messages }

// Last is the latest step (nil before the first action).
func (e *Episode) Last() *pb.Step { return e.last }

// Done reports whether the last step ended the episode.
func (e *Episode) Done() bool { return e.last.GetDone() }

// Act sends one assistant message and returns the environment's step. An assistant message with
// empty content is a valid move; the environment answers it like any other.
func (e *Episode) Act(action *pb.Message) (*pb.Step, error) {
	if action.Role == "" {
		action.Role = "assistant"
	}
	resp, err := e.exchange(&pb.EpisodeRequest{Kind: &pb.EpisodeRequest_Action{Action: &pb.Action{Message: action}}})
	if err != nil {
		return nil, err
	}
	step := resp.GetStep()
	if step == nil {
		e.end()
		return nil, fmt.Errorf("the server answered an action with %v instead of a step", resp)
	}
	e.messages = append(append(e.messages, action), step.Messages...)
	e.last = step
	return step, nil
}

// Reply is Act with a plain assistant text.
func (e *Episode) Reply(content string) (*pb.Step, error) {
	return e.Act(&pb.Message{Role: "assistant", Content: content})
}

// Close ends the episode: a half-close, which the server answers by ending the stream OK
// (before the final step too). It returns the stream's final status; nil when already ended.
func (e *Episode) Close() error {
	if e.ended {
		return nil
	}
	defer e.end()
	if err := e.stream.CloseSend(); err != nil {
		return err
	}
	for {
		if _, err := e.stream.Recv(); err == io.EOF {
			return nil
		} else if err != nil {
			return err
		}
	}
}

// exchange sends one request and reads its one reply. A failed send means the server ended the
// stream: its status comes with the next Recv.
func (e *Episode) exchange(req *pb.EpisodeRequest) (*pb.EpisodeResponse, error) {
	if e.ended {
		return nil, fmt.Errorf("the episode has ended")
	}
	if err := e.stream.Send(req); err != nil && err != io.EOF {
		e.end()
		return nil, err
	}
	resp, err := e.stream.Recv()
	if err == io.EOF {
		err = fmt.Errorf("the server ended the episode stream without a reply")
	}
	if err != nil {
		e.end()
		return nil, err
	}
	return resp, nil
}

func (e *Episode) end() {
	e.ended = true
	e.cancel()
}
