#include "rollmesh/client.h"

#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>

#include <chrono>

namespace rollmesh {
namespace {

void SetTimeout(grpc::ClientContext* ctx, double seconds) {
  if (seconds > 0)
    ctx->set_deadline(std::chrono::system_clock::now() +
                      std::chrono::duration_cast<std::chrono::system_clock::duration>(std::chrono::duration<double>(seconds)));
}

void ThrowIfFailed(const grpc::Status& status) {
  if (!status.ok()) throw Error::FromStatus(status);
}

}  // namespace

EnvClient::EnvClient(const std::string& address, double timeout_s, double episode_timeout_s,
                     std::optional<TlsFiles> tls, const std::string& server_name)
    : timeout_s_(timeout_s), episode_timeout_s_(episode_timeout_s) {
  const TlsFiles files = tls ? *tls : TlsFiles::FromEnv();
  files.Validate(false);
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(-1);  // the server bounds its replies (limits.max_message_bytes)
  args.SetMaxSendMessageSize(-1);     // and refuses what is over its limit, with a status
  args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, 30000);
  args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 10000);
  args.SetInt(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  args.SetInt(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
  std::shared_ptr<grpc::ChannelCredentials> credentials = grpc::InsecureChannelCredentials();
  if (files.enabled()) {
    grpc::SslCredentialsOptions options;
    if (!files.ca.empty()) options.pem_root_certs = ReadPem(files.ca, "CA bundle");
    if (!files.cert.empty()) {
      options.pem_cert_chain = ReadPem(files.cert, "certificate");
      options.pem_private_key = ReadPem(files.key, "private key");
    }
    credentials = grpc::SslCredentials(options);
    args.SetSslTargetNameOverride(server_name.empty() ? ServerName("env") : server_name);
  }
  channel_ = grpc::CreateCustomChannel(address, credentials, args);
  stub_ = v1::EnvironmentService::NewStub(channel_);
}

v1::DescribeResponse EnvClient::Describe() {
  grpc::ClientContext ctx;
  SetTimeout(&ctx, timeout_s_);
  v1::DescribeResponse response;
  ThrowIfFailed(stub_->Describe(&ctx, v1::DescribeRequest(), &response));
  return response;
}

TaskPage EnvClient::ListTasks(const std::string& env, const std::string& split, int page_size,
                              const std::string& page_token) {
  grpc::ClientContext ctx;
  SetTimeout(&ctx, timeout_s_);
  v1::ListTasksRequest request;
  request.set_env(env);
  request.set_split(split);
  request.set_page_size(page_size);
  request.set_page_token(page_token);
  auto reader = stub_->ListTasks(&ctx, request);
  TaskPage page;
  v1::ListTasksResponse response;
  while (reader->Read(&response)) {
    for (auto& t : *response.mutable_tasks()) page.tasks.push_back(std::move(t));
    page.next_page_token = response.next_page_token();
    page.total = response.total();
  }
  ThrowIfFailed(reader->Finish());
  return page;
}

v1::ScoreResponse EnvClient::Score(const v1::ScoreRequest& request) {
  grpc::ClientContext ctx;
  SetTimeout(&ctx, timeout_s_);
  v1::ScoreResponse response;
  ThrowIfFailed(stub_->Score(&ctx, request, &response));
  return response;
}

std::unique_ptr<EpisodeSession> EnvClient::Start(const v1::StartEpisode& start) {
  std::unique_ptr<EpisodeSession> session(new EpisodeSession());
  SetTimeout(&session->context_, episode_timeout_s_);
  session->stream_ = stub_->Episode(&session->context_);
  v1::EpisodeRequest request;
  *request.mutable_start() = start;
  v1::EpisodeResponse response;
  if (!session->stream_->Write(request) || !session->stream_->Read(&response)) session->Fail("`started`");
  if (!response.has_started()) {
    session->Close();
    throw Error::FromStatus(grpc::Status(grpc::StatusCode::DATA_LOSS, "expected `started` from the server"));
  }
  session->started_ = response.started();
  session->conversation_.assign(session->started_.messages().begin(), session->started_.messages().end());
  return session;
}

EpisodeSession::~EpisodeSession() { Close(); }

v1::Step EpisodeSession::Act(const v1::Message& action) {
  if (closed_) throw std::logic_error("the episode session is closed");
  v1::EpisodeRequest request;
  *request.mutable_action()->mutable_message() = action;
  v1::EpisodeResponse response;
  // A stream the server already ended refuses the write: its status is read in Fail.
  if (!stream_->Write(request) || !stream_->Read(&response)) Fail("a step");
  if (!response.has_step()) {
    Close();
    throw Error::FromStatus(grpc::Status(grpc::StatusCode::DATA_LOSS, "expected a `step` from the server"));
  }
  last_ = response.step();
  conversation_.push_back(action);
  conversation_.back().set_role("assistant");
  conversation_.insert(conversation_.end(), last_.messages().begin(), last_.messages().end());
  done_ = last_.done();
  return last_;
}

void EpisodeSession::Close() {
  if (closed_ || !stream_) return;
  closed_ = true;
  if (!done_) {
    context_.TryCancel();  // the server ends the episode and frees its slot
    stream_->Finish();
    return;
  }
  stream_->WritesDone();
  v1::EpisodeResponse extra;
  while (stream_->Read(&extra)) {
  }
  stream_->Finish();  // OK: the server has freed the episode
}

void EpisodeSession::Fail(const char* what) {
  closed_ = true;
  grpc::Status status = stream_->Finish();
  if (status.ok())
    status = grpc::Status(grpc::StatusCode::UNAVAILABLE,
                          std::string("the server closed the episode stream without ") + what);
  throw Error::FromStatus(status);
}

}  // namespace rollmesh
