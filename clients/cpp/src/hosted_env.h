// An Environment checked and indexed for serving, with its Describe entry.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "rollmesh/environment.h"

namespace rollmesh::internal {

struct HostedEnv {
  Environment env;  // tasks carry env and split
  std::map<std::string, std::map<std::string, size_t>> task_index;  // split -> task_id -> position
  v1::EnvironmentInfo info;

  // Throws std::invalid_argument naming what is wrong.
  explicit HostedEnv(Environment e);
  bool has_split(const std::string& split) const { return env.splits.count(split) > 0; }
  const v1::Task* find_task(const std::string& split, const std::string& task_id) const;
  std::string split_names() const;  // "test,train"
};

}  // namespace rollmesh::internal
