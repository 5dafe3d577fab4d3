package envserver

import (
	"encoding/json"
	"fmt"
	"sort"
	"strings"

	pb "github.com/rollmesh/rollmesh/clients/go/rollmeshv1"
)

// ToolFunc answers one tool call; an error becomes the tool's reply, so the policy can recover.
type ToolFunc func(call *pb.ToolCall) (string, error)

// AnswerToolCalls answers every tool call of an action, in order, with a "tool" message each.
// Calls to names missing from handlers get an error reply listing the available tools.
func AnswerToolCalls(action *pb.Message, handlers map[string]ToolFunc) []*pb.Message {
	replies := make([]*pb.Message, 0, len(action.ToolCalls))
	for _, call := range action.ToolCalls {
		var content string
		if handle, ok := handlers[call.Name]; !ok {
			content = fmt.Sprintf("Error: unknown tool %q. Available tools: %s.", call.Name, strings.Join(sortedKeys(handlers), ", "))
		} else if out, err := handle(call); err != nil {
			content = "Error: " + err.Error()
		} else {
			content = out
		}
		replies = append(replies, ToolMessage(call, content))
	}
	return replies
}

// ParseArguments decodes a call's JSON arguments into v (empty arguments decode as {}).
func ParseArguments(call *pb.ToolCall, v any) error {
	args := strings.TrimSpace(call.ArgumentsJson)
	if args == "" {
		args = "{}"
	}
	if err := json.Unmarshal([]byte(args), v); err != nil {
		return fmt.Errorf("arguments of %s are not valid JSON: %v", call.Name, err)
	}
	return nil
}

// ToolMessage is the reply to a tool call.
func ToolMessage(call *pb.ToolCall, content string) *pb.Message {
	return &pb.Message{Role: "tool", ToolCallId: call.Id, Name: call.Name, Content: content}
}

// Text is a plain message of a role ("system", "user", "assistant").
func Text(role, content string) *pb.Message { return &pb.Message{Role: role, Content: content} }

func sortedKeys(m map[string]ToolFunc) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
