// Errors with a reason (docs/protocol.md, "2. Errors"): the status code is the coarse class, the
// ErrorInfo reason (a rollmesh.v1.ErrorReason name, domain "rollmesh.dev") the precise cause.
#pragma once

#include <grpcpp/support/status.h>

#include <map>
#include <stdexcept>
#include <string>
#include <string_view>

#include "rollmesh/v1/errors.pb.h"

namespace rollmesh {

inline constexpr char kErrorDomain[] = "rollmesh.dev";

// A failed call. Servers throw it (the helper's own checks, and environment code that wants a
// particular status); the helper sends it as the status plus a google.rpc.Status/ErrorInfo in the
// grpc-status-details-bin trailer. Clients get it back from Error::FromStatus.
class Error : public std::runtime_error {
 public:
  Error(grpc::StatusCode code, v1::ErrorReason reason, const std::string& message,
        std::map<std::string, std::string> metadata = {});

  // The error a status stands for. reason() is empty when the status carries no rollmesh
  // ErrorInfo, or one whose reason this client does not know (then only the code counts).
  static Error FromStatus(const grpc::Status& status);

  grpc::StatusCode code() const { return code_; }
  const std::string& reason() const { return reason_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

  // The status with its ErrorInfo details, as a server sends it.
  grpc::Status ToStatus() const;

 private:
  Error(grpc::StatusCode code, std::string reason, const std::string& message,
        std::map<std::string, std::string> metadata);

  grpc::StatusCode code_;
  std::string reason_;
  std::map<std::string, std::string> metadata_;
};

// "UNKNOWN_TASK" for grpc::StatusCode::NOT_FOUND etc.: the status code's name.
std::string CodeName(grpc::StatusCode code);

// A client-supplied string for an error message: quoted, non-printable bytes escaped, cut to 120
// characters (with its real length) so that no client string is echoed unbounded.
std::string Quoted(std::string_view value);

}  // namespace rollmesh
