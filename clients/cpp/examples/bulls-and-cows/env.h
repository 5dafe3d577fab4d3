#pragma once

#include "rollmesh/environment.h"

namespace bulls_and_cows {

// The environment with `train_tasks` and `test_tasks` codes in its two splits.
rollmesh::Environment Environment(int train_tasks = 200, int test_tasks = 40);

}  // namespace bulls_and_cows
