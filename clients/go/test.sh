#!/usr/bin/env bash
# The Go tests: gofmt, go vet and go test of the module, offline from vendor/. Run ./setup.sh
# first. NATS tests start nats-servers of their own (the repository's .venv/bin/nats-server, or
# ROLLMESH_TEST_NATS_SERVER); the tests against the Python servers run when
# tests/test_polyglot_go.py passes their addresses in ROLLMESH_TEST_* variables, else they skip.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/env.sh"
[[ -f "$here/vendor/modules.txt" ]] || { echo "test.sh: no vendor/; run clients/go/setup.sh first" >&2; exit 1; }

if [[ -z "${ROLLMESH_TEST_NATS_SERVER:-}" && -x "$here/../../.venv/bin/nats-server" ]]; then
  export ROLLMESH_TEST_NATS_SERVER="$here/../../.venv/bin/nats-server"
fi

cd "$here"
unformatted="$(find . \( -path ./vendor -o -path ./.debian \) -prune -o -name '*.go' -print | xargs gofmt -l)"
[[ -z "$unformatted" ]] || { echo "test.sh: not gofmt-ed: $unformatted" >&2; exit 1; }
go vet ./...
go test -count=1 "$@" ./...
