#!/usr/bin/env bash
# Compiles the package (tsc; ./setup.sh first when node_modules is missing) and runs its tests with
# node's built-in runner. The NATS tests run when NATS_URL points at a nats-server with JetStream
# (e.g. `.venv/bin/rollmesh nats --port 4333 &` and NATS_URL=nats://127.0.0.1:4333).
set -euo pipefail
cd "$(dirname "$0")"
[ -x node_modules/.bin/tsc ] || ./setup.sh >/dev/null
node_modules/.bin/tsc -p tsconfig.json
exec node --test --test-reporter=spec dist/test/*.test.js
