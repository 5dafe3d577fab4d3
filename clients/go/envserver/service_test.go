package envserver

import (
	"context"
	"testing"

	pb "github.com/rollmesh/rollmesh/clients/go/rollmeshv1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

func TestDescribe(t *testing.T) {
	single := counter(nil)
	single.Name, single.Tasks, single.DefaultSplit = "single", map[string][]*pb.Task{"eval": single.Tasks["test"], "dev": nil}, ""
	client, _, _ := serve(t, Limits{MaxConcurrentEpisodes: 7}, counter(nil), single)
	resp, err := client.Describe(ctxFor(t), &pb.DescribeRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if resp.Server.ProtocolVersion != "v1" || resp.Server.Language != "go" || resp.Server.InstanceId == "" ||
		resp.Server.SdkVersion != "rollmesh-go 1.3.0" {
		t.Errorf("server info %v", resp.Server)
	}
	if l := resp.Limits; l.MaxConcurrentEpisodes != 7 || l.MaxMessageBytes != 16<<20 || l.EpisodeIdleTimeoutS != 300 {
		t.Errorf("limits %v", l)
	}
	env := resp.Environments[0]
	if env.Name != "counter" || env.Kind != pb.EnvironmentKind_ENVIRONMENT_KIND_MULTI_TURN || env.MaxTurns != 3 ||
		env.Splits["train"] != 150 || env.Splits["test"] != 5 || !env.HasScore || len(env.Digest) != 64 ||
		env.DefaultSplit != "train" || env.HasRunEpisode {
		t.Errorf("environment %v", env)
	}
	if other := resp.Environments[1]; other.DefaultSplit != "dev" || other.Splits["dev"] != 0 {
		t.Errorf("without a train split the default is the first split in order: %v", other)
	}
}

func TestNewRejectsBadEnvironments(t *testing.T) {
	noEpisode := counter(nil)
	noEpisode.NewEpisode = nil
	badSchema := counter(nil)
	badSchema.Tools = []Tool{{Name: "t", Parameters: "not json"}}
	badDefault := counter(nil)
	badDefault.DefaultSplit = "validation"
	for name, envs := range map[string][]*Environment{
		"none":                  nil,
		"duplicate":             {counter(nil), counter(nil)},
		"no episode":            {noEpisode},
		"bad schema":            {badSchema},
		"default split missing": {badDefault},
	} {
		if _, err := New(envs, Limits{}); err == nil {
			t.Errorf("%s: New accepted it", name)
		}
	}
}

// listing is one ListTasks call: the messages, and how the call ended.
func listing(t *testing.T, client pb.EnvironmentServiceClient, req *pb.ListTasksRequest) ([]*pb.ListTasksResponse, ended) {
	t.Helper()
	stream, err := client.ListTasks(ctxFor(t), req)
	if err != nil {
		t.Fatal(err)
	}
	var out []*pb.ListTasksResponse
	for {
		resp, err := stream.Recv()
		if err != nil {
			return out, endOf(err)
		}
		out = append(out, resp)
	}
}

func TestListTasksBatchesAndPages(t *testing.T) {
	client, _, _ := serve(t, Limits{}, counter(nil))
	all, e := listing(t, client, &pb.ListTasksRequest{Env: "counter"})
	if e.code != codes.OK || len(all) != 3 || len(all[0].Tasks) != 64 || len(all[2].Tasks) != 22 || all[2].NextPageToken != "" {
		t.Fatalf("full listing: %d messages, %+v", len(all), e)
	}
	for _, m := range all {
		if m.Total != 150 || m.NextPageToken != "" {
			t.Errorf("message of the full listing: total %d, token %q", m.Total, m.NextPageToken)
		}
	}
	if task := all[0].Tasks[0]; task.Env != "counter" || task.Split != "train" || task.TaskId != "t000" {
		t.Errorf("first task %v", task)
	}

	var ids []string
	token, tokens := "", []string{}
	for page := 0; ; page++ {
		msgs, e := listing(t, client, &pb.ListTasksRequest{Env: "counter", Split: "test", PageSize: 2, PageToken: token})
		if e.code != codes.OK || len(msgs) != 1 || msgs[0].Total != 5 {
			t.Fatalf("page %d: %v %+v", page, msgs, e)
		}
		for _, task := range msgs[0].Tasks {
			ids = append(ids, task.TaskId)
		}
		if token = msgs[0].NextPageToken; token == "" {
			break
		}
		tokens = append(tokens, token)
	}
	if len(ids) != 5 || ids[4] != "t004" || len(tokens) != 2 {
		t.Errorf("paged ids %v, tokens %v", ids, tokens)
	}

	end, e := listing(t, client, &pb.ListTasksRequest{Env: "counter", Split: "test", PageToken: pageToken("counter", "test", 5)})
	if e.code != codes.OK || len(end) != 1 || len(end[0].Tasks) != 0 || end[0].Total != 5 {
		t.Errorf("listing from the end: %v %+v", end, e)
	}
	for _, c := range []struct {
		req    *pb.ListTasksRequest
		code   codes.Code
		reason pb.ErrorReason
	}{
		{&pb.ListTasksRequest{Env: "counter", PageToken: "5"}, codes.InvalidArgument, pb.ErrorReason_INVALID_PAGE_TOKEN},
		{&pb.ListTasksRequest{Env: "counter", PageToken: tokens[0]}, codes.InvalidArgument, pb.ErrorReason_INVALID_PAGE_TOKEN}, // of split test
		{&pb.ListTasksRequest{Env: "counter", PageToken: pageToken("counter", "train", 151)}, codes.InvalidArgument, pb.ErrorReason_INVALID_PAGE_TOKEN},
		{&pb.ListTasksRequest{Env: "counter", PageSize: -1}, codes.InvalidArgument, pb.ErrorReason_INVALID_PAGE_SIZE},
		{&pb.ListTasksRequest{Env: "counter", Split: "nope"}, codes.NotFound, pb.ErrorReason_UNKNOWN_SPLIT},
		{&pb.ListTasksRequest{Env: "nope"}, codes.NotFound, pb.ErrorReason_UNKNOWN_ENVIRONMENT},
		{&pb.ListTasksRequest{}, codes.InvalidArgument, pb.ErrorReason_NO_ENVIRONMENT},
	} {
		if _, e := listing(t, client, c.req); e.code != c.code || e.reason != c.reason {
			t.Errorf("%v: %+v, want %v %v", c.req, e, c.code, c.reason)
		}
	}
}

func TestRepliesOverTheLimitNameTheCause(t *testing.T) {
	client, _, _ := serve(t, Limits{MaxMessageBytes: 2048}, counter(nil))
	if _, err := client.Describe(ctxFor(t), &pb.DescribeRequest{}); err != nil {
		t.Fatalf("a small reply: %v", err)
	}
	_, e := listing(t, client, &pb.ListTasksRequest{Env: "counter"}) // 64 tasks are ~3 KB
	if e.code != codes.ResourceExhausted || e.reason != pb.ErrorReason_MESSAGE_TOO_LARGE || e.info["limit_bytes"] != "2048" {
		t.Errorf("a batch of tasks over the limit: %+v", e)
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
		req    *pb.ScoreRequest
		code   codes.Code
		reason pb.ErrorReason
	}{
		{&pb.ScoreRequest{Env: "plain", Task: task}, codes.Unimplemented, pb.ErrorReason_NOT_SUPPORTED},
		{&pb.ScoreRequest{Env: "counter"}, codes.InvalidArgument, pb.ErrorReason_NO_TASK},
		{&pb.ScoreRequest{Env: "counter", Task: &pb.Task{TaskId: "nope"}}, codes.NotFound, pb.ErrorReason_UNKNOWN_TASK},
		{&pb.ScoreRequest{Env: "nope", Task: task}, codes.NotFound, pb.ErrorReason_UNKNOWN_ENVIRONMENT},
	} {
		if _, err := client.Score(ctx, c.req); endOf(err).code != c.code || endOf(err).reason != c.reason {
			t.Errorf("%v: %v, want %v %v", c.req, err, c.code, c.reason)
		}
	}
	_, err = client.RunEpisode(ctx, &pb.RunEpisodeRequest{})
	if e := endOf(err); e.code != codes.Unimplemented || e.reason != pb.ErrorReason_NOT_SUPPORTED {
		t.Errorf("RunEpisode: %+v", e)
	}
}

// Bytes that are not the request message get MALFORMED_REQUEST, whatever the method.
func TestMalformedRequests(t *testing.T) {
	_, conn, _ := serve(t, Limits{}, counter(nil))
	for _, method := range []string{"Describe", "Score", "RunEpisode"} {
		var out []byte
		err := conn.Invoke(ctxFor(t), "/rollmesh.v1.EnvironmentService/"+method, garbage, &out, grpc.ForceCodec(rawCodec{}))
		if e := endOf(err); e.code != codes.InvalidArgument || e.reason != pb.ErrorReason_MALFORMED_REQUEST {
			t.Errorf("%s: %+v", method, e)
		}
	}
	var out []byte
	err := conn.Invoke(ctxFor(t), "/grpc.health.v1.Health/Check", garbage, &out, grpc.ForceCodec(rawCodec{}))
	if e := endOf(err); e.code != codes.InvalidArgument || e.reason != pb.ErrorReason_MALFORMED_REQUEST {
		t.Errorf("health check: %+v", e)
	}
	stream, err := conn.NewStream(ctxFor(t), &grpc.StreamDesc{ServerStreams: true}, "/rollmesh.v1.EnvironmentService/ListTasks", grpc.ForceCodec(rawCodec{}))
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.SendMsg(garbage); err != nil {
		t.Fatal(err)
	}
	stream.CloseSend()
	if e := endOf(stream.RecvMsg(&out)); e.code != codes.InvalidArgument || e.reason != pb.ErrorReason_MALFORMED_REQUEST {
		t.Errorf("ListTasks: %+v", e)
	}
}

func TestDrainingRefusesNewEpisodes(t *testing.T) {
	client, conn, srv := serve(t, Limits{}, counter(nil))
	open := started(t, client, ctxFor(t))
	srv.Drain()
	resp, err := healthpb.NewHealthClient(conn).Check(context.Background(), &healthpb.HealthCheckRequest{Service: ServiceName})
	if err != nil || resp.Status != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Errorf("health while draining: %v %v", resp, err)
	}
	stream, err := client.Episode(ctxFor(t))
	if err != nil {
		t.Fatal(err)
	}
	if e := finalStatus(t, stream, startReq("counter", "t001")); e.code != codes.Unavailable || e.reason != pb.ErrorReason_DRAINING {
		t.Errorf("new episode while draining: %+v", e)
	}
	if s := step(t, open, "stop"); !s.Done { // the open episode goes on
		t.Errorf("open episode while draining: %v", s)
	}
	if e := closeAndWait(t, open); e.code != codes.OK {
		t.Errorf("open episode's end: %+v", e)
	}
}
