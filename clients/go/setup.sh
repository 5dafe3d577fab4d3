#!/usr/bin/env bash
# Idempotent: installs the Go toolchain from Debian when missing, links our packages into a
# GOPATH (clients/go/.gopath), and builds the example servers into clients/go/bin.
# Exit status 3: the toolchain cannot be installed (no root, no package source).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"

# protoc-gen-go (APIv2) conflicts with golang-goprotobuf-dev / protoc-gen-go-1-3: apt swaps them.
packages=(golang-go protobuf-compiler protoc-gen-go protoc-gen-go-grpc golang-google-grpc-dev
  golang-google-protobuf-dev golang-github-golang-protobuf-1-5-dev)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  sudo=()
  if [[ $EUID -ne 0 ]]; then
    command -v sudo >/dev/null || { echo "setup.sh: need root (or sudo) to install ${missing[*]}" >&2; exit 3; }
    sudo=(sudo -n)
  fi
  echo "setup.sh: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  # apt-get update only when the package lists are stale (the install fails without it).
  command -v apt-get >/dev/null || { echo "setup.sh: no apt-get to install ${missing[*]}" >&2; exit 3; }
  if ! "${sudo[@]}" apt-get install -y -q "${missing[@]}" >&2; then
    "${sudo[@]}" apt-get update -q >&2 || true
    "${sudo[@]}" apt-get install -y -q "${missing[@]}" >&2 ||
      { echo "setup.sh: could not install ${missing[*]}" >&2; exit 3; }
  fi
fi

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
