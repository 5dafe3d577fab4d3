package envserver

import (
	"fmt"
	"strings"
	"testing"

	pb "github.com/rollmesh/rollmesh/clients/go/rollmeshv1"
)

func TestAnswerToolCalls(t *testing.T) {
	echo := func(call *pb.ToolCall) (string, error) {
		var args struct{ Text string }
		if err := ParseArguments(call, &args); err != nil {
			return "", err
		}
		if args.Text == "" {
			return "", fmt.Errorf("text is required")
		}
		return args.Text, nil
	}
	action := &pb.Message{Role: "assistant", ToolCalls: []*pb.ToolCall{
		{Id: "1", Name: "echo", ArgumentsJson: `{"text": "hi"}`},
		{Id: "2", Name: "echo", ArgumentsJson: `{"text":`},
		{Id: "3", Name: "echo"},
		{Id: "4", Name: "nope"},
	}}
	replies := AnswerToolCalls(action, map[string]ToolFunc{"echo": echo})
	want := []string{"hi", "Error: arguments of echo are not valid JSON", "Error: text is required", `Error: unknown tool "nope". Available tools: echo.`}
	if len(replies) != len(want) {
		t.Fatalf("%d replies", len(replies))
	}
	for i, r := range replies {
		if r.Role != "tool" || r.ToolCallId != action.ToolCalls[i].Id || r.Name != action.ToolCalls[i].Name || !strings.HasPrefix(r.Content, want[i]) {
			t.Errorf("reply %d: %v, want content %q", i, r, want[i])
		}
	}
}
