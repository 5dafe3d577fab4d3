// The pieces without a network: page tokens, flags, error statuses, environment checks.
#include <google/protobuf/any.pb.h>

#include "check.h"
#include "google/rpc/error_details.pb.h"
#include "google/rpc/status.pb.h"
#include "hosted_env.h"
#include "page_token.h"
#include "rollmesh/errors.h"
#include "rollmesh/server.h"

using namespace rollmesh;

TEST(page_tokens_are_bound_to_their_listing) {
  std::string token = internal::MakePageToken("maze", "train", 4);
  CHECK(token.find("maze") == std::string::npos);  // opaque, not plain text
  CHECK_EQ(internal::PageOffset(token, "maze", "train", 10).value(), 4);
  CHECK_EQ(internal::PageOffset("", "maze", "train", 10).value(), 0);
  CHECK(!internal::PageOffset(token, "maze", "test", 10));    // another split
  CHECK(!internal::PageOffset(token, "other", "train", 10));  // another environment
  CHECK(!internal::PageOffset(token, "maze", "train", 3));    // past the end
  CHECK(!internal::PageOffset("4", "maze", "train", 10));
  CHECK(!internal::PageOffset("not-a-page-token-xyz", "maze", "train", 10));
  CHECK(!internal::PageOffset(token + "A", "maze", "train", 10));
  CHECK(!internal::PageOffset(internal::Base64UrlEncode("rollmesh-page:-1\nmaze\ntrain"), "maze", "train", 10));
}

TEST(base64url_round_trips_and_refuses_other_text) {
  for (const std::string& s : std::vector<std::string>{"", "a", "ab", "abc", "abcd", std::string("\0\xff\x10", 3)})
    CHECK(internal::Base64UrlDecode(internal::Base64UrlEncode(s)).value() == s);
  CHECK(!internal::Base64UrlDecode("ab+c"));
  CHECK(!internal::Base64UrlDecode("YR"));  // trailing bits set: not what the encoder writes
}

TEST(quoted_cuts_long_client_strings) {
  CHECK_EQ(Quoted("train"), std::string("'train'"));
  CHECK_EQ(Quoted("a'b\n"), std::string("'a\\'b\\x0a'"));
  std::string q = Quoted(std::string(500, 'x'));
  CHECK(q.rfind("'" + std::string(120, 'x') + "'... (500 bytes)", 0) == 0);
  CHECK_EQ(Quoted("héllo"), std::string("'héllo'"));
}

TEST(flags_parse_every_spelling) {
  const char* argv[] = {"server", "--host", "0.0.0.0", "--port=0", "--max-episodes", "7", "--idle-timeout", "0.5",
                        "--max-message-mb", "0.25", "--grace=2", "--nats", "nats://127.0.0.1:4222",
                        "--advertise-host", "env-1"};
  ServerOptions o = ParseFlags(15, argv);
  CHECK_EQ(o.host, std::string("0.0.0.0"));
  CHECK_EQ(o.port, 0);
  CHECK_EQ(o.max_episodes, 7);
  CHECK_EQ(o.idle_timeout_s, 0.5);
  CHECK_EQ(o.max_message_bytes(), 262144LL);
  CHECK_EQ(o.grace_s, 2.0);
  CHECK_EQ(o.nats_url, std::string("nats://127.0.0.1:4222"));
  CHECK_EQ(o.advertise_host, std::string("env-1"));
  ServerOptions d = ParseFlags(1, argv);
  CHECK_EQ(d.max_episodes, 256);
  CHECK_EQ(d.max_message_bytes(), 16LL << 20);
  bool help = false;
  const char* h[] = {"server", "--help"};
  ParseFlags(2, h, &help);
  CHECK(help);
}

TEST(flags_refuse_bad_values) {
  auto parse = [](std::vector<const char*> args) {
    args.insert(args.begin(), "server");
    return ParseFlags(static_cast<int>(args.size()), args.data());
  };
  CHECK_THROWS(std::invalid_argument, parse({"--port", "65536"}), CHECK(std::string(e.what()).find("--port") == 0));
  CHECK_THROWS(std::invalid_argument, parse({"--max-episodes", "0"}), );
  CHECK_THROWS(std::invalid_argument, parse({"--idle-timeout", "-1"}), );
  CHECK_THROWS(std::invalid_argument, parse({"--max-message-mb", "many"}), );
  CHECK_THROWS(std::invalid_argument, parse({"--grace"}), CHECK(std::string(e.what()).find("needs a value") != std::string::npos));
  CHECK_THROWS(std::invalid_argument, parse({"--max-episode", "3"}), CHECK(std::string(e.what()).find("unknown flag") == 0));
  CHECK_THROWS(std::invalid_argument, parse({"extra"}), );
}

TEST(errors_carry_error_info_details) {
  Error e(grpc::StatusCode::NOT_FOUND, v1::UNKNOWN_SPLIT, "no split 'x'", {{"splits", "test,train"}});
  grpc::Status status = e.ToStatus();
  CHECK_EQ(status.error_code(), grpc::StatusCode::NOT_FOUND);
  google::rpc::Status details;
  CHECK(details.ParseFromString(status.error_details()));
  CHECK_EQ(details.code(), 5);
  CHECK_EQ(details.message(), std::string("no split 'x'"));
  google::rpc::ErrorInfo info;
  CHECK(details.details_size() == 1 && details.details(0).UnpackTo(&info));
  CHECK_EQ(info.reason(), std::string("UNKNOWN_SPLIT"));
  CHECK_EQ(info.domain(), std::string("rollmesh.dev"));
  CHECK_EQ(info.metadata().at("splits"), std::string("test,train"));

  Error back = Error::FromStatus(status);
  CHECK_EQ(back.reason(), std::string("UNKNOWN_SPLIT"));
  CHECK_EQ(back.metadata().at("splits"), std::string("test,train"));
  CHECK_EQ(std::string(back.what()), std::string("no split 'x'"));
}

TEST(unknown_reasons_and_bare_statuses_are_the_code_alone) {
  CHECK_EQ(Error::FromStatus(grpc::Status(grpc::StatusCode::CANCELLED, "")).reason(), std::string());
  google::rpc::ErrorInfo info;
  info.set_reason("SOME_FUTURE_REASON");
  info.set_domain(kErrorDomain);
  google::rpc::Status details;
  details.set_code(9);
  details.add_details()->PackFrom(info);
  Error e = Error::FromStatus(grpc::Status(grpc::StatusCode::FAILED_PRECONDITION, "m", details.SerializeAsString()));
  CHECK_EQ(e.reason(), std::string());
  CHECK_EQ(e.code(), grpc::StatusCode::FAILED_PRECONDITION);
  info.set_reason("UNKNOWN_TASK");
  info.set_domain("example.com");  // another domain's reasons are not ours
  *details.mutable_details(0) = google::protobuf::Any();
  details.mutable_details(0)->PackFrom(info);
  CHECK_EQ(Error::FromStatus(grpc::Status(grpc::StatusCode::NOT_FOUND, "m", details.SerializeAsString())).reason(),
           std::string());
}

namespace {

Environment Minimal() {
  Environment e;
  e.name = "echo";
  e.max_turns = 3;
  e.splits["test"] = {MakeTask("t1", "say hi", "hi")};
  e.splits["train"] = {MakeTask("a", "say a", "a"), MakeTask("b", "say b", "b")};
  e.on_action = [](Episode&, const v1::Message&) { return StepResult{}; };
  return e;
}

}  // namespace

TEST(environments_are_checked_and_described) {
  internal::HostedEnv h(Minimal());
  CHECK_EQ(h.info.default_split(), std::string("train"));
  CHECK_EQ(h.info.kind(), v1::ENVIRONMENT_KIND_MULTI_TURN);
  CHECK_EQ(h.info.splits().at("train"), 2);
  CHECK(!h.info.has_score() && !h.info.has_run_episode());
  CHECK_EQ(h.info.digest().size(), 64u);
  CHECK_EQ(h.find_task("train", "b")->split(), std::string("train"));
  CHECK_EQ(h.find_task("train", "b")->env(), std::string("echo"));
  CHECK(h.find_task("test", "b") == nullptr);

  Environment tool = Minimal();
  tool.tools = {Tool("lookup", "Looks a word up.", R"({"type":"object"})")};
  CHECK_EQ(internal::HostedEnv(tool).info.kind(), v1::ENVIRONMENT_KIND_TOOL);
  Environment changed = Minimal();
  changed.splits["train"][0].set_answer("A");
  CHECK(internal::HostedEnv(changed).info.digest() != h.info.digest());

  auto refused = [](Environment e, const char* what) {
    CHECK_THROWS(std::invalid_argument, internal::HostedEnv(std::move(e)),
                 CHECK(std::string(e.what()).find(what) != std::string::npos));
  };
  Environment e = Minimal();
  e.on_action = nullptr;
  refused(e, "on_action");
  e = Minimal();
  e.splits["train"].push_back(MakeTask("a", "again", ""));
  refused(e, "duplicate task_id 'a'");
  e = Minimal();
  e.default_split = "dev";
  refused(e, "default_split 'dev'");
  e = Minimal();
  e.splits["train"][1].clear_prompt();
  refused(e, "has no prompt");
  e = Minimal();
  e.max_turns = 0;
  refused(e, "max_turns");
}
