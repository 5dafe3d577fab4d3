#include "rollmesh/errors.h"

#include <cstdio>

#include "google/rpc/error_details.pb.h"
#include "google/rpc/status.pb.h"

namespace rollmesh {

Error::Error(grpc::StatusCode code, v1::ErrorReason reason, const std::string& message,
             std::map<std::string, std::string> metadata)
    : Error(code, v1::ErrorReason_Name(reason), message, std::move(metadata)) {}

Error::Error(grpc::StatusCode code, std::string reason, const std::string& message,
             std::map<std::string, std::string> metadata)
    : std::runtime_error(message), code_(code), reason_(std::move(reason)), metadata_(std::move(metadata)) {}

grpc::Status Error::ToStatus() const {
  google::rpc::ErrorInfo info;
  info.set_reason(reason_);
  info.set_domain(kErrorDomain);
  info.mutable_metadata()->insert(metadata_.begin(), metadata_.end());
  google::rpc::Status status;
  status.set_code(static_cast<int>(code_));
  status.set_message(what());
  status.add_details()->PackFrom(info);
  return grpc::Status(code_, what(), status.SerializeAsString());
}

Error Error::FromStatus(const grpc::Status& status) {
  std::string reason;
  std::map<std::string, std::string> metadata;
  google::rpc::Status details;
  if (!status.error_details().empty() && details.ParseFromString(status.error_details())) {
    for (const auto& any : details.details()) {
      google::rpc::ErrorInfo info;
      if (!any.Is<google::rpc::ErrorInfo>() || !any.UnpackTo(&info) || info.domain() != kErrorDomain) continue;
      v1::ErrorReason known;
      if (v1::ErrorReason_Parse(info.reason(), &known) && known != v1::ERROR_REASON_UNSPECIFIED) {
        reason = info.reason();
        metadata.insert(info.metadata().begin(), info.metadata().end());
      }
      break;
    }
  }
  std::string message = status.error_message().empty() ? CodeName(status.error_code()) : status.error_message();
  return Error(status.error_code(), std::move(reason), message, std::move(metadata));
}

std::string CodeName(grpc::StatusCode code) {
  static const char* const kNames[] = {
      "OK",        "CANCELLED",         "UNKNOWN",           "INVALID_ARGUMENT", "DEADLINE_EXCEEDED",
      "NOT_FOUND", "ALREADY_EXISTS",    "PERMISSION_DENIED", "RESOURCE_EXHAUSTED",
      "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE",      "UNIMPLEMENTED",    "INTERNAL",
      "UNAVAILABLE", "DATA_LOSS",       "UNAUTHENTICATED"};
  int i = static_cast<int>(code);
  return i >= 0 && i < static_cast<int>(sizeof kNames / sizeof *kNames) ? kNames[i] : "CODE_" + std::to_string(i);
}

std::string Quoted(std::string_view value) {
  constexpr size_t kLimit = 120;
  std::string out = "'";
  size_t chars = 0, i = 0;
  for (; i < value.size() && chars < kLimit; ++chars) {
    auto c = static_cast<unsigned char>(value[i]);
    if (c >= 0x80) {  // copy a whole UTF-8 sequence: never cut one in half
      size_t len = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 1;
      out.append(value.substr(i, len));
      i += len;
      continue;
    }
    if (c < 0x20 || c == 0x7F || c == '\'' || c == '\\') {
      char buf[8];
      std::snprintf(buf, sizeof buf, c == '\'' || c == '\\' ? "\\%c" : "\\x%02x", c);
      out += buf;
    } else {
      out += static_cast<char>(c);
    }
    ++i;
  }
  out += "'";
  if (i < value.size()) out += "... (" + std::to_string(value.size()) + " bytes)";
  return out;
}

}  // namespace rollmesh
