package envserver

import (
	"context"
	"fmt"
	"sync"
	"unicode/utf8"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/encoding"
	protocodec "google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/status"
)

// frame is an undecoded message. Episode reads frames and decodes them itself, so that a
// message that is not an EpisodeRequest gets INVALID_ARGUMENT: when gRPC decodes, it answers
// INTERNAL on its own before the handler can say otherwise.
type frame struct{ data []byte }

// codec is gRPC's proto codec, except that it hands frames over undecoded.
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
		// gRPC would answer INTERNAL; the interceptors answer INVALID_ARGUMENT instead.
		undecodable.Store(v, err)
	}
	return nil
}

// undecodable holds the requests (by pointer) whose bytes did not parse, until an interceptor
// sees them.
var undecodable sync.Map

func malformed(req interface{}) error {
	if e, ok := undecodable.LoadAndDelete(req); ok {
		return status.Errorf(codes.InvalidArgument, "the request is not a valid protobuf message: %v", e)
	}
	return nil
}

func decodeCheckUnary(ctx context.Context, req interface{}, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (interface{}, error) {
	if err := malformed(req); err != nil {
		return nil, err
	}
	return handler(ctx, req)
}

type decodeCheckedStream struct{ grpc.ServerStream }

func (s decodeCheckedStream) RecvMsg(m interface{}) error {
	if err := s.ServerStream.RecvMsg(m); err != nil {
		return err
	}
	return malformed(m)
}

func decodeCheckStream(srv interface{}, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	return handler(srv, decodeCheckedStream{ss})
}

func (c codec) Name() string   { return protocodec.Name }
func (c codec) String() string { return protocodec.Name }

// quoted is a client-supplied string for an error message, cut to a bound: a status message is
// sent as a header, and a megabyte of echoed name must not become a megabyte of trailer.
func quoted(s string) string {
	const limit = 120
	if len(s) <= limit {
		return fmt.Sprintf("%q", s)
	}
	cut := limit
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return fmt.Sprintf("%q... (%d bytes)", s[:cut], len(s))
}
