// Raw gRPC bytes <-> protobuf messages. The service takes its requests as bytes so that an
// undecodable message is answered with INVALID_ARGUMENT (MALFORMED_REQUEST), not gRPC's INTERNAL.
#pragma once

#include <google/protobuf/message.h>
#include <grpcpp/support/byte_buffer.h>

#include <string>

namespace rollmesh::internal {

// False when the bytes are not a `message` (truncated, wrong wire types, invalid UTF-8).
bool Parse(const grpc::ByteBuffer& buffer, google::protobuf::Message* message);
void Serialize(const google::protobuf::Message& message, grpc::ByteBuffer* buffer);
// The MALFORMED_REQUEST error for a request that is not a `type_name`.
[[noreturn]] void ThrowMalformed(const std::string& type_name);

}  // namespace rollmesh::internal
