#!/usr/bin/env bash
# Runs every test: unit, snapshot, property and integration tests (real control plane, process kubelet running
# real Prometheus, S3 server, PostgreSQL). Installs what is missing first (cached outside the repository).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
# shellcheck disable=SC1091
source "${TSDB_OPERATOR_CACHE:-$HOME/.cache/tsdb-operator}/env.sh"
# The operator binary is started by integration tests and mapped to the project's image by the process kubelet.
cargo build --workspace --bins
exec cargo test --workspace --all-targets --no-fail-fast "$@"
