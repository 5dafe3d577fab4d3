package envserver

import (
	"context"
	"strconv"
	"sync"

	"github.com/rollmesh/rollmesh/clients/go/rollmesh"
	pb "github.com/rollmesh/rollmesh/clients/go/rollmeshv1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/encoding"
	protocodec "google.golang.org/grpc/encoding/proto"
	"google.golang.org/protobuf/proto"
)

// frame is an undecoded message. Episode reads frames and decodes them itself, so that a
// message that is not an EpisodeRequest gets INVALID_ARGUMENT: when gRPC decodes, it answers
// INTERNAL on its own before the handler can say otherwise.
type frame struct{ data []byte }

// codec is gRPC's proto codec, except that it hands frames over undecoded and lets the
// interceptors below answer undecodable requests.
type codec struct{ proto encoding.Codec }

func newCodec() codec { return codec{encoding.GetCodec(protocodec.Name)} }

func (c codec) Marshal(v interface{}) ([]byte, error) {
	if f, ok := v.(*frame); ok {
		return f.data, nil
	}
	return c.proto.Marshal(v)
}

func (c codec) Unmarshal(data []byte, v interface{}) error {
	if f, ok := v.(*frame); ok {
		f.data = append([]byte(nil), data...)
		return nil
	}
	if err := c.proto.Unmarshal(data, v); err != nil {
		undecodable.Store(v, err)
	}
	return nil
}

func (c codec) Name() string   { return protocodec.Name }
func (c codec) String() string { return protocodec.Name }

// undecodable holds the requests (by pointer) whose bytes did not parse, until an interceptor
// sees them.
var undecodable sync.Map

func malformed(req interface{}) error {
	if e, ok := undecodable.LoadAndDelete(req); ok {
		return rollmesh.Error(codes.InvalidArgument, pb.ErrorReason_MALFORMED_REQUEST, nil,
			"the request is not a valid %T protobuf message: %v", req, e)
	}
	return nil
}

func malformedFrame(err error) error {
	return rollmesh.Error(codes.InvalidArgument, pb.ErrorReason_MALFORMED_REQUEST, nil,
		"the message is not a valid rollmesh.v1.EpisodeRequest: %v", err)
}

// sizeCheck refuses a reply over the message limit with a status that names the cause (gRPC
// would end the call with an opaque error of its own).
type sizeCheck int

func (limit sizeCheck) check(reply interface{}) error {
	if m, ok := reply.(proto.Message); ok {
		if n := proto.Size(m); n > int(limit) {
			return rollmesh.Error(codes.ResourceExhausted, pb.ErrorReason_MESSAGE_TOO_LARGE,
				map[string]string{"limit_bytes": strconv.Itoa(int(limit))},
				"the server's reply is %d bytes, over the %d-byte message limit", n, int(limit))
		}
	}
	return nil
}

func (limit sizeCheck) unary(ctx context.Context, req interface{}, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (interface{}, error) {
	if err := malformed(req); err != nil {
		return nil, err
	}
	reply, err := handler(ctx, req)
	if err == nil {
		err = limit.check(reply)
	}
	if err != nil {
		return nil, err
	}
	return reply, nil
}

func (limit sizeCheck) stream(srv interface{}, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	return handler(srv, checkedStream{ss, limit})
}

type checkedStream struct {
	grpc.ServerStream
	limit sizeCheck
}

func (s checkedStream) RecvMsg(m interface{}) error {
	if err := s.ServerStream.RecvMsg(m); err != nil {
		return err
	}
	return malformed(m)
}

func (s checkedStream) SendMsg(m interface{}) error {
	if err := s.limit.check(m); err != nil {
		return err
	}
	return s.ServerStream.SendMsg(m)
}
