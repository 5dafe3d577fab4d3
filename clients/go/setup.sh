#!/usr/bin/env bash
# Idempotent: installs the Go toolchain and the Go source packages from Debian when missing,
# makes vendor/ out of them (vendor.sh), and builds the examples into clients/go/bin.
# Exit status 3: the toolchain cannot be installed (no root, no package source).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/env.sh"

# protoc-gen-go (APIv2) conflicts with golang-goprotobuf-dev / protoc-gen-go-1-3: apt swaps them.
packages=(golang-go protobuf-compiler protoc-gen-go protoc-gen-go-grpc golang-google-grpc-dev
  golang-google-protobuf-dev golang-github-golang-protobuf-1-5-dev golang-google-genproto-dev
  golang-golang-x-net-dev golang-golang-x-sys-dev golang-golang-x-text-dev
  golang-github-nats-io-nkeys-dev golang-github-nats-io-nuid-dev golang-golang-x-crypto-dev)
"$here/../../scripts/apt-install.sh" "${packages[@]}"

# golang-github-nats-io-go-nats-dev depends on golang-goprotobuf-dev (for its protobuf encoder,
# which we do not use), and that conflicts with protoc-gen-go: installing it would remove the
# code generator. Its sources are unpacked into .debian/ instead.
nats_src=github.com/nats-io/nats.go
if [[ ! -d "/usr/share/gocode/src/$nats_src" && ! -d "$here/.debian/usr/share/gocode/src/$nats_src" ]]; then
  download="$(mktemp -d)"
  trap 'rm -rf "$download"' EXIT
  (cd "$download" && apt-get download -q golang-github-nats-io-go-nats-dev >&2) ||
    { echo "setup.sh: cannot download golang-github-nats-io-go-nats-dev" >&2; exit 3; }
  mkdir -p "$here/.debian"
  dpkg-deb -x "$download"/golang-github-nats-io-go-nats-dev_*.deb "$here/.debian"
fi

"$here/vendor.sh"
cd "$here"
go vet ./...
for dir in examples/*/; do
  name="$(basename "$dir")"
  go build -trimpath -o "bin/$name" "./examples/$name"
done
echo "setup.sh: built $(ls bin | tr '\n' ' ')" >&2
