// Command generate asks a model one question and prints its reply with the token ids and
// their logprobs.
//
//	generate --inference 127.0.0.1:50061 --prompt "What is 2 + 2?"
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"time"

	"github.com/rollmesh/rollmesh/clients/go/rollmesh"
	pb "github.com/rollmesh/rollmesh/clients/go/rollmeshv1"
	"google.golang.org/protobuf/proto"
)

func main() {
	address := flag.String("inference", "127.0.0.1:50061", "inference server")
	prompt := flag.String("prompt", "What is 2 + 2?", "the user's message")
	maxTokens := flag.Int("max-tokens", 16, "tokens to generate")
	settings := rollmesh.TLSFlags(flag.CommandLine)
	flag.Parse()

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	llm, err := rollmesh.DialInference(ctx, *address, rollmesh.Options{TLS: settings})
	if err != nil {
		log.Fatal(err)
	}
	defer llm.Close()

	info, err := llm.ModelInfo(ctx)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("model %s (%s), context %d tokens, policy version %d\n", info.Model, info.Backend, info.ContextLength, info.PolicyVersion)

	messages := []*pb.Message{rollmesh.Text("user", *prompt)}
	greedy := &pb.SamplingParams{Temperature: proto.Float64(0), MaxTokens: proto.Int32(int32(*maxTokens)), Logprobs: true}
	out, err := llm.Chat(ctx, messages, nil, greedy)
	if err != nil {
		log.Fatal(err)
	}
	sample := out.Samples[0]
	fmt.Printf("prompt: %d tokens\nreply: %q (finish: %s)\n", len(out.PromptIds), sample.Text, sample.FinishReason)
	for i, id := range sample.CompletionIds {
		fmt.Printf("  token %d: id %d, logprob %.4f\n", i, id, sample.Logprobs[i])
	}

	// The same prompt as token ids: the exact ids the model saw, e.g. to continue them.
	again, err := llm.Complete(ctx, out.PromptIds, greedy)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("from token ids: %q\n", again.Samples[0].Text)
}
