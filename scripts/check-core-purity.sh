#!/usr/bin/env bash
# The core must not depend on anything that does I/O.
set -euo pipefail
cd "$(dirname "$0")/.."
tree="$(cargo tree -p tsdb-operator-core -e normal --prefix none)"
if bad="$(printf '%s\n' "$tree" | grep -E '^(tokio|hyper|reqwest|sqlx|object_store|mio|socket2) ')"; then
  echo "tsdb-operator-core depends on I/O crates:" >&2
  printf '%s\n' "$bad" | sort -u >&2
  exit 1
fi
echo "core is pure: no tokio, hyper, reqwest, sqlx or object_store"
