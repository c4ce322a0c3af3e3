#!/usr/bin/env bash
# Installs everything the tests and the local demo need, cached outside the repository and keyed by version:
#   - kube-apiserver, kube-controller-manager, kube-scheduler 1.20.2 built from Debian's source package
#     (with the vendored reflect2 replaced by Debian's 1.0.2, see shared/envtest/RECIPE.md)
#   - etcd (Debian etcd-server), iproute2
#   - Prometheus 2.53 (trixie) and 3.5 (sid) with promtool
#   - the s3s-fs S3 server (crates registry, pinned)
# Idempotent: a second run only checks the stamps and takes seconds.
# Prints `export` lines for the environment when given --print-env.
set -euo pipefail

CACHE="${TSDB_OPERATOR_CACHE:-$HOME/.cache/tsdb-operator}"
K8S_VERSION=1.20.2
K8S_DEB_VERSION=1.20.5+really1.20.2-1.1+deb12u1
PROM2_SUITE=trixie
PROM3_SUITE=sid
S3S_VERSION=0.14.1
MIRROR="$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)"
MIRROR="${MIRROR:-http://deb.debian.org/debian}"
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg

log() { printf '[install-deps] %s\n' "$*" >&2; }
mkdir -p "$CACHE"

apt_ready=0
apt_system() {
  # Installs Debian packages that are missing; runs `apt-get update` at most once.
  local missing=()
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ $apt_ready -eq 0 ]; then apt-get update -qq >&2; apt_ready=1; fi
  log "apt-get install ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
}

# A private apt configuration for one suite, so the system's lists are never touched.
apt_private() {
  local suite="$1"; shift
  local dir="$CACHE/apt/$suite"
  mkdir -p "$dir/lists/partial" "$dir/archives/partial"
  cat >"$dir/sources.list" <<SRC
deb [signed-by=$KEYRING] $MIRROR $suite main
deb-src [signed-by=$KEYRING] $MIRROR $suite main
SRC
  local opts=(-o "Dir::Etc::SourceList=$dir/sources.list" -o Dir::Etc::SourceParts=/dev/null
    -o "Dir::State::Lists=$dir/lists" -o "Dir::Cache::Archives=$dir/archives"
    -o "Dir::Cache::pkgcache=" -o "Dir::Cache::srcpkgcache=" -o APT::Sandbox::User=root -qq)
  if [ ! -f "$dir/updated" ]; then
    apt-get "${opts[@]}" update >&2
    touch "$dir/updated"
  fi
  apt-get "${opts[@]}" "$@"
}

install_system() {
  apt_system golang-go rsync jq etcd-server golang-github-modern-go-reflect2-dev iproute2 openssl ca-certificates procps buildah umoci
}

install_k8s() {
  local out="$CACHE/k8s-$K8S_VERSION"
  if [ -x "$out/kube-apiserver" ] && [ -x "$out/kube-controller-manager" ] && [ -x "$out/kube-scheduler" ]; then
    return 0
  fi
  log "building Kubernetes $K8S_VERSION from Debian's source package (about 5 minutes)"
  local work="$CACHE/build/k8s-$K8S_VERSION"
  rm -rf "$work"; mkdir -p "$work"
  (cd "$work" && apt_private bookworm source --download-only "kubernetes=$K8S_DEB_VERSION" >&2)
  local tarball
  tarball="$(ls "$work"/kubernetes_*.orig.tar.gz | head -n1)"
  mkdir -p "$work/src"
  tar -C "$work/src" --strip-components=1 -xzf "$tarball"
  local src="$work/src"
  # The vendored reflect2 v1.0.1 crashes under Go >= 1.18; use Debian's 1.0.2.
  rm -rf "$src/vendor/github.com/modern-go/reflect2"
  cp -r /usr/share/gocode/src/github.com/modern-go/reflect2 "$src/vendor/github.com/modern-go/reflect2"
  find "$src/vendor/github.com/modern-go/reflect2" -name '*_test.go' -delete
  (
    cd "$src"
    export GOPATH="$src/.go" CGO_ENABLED=0 GOFLAGS=-mod=vendor GOCACHE="$CACHE/build/gocache"
    mkdir -p .go/src/k8s.io
    ln -sfn ../../.. .go/src/k8s.io/kubernetes
    make WHAT="cmd/kube-apiserver cmd/kube-controller-manager cmd/kube-scheduler" >&2
  )
  mkdir -p "$out.tmp"
  cp "$src/_output/local/bin/linux/amd64/"{kube-apiserver,kube-controller-manager,kube-scheduler} "$out.tmp/"
  rm -rf "$out"; mv "$out.tmp" "$out"
  rm -rf "$work"
}

install_prometheus() {
  local suite="$1" major="$2"
  local out="$CACHE/prometheus-$major"
  if [ -x "$out/prometheus" ] && [ -x "$out/promtool" ]; then return 0; fi
  log "downloading Prometheus $major.x and promtool from Debian $suite"
  local work="$CACHE/build/prom-$suite"
  rm -rf "$work"; mkdir -p "$work"
  (cd "$work" && apt_private "$suite" download "prometheus/$suite" "promtool/$suite" >&2)
  mkdir -p "$work/x"
  for deb in "$work"/*.deb; do dpkg -x "$deb" "$work/x"; done
  mkdir -p "$out.tmp"
  cp "$work/x/usr/bin/prometheus" "$work/x/usr/bin/promtool" "$out.tmp/"
  "$out.tmp/prometheus" --version 2>&1 | head -n1 | tee "$out.tmp/VERSION" >&2
  rm -rf "$out"; mv "$out.tmp" "$out"
  rm -rf "$work"
}

install_s3s() {
  local out="$CACHE/s3s-fs-$S3S_VERSION"
  if [ -x "$out/bin/s3s-fs" ]; then return 0; fi
  log "building s3s-fs $S3S_VERSION (about 2 minutes)"
  CARGO_TARGET_DIR="$CACHE/build/s3s-target" cargo install s3s-fs --version "$S3S_VERSION" \
    --features binary --locked --root "$out.tmp" >&2
  rm -rf "$out"; mv "$out.tmp" "$out"
  rm -rf "$CACHE/build/s3s-target"
}

HELM_SDKPY_VERSION=0.1.32
install_helm() {
  # Helm's own Go library (the PyPI wheel helm-sdkpy; no helm binary is packaged for Debian). The wheel declares
  # Python >= 3.12 but loads on 3.11, so it is unpacked rather than pip-installed; it needs cffi.
  local out="$CACHE/helm-sdkpy-$HELM_SDKPY_VERSION"
  python3 -c 'import cffi' 2>/dev/null || python3 -m pip install -q cffi >&2
  if [ -f "$out/helm_sdkpy/__init__.py" ]; then return 0; fi
  log "fetching helm-sdkpy $HELM_SDKPY_VERSION"
  local work; work="$(mktemp -d)"
  python3 -m pip download -q --no-deps --python-version 3.12 --only-binary=:all: -d "$work" \
    "helm-sdkpy==$HELM_SDKPY_VERSION" >&2
  mkdir -p "$out.tmp"
  python3 -m zipfile -e "$work"/helm_sdkpy-*.whl "$out.tmp"
  rm -rf "$out"; mv "$out.tmp" "$out"
  rm -rf "$work"
}

OPENAPI_VALIDATOR_VERSION=0.9.0
install_openapi_validator() {
  # Checks docs/openapi.json against the OpenAPI 3.1 specification (scripts/check-openapi.sh).
  local out="$CACHE/openapi-spec-validator-$OPENAPI_VALIDATOR_VERSION"
  if [ -d "$out/openapi_spec_validator" ]; then return 0; fi
  log "installing openapi-spec-validator $OPENAPI_VALIDATOR_VERSION"
  rm -rf "$out.tmp"
  python3 -m pip install -q --target "$out.tmp" "openapi-spec-validator==$OPENAPI_VALIDATOR_VERSION" >&2
  rm -rf "$out"; mv "$out.tmp" "$out"
}

print_env() {
  cat <<ENV
export TSDB_OPERATOR_CACHE="$CACHE"
export TSDB_K8S_BIN="$CACHE/k8s-$K8S_VERSION"
export TSDB_ETCD_BIN="$(command -v etcd || echo /usr/bin/etcd)"
export TSDB_PROMETHEUS2_BIN="$CACHE/prometheus-2/prometheus"
export TSDB_PROMETHEUS3_BIN="$CACHE/prometheus-3/prometheus"
export TSDB_PROMTOOL2_BIN="$CACHE/prometheus-2/promtool"
export TSDB_PROMTOOL3_BIN="$CACHE/prometheus-3/promtool"
export TSDB_S3S_BIN="$CACHE/s3s-fs-$S3S_VERSION/bin/s3s-fs"
export TSDB_HELM_PYTHONPATH="$CACHE/helm-sdkpy-$HELM_SDKPY_VERSION"
export TSDB_OPENAPI_PYTHONPATH="$CACHE/openapi-spec-validator-$OPENAPI_VALIDATOR_VERSION"
ENV
}

main() {
  local only="${1:-all}"
  case "$only" in
    --print-env) print_env; return 0 ;;
  esac
  install_system
  install_prometheus "$PROM2_SUITE" 2
  install_prometheus "$PROM3_SUITE" 3
  install_s3s
  install_helm
  install_openapi_validator
  install_k8s
  print_env > "$CACHE/env.sh"
  log "done; environment in $CACHE/env.sh"
}

main "$@"
