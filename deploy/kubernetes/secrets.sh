#!/usr/bin/env bash
# Prints the mesh's Secrets as YAML, one per identity, from a `rollmesh certs init` directory
# (deploy/README.md, Kubernetes); nothing is sent anywhere:
#   deploy/kubernetes/secrets.sh pki | kubectl apply -n rollmesh -f -
# - rollmesh-<id>-tls for env, inference, trainer and orchestrator: <id>.pem, <id>-key.pem, ca.pem
# - rollmesh-rubric-tls: the same for rubric, plus tokens.toml (bearer-token hashes)
# - rollmesh-nats-tls, for the NATS chart (nats/values.yaml): tls.crt, tls.key, ca.crt and
#   authorization.conf (the per-identity users and permissions of the directory's nats-auth.conf)
set -euo pipefail
pki=${1:?usage: secrets.sh PKI_DIR (a rollmesh certs init directory)}
if [[ ! -f $pki/ca.pem || ! -f $pki/nats-auth.conf ]]; then
  echo "secrets.sh: $pki is not a rollmesh certs init directory (no ca.pem or nats-auth.conf)" >&2
  exit 2
fi
if command -v openssl >/dev/null && ! openssl x509 -in "$pki/nats.pem" -noout -ext subjectAltName | grep -Eq 'DNS:nats(,|$)'; then
  echo "secrets.sh: $pki/nats.pem does not name nats, the host clients dial (tls://nats:4222); issue it with" >&2
  echo "  rollmesh certs issue $pki nats --role server --serves nats --host nats --host '*.nats-headless'" >&2
  exit 2
fi

secret() {  # NAME KEY=FILE...
  local name=$1 pair
  shift
  local args=()
  for pair in "$@"; do args+=("--from-file=$pair"); done
  echo ---
  kubectl create secret generic "$name" "${args[@]}" --dry-run=client -o yaml
}

for id in env inference trainer orchestrator; do
  secret "rollmesh-$id-tls" "$id.pem=$pki/$id.pem" "$id-key.pem=$pki/$id-key.pem" "ca.pem=$pki/ca.pem"
done
secret rollmesh-rubric-tls "rubric.pem=$pki/rubric.pem" "rubric-key.pem=$pki/rubric-key.pem" \
  "ca.pem=$pki/ca.pem" "tokens.toml=$pki/tokens.toml"

authorization=$(mktemp)
trap 'rm -f "$authorization"' EXIT
python3 -c 'import json, sys; print(json.dumps({"authorization": json.load(sys.stdin)["authorization"]}, indent=2))' \
  <"$pki/nats-auth.conf" >"$authorization"
secret rollmesh-nats-tls "tls.crt=$pki/nats.pem" "tls.key=$pki/nats-key.pem" "ca.crt=$pki/ca.pem" \
  "authorization.conf=$authorization"
