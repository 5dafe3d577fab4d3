#!/usr/bin/env bash
# Idempotent: installs the given Debian packages when any is missing (root or passwordless sudo).
# Refreshes the package lists only when the first install attempt fails on stale lists.
# Exit status 3: they cannot be installed (no root, no apt-get, no package source).
set -euo pipefail
missing=()
for p in "$@"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
((${#missing[@]})) || exit 0
sudo=()
if [[ $EUID -ne 0 ]]; then
  command -v sudo >/dev/null || { echo "apt-install: need root (or sudo) to install ${missing[*]}" >&2; exit 3; }
  sudo=(sudo -n)
fi
command -v apt-get >/dev/null || { echo "apt-install: no apt-get to install ${missing[*]}" >&2; exit 3; }
echo "apt-install: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
if ! "${sudo[@]}" apt-get install -y -q "${missing[@]}" >&2; then
  "${sudo[@]}" apt-get update -q >&2 || true
  "${sudo[@]}" apt-get install -y -q "${missing[@]}" >&2 ||
    { echo "apt-install: could not install ${missing[*]}" >&2; exit 3; }
fi
