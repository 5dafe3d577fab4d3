package security

import (
	"context"
	"crypto/x509"
	"fmt"
	"log"
	"strconv"
	"strings"

	"github.com/rollmesh/rollmesh/clients/go/rollmesh"
	pb "github.com/rollmesh/rollmesh/clients/go/rollmeshv1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
)

// Identity is who calls: the common name of its client certificate and its roles (the
// certificate's organizational units that name a role).
type Identity struct {
	Name  string
	Roles []string
}

// IdentityFromCertificate is the identity a (verified) certificate names.
func IdentityFromCertificate(cert *x509.Certificate) Identity {
	id := Identity{Name: cert.Subject.CommonName}
	if id.Name == "" {
		id.Name = cert.Subject.String()
	}
	for _, ou := range cert.Subject.OrganizationalUnit {
		if isRole(ou) && !hasAny(id.Roles, ou) {
			id.Roles = append(id.Roles, ou)
		}
	}
	return id
}

// PeerIdentity is the identity of the client certificate the TLS handshake of ctx's connection
// verified; false when the call came without one (plaintext, or TLS without a CA).
func PeerIdentity(ctx context.Context) (Identity, bool) {
	p, ok := peer.FromContext(ctx)
	if !ok || p.AuthInfo == nil {
		return Identity{}, false
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(info.State.VerifiedChains) == 0 || len(info.State.VerifiedChains[0]) == 0 {
		return Identity{}, false
	}
	return IdentityFromCertificate(info.State.VerifiedChains[0][0]), true
}

type callerKey struct{}

// Caller is the identity an Authorizer let through for the call of ctx; false when the method
// is open and the caller showed none, or no Authorizer checked the call.
func Caller(ctx context.Context) (Identity, bool) {
	id, ok := ctx.Value(callerKey{}).(Identity)
	return id, ok
}

// Authorizer checks each call's caller against the role table before the handler runs.
// Refusals are UNAUTHENTICATED (NO_CREDENTIALS: no client certificate) or PERMISSION_DENIED
// (MISSING_ROLE, with ErrorInfo metadata identity and required), each one audit log line with
// the method, the identity, the peer and the reason. Calls that only trainers may make are
// logged when allowed, too. The zero value checks MethodRoles and logs with the log package.
type Authorizer struct {
	// Policy gives the roles a method requires (default RequiredRoles).
	Policy func(method string) (roles []string, known bool)
	// Audit receives the audit lines (default: the log package's standard logger).
	Audit *log.Logger
}

func (a *Authorizer) audit(format string, args ...any) {
	if a.Audit != nil {
		a.Audit.Printf(format, args...)
		return
	}
	log.Printf(format, args...)
}

// Check returns the caller of ctx and whether it showed a verified certificate when it may call
// method, else the refusal (a gRPC status error with ErrorInfo), which it logs.
func (a *Authorizer) Check(ctx context.Context, method string) (Identity, bool, error) {
	policy := a.Policy
	if policy == nil {
		policy = RequiredRoles
	}
	required, known := policy(method)
	id, identified := PeerIdentity(ctx)
	if known && len(required) == 0 { // open
		return id, identified, nil
	}
	where := "unknown"
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		where = p.Addr.String()
	}
	if !identified {
		a.audit("audit: access denied: %s by unknown from %s (NO_CREDENTIALS)", method, where)
		return id, false, rollmesh.Error(codes.Unauthenticated, pb.ErrorReason_NO_CREDENTIALS, nil,
			"%s needs credentials: a client certificate signed by the CA this server trusts", method)
	}
	if !Allows(id.Roles, required, known) {
		roles := needed(required, known)
		a.audit("audit: access denied: %s by %s from %s (MISSING_ROLE)", method, id.Name, where)
		return id, true, rollmesh.Error(codes.PermissionDenied, pb.ErrorReason_MISSING_ROLE,
			map[string]string{"identity": id.Name, "required": strings.Join(roles, ",")},
			"%s may not call %s: it needs one of the roles %s", quoted(id.Name), method, strings.Join(roles, ", "))
	}
	if known && onlyTrainers(required) {
		a.audit("audit: access granted: %s by %s from %s", method, id.Name, where)
	}
	return id, true, nil
}

func onlyTrainers(required []string) bool {
	for _, r := range required {
		if r != RoleTrainer {
			return false
		}
	}
	return len(required) > 0
}

// quoted is a name as the refusals of every rollmesh server write it: 'reader'.
func quoted(name string) string {
	if len(name) > 64 {
		return fmt.Sprintf("%q... (%d bytes)", name[:64], len(name))
	}
	if strings.ContainsAny(name, "'\\") || strconv.Quote(name) != `"`+name+`"` {
		return strconv.Quote(name)
	}
	return "'" + name + "'"
}

func (a *Authorizer) authorized(ctx context.Context, method string) (context.Context, error) {
	id, identified, err := a.Check(ctx, method)
	if err != nil {
		return nil, err
	}
	if identified {
		ctx = context.WithValue(ctx, callerKey{}, id)
	}
	return ctx, nil
}

// UnaryInterceptor checks unary calls.
func (a *Authorizer) UnaryInterceptor() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req interface{}, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (interface{}, error) {
		ctx, err := a.authorized(ctx, info.FullMethod)
		if err != nil {
			return nil, err
		}
		return handler(ctx, req)
	}
}

// StreamInterceptor checks streaming calls before the handler reads the first message.
func (a *Authorizer) StreamInterceptor() grpc.StreamServerInterceptor {
	return func(srv interface{}, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		ctx, err := a.authorized(ss.Context(), info.FullMethod)
		if err != nil {
			return err
		}
		return handler(srv, callerStream{ss, ctx})
	}
}

type callerStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s callerStream) Context() context.Context { return s.ctx }
