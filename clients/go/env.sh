# Sourced by setup.sh and test.sh: builds in GOPATH mode, offline, against Debian's Go packages.
# Our packages live at $GO_MODULE through the .gopath/src symlink that setup.sh creates.
GO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
GO_MODULE="github.com/rollmesh/rollmesh/clients/go"
GO_LINK="$GO_DIR/.gopath/src/$GO_MODULE"
export GO111MODULE=off
export GOPATH="$GO_DIR/.gopath:/usr/share/gocode"
export GOPROXY=off
export GOFLAGS=
export CGO_ENABLED=0
