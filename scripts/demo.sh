#!/usr/bin/env bash
# The main job on embedded defaults, on one machine: brings up the local cluster (a real kube-apiserver,
# controller-manager and scheduler plus the process kubelet running real Prometheus), installs the CRDs, runs
# the operator, applies the sample PrometheusCluster, waits until it is Active and prints where to look.
# Stop with Ctrl-C: everything it started is stopped.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cargo build -q --bins
exec ./target/debug/tsdb-demo "$@"
