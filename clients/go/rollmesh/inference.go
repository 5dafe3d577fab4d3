package rollmesh

import (
	"context"
	"time"

	pb "github.com/rollmesh/rollmesh/clients/go/rollmeshv1"
	"google.golang.org/grpc"
)

// InferenceClient talks to an inference server (rollmesh.v1.InferenceService): generation from
// chat messages or token ids, with the exact token ids and, when asked, their logprobs.
type InferenceClient struct {
	conn *grpc.ClientConn
	rpc  pb.InferenceServiceClient
	opts Options
}

// DialInference connects to the inference server at address. Generation can be slow: a zero
// opts.Timeout means 10 minutes here.
func DialInference(ctx context.Context, address string, opts Options) (*InferenceClient, error) {
	if opts.Timeout == 0 {
		opts.Timeout = 10 * time.Minute
	}
	opts = opts.withDefaults()
	conn, err := dial(ctx, address, "inference", opts)
	if err != nil {
		return nil, err
	}
	return &InferenceClient{conn: conn, rpc: pb.NewInferenceServiceClient(conn), opts: opts}, nil
}

// RPC is the generated client (streaming generation, weight updates, pause and resume).
func (c *InferenceClient) RPC() pb.InferenceServiceClient { return c.rpc }

// Close closes the connection.
func (c *InferenceClient) Close() error { return c.conn.Close() }

// Generate runs one request as it is.
func (c *InferenceClient) Generate(ctx context.Context, req *pb.GenerateRequest) (*pb.GenerateResponse, error) {
	ctx, cancel := callContext(ctx, c.opts)
	defer cancel()
	return c.rpc.Generate(ctx, req)
}

// Chat generates the assistant's reply to chat messages (the server applies the model's chat
// template). sampling may be nil; set Logprobs in it for per-token logprobs.
func (c *InferenceClient) Chat(ctx context.Context, messages []*pb.Message, tools []*pb.ToolSpec, sampling *pb.SamplingParams) (*pb.GenerateResponse, error) {
	return c.Generate(ctx, &pb.GenerateRequest{
		Input:    &pb.GenerateRequest_Chat{Chat: &pb.ChatInput{Messages: messages, Tools: tools}},
		Sampling: sampling,
	})
}

// Complete continues prompt token ids, used as they are.
func (c *InferenceClient) Complete(ctx context.Context, promptIDs []int32, sampling *pb.SamplingParams) (*pb.GenerateResponse, error) {
	return c.Generate(ctx, &pb.GenerateRequest{
		Input:    &pb.GenerateRequest_Tokens{Tokens: &pb.TokenInput{PromptIds: promptIDs}},
		Sampling: sampling,
	})
}

// Tokenize returns the model's token ids of a text.
func (c *InferenceClient) Tokenize(ctx context.Context, text string) ([]int32, error) {
	ctx, cancel := callContext(ctx, c.opts)
	defer cancel()
	resp, err := c.rpc.Tokenize(ctx, &pb.TokenizeRequest{Input: &pb.TokenizeRequest_Text{Text: text}})
	if err != nil {
		return nil, err
	}
	return resp.TokenIds, nil
}

// TokenizeChat applies the chat template to messages and tokenizes the result; it returns the
// token ids and the templated text.
func (c *InferenceClient) TokenizeChat(ctx context.Context, messages []*pb.Message, addGenerationPrompt bool) ([]int32, string, error) {
	ctx, cancel := callContext(ctx, c.opts)
	defer cancel()
	chat := &pb.ChatInput{Messages: messages, AddGenerationPrompt: addGenerationPrompt}
	resp, err := c.rpc.Tokenize(ctx, &pb.TokenizeRequest{Input: &pb.TokenizeRequest_Chat{Chat: chat}})
	if err != nil {
		return nil, "", err
	}
	return resp.TokenIds, resp.Text, nil
}

// ModelInfo describes the served model: name, backend, context length, policy version, ...
func (c *InferenceClient) ModelInfo(ctx context.Context) (*pb.GetModelInfoResponse, error) {
	ctx, cancel := callContext(ctx, c.opts)
	defer cancel()
	return c.rpc.GetModelInfo(ctx, &pb.GetModelInfoRequest{})
}
