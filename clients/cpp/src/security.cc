#include "security.h"

#include <openssl/asn1.h>
#include <openssl/bio.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include <algorithm>
#include <cstdio>
#include <map>

#include "rollmesh/errors.h"

namespace rollmesh::internal {
namespace {

const char kOperator[] = "operator";
const char kEnvService[] = "/rollmesh.v1.EnvironmentService/";

const std::vector<std::string> kRoles = {"server", "orchestrator", "trainer", "publisher", "reader", kOperator};

// The table of docs/protocol.md section 14 (the Python services' security/roles.py).
const std::map<std::string, std::vector<std::string>>& Table() {
  static const auto* table = [] {
    const std::string env = kEnvService, inf = "/rollmesh.v1.InferenceService/", rub = "/rollmesh.v1.RubricService/";
    return new std::map<std::string, std::vector<std::string>>{
        {"/grpc.health.v1.Health/Check", {}},
        {"/grpc.health.v1.Health/Watch", {}},
        {"/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", {"orchestrator", "reader", "trainer"}},
        {env + "Describe", {"orchestrator", "reader"}},
        {env + "ListTasks", {"orchestrator", "reader"}},
        {env + "Episode", {"orchestrator"}},
        {env + "Score", {"orchestrator"}},
        {env + "RunEpisode", {"orchestrator"}},
        {inf + "Generate", {"orchestrator"}},
        {inf + "GenerateStream", {"orchestrator"}},
        {inf + "Tokenize", {"orchestrator"}},
        {inf + "GetModelInfo", {"orchestrator", "trainer", "reader"}},
        {inf + "UpdateWeights", {"trainer"}},
        {inf + "LoadWeights", {"trainer"}},
        {inf + "Pause", {"trainer"}},
        {inf + "Resume", {"trainer"}},
        {rub + "ScoreTrajectory", {"orchestrator"}},
        {rub + "ScoreGroup", {"orchestrator"}},
        {rub + "ListRubrics", {"orchestrator", "reader"}},
    };
  }();
  return *table;
}

bool Has(const std::vector<std::string>& values, const std::string& value) {
  return std::find(values.begin(), values.end(), value) != values.end();
}

std::string Join(const std::vector<std::string>& values, const char* separator) {
  std::string out;
  for (const auto& v : values) out += (out.empty() ? "" : separator) + v;
  return out;
}

void Audit(const std::string& method, const std::string& who, const std::string& peer, const char* what) {
  std::fprintf(stderr, "rollmesh: audit: access %s: %s by %s from %s\n", what, method.c_str(), who.c_str(),
               peer.c_str());
  std::fflush(stderr);
}

// The UTF-8 values of the subject's attributes of type nid, in order.
std::vector<std::string> Attributes(X509_NAME* subject, int nid) {
  std::vector<std::string> out;
  for (int i = X509_NAME_get_index_by_NID(subject, nid, -1); i >= 0; i = X509_NAME_get_index_by_NID(subject, nid, i)) {
    unsigned char* utf8 = nullptr;
    int n = ASN1_STRING_to_UTF8(&utf8, X509_NAME_ENTRY_get_data(X509_NAME_get_entry(subject, i)));
    if (n >= 0) out.emplace_back(reinterpret_cast<char*>(utf8), static_cast<size_t>(n));
    OPENSSL_free(utf8);
  }
  return out;
}

}  // namespace

const std::vector<std::string>* RequiredRoles(const std::string& method) {
  auto it = Table().find(method);
  return it == Table().end() ? nullptr : &it->second;
}

bool Allows(const std::vector<std::string>& roles, const std::vector<std::string>* required) {
  if (Has(roles, kOperator)) return true;
  if (!required) return false;
  if (required->empty()) return true;
  return std::any_of(roles.begin(), roles.end(), [&](const std::string& r) { return Has(*required, r); });
}

std::optional<Identity> IdentityFromPem(const std::string& pem) {
  BIO* bio = BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size()));
  if (!bio) return std::nullopt;
  X509* cert = PEM_read_bio_X509(bio, nullptr, nullptr, nullptr);
  BIO_free(bio);
  if (!cert) return std::nullopt;
  X509_NAME* subject = X509_get_subject_name(cert);
  Identity id;
  std::vector<std::string> names = Attributes(subject, NID_commonName);
  if (!names.empty()) {
    id.name = names.front();
  } else {
    char line[256];
    X509_NAME_oneline(subject, line, sizeof line);
    id.name = line;
  }
  for (const auto& ou : Attributes(subject, NID_organizationalUnitName))
    if (Has(kRoles, ou) && !Has(id.roles, ou)) id.roles.push_back(ou);
  X509_free(cert);
  return id;
}

std::optional<Identity> PeerIdentity(const grpc::AuthContext& auth) {
  for (const auto& pem : auth.FindPropertyValues("x509_pem_cert"))  // the leaf, verified by the handshake
    return IdentityFromPem(std::string(pem.data(), pem.size()));
  return std::nullopt;
}

grpc::Status Authorize(const grpc::AuthContext* auth, const std::string& method, const std::string& peer) {
  const std::vector<std::string>* required = RequiredRoles(method);
  if (required && required->empty()) return grpc::Status::OK;  // open: health checks
  std::optional<Identity> id = auth ? PeerIdentity(*auth) : std::nullopt;
  if (!id) {
    Audit(method, "unknown", peer + " (NO_CREDENTIALS)", "denied");
    return Error(grpc::StatusCode::UNAUTHENTICATED, v1::NO_CREDENTIALS,
                 method + " needs credentials: a client certificate signed by the CA this server trusts")
        .ToStatus();
  }
  if (!Allows(id->roles, required)) {
    std::vector<std::string> needed = required ? *required : std::vector<std::string>{kOperator};
    std::sort(needed.begin(), needed.end());
    Audit(method, id->name, peer + " (MISSING_ROLE)", "denied");
    return Error(grpc::StatusCode::PERMISSION_DENIED, v1::MISSING_ROLE,
                 Quoted(id->name) + " may not call " + method + ": it needs one of the roles " + Join(needed, ", "),
                 {{"identity", id->name}, {"required", Join(needed, ",")}})
        .ToStatus();
  }
  if (required && std::all_of(required->begin(), required->end(), [](const std::string& r) { return r == "trainer"; }))
    Audit(method, id->name, peer, "granted");
  return grpc::Status::OK;
}

grpc::Status MethodGate::Process(const InputMetadata& metadata, grpc::AuthContext* context, OutputMetadata*,
                                 OutputMetadata*) {
  auto path = metadata.find(":path");
  if (path == metadata.end()) return grpc::Status::OK;  // no method to check: the handlers check theirs
  std::string method(path->second.data(), path->second.size());
  if (method.rfind(kEnvService, 0) == 0) return grpc::Status::OK;  // checked by the handlers, with ErrorInfo
  grpc::Status status = Authorize(context, method, "a TLS peer");
  return status.ok() ? status : grpc::Status(status.error_code(), status.error_message());
}

}  // namespace rollmesh::internal
