// Transport security: TLS settings and flags, identities from certificates, the role table, and a
// server with mutual TLS over real loopback gRPC, with certificates made here (tests/pki.h).
#include <stdlib.h>

#include <tuple>

#include "check.h"
#include "pki.h"
#include "rollmesh/client.h"
#include "rollmesh/server.h"
#include "security.h"

using namespace rollmesh;

namespace {

const char kEpisode[] = "/rollmesh.v1.EnvironmentService/Episode";
const char kDescribe[] = "/rollmesh.v1.EnvironmentService/Describe";

bool Contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

// "echo": one turn, reward 1 when the reply is the answer.
Environment Echo() {
  Environment e;
  e.name = "echo";
  e.max_turns = 1;
  e.splits["train"] = {MakeTask("a", "say a", "a"), MakeTask("b", "say b", "b")};
  e.reward_names = {"correct"};
  e.on_action = [](Episode& ep, const v1::Message& action) {
    StepResult r;
    r.done = true;
    r.rewards = {{"correct", action.content() == ep.task.answer() ? 1.0 : 0.0}};
    return r;
  };
  e.score = [](const v1::Task&, const Messages&, const google::protobuf::Struct&) { return Rewards{{"correct", 1}}; };
  return e;
}

struct Mesh {
  Mesh() {
    ca.Issue("env", {"server"}, {"env"});
    ca.Issue("orchestrator", {"orchestrator"});
    ca.Issue("reader", {"reader"});
    ca.Issue("publisher", {"publisher"});
  }
  testpki::CA ca;
};

ServerOptions Secure(const TlsFiles& tls) {
  ServerOptions o;
  o.port = 0;
  o.tls = tls;
  return o;
}

template <class F>
Error Fails(grpc::StatusCode code, F&& fn) {
  try {
    fn();
  } catch (const Error& e) {
    if (e.code() != code)
      throw check::Failure("expected " + CodeName(code) + ", got " + CodeName(e.code()) + ": " + e.what());
    return e;
  }
  throw check::Failure("expected " + CodeName(code) + ", got no error");
}

}  // namespace

TEST(the_role_table_is_the_trust_model) {
  using internal::Allows;
  using internal::RequiredRoles;
  using Roles = std::vector<std::string>;
  CHECK(Allows(Roles{"orchestrator"}, RequiredRoles(kEpisode)));
  CHECK(!Allows(Roles{"reader"}, RequiredRoles(kEpisode)));
  CHECK(!Allows(Roles{"server"}, RequiredRoles(kEpisode)));
  CHECK(!Allows(Roles{}, RequiredRoles(kEpisode)));
  CHECK(Allows(Roles{"operator"}, RequiredRoles(kEpisode)));
  CHECK(Allows(Roles{"reader"}, RequiredRoles(kDescribe)));
  CHECK(Allows(Roles{"reader"}, RequiredRoles("/rollmesh.v1.EnvironmentService/ListTasks")));
  CHECK(!Allows(Roles{"trainer"}, RequiredRoles(kDescribe)));
  CHECK(!Allows(Roles{"reader"}, RequiredRoles("/rollmesh.v1.EnvironmentService/Score")));
  CHECK(!Allows(Roles{"reader"}, RequiredRoles("/rollmesh.v1.EnvironmentService/RunEpisode")));
  CHECK(Allows(Roles{}, RequiredRoles("/grpc.health.v1.Health/Check")));
  CHECK(Allows(Roles{}, RequiredRoles("/grpc.health.v1.Health/Watch")));
  CHECK(Allows(Roles{"trainer"}, RequiredRoles("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo")));
  CHECK(!Allows(Roles{"publisher"}, RequiredRoles("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo")));
  CHECK(RequiredRoles("/rollmesh.v1.EnvironmentService/Unlisted") == nullptr);  // operators only
  CHECK(!Allows(Roles{"orchestrator", "reader", "trainer"}, RequiredRoles("/x.Y/Z")));
  CHECK(Allows(Roles{"operator"}, RequiredRoles("/x.Y/Z")));
}

TEST(identities_come_from_the_certificate) {
  testpki::CA ca;
  ca.Issue("rubric", {"server", "orchestrator", "sales"}, {"rubric"});
  auto id = internal::IdentityFromPem(ca.CertPem("rubric"));
  CHECK(id.has_value());
  CHECK_EQ(id->name, std::string("rubric"));
  CHECK(id->roles == std::vector<std::string>({"server", "orchestrator"}));  // OUs that are no role are ignored
  CHECK(!internal::IdentityFromPem("not a certificate").has_value());
}

TEST(tls_flags_and_their_environment_variables) {
  setenv("ROLLMESH_TLS_CA", "/from/env/ca.pem", 1);
  const char* argv[] = {"server", "--tls-cert", "me.pem", "--tls-key=me-key.pem", "--insecure", "--port", "0"};
  ServerOptions o = ParseFlags(7, argv);
  unsetenv("ROLLMESH_TLS_CA");
  CHECK_EQ(o.tls.cert, std::string("me.pem"));
  CHECK_EQ(o.tls.key, std::string("me-key.pem"));
  CHECK_EQ(o.tls.ca, std::string("/from/env/ca.pem"));
  CHECK(o.insecure);
  CHECK_EQ(o.port, 0);
  const char* off[] = {"server", "--insecure=false", "--tls-ca", "ca.pem"};
  ServerOptions p = ParseFlags(4, off);
  CHECK(!p.insecure);
  CHECK_EQ(p.tls.ca, std::string("ca.pem"));
  CHECK(!ParseFlags(1, argv).insecure);
  CHECK(Contains(Usage("server"), "--tls-ca FILE"));

  CHECK_THROWS(std::invalid_argument, (TlsFiles{"me.pem", "", ""}.Validate(false)),
               CHECK(Contains(e.what(), "give both --tls-cert and --tls-key")));
  CHECK_THROWS(std::invalid_argument, (TlsFiles{"", "", "/no/such/ca.pem"}.Validate(true)),
               CHECK(Contains(e.what(), "needs its own certificate")));
  CHECK_THROWS(std::invalid_argument, (TlsFiles{"", "", "/no/such/ca.pem"}.Validate(false)),
               CHECK(Contains(e.what(), "cannot read the CA bundle /no/such/ca.pem")));
}

TEST(an_exposed_address_needs_mutual_tls) {
  Mesh mesh;
  for (const char* host : {"127.0.0.1", "localhost", "::1"}) CHECK(internal::IsLoopback(host));
  for (const char* host : {"0.0.0.0", "::", "", "192.0.2.1"}) CHECK(!internal::IsLoopback(host));
  ServerOptions o = Secure({});
  o.host = "0.0.0.0";
  Server plain({Echo()}, o);
  CHECK_THROWS(std::invalid_argument, plain.Start(),
               CHECK(Contains(e.what(), "refusing to serve environments on 0.0.0.0 without TLS and caller "
                                        "authentication")));
  TlsFiles env = mesh.ca.Files("env");
  o.tls = {env.cert, env.key, ""};
  Server tls_only({Echo()}, o);
  CHECK_THROWS(std::invalid_argument, tls_only.Start(), CHECK(Contains(e.what(), "(--tls-ca)")));
  o.tls = env;
  Server secure({Echo()}, o);
  secure.Start();
  secure.Shutdown(0);
  o.tls = {};
  o.insecure = true;
  Server insecure({Echo()}, o);
  insecure.Start();
  insecure.Shutdown(0);
}

TEST(mutual_tls_and_roles) {
  Mesh mesh;
  Server server({Echo()}, Secure(mesh.ca.Files("env")));
  std::string address = server.Start();

  EnvClient orchestrator(address, 10, 10, mesh.ca.Files("orchestrator"));
  CHECK_EQ(orchestrator.Describe().environments(0).name(), std::string("echo"));
  v1::StartEpisode start;
  start.set_env("echo");
  start.set_task_id("a");
  auto session = orchestrator.Start(start);
  CHECK_EQ(session->Act(Text("assistant", "a")).reward(), 1.0);
  session->Close();
  v1::ScoreRequest score;
  score.set_env("echo");
  score.mutable_task()->set_task_id("a");
  CHECK_EQ(orchestrator.Score(score).reward(), 1.0);

  EnvClient reader(address, 10, 10, mesh.ca.Files("reader"));
  CHECK_EQ(reader.Describe().environments(0).name(), std::string("echo"));
  CHECK_EQ(reader.ListTasks("echo").tasks.size(), 2u);
  Error refused = Fails(grpc::StatusCode::PERMISSION_DENIED, [&] { reader.Start(start); });
  CHECK_EQ(refused.reason(), std::string("MISSING_ROLE"));
  CHECK_EQ(refused.metadata().at("identity"), std::string("reader"));
  CHECK_EQ(refused.metadata().at("required"), std::string("orchestrator"));
  CHECK_EQ(std::string(refused.what()),
           std::string("'reader' may not call /rollmesh.v1.EnvironmentService/Episode: it needs one of the roles "
                       "orchestrator"));
  CHECK_EQ(Fails(grpc::StatusCode::PERMISSION_DENIED, [&] { reader.Score(score); }).reason(),
           std::string("MISSING_ROLE"));

  EnvClient publisher(address, 10, 10, mesh.ca.Files("publisher"));
  Error listing = Fails(grpc::StatusCode::PERMISSION_DENIED, [&] { publisher.ListTasks("echo"); });
  CHECK_EQ(listing.metadata().at("required"), std::string("orchestrator,reader"));
  server.Shutdown(0);
}

TEST(connections_without_a_trusted_certificate_are_refused) {
  Mesh mesh;
  testpki::CA other;
  TlsFiles foreign = other.Issue("orchestrator", {"orchestrator"});
  Server server({Echo()}, Secure(mesh.ca.Files("env")));
  std::string address = server.Start();
  TlsFiles untrusted_server = foreign;
  foreign.ca = mesh.ca.ca_path();  // trusts the server; its own certificate is another CA's
  for (const auto& [what, files, name] : std::vector<std::tuple<std::string, TlsFiles, std::string>>{
           {"no client certificate", TlsFiles{"", "", mesh.ca.ca_path()}, ""},
           {"another CA's client certificate", foreign, ""},
           {"plaintext", TlsFiles{}, ""},
           {"a server certificate of a CA it does not trust", untrusted_server, ""},
           {"a server certificate for another kind", mesh.ca.Files("orchestrator"), "inference.rollmesh"},
       }) {
    EnvClient client(address, 5, 5, files, name);
    try {
      client.Describe();
      throw check::Failure(what + ": Describe answered");
    } catch (const Error& e) {
      if (e.code() != grpc::StatusCode::UNAVAILABLE)
        throw check::Failure(what + ": " + CodeName(e.code()) + " " + e.what());
    }
  }
  server.Shutdown(0);
}
