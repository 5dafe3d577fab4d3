// Registration in the NATS KV registry (docs/protocol.md, "11. The bus"): one ServiceRecord per
// hosted environment, re-put every TTL/3, deleted on Close.
#pragma once

#include <condition_variable>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "rollmesh/tls.h"
#include "rollmesh/v1/bus.pb.h"

struct __natsConnection;
struct __jsCtx;
struct __kvStore;

namespace rollmesh::internal {

inline constexpr char kRegistryBucket[] = "rollmesh-registry";
inline constexpr double kRegistryTtlS = 15;  // when this server creates the bucket

// "environment.<name>.<instance_id>"; throws std::invalid_argument when a token is not
// [A-Za-z0-9_\-=/]+.
std::string RecordKey(const v1::ServiceRecord& record);

class Registration {
 public:
  // Connects (over TLS with tls's files when it names a CA or certificate), opens the bucket
  // (creating it when missing), puts the records with started_at and heartbeat_at, and starts the
  // heartbeat. Throws std::runtime_error when NATS says no.
  Registration(const std::string& nats_url, std::vector<v1::ServiceRecord> records, const TlsFiles& tls = {});
  ~Registration();
  // Stops the heartbeat and deletes the records (the TTL expires them if NATS is gone).
  void Close();
  double ttl_s() const { return ttl_s_; }

 private:
  void Put(v1::ServiceRecord& record);
  void Heartbeat();

  __natsConnection* nc_ = nullptr;
  __jsCtx* js_ = nullptr;
  __kvStore* kv_ = nullptr;
  std::vector<v1::ServiceRecord> records_;
  double ttl_s_ = kRegistryTtlS;
  std::mutex mu_;
  std::condition_variable stop_cv_;
  bool stop_ = false;
  std::thread heartbeat_;
};

}  // namespace rollmesh::internal
