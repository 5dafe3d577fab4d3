#!/usr/bin/env bash
# Runs the Go unit tests (gofmt, vet, go test). Run ./setup.sh first.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
[[ -L "$GO_LINK" ]] || { echo "test.sh: run clients/go/setup.sh first" >&2; exit 1; }

cd "$GO_LINK"
unformatted="$(gofmt -l $(find . -name '*.go' -not -path './.gopath/*'))"
[[ -z "$unformatted" ]] || { echo "test.sh: not gofmt-ed: $unformatted" >&2; exit 1; }
go vet ./...
go test -count=1 "$@" ./...
