package rollmesh_test

import (
	"testing"

	"github.com/rollmesh/rollmesh/clients/go/internal/testservers"
	"github.com/rollmesh/rollmesh/clients/go/rollmesh"
	pb "github.com/rollmesh/rollmesh/clients/go/rollmeshv1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"
)

// The Python rubric server has rubric "rules": correct (exact_match on the last number, weight
// 1) and polite (regex "thanks", weight 0.5).

func answered(said string) *pb.Trajectory {
	return &pb.Trajectory{
		Task: &pb.Task{TaskId: "sum", Answer: "4"},
		Messages: []*pb.Message{
			rollmesh.Text("user", "What is 2 + 2?"),
			rollmesh.Text("assistant", said),
		},
	}
}

func TestRubricClient(t *testing.T) {
	ctx := testservers.Context(t)
	client, err := rollmesh.DialRubric(ctx, testservers.Address(t, testservers.RubricAddress), rollmesh.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()

	rubrics, err := client.ListRubrics(ctx)
	if err != nil || len(rubrics) != 1 || rubrics[0].Name != "rules" || len(rubrics[0].Functions) != 2 {
		t.Fatalf("rubrics %v %v", rubrics, err)
	}
	result, err := client.ScoreTrajectory(ctx, rollmesh.Named("rules"), answered("Thanks for asking: 4"))
	if err != nil || result.Rewards["correct"] != 1 || result.Rewards["polite"] != 1 || result.Reward != 1.5 || len(result.Errors) != 0 {
		t.Errorf("score %v %v", result, err)
	}

	results, advantages, err := client.ScoreGroup(ctx, rollmesh.Named("rules"), []*pb.Trajectory{answered("4"), answered("5")})
	if err != nil || len(results) != 2 || results[0].Reward != 1 || results[1].Reward != 0 ||
		len(advantages) != 2 || !(advantages[0] > 0 && advantages[1] < 0) {
		t.Errorf("group %v %v %v", results, advantages, err)
	}

	params, _ := structpb.NewStruct(map[string]any{"pattern": "(?i)please"})
	inline := rollmesh.Rubric{Spec: &pb.RubricSpec{Name: "asks", Functions: []*pb.RewardFunctionSpec{
		{Name: "asks", Function: "regex", Weight: 1, Params: params},
	}}}
	if result, err := client.ScoreTrajectory(ctx, inline, answered("4, please")); err != nil || result.Rewards["asks"] != 1 {
		t.Errorf("inline rubric: %v %v", result, err)
	}

	_, err = client.ScoreTrajectory(ctx, rollmesh.Named("rulez"), answered("4"))
	if status.Code(err) != codes.NotFound || rollmesh.Reason(err) != pb.ErrorReason_UNKNOWN_RUBRIC {
		t.Errorf("unknown rubric: %v", err)
	}
	_, err = client.ScoreTrajectory(ctx, rollmesh.Named("rules"), nil)
	if status.Code(err) != codes.InvalidArgument || rollmesh.Reason(err) != pb.ErrorReason_NO_TRAJECTORY {
		t.Errorf("no trajectory: %v", err)
	}
}
