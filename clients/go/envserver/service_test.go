package envserver

import (
	"io"
	"testing"

	pb "github.com/rollmesh/rollmesh/clients/go/rollmeshv1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestDescribe(t *testing.T) {
	client, _, _ := serve(t, Limits{MaxConcurrentEpisodes: 7}, counter(nil))
	resp, err := client.Describe(ctxFor(t), &pb.DescribeRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if resp.Server.ProtocolVersion != "v1" || resp.Server.Language != "go" || resp.Server.InstanceId == "" {
		t.Errorf("server info %v", resp.Server)
	}
	if l := resp.Limits; l.MaxConcurrentEpisodes != 7 || l.MaxMessageBytes != 16<<20 || l.EpisodeIdleTimeoutS != 300 {
		t.Errorf("limits %v", l)
	}
	env := resp.Environments[0]
	if env.Name != "counter" || env.Kind != pb.EnvironmentKind_ENVIRONMENT_KIND_MULTI_TURN || env.MaxTurns != 3 ||
		env.Splits["train"] != 150 || env.Splits["test"] != 5 || !env.HasScore || len(env.Digest) != 64 {
		t.Errorf("environment %v", env)
	}
}

func TestNewRejectsBadEnvironments(t *testing.T) {
	noEpisode := counter(nil)
	noEpisode.NewEpisode = nil
	badSchema := counter(nil)
	badSchema.Tools = []Tool{{Name: "t", Parameters: "not json"}}
	for name, envs := range map[string][]*Environment{
		"none":       nil,
		"duplicate":  {counter(nil), counter(nil)},
		"no episode": {noEpisode},
		"bad schema": {badSchema},
	} {
		if _, err := New(envs, Limits{}); err == nil {
			t.Errorf("%s: New accepted it", name)
		}
	}
}

// listing is one ListTasks call: the messages, or the call's status.
func listing(t *testing.T, client pb.EnvironmentServiceClient, req *pb.ListTasksRequest) ([]*pb.ListTasksResponse, codes.Code) {
	t.Helper()
	stream, err := client.ListTasks(ctxFor(t), req)
	if err != nil {
		t.Fatal(err)
	}
	var out []*pb.ListTasksResponse
	for {
		resp, err := stream.Recv()
		if err == io.EOF {
			return out, codes.OK
		}
		if err != nil {
			return out, status.Code(err)
		}
		out = append(out, resp)
	}
}

func TestListTasksBatchesAndPages(t *testing.T) {
	client, _, _ := serve(t, Limits{}, counter(nil))
	all, code := listing(t, client, &pb.ListTasksRequest{Env: "counter"})
	if code != codes.OK || len(all) != 3 || len(all[0].Tasks) != 64 || len(all[2].Tasks) != 22 || all[2].NextPageToken != "" {
		t.Fatalf("full listing: %d messages, %v", len(all), code)
	}
	if task := all[0].Tasks[0]; task.Env != "counter" || task.Split != "train" || task.TaskId != "t000" {
		t.Errorf("first task %v", task)
	}

	var ids []string
	token := ""
	for page := 0; ; page++ {
		msgs, code := listing(t, client, &pb.ListTasksRequest{Env: "counter", Split: "test", PageSize: 2, PageToken: token})
		if code != codes.OK || len(msgs) != 1 || msgs[0].Total != 5 {
			t.Fatalf("page %d: %v %v", page, msgs, code)
		}
		for _, task := range msgs[0].Tasks {
			ids = append(ids, task.TaskId)
		}
		if token = msgs[0].NextPageToken; token == "" {
			break
		}
	}
	if len(ids) != 5 || ids[4] != "t004" {
		t.Errorf("paged ids %v", ids)
	}

	end, code := listing(t, client, &pb.ListTasksRequest{Env: "counter", Split: "test", PageToken: "5"})
	if code != codes.OK || len(end) != 1 || len(end[0].Tasks) != 0 || end[0].Total != 5 {
		t.Errorf("listing from the end: %v %v", end, code)
	}
	for _, c := range []struct {
		req  *pb.ListTasksRequest
		want codes.Code
	}{
		{&pb.ListTasksRequest{Env: "counter", PageToken: "x"}, codes.InvalidArgument},
		{&pb.ListTasksRequest{Env: "counter", PageToken: "151"}, codes.InvalidArgument},
		{&pb.ListTasksRequest{Env: "counter", PageSize: -1}, codes.InvalidArgument},
		{&pb.ListTasksRequest{Env: "counter", Split: "nope"}, codes.NotFound},
		{&pb.ListTasksRequest{Env: "nope"}, codes.NotFound},
		{&pb.ListTasksRequest{}, codes.InvalidArgument},
	} {
		if _, code := listing(t, client, c.req); code != c.want {
			t.Errorf("%v: %v, want %v", c.req, code, c.want)
		}
	}
}

func TestScore(t *testing.T) {
	noScore := counter(nil)
	noScore.Name, noScore.Score = "plain", nil
	client, _, _ := serve(t, Limits{}, counter(nil), noScore)
	ctx := ctxFor(t)
	task := &pb.Task{TaskId: "t002"}
	resp, err := client.Score(ctx, &pb.ScoreRequest{Env: "counter", Task: task, Messages: []*pb.Message{Text("user", "hi")}})
	if err != nil || resp.Reward != 2 || resp.Rewards["bonus"] != 2 {
		t.Errorf("score %v %v", resp, err) // turns 1 + 0.5 * bonus 2
	}
	for _, c := range []struct {
		req  *pb.ScoreRequest
		want codes.Code
	}{
		{&pb.ScoreRequest{Env: "plain", Task: task}, codes.Unimplemented},
		{&pb.ScoreRequest{Env: "counter"}, codes.InvalidArgument},
		{&pb.ScoreRequest{Env: "counter", Task: &pb.Task{TaskId: "nope"}}, codes.NotFound},
		{&pb.ScoreRequest{Env: "nope", Task: task}, codes.NotFound},
	} {
		if _, err := client.Score(ctx, c.req); status.Code(err) != c.want {
			t.Errorf("%v: %v, want %v", c.req, err, c.want)
		}
	}
	if _, err := client.RunEpisode(ctx, &pb.RunEpisodeRequest{}); status.Code(err) != codes.Unimplemented {
		t.Errorf("RunEpisode: %v", err)
	}
}
