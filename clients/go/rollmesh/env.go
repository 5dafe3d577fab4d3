package rollmesh

import (
	"context"
	"io"

	pb "github.com/rollmesh/rollmesh/clients/go/rollmeshv1"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/structpb"
)

// EnvClient talks to an environment server (rollmesh.v1.EnvironmentService).
type EnvClient struct {
	conn *grpc.ClientConn
	rpc  pb.EnvironmentServiceClient
	opts Options
}

// DialEnv connects to the environment server at address ("host:port").
func DialEnv(ctx context.Context, address string, opts Options) (*EnvClient, error) {
	opts = opts.withDefaults()
	conn, err := dial(ctx, address, "env", opts)
	if err != nil {
		return nil, err
	}
	return &EnvClient{conn: conn, rpc: pb.NewEnvironmentServiceClient(conn), opts: opts}, nil
}

// RPC is the generated client, for what the methods here do not cover.
func (c *EnvClient) RPC() pb.EnvironmentServiceClient { return c.rpc }

// Close closes the connection.
func (c *EnvClient) Close() error { return c.conn.Close() }

// Describe reports what the server hosts, its limits and its load.
func (c *EnvClient) Describe(ctx context.Context) (*pb.DescribeResponse, error) {
	ctx, cancel := callContext(ctx, c.opts)
	defer cancel()
	return c.rpc.Describe(ctx, &pb.DescribeRequest{})
}

// Score rewards a finished conversation with the environment's own Score (when has_score).
// task may be the full task or just its task_id and split; state is the final step's.
func (c *EnvClient) Score(ctx context.Context, env string, task *pb.Task, messages []*pb.Message, state *structpb.Struct) (*pb.ScoreResponse, error) {
	ctx, cancel := callContext(ctx, c.opts)
	defer cancel()
	return c.rpc.Score(ctx, &pb.ScoreRequest{Env: env, Task: task, Messages: messages, State: state})
}

// ListTasks returns every task of a split ("" = the environment's default split), page by page.
func (c *EnvClient) ListTasks(ctx context.Context, env, split string) ([]*pb.Task, error) {
	var tasks []*pb.Task
	it := c.Tasks(ctx, env, split, 512)
	for it.Next() {
		tasks = append(tasks, it.Task())
	}
	return tasks, it.Err()
}

// Tasks iterates over the tasks of a split, pageSize per ListTasks call (0: all in one call),
// following next_page_token:
//
//	it := client.Tasks(ctx, "maze", "test", 100)
//	for it.Next() {
//		use(it.Task())
//	}
//	if err := it.Err(); err != nil { ... }
func (c *EnvClient) Tasks(ctx context.Context, env, split string, pageSize int32) *TaskIterator {
	return &TaskIterator{ctx: ctx, client: c, req: &pb.ListTasksRequest{Env: env, Split: split, PageSize: pageSize}}
}

// TaskIterator walks the tasks of a split; see EnvClient.Tasks.
type TaskIterator struct {
	ctx    context.Context
	client *EnvClient
	req    *pb.ListTasksRequest
	page   []*pb.Task
	task   *pb.Task
	total  int64
	last   bool
	err    error
}

// Next advances to the next task; false at the end or on an error (see Err).
func (it *TaskIterator) Next() bool {
	for len(it.page) == 0 {
		if it.last || it.err != nil {
			return false
		}
		it.err = it.fetch()
	}
	it.task, it.page = it.page[0], it.page[1:]
	return true
}

// Task is the current task.
func (it *TaskIterator) Task() *pb.Task { return it.task }

// Total is the number of tasks in the split, known after the first Next.
func (it *TaskIterator) Total() int64 { return it.total }

// Err is the error that ended the iteration, if any.
func (it *TaskIterator) Err() error { return it.err }

// fetch reads one page: every message of one ListTasks call.
func (it *TaskIterator) fetch() error {
	ctx, cancel := callContext(it.ctx, it.client.opts)
	defer cancel()
	stream, err := it.client.rpc.ListTasks(ctx, it.req)
	if err != nil {
		return err
	}
	token := ""
	for {
		resp, err := stream.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
		it.page = append(it.page, resp.Tasks...)
		it.total, token = resp.Total, resp.NextPageToken
	}
	it.req.PageToken, it.last = token, token == ""
	return nil
}
