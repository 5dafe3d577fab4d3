#!/usr/bin/env bash
# Regenerates the Go code of protos/rollmesh/v1/*.proto into OUTDIR/rollmeshv1 (default: this
# folder). Deterministic: the same protoc and plugins give byte-identical files, so a test can
# generate into a temp dir and diff against the checked-in code. Needs ./setup.sh's toolchain.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
out="${1:-$here}"
module="github.com/rollmesh/rollmesh/clients/go"
pkg="$module/rollmeshv1"

for tool in protoc protoc-gen-go protoc-gen-go-grpc; do
  command -v "$tool" >/dev/null || { echo "gen.sh: $tool not found; run clients/go/setup.sh" >&2; exit 1; }
done

cd "$root/protos"
mapfile -t protos < <(LC_ALL=C ls rollmesh/v1/*.proto)
# The .proto files carry no go_package: map each one to our package on the command line.
maps=()
for p in "${protos[@]}"; do maps+=("M$p=$pkg"); done
go_opts="module=$module,$(IFS=,; echo "${maps[*]}")"

mkdir -p "$out/rollmeshv1"
rm -f "$out"/rollmeshv1/*.pb.go
protoc -I . \
  --go_out="$out" --go_opt="$go_opts" \
  --go-grpc_out="$out" --go-grpc_opt="$go_opts" \
  "${protos[@]}"
