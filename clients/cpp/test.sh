#!/usr/bin/env bash
# Runs the C++ unit tests (the library over real loopback gRPC). Run ./setup.sh first; extra
# arguments pick tests by name (e.g. `test.sh shutdown`).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
[[ -x "$here/build/rollmesh_tests" ]] || { echo "test.sh: run clients/cpp/setup.sh first" >&2; exit 1; }
cmake --build "$here/build" --parallel "${ROLLMESH_CPP_JOBS:-$(nproc)}" >/dev/null
exec "$here/build/rollmesh_tests" "$@"
