#include "convert.h"

#include <vector>

#include "rollmesh/errors.h"

namespace rollmesh::internal {

bool Parse(const grpc::ByteBuffer& buffer, google::protobuf::Message* message) {
  std::vector<grpc::Slice> slices;
  if (!buffer.Dump(&slices).ok()) return false;
  std::string bytes;
  bytes.reserve(buffer.Length());
  for (const auto& s : slices) bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
  return message->ParseFromString(bytes);
}

void Serialize(const google::protobuf::Message& message, grpc::ByteBuffer* buffer) {
  std::string bytes = message.SerializeAsString();
  grpc::Slice slice(std::move(bytes));
  *buffer = grpc::ByteBuffer(&slice, 1);
}

void ThrowMalformed(const std::string& type_name) {
  throw Error(grpc::StatusCode::INVALID_ARGUMENT, v1::MALFORMED_REQUEST,
              "the request is not a valid " + type_name + " message");
}

}  // namespace rollmesh::internal
