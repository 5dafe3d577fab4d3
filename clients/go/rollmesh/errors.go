package rollmesh

import (
	"errors"
	"fmt"
	"unicode/utf8"

	pb "github.com/rollmesh/rollmesh/clients/go/rollmeshv1"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Domain is the ErrorInfo domain of every rollmesh error.
const Domain = "rollmesh.dev"

// maxMessage bounds a status message: it travels as a header.
const maxMessage = 2000

// Error is a gRPC status error as rollmesh servers send them: the code, a message for people and
// a google.rpc.ErrorInfo detail with Domain and the reason's name (docs/protocol.md, "2. Errors").
func Error(code codes.Code, reason pb.ErrorReason, metadata map[string]string, format string, args ...any) error {
	st := status.New(code, clip(fmt.Sprintf(format, args...), maxMessage))
	detailed, err := st.WithDetails(&errdetails.ErrorInfo{Reason: reason.String(), Domain: Domain, Metadata: metadata})
	if err != nil { // only for codes.OK, which is no error to send
		return st.Err()
	}
	return detailed.Err()
}

// ErrorInfo is the rollmesh ErrorInfo of a failed call: nil when err is no gRPC status or its
// details hold none of domain rollmesh.dev (statuses of the gRPC transport carry none).
func ErrorInfo(err error) *errdetails.ErrorInfo {
	var carrier interface{ GRPCStatus() *status.Status }
	if err == nil || !errors.As(err, &carrier) {
		return nil
	}
	for _, detail := range carrier.GRPCStatus().Details() {
		if info, ok := detail.(*errdetails.ErrorInfo); ok && info.Domain == Domain {
			return info
		}
	}
	return nil
}

// Reason is the rollmesh reason of a failed call, ERROR_REASON_UNSPECIFIED when it has none or
// one this version does not know: then act on the status code alone.
func Reason(err error) pb.ErrorReason {
	info := ErrorInfo(err)
	if info == nil {
		return pb.ErrorReason_ERROR_REASON_UNSPECIFIED
	}
	return pb.ErrorReason(pb.ErrorReason_value[info.Reason])
}

// Quoted is a client-supplied string for an error message, cut to 120 bytes: a status message
// is sent as a header, and a megabyte of echoed name must not become a megabyte of trailer.
func Quoted(s string) string {
	const limit = 120
	if len(s) <= limit {
		return fmt.Sprintf("%q", s)
	}
	return fmt.Sprintf("%q... (%d bytes)", clip(s, limit), len(s))
}

// clip cuts s to at most n bytes on a rune boundary.
func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}
