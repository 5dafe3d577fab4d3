#!/usr/bin/env bash
# Makes vendor/ for an offline module build: every module that go.mod requires is linked from
# Debian's Go source packages (/usr/share/gocode/src, or .debian/ where setup.sh unpacked one),
# and vendor/modules.txt lists the packages the build uses, as `go mod vendor` would. The
# versions are go.mod's; the sources are Debian's (see README.md, "Building offline").
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/env.sh"
roots=("$here/.debian/usr/share/gocode/src" /usr/share/gocode/src)
module="$(awk '$1 == "module" {print $2}' "$here/go.mod")"

# "path version" of each requirement, in go.mod order.
mapfile -t requires < <(awk '
  /^require \($/ {block = 1; next}
  block && /^\)/ {block = 0; next}
  block && NF >= 2 {print $1, $2}
  /^require [^(]/ {print $2, $3}' "$here/go.mod")

source_of() {
  local root
  for root in "${roots[@]}"; do
    [[ -d "$root/$1" ]] && { echo "$root/$1"; return; }
  done
  echo "vendor.sh: no source of $1 in ${roots[*]}; run clients/go/setup.sh" >&2
  return 1
}

# modules.txt: "# path version", "## explicit; go X", then the packages of the module.
write_list() {
  local pkgs="$1" line path version src go_version
  : >"$here/vendor/modules.txt"
  for line in "${requires[@]}"; do
    read -r path version <<<"$line"
    src="$(source_of "$path")"
    go_version="$(awk '$1 == "go" {print "; go " $2; exit}' "$src/go.mod" 2>/dev/null || true)"
    {
      echo "# $path $version"
      echo "## explicit$go_version"
      # The packages whose longest module prefix is this module.
      while read -r pkg; do
        [[ "$pkg" == "$path" || "$pkg" == "$path"/* ]] || continue
        owner="$path"
        for other in "${requires[@]}"; do
          other="${other%% *}"
          if [[ ${#other} -gt ${#owner} && ("$pkg" == "$other" || "$pkg" == "$other"/*) ]]; then owner="$other"; fi
        done
        [[ "$owner" == "$path" ]] && echo "$pkg"
      done <<<"$pkgs"
    } >>"$here/vendor/modules.txt"
  done
}

rm -rf "$here/vendor"
for line in "${requires[@]}"; do
  path="${line%% *}"
  src="$(source_of "$path")"
  mkdir -p "$here/vendor/$(dirname "$path")"
  ln -s "$src" "$here/vendor/$path"
done

# First every package of every module, so that the build can load; then only those it uses.
all="$(for line in "${requires[@]}"; do
  path="${line%% *}"
  src="$(source_of "$path")"
  (cd "$src" && find -L . -name '*.go' -not -name '*_test.go' -not -path '*/testdata/*' -printf '%h\n') |
    sed -e "s|^\.$|$path|" -e "s|^\./|$path/|"
done | LC_ALL=C sort -u)"
write_list "$all"

used="$(cd "$here" && go list -deps -test -f '{{if not .Standard}}{{.ImportPath}}{{end}}' ./... |
  sed 's/ .*//' | grep -v -e "^$module\(/\|$\)" -e '\.test$' | LC_ALL=C sort -u)"
write_list "$used"
echo "vendor.sh: vendor/ holds $(echo "$used" | grep -c .) packages of ${#requires[@]} modules" >&2
