package rollmesh

import (
	"fmt"
	"strings"
	"testing"

	pb "github.com/rollmesh/rollmesh/clients/go/rollmeshv1"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestErrorCarriesErrorInfo(t *testing.T) {
	err := Error(codes.NotFound, pb.ErrorReason_UNKNOWN_TASK, map[string]string{"task": "t1"}, "no task %s", Quoted("t1"))
	if status.Code(err) != codes.NotFound || status.Convert(err).Message() != `no task "t1"` {
		t.Errorf("status %v", err)
	}
	info := ErrorInfo(err)
	if info == nil || info.Reason != "UNKNOWN_TASK" || info.Domain != "rollmesh.dev" || info.Metadata["task"] != "t1" {
		t.Errorf("info %v", info)
	}
	if Reason(fmt.Errorf("starting: %w", err)) != pb.ErrorReason_UNKNOWN_TASK {
		t.Errorf("the reason of a wrapped error is lost")
	}
}

func TestUnknownAndForeignReasons(t *testing.T) {
	newer, _ := status.New(codes.Unavailable, "x").WithDetails(&errdetails.ErrorInfo{Reason: "A_REASON_FROM_V1_9", Domain: Domain})
	if Reason(newer.Err()) != pb.ErrorReason_ERROR_REASON_UNSPECIFIED || ErrorInfo(newer.Err()).Reason != "A_REASON_FROM_V1_9" {
		t.Errorf("unknown reason: %v %v", Reason(newer.Err()), ErrorInfo(newer.Err()))
	}
	foreign, _ := status.New(codes.NotFound, "x").WithDetails(&errdetails.ErrorInfo{Reason: "UNKNOWN_TASK", Domain: "example.com"})
	if ErrorInfo(foreign.Err()) != nil || Reason(foreign.Err()) != pb.ErrorReason_ERROR_REASON_UNSPECIFIED {
		t.Errorf("another domain's ErrorInfo was taken for ours")
	}
	for _, err := range []error{nil, fmt.Errorf("plain"), status.Error(codes.Canceled, "transport")} {
		if ErrorInfo(err) != nil || Reason(err) != pb.ErrorReason_ERROR_REASON_UNSPECIFIED {
			t.Errorf("%v has a reason", err)
		}
	}
}

func TestMessagesAreBounded(t *testing.T) {
	long := strings.Repeat("é", 1000) // 2000 bytes
	if q := Quoted(long); len(q) > 160 || !strings.HasSuffix(q, "... (2000 bytes)") || !strings.HasPrefix(q, `"éé`) {
		t.Errorf("quoted %q", q)
	}
	err := Error(codes.InvalidArgument, pb.ErrorReason_INVALID_FIELD, nil, "%s", strings.Repeat(long, 3))
	if n := len(status.Convert(err).Message()); n > 2000 {
		t.Errorf("a status message of %d bytes", n)
	}
}
