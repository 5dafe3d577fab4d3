#!/usr/bin/env bash
# Regenerates the TypeScript code of the contract from ../../protos into src/gen/ (or into the
# directory given as $1): ts-proto messages + @grpc/grpc-js service definitions, compiled by the
# buf CLI's built-in compiler with a local plugin (no BSR, no network), and the file descriptor set
# (for server reflection) embedded as src/gen/descriptors.ts. Deterministic: two runs, same bytes.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="$(mkdir -p "${1:-$here/src/gen}" && cd "${1:-$here/src/gen}" && pwd)"
cd "$here"
if [ ! -x node_modules/.bin/buf ] || [ ! -x node_modules/.bin/protoc-gen-ts_proto ]; then
  echo "gen.sh: node_modules is missing; run ./setup.sh first" >&2
  exit 1
fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
node_modules/.bin/buf generate ../../protos --template buf.gen.yaml -o "$tmp/gen"
node_modules/.bin/buf build ../../protos --exclude-source-info -o "$tmp/descriptors.binpb"
node scripts/embed-descriptors.js "$tmp/descriptors.binpb" "$tmp/gen/descriptors.ts"
# Replace only what this script owns, so a stale file cannot survive a proto removal.
rm -rf "$out/rollmesh" "$out/google" "$out/descriptors.ts"
cp -R "$tmp/gen/." "$out/"
