package rollmesh

import pb "github.com/rollmesh/rollmesh/clients/go/rollmeshv1"

// Text is a plain chat message of a role ("system", "user", "assistant").
func Text(role, content string) *pb.Message { return &pb.Message{Role: role, Content: content} }

// Call is an assistant's call of a tool, its arguments a JSON object.
func Call(id, name, argumentsJSON string) *pb.ToolCall {
	return &pb.ToolCall{Id: id, Name: name, ArgumentsJson: argumentsJSON}
}

// Calls is an assistant message that calls tools.
func Calls(calls ...*pb.ToolCall) *pb.Message {
	return &pb.Message{Role: "assistant", ToolCalls: calls}
}
