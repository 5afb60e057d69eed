#!/usr/bin/env bash
# Builds the real clients of the Hubble ecosystem that the tests and the
# demo use, from the Go module proxy, once, into a cache outside the repo
# that later runs reuse: the stock hubble CLI (github.com/cilium/cilium,
# pinned by tools/hubble/go.mod and go.sum) and grpcurl; and the real
# Kubernetes control plane for the tests: kube-apiserver,
# kube-controller-manager and kube-scheduler (k8s.io/kubernetes v1.36.3,
# tools/kubernetes/go.mod: the staging modules replaced by their published
# v0.36.3) and etcd (go.etcd.io/etcd/server/v3 v3.7.3, tools/etcd/). First
# builds on 2 cores: hubble about 4 minutes, the control plane 7, etcd under
# 1; afterwards this script returns at once. Prints nothing when all is there.
set -euo pipefail
cd "$(dirname "$0")/.."

cache=${WEIR_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/weir-tools}
bin=$cache/bin
mkdir -p "$bin"

HUBBLE_MODULE=github.com/cilium/cilium/hubble
GRPCURL_MODULE=github.com/fullstorydev/grpcurl/cmd/grpcurl@v1.9.3

need_go() {
  if ! command -v go >/dev/null 2>&1; then
    echo "tools: go not found. These machines have Go 1.26; on another, install Go 1.26+ to build hubble and grpcurl." >&2
    exit 1
  fi
}

# A build is redone when what pins it changes.
stamp_of() { sha256sum "$@" | sha256sum | cut -c1-16; }

hubble_stamp=$(stamp_of tools/hubble/go.mod tools/hubble/go.sum)
if [ ! -x "$bin/hubble" ] || [ "$(cat "$bin/hubble.stamp" 2>/dev/null)" != "$hubble_stamp" ]; then
  need_go
  echo "tools: building the hubble CLI from the Go module proxy into $bin (first time: about 4 minutes)"
  start=$(date +%s)
  (cd tools/hubble && GOTOOLCHAIN=local go build -trimpath -o "$bin/hubble.new" "$HUBBLE_MODULE")
  mv "$bin/hubble.new" "$bin/hubble"
  echo "$hubble_stamp" >"$bin/hubble.stamp"
  echo "tools: hubble built in $(( $(date +%s) - start )) s"
fi

# The control plane: one module pins all three commands, built together.
k8s_stamp=$(stamp_of tools/kubernetes/go.mod tools/kubernetes/go.sum)
K8S_VERSION=$(grep -oE 'k8s.io/kubernetes v[0-9.]+' tools/kubernetes/go.mod | head -1 | cut -d' ' -f2)
if [ ! -x "$bin/kube-apiserver" ] || [ "$(cat "$bin/kubernetes.stamp" 2>/dev/null)" != "$k8s_stamp" ]; then
  need_go
  echo "tools: building kube-apiserver, kube-controller-manager, kube-scheduler and kubectl $K8S_VERSION into $bin (first time: about 7 minutes)"
  start=$(date +%s)
  minor=$(echo "$K8S_VERSION" | cut -d. -f2)
  ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$K8S_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor -X k8s.io/component-base/version.gitTreeState=clean"
  mkdir -p "$bin/k8s.new"
  (cd tools/kubernetes && GOTOOLCHAIN=local go build -trimpath -ldflags="$ldflags" -o "$bin/k8s.new/" \
    k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes/cmd/kube-scheduler \
    k8s.io/kubernetes/cmd/kubectl)
  mv "$bin/k8s.new/"* "$bin/" && rmdir "$bin/k8s.new"
  echo "$k8s_stamp" >"$bin/kubernetes.stamp"
  echo "tools: control plane built in $(( $(date +%s) - start )) s"
fi

etcd_stamp=$(stamp_of tools/etcd/go.mod tools/etcd/go.sum)
if [ ! -x "$bin/etcd" ] || [ "$(cat "$bin/etcd.stamp" 2>/dev/null)" != "$etcd_stamp" ]; then
  need_go
  echo "tools: building etcd into $bin"
  (cd tools/etcd && GOTOOLCHAIN=local go build -trimpath -ldflags="-s -w" -o "$bin/etcd.new" go.etcd.io/etcd/server/v3)
  mv "$bin/etcd.new" "$bin/etcd"
  echo "$etcd_stamp" >"$bin/etcd.stamp"
fi

if [ ! -x "$bin/grpcurl" ] || [ "$(cat "$bin/grpcurl.stamp" 2>/dev/null)" != "$GRPCURL_MODULE" ]; then
  need_go
  echo "tools: building grpcurl ($GRPCURL_MODULE) into $bin"
  GOBIN=$bin GOTOOLCHAIN=local go install "$GRPCURL_MODULE"
  echo "$GRPCURL_MODULE" >"$bin/grpcurl.stamp"
fi
