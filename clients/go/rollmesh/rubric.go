package rollmesh

import (
	"context"
	"time"

	pb "github.com/rollmesh/rollmesh/clients/go/rollmeshv1"
	"google.golang.org/grpc"
)

// RubricClient talks to a rubric server (rollmesh.v1.RubricService): it scores trajectories
// with named rubrics (or inline specs) and computes group advantages.
type RubricClient struct {
	conn *grpc.ClientConn
	rpc  pb.RubricServiceClient
	opts Options
}

// DialRubric connects to the rubric server at address. LLM judges can be slow: a zero
// opts.Timeout means 2 minutes here.
func DialRubric(ctx context.Context, address string, opts Options) (*RubricClient, error) {
	if opts.Timeout == 0 {
		opts.Timeout = 2 * time.Minute
	}
	opts = opts.withDefaults()
	conn, err := dial(ctx, address, "rubric", opts)
	if err != nil {
		return nil, err
	}
	return &RubricClient{conn: conn, rpc: pb.NewRubricServiceClient(conn), opts: opts}, nil
}

// RPC is the generated client.
func (c *RubricClient) RPC() pb.RubricServiceClient { return c.rpc }

// Close closes the connection.
func (c *RubricClient) Close() error { return c.conn.Close() }

// Rubric names a configured rubric (Name) or carries one inline (Spec).
type Rubric struct {
	Name string
	Spec *pb.RubricSpec
}

// Named is the configured rubric of that name.
func Named(name string) Rubric { return Rubric{Name: name} }

// ScoreTrajectory scores one trajectory. The result's Errors name functions that failed: their
// reward is then absent, never a silent 0.
func (c *RubricClient) ScoreTrajectory(ctx context.Context, rubric Rubric, trajectory *pb.Trajectory) (*pb.RewardResult, error) {
	ctx, cancel := callContext(ctx, c.opts)
	defer cancel()
	resp, err := c.rpc.ScoreTrajectory(ctx, &pb.ScoreTrajectoryRequest{Rubric: rubric.Name, Spec: rubric.Spec, Trajectory: trajectory})
	if err != nil {
		return nil, err
	}
	return resp.Result, nil
}

// ScoreGroup scores rollouts of one task; it returns their results and group-relative
// advantages, in the order given.
func (c *RubricClient) ScoreGroup(ctx context.Context, rubric Rubric, trajectories []*pb.Trajectory) ([]*pb.RewardResult, []float64, error) {
	ctx, cancel := callContext(ctx, c.opts)
	defer cancel()
	resp, err := c.rpc.ScoreGroup(ctx, &pb.ScoreGroupRequest{Rubric: rubric.Name, Spec: rubric.Spec, Trajectories: trajectories})
	if err != nil {
		return nil, nil, err
	}
	return resp.Results, resp.Advantages, nil
}

// ListRubrics lists the server's configured rubrics.
func (c *RubricClient) ListRubrics(ctx context.Context) ([]*pb.RubricSpec, error) {
	ctx, cancel := callContext(ctx, c.opts)
	defer cancel()
	resp, err := c.rpc.ListRubrics(ctx, &pb.ListRubricsRequest{})
	if err != nil {
		return nil, err
	}
	return resp.Rubrics, nil
}
