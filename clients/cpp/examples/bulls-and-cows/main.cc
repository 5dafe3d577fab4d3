// bulls-and-cows-server: serves the "bulls-and-cows" environment with the rollmesh flags
// (--host, --port, --max-episodes, --idle-timeout, --max-message-mb, --grace, --nats, ...).
#include "env.h"
#include "rollmesh/server.h"

int main(int argc, char** argv) {
  std::vector<rollmesh::Environment> envs;
  envs.push_back(bulls_and_cows::Environment());
  return rollmesh::Main(argc, argv, std::move(envs));
}
