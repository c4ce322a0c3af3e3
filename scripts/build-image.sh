#!/usr/bin/env bash
# Builds the tsdb-operator image from Containerfile with buildah (no Docker daemon needed) and writes it as an OCI
# layout, which `skopeo copy oci:DIR:TAG docker://REGISTRY/...` pushes and `umoci unpack` opens.
#
#   scripts/build-image.sh [--profile release|dev | --bin-dir DIR] [--tag TAG] [--oci DIR]
#
# --profile dev reuses the debug build; release is the default; --bin-dir takes tsdb-operator and tsdb-ctl as they
# are, without cargo (the tests do that: cargo holds its build lock while they run). The context is staged in
# target/image-context ($TSDB_IMAGE_CONTEXT): the binaries, the shared libraries `ldd` lists, the CA bundle, /etc/passwd and /etc/group
# with the non-root user, and an empty /tmp.
set -euo pipefail
cd "$(dirname "$0")/.."

profile=release
bin_dir=""
tag="$(awk -F'"' '/^version = /{print $2; exit}' Cargo.toml)"
oci="target/image/oci"
while [ $# -gt 0 ]; do
  case "$1" in
    --profile) profile="$2"; shift 2 ;;
    --tag) tag="$2"; shift 2 ;;
    --oci) oci="$2"; shift 2 ;;
    --bin-dir) bin_dir="$2"; shift 2 ;;
    *) echo "usage: $0 [--profile release|dev | --bin-dir DIR] [--tag TAG] [--oci DIR]" >&2; exit 2 ;;
  esac
done
if [ -n "$bin_dir" ]; then
  bin="$bin_dir"
else
  case "$profile" in
    release) cargo build --release -p tsdb-operator --bins >&2; bin=target/release ;;
    dev) cargo build -p tsdb-operator --bins >&2; bin=target/debug ;;
    *) echo "--profile must be release or dev" >&2; exit 2 ;;
  esac
fi
command -v buildah >/dev/null || { echo "buildah is missing: run scripts/install-deps.sh" >&2; exit 1; }

ctx="${TSDB_IMAGE_CONTEXT:-target/image-context}"
rm -rf "$ctx"
mkdir -p "$ctx/rootfs/usr/local/bin" "$ctx/rootfs/etc/ssl/certs" "$ctx/rootfs/tmp"
chmod 1777 "$ctx/rootfs/tmp"
cp Containerfile "$ctx/"
for b in tsdb-operator tsdb-ctl; do
  install -m 0755 "$bin/$b" "$ctx/rootfs/usr/local/bin/$b"
done
# The C libraries the binaries load, at the paths the dynamic loader looks for them.
for lib in $(ldd "$bin/tsdb-operator" "$bin/tsdb-ctl" | awk '/=> \//{print $3} /^\t\/lib/{print $1}' | sort -u); do
  mkdir -p "$ctx/rootfs$(dirname "$lib")"
  cp -L "$lib" "$ctx/rootfs$lib"
done
cp -L /etc/ssl/certs/ca-certificates.crt "$ctx/rootfs/etc/ssl/certs/ca-certificates.crt"
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/tmp:/sbin/nologin\n' > "$ctx/rootfs/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' > "$ctx/rootfs/etc/group"

# A private, throwaway storage: nothing accumulates under /var/lib/containers.
store="$(mktemp -d)"
trap 'buildah --root "$store/root" --runroot "$store/run" --storage-driver vfs rm --all >/dev/null 2>&1 || true; rm -rf "$store"' EXIT
b() { buildah --root "$store/root" --runroot "$store/run" --storage-driver vfs "$@"; }
revision="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
b bud --quiet --isolation chroot -f "$ctx/Containerfile" -t "localhost/tsdb-operator-rs:$tag" \
  --build-arg "VERSION=$tag" --build-arg "REVISION=$revision" \
  --build-arg "CREATED=$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$ctx" >&2
rm -rf "$oci"; mkdir -p "$(dirname "$oci")"
b push --quiet "localhost/tsdb-operator-rs:$tag" "oci:$oci:$tag" >&2
echo "$oci:$tag"
