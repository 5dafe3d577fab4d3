// Package security is the server side of rollmesh's trust model (docs/protocol.md, section 14):
// the roles and the role each gRPC method requires, callers' identities from their client
// certificates, a gRPC interceptor that refuses calls a caller's roles do not allow, the check
// that keeps a server from listening beyond loopback without TLS, and NATS connections over TLS.
// The TLS settings themselves are rollmesh.TLS.
package security

import "sort"

// The roles. A certificate's organizational units (OU) are its roles.
const (
	RoleServer       = "server"       // hosts a service and may register it in the registry
	RoleOrchestrator = "orchestrator" // runs episodes, generates, scores, publishes rollouts
	RoleTrainer      = "trainer"      // changes the served weights and the policy version
	RolePublisher    = "publisher"    // publishes production traces
	RoleReader       = "reader"       // reads scores, the dashboard and metrics
	RoleOperator     = "operator"     // may do everything
)

// Roles lists every role.
var Roles = []string{RoleServer, RoleOrchestrator, RoleTrainer, RolePublisher, RoleReader, RoleOperator}

const (
	envService = "/rollmesh.v1.EnvironmentService/"
	infService = "/rollmesh.v1.InferenceService/"
	rubService = "/rollmesh.v1.RubricService/"
)

// MethodRoles maps each gRPC method to the roles that may call it (any one will do; an operator
// always may). An empty list is open: no identity needed (health checks). A method missing here
// is refused to everyone but operators: new RPCs are closed until listed.
var MethodRoles = map[string][]string{
	"/grpc.health.v1.Health/Check":                                   {},
	"/grpc.health.v1.Health/Watch":                                   {},
	"/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": {RoleOrchestrator, RoleReader, RoleTrainer},
	envService + "Describe":                                          {RoleOrchestrator, RoleReader},
	envService + "ListTasks":                                         {RoleOrchestrator, RoleReader},
	envService + "Episode":                                           {RoleOrchestrator},
	envService + "Score":                                             {RoleOrchestrator},
	envService + "RunEpisode":                                        {RoleOrchestrator},
	infService + "Generate":                                          {RoleOrchestrator},
	infService + "GenerateStream":                                    {RoleOrchestrator},
	infService + "Tokenize":                                          {RoleOrchestrator},
	infService + "GetModelInfo":                                      {RoleOrchestrator, RoleTrainer, RoleReader},
	infService + "UpdateWeights":                                     {RoleTrainer},
	infService + "LoadWeights":                                       {RoleTrainer},
	infService + "Pause":                                             {RoleTrainer},
	infService + "Resume":                                            {RoleTrainer},
	rubService + "ScoreTrajectory":                                   {RoleOrchestrator},
	rubService + "ScoreGroup":                                        {RoleOrchestrator},
	rubService + "ListRubrics":                                       {RoleOrchestrator, RoleReader},
}

// RequiredRoles are the roles that may call method; known is false for a method MethodRoles
// does not list (only operators may call it). Known with no roles: open to everyone.
func RequiredRoles(method string) (roles []string, known bool) {
	roles, known = MethodRoles[method]
	return roles, known
}

// Allows reports whether a caller with roles may call a method that requires one of required
// (known: whether the method is listed at all).
func Allows(roles, required []string, known bool) bool {
	if hasAny(roles, RoleOperator) {
		return true
	}
	if !known {
		return false
	}
	return len(required) == 0 || hasAny(roles, required...)
}

// needed is what a refusal names: the roles of the method, or operator for an unlisted one.
func needed(required []string, known bool) []string {
	if !known || len(required) == 0 {
		return []string{RoleOperator}
	}
	out := append([]string(nil), required...)
	sort.Strings(out)
	return out
}

func hasAny(roles []string, wanted ...string) bool {
	for _, r := range roles {
		for _, w := range wanted {
			if r == w {
				return true
			}
		}
	}
	return false
}

func isRole(s string) bool { return hasAny(Roles, s) }
