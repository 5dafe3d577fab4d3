# Sourced by setup.sh, vendor.sh and test.sh: a module build (go.mod), offline, from vendor/ that
# vendor.sh makes out of Debian's Go source packages. Source it to run `go` here yourself.
GO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export GO111MODULE=on
export GOFLAGS=-mod=vendor
export GOPROXY=off
export GOSUMDB=off
export CGO_ENABLED=0
