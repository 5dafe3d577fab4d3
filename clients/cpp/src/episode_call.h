// One Episode stream. The stream's gRPC side is a callback reactor that never blocks; the episode
// itself runs on a thread of its own that waits for each client message (bounded by the idle
// timeout), calls the environment, and writes the reply. So an environment's callback may block
// without stalling other episodes, and the idle timeout can end the stream with its own status.
#pragma once

#include <condition_variable>
#include <mutex>

#include "service.h"

namespace rollmesh::internal {

class EpisodeCall final : public grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer> {
 public:
  static EpisodeCall* Create(ServiceCore* core, grpc::CallbackServerContext* ctx);

  void OnReadDone(bool ok) override;
  void OnWriteDone(bool ok) override;
  void OnCancel() override;
  void OnDone() override;

 private:
  enum class Got { kMessage, kHalfClose, kIdle, kCancelled };

  EpisodeCall(ServiceCore* core, grpc::CallbackServerContext* ctx) : core_(core), ctx_(ctx) {}
  void Run();           // the episode thread
  grpc::Status Play();  // the episode protocol; the status to end the stream with
  Got Next(v1::EpisodeRequest* request);
  bool Send(const v1::EpisodeResponse& response);
  void Unref();

  ServiceCore* const core_;
  grpc::CallbackServerContext* const ctx_;
  grpc::ByteBuffer in_, out_;
  std::mutex mu_;
  std::condition_variable cv_;
  // Guarded by mu_.
  bool read_done_ = false, read_ok_ = false;
  bool write_done_ = false, write_ok_ = false;
  bool cancelled_ = false;
  int refs_ = 2;  // the gRPC call (until OnDone) and the episode thread
};

}  // namespace rollmesh::internal
