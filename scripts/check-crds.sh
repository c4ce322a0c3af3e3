#!/usr/bin/env bash
# Fails when deploy/crds/crds.yaml differs from what `tsdb-operator crd` prints (regenerate with --write).
set -euo pipefail
cd "$(dirname "$0")/.."
generated="$(cargo run -q -p tsdb-operator --bin tsdb-operator -- crd)"
if [ "${1:-}" = "--write" ]; then
  printf '%s\n' "$generated" > deploy/crds/crds.yaml
  exit 0
fi
if ! diff -u deploy/crds/crds.yaml <(printf '%s\n' "$generated"); then
  echo "deploy/crds/crds.yaml is out of date: run scripts/check-crds.sh --write and commit it" >&2
  exit 1
fi
echo "CRDs up to date"
