// Command score scores a reply with a rubric of the rubric service.
//
//	score --rubric 127.0.0.1:50071 --name rules --question "What is 2 + 2?" --answer 4 --reply "It is 4"
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"time"

	"github.com/rollmesh/rollmesh/clients/go/rollmesh"
	pb "github.com/rollmesh/rollmesh/clients/go/rollmeshv1"
)

func main() {
	address := flag.String("rubric", "127.0.0.1:50071", "rubric server")
	name := flag.String("name", "", "rubric name (default: list the rubrics)")
	question := flag.String("question", "What is 2 + 2?", "the user's message")
	answer := flag.String("answer", "4", "the reference answer")
	reply := flag.String("reply", "It is 4.", "the assistant's reply to score")
	settings := rollmesh.TLSFlags(flag.CommandLine)
	flag.Parse()

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	client, err := rollmesh.DialRubric(ctx, *address, rollmesh.Options{TLS: settings})
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()

	if *name == "" {
		rubrics, err := client.ListRubrics(ctx)
		if err != nil {
			log.Fatal(err)
		}
		for _, r := range rubrics {
			fmt.Printf("rubric %s: %d function(s)\n", r.Name, len(r.Functions))
		}
		return
	}
	trajectory := &pb.Trajectory{
		Task:     &pb.Task{Answer: *answer},
		Messages: []*pb.Message{rollmesh.Text("user", *question), rollmesh.Text("assistant", *reply)},
	}
	result, err := client.ScoreTrajectory(ctx, rollmesh.Named(*name), trajectory)
	if err != nil {
		log.Fatalf("%v (reason %v)", err, rollmesh.Reason(err))
	}
	fmt.Printf("reward %g\nrewards %v\nmetrics %v\n", result.Reward, result.Rewards, result.Metrics)
	for function, failure := range result.Errors {
		fmt.Printf("error in %s: %s\n", function, failure)
	}
}
