#!/usr/bin/env bash
# Installs the package's dependencies (npm install, from package-lock.json) and builds it (tsc ->
# dist/). Idempotent: the install is skipped while node_modules matches the lockfile.
set -euo pipefail
cd "$(dirname "$0")"
for tool in node npm; do
  command -v "$tool" >/dev/null || { echo "setup.sh: $tool is not installed (Node.js >= 20 needed)" >&2; exit 1; }
done
# The TLS tests make throwaway certificates with the openssl command line.
command -v openssl >/dev/null || ../../scripts/apt-install.sh openssl
node -e 'if (+process.versions.node.split(".")[0] < 20) { console.error("setup.sh: Node.js >= 20 needed, got " + process.version); process.exit(1) }'
# `npm install`, not `npm ci`: ci rejects lockfiles that list optional platform packages here.
if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ] \
  || [ package.json -nt node_modules/.package-lock.json ]; then
  bash ../../scripts/npm-install.sh
  touch node_modules/.package-lock.json
fi
rm -rf dist
node_modules/.bin/tsc -p tsconfig.json
echo "setup.sh: built $(pwd)/dist"
