#!/usr/bin/env bash
# Idempotent: installs the C++ toolchain and libraries from Debian when missing, then configures
# and builds everything (generated code, library, examples, tests) into clients/cpp/build.
# Exit status 3: the toolchain cannot be installed (no root, no package source).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

packages=(g++ cmake make pkg-config protobuf-compiler protobuf-compiler-grpc libprotobuf-dev libgrpc++-dev
  libnats-dev libssl-dev)
"$here/../../scripts/apt-install.sh" "${packages[@]}"

build="$here/build"
[[ -f "$build/CMakeCache.txt" ]] || cmake -S "$here" -B "$build" >/dev/null
if ! cmake --build "$build" --parallel "${ROLLMESH_CPP_JOBS:-$(nproc)}" >"$build/build.log" 2>&1; then
  grep -Ev '^\[ *[0-9]+%\]' "$build/build.log" | tail -n 80 >&2
  echo "setup.sh: the build failed; the whole log is $build/build.log" >&2
  exit 1
fi
echo "setup.sh: built $(cd "$build" && ls -d *-server play rollmesh_tests | tr '\n' ' ')" >&2
