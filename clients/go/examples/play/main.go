// Command play plays one episode of an environment with a model as the policy: the inference
// server answers the conversation so far, the environment answers each reply, until done.
//
//	play --env 127.0.0.1:50051 --inference 127.0.0.1:50061 --environment guess-number
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
	envAddress := flag.String("env", "127.0.0.1:50051", "environment server")
	llmAddress := flag.String("inference", "127.0.0.1:50061", "inference server")
	environment := flag.String("environment", "", "environment name (default: the server's first)")
	split := flag.String("split", "", "split (default: the environment's default split)")
	taskID := flag.String("task", "", "task id (default: the split's first task)")
	maxTokens := flag.Int("max-tokens", 32, "tokens per reply")
	settings := rollmesh.TLSFlags(flag.CommandLine)
	flag.Parse()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	env, err := rollmesh.DialEnv(ctx, *envAddress, rollmesh.Options{TLS: settings})
	if err != nil {
		log.Fatal(err)
	}
	defer env.Close()
	llm, err := rollmesh.DialInference(ctx, *llmAddress, rollmesh.Options{TLS: settings})
	if err != nil {
		log.Fatal(err)
	}
	defer llm.Close()

	if *environment == "" {
		describe, err := env.Describe(ctx)
		if err != nil {
			log.Fatal(err)
		}
		*environment = describe.Environments[0].Name
	}
	if *taskID == "" {
		it := env.Tasks(ctx, *environment, *split, 1)
		if !it.Next() {
			log.Fatalf("no task in %s/%s: %v", *environment, *split, it.Err())
		}
		*taskID = it.Task().TaskId
	}

	ep, err := env.StartTask(ctx, *environment, *taskID, *split)
	if err != nil {
		log.Fatal(err)
	}
	defer ep.Close()
	fmt.Printf("episode %s: %s/%s\n", ep.Started().EpisodeId, *environment, *taskID)
	sampling := &pb.SamplingParams{MaxTokens: proto.Int32(int32(*maxTokens)), Logprobs: true}
	for !ep.Done() {
		// The episode's messages are the whole conversation, system prompt included.
		out, err := llm.Chat(ctx, ep.Messages(), ep.Started().Tools, sampling)
		if err != nil {
			log.Fatal(err)
		}
		sample := out.Samples[0]
		step, err := ep.Act(&pb.Message{Role: "assistant", Content: sample.Text, ToolCalls: sample.ToolCalls})
		if err != nil {
			log.Fatal(err)
		}
		fmt.Printf("turn %d: %d tokens, %q -> %d message(s)\n", step.Turn, len(sample.CompletionIds), sample.Text, len(step.Messages))
	}
	last := ep.Last()
	fmt.Printf("done: stop_reason=%s reward=%g has_reward=%t rewards=%v\n", last.StopReason, last.Reward, last.HasReward, last.Rewards)
}
