package main

import (
	"context"
	"fmt"
	"testing"

	"github.com/rollmesh/rollmesh/clients/go/envserver"
	pb "github.com/rollmesh/rollmesh/clients/go/rollmeshv1"
)

// The cases of the Python environment's own test (tests/examples/test_digits.py), and more.
func TestRewards(t *testing.T) {
	for _, c := range []struct {
		reply          string
		digits, number float64
	}{
		{"42", 1, 1},
		{"4a", 0.5, 0},
		{" 18 18", 1, 0},
		{"a1b2", 0.5, 0},
		{"", 0, 0},
		{" \t\n", 0, 0},
		{" -42 ", 2.0 / 3, 1},
		{"--7", 1.0 / 3, 1}, // lstrip("-") takes every leading minus
		{"-", 0, 0},
		{"4-2", 2.0 / 3, 0},
		{"3.5", 2.0 / 3, 0},
		{"+5", 0.5, 0},
		{"١٢٣", 1, 1},            // Arabic-Indic digits: Nd
		{"x²", 0.5, 0},           // a superscript is a digit to Python
		{"①②", 1, 1},             // circled digits too
		{"Ⅻ", 0, 0},              // a Roman numeral is numeric, not a digit
		{"1\x1c2", 1, 0},         // U+001C is white space to Python
		{"1\u00a02\u3000", 1, 0}, // so are NBSP and the ideographic space
		{"é1", 0.5, 0},           // characters, not bytes
	} {
		if d, n := digits(c.reply), number(c.reply); d != c.digits || n != c.number {
			t.Errorf("%q: digits %v number %v, want %v %v", c.reply, d, n, c.digits, c.number)
		}
		if r := rewards(c.reply); len(r) != 2 || r["digits"] != c.digits || r["number"] != c.number {
			t.Errorf("%q: rewards %v", c.reply, r)
		}
	}
}

// The Python environment's tasks (load_environment()), by id: the same here.
func TestTasksAreThoseOfPython(t *testing.T) {
	env := newEnvironment()
	train, test := env.Tasks["train"], env.Tasks["test"]
	if len(train) != 200 || len(test) != 50 {
		t.Fatalf("splits: %d train, %d test", len(train), len(test))
	}
	for _, task := range append(append([]*pb.Task{}, train...), test...) {
		if len(task.Prompt) != 2 || task.Prompt[0].Role != "system" || task.Prompt[0].Content != systemPrompt ||
			task.Prompt[1].Role != "user" || task.Answer != "" || task.Info != nil {
			t.Fatalf("%s: %v", task.TaskId, task)
		}
	}
	for _, want := range []struct {
		task         *pb.Task
		id, question string
	}{
		{train[0], "d0000", "How many birds are there?"},
		{train[1], "d0001", "How many birds are there?"},
		{train[2], "d0002", "Pick a number between 30 and 68."},
		{train[199], "d0199", "Say a number."},
		{test[0], "d0200", "Reply with any integer."},
		{test[49], "d0249", "Say a number."},
	} {
		if want.task.TaskId != want.id || want.task.Prompt[1].Content != want.question {
			t.Errorf("task %s %q, want %s %q", want.task.TaskId, want.task.Prompt[1].Content, want.id, want.question)
		}
	}
}

// Draws of Python's random.Random(seed), as Python 3 makes them.
func TestPyRandomDrawsAsPython(t *testing.T) {
	r := newPyRandom(0)
	if got := []uint32{r.uint32(), r.uint32(), r.uint32()}; fmt.Sprint(got) != "[3626764237 1654615998 3255389356]" {
		t.Errorf("random.Random(0).getrandbits(32): %v", got)
	}
	if a, c := r.randint(0, 50), r.choice(6); a != 26 || c != 0 {
		t.Errorf("randint(0, 50) %d, choice of 6 %d: want 26, 0", a, c)
	}
	r = newPyRandom(12345)
	if got := fmt.Sprint(r.uint32(), r.uint32(), r.randbelow(1000), r.randint(5, 500000)); got != "1789368711 3146859322 10 430012" {
		t.Errorf("random.Random(12345): %s", got)
	}
}

func TestEpisodePlaysTheTaskItIsGiven(t *testing.T) {
	env := newEnvironment()
	// a task of another replica: an id of this one, another question
	task := &pb.Task{TaskId: "d0003", Prompt: []*pb.Message{
		envserver.Text("system", systemPrompt), envserver.Text("user", "How many robots are there?"),
	}}
	ep, err := env.NewEpisode(context.Background(), &envserver.Start{Task: task, Seed: 7, MaxTurns: env.MaxTurns})
	if err != nil {
		t.Fatal(err)
	}
	defer ep.Close()
	msgs, err := ep.Start(context.Background())
	if err != nil || len(msgs) != 2 || msgs[1].Content != "How many robots are there?" {
		t.Fatalf("start: %v %v", msgs, err)
	}
	r, err := ep.Act(context.Background(), 1, &pb.Message{Role: "assistant", Content: "4a"})
	if err != nil || !r.Done || r.Rewards["digits"] != 0.5 || r.Rewards["number"] != 0 || len(r.Messages) != 0 {
		t.Fatalf("act: %+v %v", r, err)
	}
	if r.State["seed"] != int64(7) || r.State["turn"] != 1 || len(r.State["options"].(map[string]any)) != 0 {
		t.Errorf("state %v", r.State)
	}
}

func TestScoreReadsTheReplyAfterThePrompt(t *testing.T) {
	task := newEnvironment().Tasks["train"][0]
	conversation := append(append([]*pb.Message{}, task.Prompt...), envserver.Text("assistant", "-12"))
	for _, c := range []struct {
		messages       []*pb.Message
		digits, number float64
	}{
		{conversation, 2.0 / 3, 1},
		{append(conversation, envserver.Text("user", "7")), 2.0 / 3, 1}, // the last assistant message
		{conversation[:2], 0, 0},                                        // no reply
		{conversation[2:], 0, 0},                                        // no prompt: nothing past it
	} {
		rewards, err := score(context.Background(), &envserver.ScoreRequest{Task: task, Messages: c.messages})
		if err != nil || rewards["digits"] != c.digits || rewards["number"] != c.number {
			t.Errorf("%v: %v %v", c.messages, rewards, err)
		}
	}
}
