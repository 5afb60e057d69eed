#!/usr/bin/env bash
# The images the lab's real nodes pull, built without a daemon from the
# binaries scripts/tools.sh built and from Debian's busybox-static: one
# layer tarball each, under the tools cache's images/ with index.tsv
# (reference, entrypoint, layer). `weir lab up` with `kubelet: real` pushes
# them into the lab's registry (crane) under their public names, which the
# nodes' containerd reaches through a mirror:
# - registry.k8s.io/pause: weir's static pause (tools/pause), the sandbox;
# - registry.k8s.io/coredns/coredns: CoreDNS (tools/coredns), static;
# - registry.k8s.io/e2e-test-images/agnhost: the upstream test binary
#   (k8s.io/kubernetes/test/images/agnhost, static), with busybox as its
#   shell (the upstream image has one: tests `kubectl exec` into it).
# Redone only when a binary changes. Prints nothing when all is there.
set -euo pipefail
cd "$(dirname "$0")/.."

cache=${WEIR_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/weir-tools}
bin=$cache/bin
out=$cache/images
mkdir -p "$out"

AGNHOST_VERSION=2.63.0 # test/images/agnhost/VERSION at k8s.io/kubernetes v1.36.3
PAUSE_VERSION=3.10.2   # the sandbox image containerd 2.4 names by default
COREDNS_VERSION=$(grep -oE 'coredns/coredns v[0-9.]+' tools/coredns/go.mod | cut -d' ' -f2)

busybox=/usr/bin/busybox
stamp=$(sha256sum "$bin/pause" "$bin/agnhost" "$bin/coredns" "$busybox" "$0" | sha256sum | cut -c1-16)
if [ -f "$out/index.tsv" ] && [ "$(cat "$out/images.stamp" 2>/dev/null)" = "$stamp" ]; then
  exit 0
fi
echo "tools: building the lab's images into $out"

# A reproducible layer: fixed owner and times.
layer() { tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$1" -cf "$2" .; }

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT

mkdir -p "$stage/pause"
cp "$bin/pause" "$stage/pause/pause"
layer "$stage/pause" "$out/pause.tar"

mkdir -p "$stage/agnhost/bin" "$stage/agnhost/etc" "$stage/agnhost/tmp"
cp "$bin/agnhost" "$stage/agnhost/agnhost"
cp "$busybox" "$stage/agnhost/bin/busybox"
for tool in sh ash cat echo env hostname ip ls nc ping sleep wget nslookup ps grep; do
  ln -s busybox "$stage/agnhost/bin/$tool"
done
chmod 1777 "$stage/agnhost/tmp"
printf 'root:x:0:0:root:/:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n' >"$stage/agnhost/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$stage/agnhost/etc/group"
layer "$stage/agnhost" "$out/agnhost.tar"

mkdir -p "$stage/coredns/etc" "$stage/coredns/tmp"
cp "$bin/coredns" "$stage/coredns/coredns"
chmod 1777 "$stage/coredns/tmp"
printf 'nobody:x:65534:65534:nobody:/:/sbin/nologin\n' >"$stage/coredns/etc/passwd"
layer "$stage/coredns" "$out/coredns.tar"

printf 'registry.k8s.io/pause:%s\t/pause\tpause.tar\nregistry.k8s.io/e2e-test-images/agnhost:%s\t/agnhost\tagnhost.tar\nregistry.k8s.io/coredns/coredns:%s\t/coredns\tcoredns.tar\n' \
  "$PAUSE_VERSION" "$AGNHOST_VERSION" "$COREDNS_VERSION" >"$out/index.tsv"
echo "$stamp" >"$out/images.stamp"
