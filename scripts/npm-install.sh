#!/usr/bin/env bash
# `npm install` with retries: a registry connection reset mid-download ("Invalid response body",
# ECONNRESET) fails the whole install, and npm's own fetch retries do not cover an aborted body.
# Usage: scripts/npm-install.sh [npm install arguments...]
set -uo pipefail
attempts=4
for i in $(seq 1 "$attempts"); do
  npm install --no-audit --no-fund --fetch-retries=5 --fetch-retry-mintimeout=2000 "$@" && exit 0
  [ "$i" -lt "$attempts" ] || break
  echo "npm-install.sh: attempt $i of $attempts failed; retrying in $((i * 5)) s" >&2
  sleep $((i * 5))
done
echo "npm-install.sh: npm install failed $attempts times" >&2
exit 1
