package rollmesh_test

import (
	"math"
	"reflect"
	"testing"

	"github.com/rollmesh/rollmesh/clients/go/internal/testservers"
	"github.com/rollmesh/rollmesh/clients/go/rollmesh"
	pb "github.com/rollmesh/rollmesh/clients/go/rollmeshv1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// The Python inference server serves the tiny deterministic test model on the CPU.

func TestGenerateFromChatAndFromTokens(t *testing.T) {
	ctx := testservers.Context(t)
	llm, err := rollmesh.DialInference(ctx, testservers.Address(t, testservers.InferenceAddress), rollmesh.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer llm.Close()

	info, err := llm.ModelInfo(ctx)
	if err != nil || info.Model == "" || info.Backend != "hf" || info.ContextLength <= 0 || info.VocabSize <= 0 {
		t.Fatalf("model info %v %v", info, err)
	}
	ids, err := llm.Tokenize(ctx, "hello world")
	if err != nil || len(ids) == 0 {
		t.Fatalf("tokenize: %v %v", ids, err)
	}

	messages := []*pb.Message{rollmesh.Text("system", "Answer briefly."), rollmesh.Text("user", "What is 2 + 2?")}
	greedy := &pb.SamplingParams{Temperature: proto.Float64(0), MaxTokens: proto.Int32(8), Logprobs: true}
	chat, err := llm.Chat(ctx, messages, nil, greedy)
	if err != nil {
		t.Fatal(err)
	}
	sample := chat.Samples[0]
	if len(sample.CompletionIds) == 0 || len(sample.CompletionIds) > 8 || len(sample.Logprobs) != len(sample.CompletionIds) {
		t.Fatalf("sample %v", sample)
	}
	for _, lp := range sample.Logprobs {
		if lp > 0 || math.IsNaN(float64(lp)) || math.IsInf(float64(lp), 0) {
			t.Errorf("logprob %v", lp)
		}
	}
	if chat.Usage.CompletionTokens != int64(len(sample.CompletionIds)) || sample.FinishReason == "" {
		t.Errorf("usage %v, finish %q", chat.Usage, sample.FinishReason)
	}

	// Token-exact: the templated prompt's ids are the chat prompt's, and greedy decoding from
	// them gives the same tokens.
	promptIDs, text, err := llm.TokenizeChat(ctx, messages, true)
	if err != nil || text == "" || !reflect.DeepEqual(promptIDs, chat.PromptIds) {
		t.Fatalf("templated prompt %v (%v) != chat prompt %v", promptIDs, err, chat.PromptIds)
	}
	tokens, err := llm.Complete(ctx, promptIDs, greedy)
	if err != nil {
		t.Fatal(err)
	}
	if again := tokens.Samples[0]; !reflect.DeepEqual(again.CompletionIds, sample.CompletionIds) || again.Text != sample.Text {
		t.Errorf("from tokens %v %q, from chat %v %q", again.CompletionIds, again.Text, sample.CompletionIds, sample.Text)
	}

	_, err = llm.Generate(ctx, &pb.GenerateRequest{
		Input: &pb.GenerateRequest_Tokens{Tokens: &pb.TokenInput{PromptIds: promptIDs}}, Model: "not-served",
	})
	if status.Code(err) != codes.NotFound || rollmesh.Reason(err) != pb.ErrorReason_UNKNOWN_MODEL {
		t.Errorf("a model the server does not serve: %v", err)
	}
}
