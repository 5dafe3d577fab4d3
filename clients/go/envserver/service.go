package envserver

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log"
	"runtime/debug"
	"sort"
	"strings"
	"sync/atomic"

	"github.com/rollmesh/rollmesh/clients/go/rollmesh"
	pb "github.com/rollmesh/rollmesh/clients/go/rollmeshv1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

const (
	// ProtocolVersion is the rollmesh protocol this package speaks.
	ProtocolVersion = rollmesh.ProtocolVersion
	// SDKVersion names this helper in Describe.
	SDKVersion = "rollmesh-go " + rollmesh.Version
	// listBatch is the number of tasks per ListTasks message.
	listBatch = 64
)

// service implements pb.EnvironmentServiceServer over a set of environments.
type service struct {
	pb.UnimplementedEnvironmentServiceServer
	envs       map[string]*Environment
	names      []string
	splits     map[string]map[string][]*pb.Task          // env -> split -> tasks
	byID       map[string]map[string]map[string]*pb.Task // env -> split -> task id -> task
	digests    map[string]string
	limits     Limits
	instanceID string
	active     atomic.Int32
	draining   atomic.Bool
}

func newService(envs []*Environment, limits Limits) (*service, error) {
	if len(envs) == 0 {
		return nil, fmt.Errorf("need at least one environment")
	}
	s := &service{
		envs:       map[string]*Environment{},
		splits:     map[string]map[string][]*pb.Task{},
		byID:       map[string]map[string]map[string]*pb.Task{},
		digests:    map[string]string{},
		limits:     limits,
		instanceID: randomHex(6),
	}
	for _, e := range envs {
		if err := e.check(); err != nil {
			return nil, err
		}
		if _, dup := s.envs[e.Name]; dup {
			return nil, fmt.Errorf("environment names must be unique; %q appears twice", e.Name)
		}
		s.envs[e.Name] = e
		s.names = append(s.names, e.Name)
		s.splits[e.Name] = map[string][]*pb.Task{}
		s.byID[e.Name] = map[string]map[string]*pb.Task{}
		for split, tasks := range e.Tasks {
			s.splits[e.Name][split] = make([]*pb.Task, 0, len(tasks))
			s.byID[e.Name][split] = map[string]*pb.Task{}
			for _, t := range tasks {
				t = proto.Clone(t).(*pb.Task)
				t.Env, t.Split = e.Name, split
				s.splits[e.Name][split] = append(s.splits[e.Name][split], t)
				s.byID[e.Name][split][t.TaskId] = t
			}
		}
		s.digests[e.Name] = e.Digest
		if e.Digest == "" {
			s.digests[e.Name] = digest(e)
		}
	}
	return s, nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}

func (s *service) env(name string) (*Environment, error) {
	hosted := map[string]string{"environments": strings.Join(s.sortedNames(), ",")}
	if name == "" {
		return nil, rollmesh.Error(codes.InvalidArgument, pb.ErrorReason_NO_ENVIRONMENT, hosted,
			"no environment named; this server hosts %s", s.sortedNames())
	}
	e, ok := s.envs[name]
	if !ok {
		return nil, rollmesh.Error(codes.NotFound, pb.ErrorReason_UNKNOWN_ENVIRONMENT, hosted,
			"no environment %s on this server; it hosts %s", rollmesh.Quoted(name), s.sortedNames())
	}
	return e, nil
}

func (s *service) sortedNames() []string {
	names := append([]string(nil), s.names...)
	sort.Strings(names)
	return names
}

// tasks resolves a split ("" = the default split) to its name and tasks.
func (s *service) tasks(e *Environment, split string) (string, []*pb.Task, error) {
	if split == "" {
		split = e.defaultSplit()
	}
	tasks, ok := s.splits[e.Name][split]
	if !ok {
		return split, nil, rollmesh.Error(codes.NotFound, pb.ErrorReason_UNKNOWN_SPLIT,
			map[string]string{"splits": strings.Join(e.splitNames(), ",")},
			"environment %q has no split %s; splits: %v", e.Name, rollmesh.Quoted(split), e.splitNames())
	}
	return split, tasks, nil
}

func (s *service) task(e *Environment, id, split string) (*pb.Task, error) {
	split, tasks, err := s.tasks(e, split)
	if err != nil {
		return nil, err
	}
	t, ok := s.byID[e.Name][split][id]
	if !ok {
		return nil, rollmesh.Error(codes.NotFound, pb.ErrorReason_UNKNOWN_TASK, nil,
			"environment %q has no task %s in split %s (%d tasks; list them with ListTasks)",
			e.Name, rollmesh.Quoted(id), rollmesh.Quoted(split), len(tasks))
	}
	return t, nil
}

// Describe reports the environments, the limits and the current load.
func (s *service) Describe(ctx context.Context, _ *pb.DescribeRequest) (*pb.DescribeResponse, error) {
	resp := &pb.DescribeResponse{
		Server: &pb.ServerInfo{
			ProtocolVersion: ProtocolVersion,
			Language:        "go",
			SdkVersion:      SDKVersion,
			InstanceId:      s.instanceID,
		},
		Limits: &pb.ServerLimits{
			MaxConcurrentEpisodes: int32(s.limits.MaxConcurrentEpisodes),
			MaxMessageBytes:       int64(s.limits.MaxMessageBytes),
			EpisodeIdleTimeoutS:   s.limits.idleTimeoutSeconds(),
		},
		ActiveEpisodes: s.active.Load(),
	}
	for _, name := range s.names {
		e := s.envs[name]
		info := &pb.EnvironmentInfo{
			Name:            e.Name,
			Version:         e.Version,
			Description:     e.Description,
			Kind:            e.kind(),
			Tools:           e.toolSpecs(),
			MaxTurns:        int32(e.MaxTurns),
			Splits:          map[string]int64{},
			RewardNames:     e.RewardNames,
			HasScore:        e.Score != nil,
			Digest:          s.digests[name],
			DefaultSampling: e.Sampling,
			HasRunEpisode:   false,
			DefaultSplit:    e.defaultSplit(),
		}
		for split, tasks := range e.Tasks {
			info.Splits[split] = int64(len(tasks))
		}
		resp.Environments = append(resp.Environments, info)
	}
	return resp, nil
}

// ListTasks streams a split in batches of 64 tasks, paged by page_size and an opaque page_token.
func (s *service) ListTasks(req *pb.ListTasksRequest, stream pb.EnvironmentService_ListTasksServer) error {
	e, err := s.env(req.Env)
	if err != nil {
		return err
	}
	split, tasks, err := s.tasks(e, req.Split)
	if err != nil {
		return err
	}
	if req.PageSize < 0 {
		return rollmesh.Error(codes.InvalidArgument, pb.ErrorReason_INVALID_PAGE_SIZE, map[string]string{"field": "page_size"},
			"page_size must be >= 0 (0: all remaining tasks), got %d", req.PageSize)
	}
	start, err := pageOffset(req.PageToken, e.Name, split, len(tasks))
	if err != nil {
		return err
	}
	end := len(tasks)
	if req.PageSize > 0 && start+int(req.PageSize) < end {
		end = start + int(req.PageSize)
	}
	total := int64(len(tasks))
	if start == end {
		return stream.Send(&pb.ListTasksResponse{Total: total})
	}
	for i := start; i < end; i += listBatch {
		j := i + listBatch
		if j > end {
			j = end
		}
		resp := &pb.ListTasksResponse{Tasks: tasks[i:j], Total: total}
		if j == end && end < len(tasks) {
			resp.NextPageToken = pageToken(e.Name, split, end)
		}
		if err := stream.Send(resp); err != nil {
			return err
		}
	}
	return nil
}

// Score runs the environment's Score on a finished conversation.
func (s *service) Score(ctx context.Context, req *pb.ScoreRequest) (_ *pb.ScoreResponse, err error) {
	defer recoverAsInternal(&err, "Score")
	e, err := s.env(req.Env)
	if err != nil {
		return nil, err
	}
	if e.Score == nil {
		return nil, rollmesh.Error(codes.Unimplemented, pb.ErrorReason_NOT_SUPPORTED, nil,
			"environment %q does not implement Score (has_score is false)", e.Name)
	}
	task := req.Task
	switch {
	case task != nil && (len(task.Prompt) > 0 || task.Answer != ""):
	case task != nil && task.TaskId != "":
		if task, err = s.task(e, task.TaskId, task.Split); err != nil {
			return nil, err
		}
	default:
		return nil, rollmesh.Error(codes.InvalidArgument, pb.ErrorReason_NO_TASK, nil,
			"Score needs the task (inline, or its task_id and split)")
	}
	rewards, err := e.Score(ctx, &ScoreRequest{Task: task, Messages: req.Messages, State: req.State.AsMap()})
	if err != nil {
		return nil, envError(err, fmt.Sprintf("environment %q failed in Score", e.Name))
	}
	return &pb.ScoreResponse{Rewards: rewards, Reward: e.weightedSum(rewards)}, nil
}

// RunEpisode is not supported: clients drive episodes with the Episode stream.
func (s *service) RunEpisode(context.Context, *pb.RunEpisodeRequest) (*pb.RunEpisodeResponse, error) {
	return nil, rollmesh.Error(codes.Unimplemented, pb.ErrorReason_NOT_SUPPORTED, nil,
		"this Go server does not drive episodes itself (has_run_episode is false); drive them with the Episode stream")
}

// recoverAsInternal turns a panic in environment code into INTERNAL: it must not crash the server.
func recoverAsInternal(err *error, rpc string) {
	if r := recover(); r != nil {
		log.Printf("%s panicked: %v\n%s", rpc, r, debug.Stack())
		*err = rollmesh.Error(codes.Internal, pb.ErrorReason_ENVIRONMENT_FAILED, nil, "the environment panicked in %s: %v", rpc, r)
	}
}

// envError passes errors that carry a rollmesh ErrorInfo (made with rollmesh.Error) through;
// any other error of environment code is INTERNAL (ENVIRONMENT_FAILED).
func envError(err error, where string) error {
	if rollmesh.ErrorInfo(err) != nil {
		return err
	}
	if st, ok := status.FromError(err); ok {
		return rollmesh.Error(codes.Internal, pb.ErrorReason_ENVIRONMENT_FAILED, nil, "%s: %s", where, st.Message())
	}
	return rollmesh.Error(codes.Internal, pb.ErrorReason_ENVIRONMENT_FAILED, nil, "%s: %v", where, err)
}
