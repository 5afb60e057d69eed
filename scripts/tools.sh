#!/usr/bin/env bash
# Builds the real clients of the Hubble ecosystem that the tests and the
# demo use, from the Go module proxy, once, into a cache outside the repo
# that later runs reuse: the stock hubble CLI (github.com/cilium/cilium,
# pinned by tools/hubble/go.mod and go.sum) and grpcurl; and the real
# Kubernetes control plane for the tests: kube-apiserver,
# kube-controller-manager and kube-scheduler (k8s.io/kubernetes v1.36.3,
# tools/kubernetes/go.mod: the staging modules replaced by their published
# v0.36.3) and etcd (go.etcd.io/etcd/server/v3 v3.7.3, tools/etcd/); and
# what the lab's real nodes run: the kubelet (same module), containerd 2.x
# with its runc shim and ctr (tools/containerd/), runc (tools/runc/), helm (tools/helm/), CoreDNS (tools/coredns/), crane (images without a
# daemon, and the registry the nodes pull from; tools/crane/), and the
# images themselves (scripts/images.sh); and an OpenTelemetry Collector
# (tools/otelcol/: the OTLP receiver and the file exporter, which the
# tests send OTLP logs to and read back). First builds on 2 cores: hubble
# about 4 minutes, the control plane and kubelet 7, etcd, containerd,
# crane and the collector about 1 each; afterwards this script returns at once. Prints
# nothing when all is there.
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
if [ ! -x "$bin/kube-apiserver" ] || [ ! -x "$bin/kubelet" ] || [ "$(cat "$bin/kubernetes.stamp" 2>/dev/null)" != "$k8s_stamp" ]; then
  need_go
  echo "tools: building kube-apiserver, kube-controller-manager, kube-scheduler, kubectl, kubelet and agnhost $K8S_VERSION into $bin (first time: about 7 minutes)"
  start=$(date +%s)
  minor=$(echo "$K8S_VERSION" | cut -d. -f2)
  ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$K8S_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor -X k8s.io/component-base/version.gitTreeState=clean"
  mkdir -p "$bin/k8s.new"
  (cd tools/kubernetes && GOTOOLCHAIN=local go build -trimpath -ldflags="$ldflags" -o "$bin/k8s.new/" \
    k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes/cmd/kube-scheduler \
    k8s.io/kubernetes/cmd/kubectl k8s.io/kubernetes/cmd/kubelet)
  # agnhost, the upstream test image's one binary, static for its image.
  (cd tools/kubernetes && CGO_ENABLED=0 GOTOOLCHAIN=local go build -trimpath -ldflags="-s -w" -o "$bin/k8s.new/agnhost" \
    k8s.io/kubernetes/test/images/agnhost)
  mv "$bin/k8s.new/"* "$bin/" && rmdir "$bin/k8s.new"
  echo "$k8s_stamp" >"$bin/kubernetes.stamp"
  echo "tools: control plane built in $(( $(date +%s) - start )) s"
fi

# Kubernetes' own end-to-end suite (scripts/conformance.sh runs its
# [sig-network] tests against weir): `go test -c` of test/e2e, same
# version as the control plane, its own module (tools/e2e) so that its
# test-only requirements do not rebuild the control plane.
e2e_stamp=$(stamp_of tools/e2e/go.mod tools/e2e/go.sum)
if [ ! -x "$bin/e2e.test" ] || [ "$(cat "$bin/e2e.test.stamp" 2>/dev/null)" != "$e2e_stamp" ]; then
  need_go
  echo "tools: building e2e.test (k8s.io/kubernetes/test/e2e $K8S_VERSION) into $bin"
  start=$(date +%s)
  minor=$(echo "$K8S_VERSION" | cut -d. -f2)
  ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$K8S_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor -X k8s.io/component-base/version.gitTreeState=clean"
  (cd tools/e2e && GOTOOLCHAIN=local go test -c -trimpath -ldflags="$ldflags" -o "$bin/e2e.test.new" k8s.io/kubernetes/test/e2e)
  mv "$bin/e2e.test.new" "$bin/e2e.test"
  echo "$e2e_stamp" >"$bin/e2e.test.stamp"
  echo "tools: e2e.test built in $(( $(date +%s) - start )) s"
fi

# The conformance suite of sigs.k8s.io/network-policy-api (cluster-wide
# ClusterNetworkPolicy, Admin and Baseline tiers): `go test -c` of its
# conformance package, with the CRD it tests beside it
# (scripts/conformance.sh --suite policy-api).
npapi_stamp=$(stamp_of tools/policy-api/go.mod tools/policy-api/go.sum)
if [ ! -x "$bin/policy-api-conformance" ] || [ "$(cat "$bin/policy-api-conformance.stamp" 2>/dev/null)" != "$npapi_stamp" ]; then
  need_go
  echo "tools: building the network-policy-api conformance suite into $bin"
  start=$(date +%s)
  (cd tools/policy-api && GOTOOLCHAIN=local go test -c -trimpath -ldflags="-s -w" -o "$bin/policy-api-conformance.new" sigs.k8s.io/network-policy-api/conformance)
  src=$(cd tools/policy-api && GOTOOLCHAIN=local go list -m -f '{{.Dir}}' sigs.k8s.io/network-policy-api)
  mkdir -p "$cache/policy-api"
  cp "$src/config/crd/standard/policy.networking.k8s.io_clusternetworkpolicies.yaml" "$cache/policy-api/crd.yaml"
  mv "$bin/policy-api-conformance.new" "$bin/policy-api-conformance"
  echo "$npapi_stamp" >"$bin/policy-api-conformance.stamp"
  echo "tools: network-policy-api conformance built in $(( $(date +%s) - start )) s"
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

# containerd, as the lab's real nodes run it (no btrfs, devmapper or zfs
# snapshotters: overlayfs is what they use).
containerd_stamp=$(stamp_of tools/containerd/go.mod tools/containerd/go.sum)
if [ ! -x "$bin/containerd" ] || [ "$(cat "$bin/containerd.stamp" 2>/dev/null)" != "$containerd_stamp" ]; then
  need_go
  echo "tools: building containerd, containerd-shim-runc-v2 and ctr into $bin (first time: about 2 minutes)"
  start=$(date +%s)
  version=$(grep -oE 'containerd/v2 v[0-9.]+' tools/containerd/go.mod | head -1 | cut -d' ' -f2)
  mkdir -p "$bin/containerd.new"
  (cd tools/containerd && GOTOOLCHAIN=local go build -trimpath -tags "no_btrfs no_devmapper no_zfs" \
    -ldflags="-s -w -X github.com/containerd/containerd/v2/version.Version=$version" -o "$bin/containerd.new/" \
    github.com/containerd/containerd/v2/cmd/containerd github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2 \
    github.com/containerd/containerd/v2/cmd/ctr)
  mv "$bin/containerd.new/"* "$bin/" && rmdir "$bin/containerd.new"
  echo "$containerd_stamp" >"$bin/containerd.stamp"
  echo "tools: containerd built in $(( $(date +%s) - start )) s"
fi

# runc: Debian 12's 1.1.5 fails every sandbox start on this kernel
# ("can't get final child's PID from pipe: EOF"); v1.5 works. cgo (its
# nsexec is C) with seccomp (libseccomp-dev from scripts/deps.sh).
runc_stamp=$(stamp_of tools/runc/go.mod tools/runc/go.sum)
if [ ! -x "$bin/runc" ] || [ "$(cat "$bin/runc.stamp" 2>/dev/null)" != "$runc_stamp" ]; then
  need_go
  echo "tools: building runc into $bin"
  version=$(grep -oE 'runc v[0-9.]+' tools/runc/go.mod | head -1 | cut -d' ' -f2)
  (cd tools/runc && CGO_ENABLED=1 GOTOOLCHAIN=local go build -trimpath -tags seccomp \
    -ldflags="-s -w -X main.version=${version#v}" -o "$bin/runc.new" github.com/opencontainers/runc)
  mv "$bin/runc.new" "$bin/runc"
  echo "$runc_stamp" >"$bin/runc.stamp"
fi

crane_stamp=$(stamp_of tools/crane/go.mod tools/crane/go.sum)
if [ ! -x "$bin/crane" ] || [ "$(cat "$bin/crane.stamp" 2>/dev/null)" != "$crane_stamp" ]; then
  need_go
  echo "tools: building crane into $bin"
  (cd tools/crane && GOTOOLCHAIN=local go build -trimpath -ldflags="-s -w" -o "$bin/crane.new" github.com/google/go-containerregistry/cmd/crane)
  mv "$bin/crane.new" "$bin/crane"
  echo "$crane_stamp" >"$bin/crane.stamp"
fi

# helm: lints and renders weir's chart; install/weir.yaml is its output.
helm_stamp=$(stamp_of tools/helm/go.mod tools/helm/go.sum)
if [ ! -x "$bin/helm" ] || [ "$(cat "$bin/helm.stamp" 2>/dev/null)" != "$helm_stamp" ]; then
  need_go
  echo "tools: building helm into $bin (first time: about 2 minutes)"
  version=$(grep -oE 'helm/v4 v[0-9.]+' tools/helm/go.mod | head -1 | cut -d' ' -f2)
  (cd tools/helm && GOTOOLCHAIN=local go build -trimpath \
    -ldflags="-s -w -X helm.sh/helm/v4/internal/version.version=$version" -o "$bin/helm.new" helm.sh/helm/v4/cmd/helm)
  mv "$bin/helm.new" "$bin/helm"
  echo "$helm_stamp" >"$bin/helm.stamp"
fi

# CoreDNS: the cluster DNS of the lab's real-node clusters (its image below).
coredns_stamp=$(stamp_of tools/coredns/go.mod tools/coredns/go.sum)
if [ ! -x "$bin/coredns" ] || [ "$(cat "$bin/coredns.stamp" 2>/dev/null)" != "$coredns_stamp" ]; then
  need_go
  echo "tools: building CoreDNS into $bin (first time: about 3 minutes)"
  (cd tools/coredns && CGO_ENABLED=0 GOTOOLCHAIN=local go build -trimpath -ldflags="-s -w" -o "$bin/coredns.new" github.com/coredns/coredns)
  mv "$bin/coredns.new" "$bin/coredns"
  echo "$coredns_stamp" >"$bin/coredns.stamp"
fi

pause_stamp=$(stamp_of tools/pause/go.mod tools/pause/main.go)
if [ ! -x "$bin/pause" ] || [ "$(cat "$bin/pause.stamp" 2>/dev/null)" != "$pause_stamp" ]; then
  need_go
  (cd tools/pause && CGO_ENABLED=0 GOTOOLCHAIN=local go build -trimpath -ldflags="-s -w" -o "$bin/pause.new" .)
  mv "$bin/pause.new" "$bin/pause"
  echo "$pause_stamp" >"$bin/pause.stamp"
fi

otelcol_stamp=$(stamp_of tools/otelcol/go.mod tools/otelcol/go.sum tools/otelcol/main.go)
if [ ! -x "$bin/otelcol" ] || [ "$(cat "$bin/otelcol.stamp" 2>/dev/null)" != "$otelcol_stamp" ]; then
  need_go
  echo "tools: building the OpenTelemetry Collector into $bin (first time: about 1.5 minutes)"
  start=$(date +%s)
  (cd tools/otelcol && GOTOOLCHAIN=local go build -trimpath -ldflags="-s -w" -o "$bin/otelcol.new" .)
  mv "$bin/otelcol.new" "$bin/otelcol"
  echo "$otelcol_stamp" >"$bin/otelcol.stamp"
  echo "tools: otelcol built in $(( $(date +%s) - start )) s"
fi

bash "$(dirname "$0")/images.sh"
