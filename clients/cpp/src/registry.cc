#include "registry.h"

#include <arpa/inet.h>
#include <google/protobuf/util/time_util.h>
#include <nats/nats.h>

#include <chrono>
#include <cstdio>
#include <memory>
#include <regex>
#include <stdexcept>

#include "rollmesh/errors.h"

namespace rollmesh::internal {
namespace {

void Check(natsStatus s, const std::string& what) {
  if (s == NATS_OK) return;
  const char* detail = nats_GetLastError(nullptr);
  throw std::runtime_error(what + ": " + natsStatus_GetText(s) + (detail && *detail ? std::string(" (") + detail + ")" : ""));
}

std::string KindToken(v1::ServiceKind kind) {
  std::string name = v1::ServiceKind_Name(kind);  // SERVICE_KIND_ENVIRONMENT
  name = name.substr(std::string("SERVICE_KIND_").size());
  for (auto& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return name;
}

// The name the NATS server's certificate must hold: the URL's host, or nats.rollmesh when the
// host is an IP address (OpenSSL's host check matches names only; a mesh's NATS certificate
// names nats.rollmesh).
std::string ExpectedHostname(const std::string& url) {
  std::string rest = url.substr(0, url.find(','));
  if (size_t scheme = rest.find("://"); scheme != std::string::npos) rest = rest.substr(scheme + 3);
  if (size_t at = rest.rfind('@'); at != std::string::npos) rest = rest.substr(at + 1);
  std::string host;
  if (!rest.empty() && rest.front() == '[') {
    host = rest.substr(1, rest.find(']') - 1);
  } else {
    host = rest.substr(0, rest.find(':'));
  }
  unsigned char addr[sizeof(struct in6_addr)];
  if (host.empty() || inet_pton(AF_INET, host.c_str(), addr) == 1 || inet_pton(AF_INET6, host.c_str(), addr) == 1)
    return ServerName("nats");
  return host;
}

// Asynchronous errors of the connection, e.g. a publish the server's permissions refuse (the
// publish itself then only times out): said on stderr.
void OnAsyncError(natsConnection* nc, natsSubscription*, natsStatus err, void*) {
  const char* text = nullptr;
  natsConnection_GetLastError(nc, &text);
  std::fprintf(stderr, "rollmesh: NATS: %s%s%s\n", natsStatus_GetText(err), text && *text ? ": " : "",
               text ? text : "");
}

}  // namespace

std::string RecordKey(const v1::ServiceRecord& record) {
  static const std::regex token("^[A-Za-z0-9_\\-=/]+$");
  for (const auto* part : {&record.name(), &record.instance_id()})
    if (!std::regex_match(*part, token))
      throw std::invalid_argument("invalid registry key token " + Quoted(*part) +
                                  ": use letters, digits, '-', '_', '=' or '/' (no '.', spaces or wildcards)");
  return KindToken(record.kind()) + "." + record.name() + "." + record.instance_id();
}

Registration::Registration(const std::string& nats_url, std::vector<v1::ServiceRecord> records, const TlsFiles& tls)
    : records_(std::move(records)) {
  for (const auto& r : records_) RecordKey(r);  // validate before connecting
  try {
    natsOptions* raw = nullptr;
    Check(natsOptions_Create(&raw), "NATS options");
    std::unique_ptr<natsOptions, decltype(&natsOptions_Destroy)> opts(raw, natsOptions_Destroy);
    natsOptions_SetURL(opts.get(), nats_url.c_str());
    natsOptions_SetName(opts.get(), "rollmesh-registry");
    natsOptions_SetTimeout(opts.get(), 5000);
    natsOptions_SetMaxReconnect(opts.get(), -1);  // keep trying: the TTL, not the connection, is the judge
    natsOptions_SetErrorHandler(opts.get(), OnAsyncError, nullptr);
    if (tls.enabled()) {  // the server maps the certificate to a user with its roles' permissions
      Check(natsOptions_SetSecure(opts.get(), true), "NATS over TLS");
      if (!tls.ca.empty())
        Check(natsOptions_LoadCATrustedCertificates(opts.get(), tls.ca.c_str()), "the CA bundle " + tls.ca);
      if (!tls.cert.empty())
        Check(natsOptions_LoadCertificatesChain(opts.get(), tls.cert.c_str(), tls.key.c_str()),
              "the certificate " + tls.cert);
      Check(natsOptions_SetExpectedHostname(opts.get(), ExpectedHostname(nats_url).c_str()), "NATS over TLS");
    }
    Check(natsConnection_Connect(&nc_, opts.get()), "cannot connect to NATS at " + nats_url);
    Check(natsConnection_JetStream(&js_, nc_, nullptr), "JetStream context");
    natsStatus s = js_KeyValue(&kv_, js_, kRegistryBucket);
    if (s == NATS_NOT_FOUND) {
      kvConfig cfg;
      kvConfig_Init(&cfg);
      cfg.Bucket = kRegistryBucket;
      cfg.History = 1;
      cfg.TTL = static_cast<int64_t>(kRegistryTtlS * 1e9);  // nanoseconds: the stream's max_age
      s = js_CreateKeyValue(&kv_, js_, &cfg);
      if (s != NATS_OK) s = js_KeyValue(&kv_, js_, kRegistryBucket);  // lost a creation race
    }
    Check(s, std::string("registry bucket ") + kRegistryBucket);
    // The bucket's TTL wins over ours: the first creator picked it, and heartbeats must beat it.
    kvStatus* status = nullptr;
    if (kvStore_Status(&status, kv_) == NATS_OK) {
      int64_t ttl_ns = kvStatus_TTL(status);
      if (ttl_ns > 0) ttl_s_ = ttl_ns / 1e9;
      kvStatus_Destroy(status);
    }
    auto now = google::protobuf::util::TimeUtil::GetCurrentTime();
    for (auto& r : records_) {
      *r.mutable_started_at() = now;
      if (r.protocol_version().empty()) r.set_protocol_version("v1");
      Put(r);
    }
  } catch (...) {
    Close();
    throw;
  }
  heartbeat_ = std::thread(&Registration::Heartbeat, this);
}

Registration::~Registration() { Close(); }

void Registration::Put(v1::ServiceRecord& record) {
  *record.mutable_heartbeat_at() = google::protobuf::util::TimeUtil::GetCurrentTime();
  std::string bytes = record.SerializeAsString();
  Check(kvStore_Put(nullptr, kv_, RecordKey(record).c_str(), bytes.data(), static_cast<int>(bytes.size())),
        "registry put " + RecordKey(record));
}

void Registration::Heartbeat() {
  auto every = std::chrono::duration<double>(ttl_s_ / 3);
  std::unique_lock<std::mutex> lock(mu_);
  while (!stop_cv_.wait_for(lock, every, [this] { return stop_; })) {
    for (auto& r : records_) {
      try {
        Put(r);
      } catch (const std::exception& e) {  // NATS down or reconnecting: keep trying
        std::fprintf(stderr, "rollmesh: registry heartbeat failed: %s\n", e.what());
      }
    }
  }
}

void Registration::Close() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  stop_cv_.notify_all();
  if (heartbeat_.joinable()) heartbeat_.join();
  if (kv_) {
    for (const auto& r : records_)
      if (kvStore_Delete(kv_, RecordKey(r).c_str()) != NATS_OK)
        std::fprintf(stderr, "rollmesh: could not deregister %s; its TTL will expire it\n", RecordKey(r).c_str());
    kvStore_Destroy(kv_);
    kv_ = nullptr;
  }
  if (js_) jsCtx_Destroy(js_);
  js_ = nullptr;
  if (nc_) natsConnection_Destroy(nc_);
  nc_ = nullptr;
}

}  // namespace rollmesh::internal
