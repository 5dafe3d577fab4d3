// The server side of the trust model (docs/protocol.md, section 14): the role each method requires,
// callers' identities from their client certificates (CN = name, each OU = a role), the check each
// EnvironmentService call makes first, and a gate for the other services (reflection).
#pragma once

#include <grpcpp/security/auth_context.h>
#include <grpcpp/security/auth_metadata_processor.h>
#include <grpcpp/support/status.h>

#include <optional>
#include <string>
#include <vector>

#include "rollmesh/tls.h"

namespace rollmesh::internal {

struct Identity {
  std::string name;
  std::vector<std::string> roles;
};

// The roles that may call `method` (any one will do; "operator" always may); nullptr when the
// table does not list it (only operators may call it). An empty list: open to everyone.
const std::vector<std::string>* RequiredRoles(const std::string& method);
bool Allows(const std::vector<std::string>& roles, const std::vector<std::string>* required);

// The identity a PEM certificate names (only OUs that are roles count); nullopt when it does not
// parse.
std::optional<Identity> IdentityFromPem(const std::string& pem);
// The identity of the verified client certificate of a call's connection.
std::optional<Identity> PeerIdentity(const grpc::AuthContext& auth);

// OK when the caller may call `method`, else the refusal: UNAUTHENTICATED (NO_CREDENTIALS) or
// PERMISSION_DENIED (MISSING_ROLE, ErrorInfo metadata identity and required). Each refusal is
// one audit line on stderr: "rollmesh: audit: access denied: METHOD by NAME from PEER (REASON)".
grpc::Status Authorize(const grpc::AuthContext* auth, const std::string& method, const std::string& peer);

// Checks calls of the services other than EnvironmentService (whose handlers call Authorize, to
// answer with ErrorInfo) against the role table, from the call's :path; such refusals carry a
// code and a message only.
class MethodGate final : public grpc::AuthMetadataProcessor {
 public:
  bool IsBlocking() const override { return false; }
  grpc::Status Process(const InputMetadata& metadata, grpc::AuthContext* context, OutputMetadata* consumed,
                       OutputMetadata* response) override;
};

// Whether host reaches this machine only ("" is every interface).
bool IsLoopback(const std::string& host);
// Refuses (std::invalid_argument) to serve `what` beyond loopback without TLS and a CA, unless
// insecure (then it warns on stderr).
void CheckBind(const std::string& host, const std::string& what, const TlsFiles& tls, bool insecure);

}  // namespace rollmesh::internal
