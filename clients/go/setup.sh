#!/usr/bin/env bash
# Idempotent: installs the Go toolchain from Debian when missing, links our packages into a
# GOPATH (clients/go/.gopath), and builds the example servers into clients/go/bin.
# Exit status 3: the toolchain cannot be installed (no root, no package source).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"

# protoc-gen-go (APIv2) conflicts with golang-goprotobuf-dev / protoc-gen-go-1-3: apt swaps them.
packages=(golang-go protobuf-compiler protoc-gen-go protoc-gen-go-grpc golang-google-grpc-dev
  golang-google-protobuf-dev golang-github-golang-protobuf-1-5-dev)

"$(dirname "${BASH_SOURCE[0]}")/../../scripts/apt-install.sh" "${packages[@]}"

mkdir -p "$(dirname "$GO_LINK")"
if [[ "$(readlink "$GO_LINK" 2>/dev/null)" != "$GO_DIR" ]]; then
  ln -sfn "$GO_DIR" "$GO_LINK"
fi

cd "$GO_LINK"
go vet ./...
for dir in examples/*/; do
  name="$(basename "$dir")"
  go build -trimpath -o "$GO_DIR/bin/$name-server" "./examples/$name"
done
echo "setup.sh: built $(ls "$GO_DIR/bin" | tr '\n' ' ')" >&2
