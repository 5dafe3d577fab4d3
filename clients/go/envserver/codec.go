package envserver

import (
	"google.golang.org/grpc/encoding"
	protocodec "google.golang.org/grpc/encoding/proto"
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
	return c.proto.Unmarshal(data, v)
}

func (c codec) Name() string   { return protocodec.Name }
func (c codec) String() string { return protocodec.Name }
