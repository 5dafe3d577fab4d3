// Command trace publishes one production trace to the rollmesh bus and waits for the rubric
// service's score of it.
//
//	trace --nats nats://127.0.0.1:4222 --app shop --answer 4 --reply "Thanks for asking: 4"
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/rollmesh/rollmesh/clients/go/monitor"
	"github.com/rollmesh/rollmesh/clients/go/rollmesh"
	pb "github.com/rollmesh/rollmesh/clients/go/rollmeshv1"
	"github.com/rollmesh/rollmesh/clients/go/security"
)

func main() {
	url := flag.String("nats", nats.DefaultURL, "NATS server")
	app := flag.String("app", "shop", "the app the trace belongs to")
	question := flag.String("question", "What is 2 + 2?", "the user's message")
	answer := flag.String("answer", "4", "the reference answer")
	reply := flag.String("reply", "Thanks for asking: 4", "the assistant's reply")
	createStream := flag.Bool("create-stream", false, "create the MONITOR stream when none exists")
	timeout := flag.Duration("timeout", 30*time.Second, "how long to wait for the score")
	settings := rollmesh.TLSFlags(flag.CommandLine)
	flag.Parse()

	nc, err := security.ConnectNATS(*url, "rollmesh-go-trace", settings)
	if err != nil {
		log.Fatal(err)
	}
	defer nc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()

	// Read from now on, before publishing, so the score cannot slip by.
	scores, err := monitor.ReadScores(nc, *app, monitor.ScoreReaderOptions{CreateStream: *createStream})
	if err != nil {
		log.Fatal(err)
	}
	defer scores.Close()

	trace := &pb.MonitorTrace{
		App:      *app,
		Messages: []*pb.Message{rollmesh.Text("user", *question), rollmesh.Text("assistant", *reply)},
		Answer:   *answer,
		Labels:   map[string]string{"source": "go-example"},
	}
	published, err := monitor.PublishTrace(ctx, nc, trace, monitor.PublisherOptions{CreateStream: *createStream})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("published trace %s (stream %s, sequence %d)\n", published.TraceID, published.Stream, published.Sequence)

	for {
		score, err := scores.Next(ctx)
		if err != nil {
			log.Fatal(err)
		}
		if score.TraceId == published.TraceID {
			fmt.Printf("score of %s by rubric %s: reward %g, rewards %v, %.3f s after the trace\n",
				score.TraceId, score.Rubric, score.Reward, score.Rewards, score.LatencyS)
			return
		}
	}
}
