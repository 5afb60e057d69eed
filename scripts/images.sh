#!/usr/bin/env bash
# The images the lab's real nodes pull, built without a daemon from the
# binaries scripts/tools.sh built and from Debian's busybox-static: one
# layer tarball each, under the tools cache's images/ with index.tsv
# (reference, entrypoint, layer and, optionally, the default arguments). `weir lab up` with `kubelet: real` pushes
# them into the lab's registry (crane) under their public names, which the
# nodes' containerd reaches through a mirror:
# - registry.k8s.io/pause: weir's static pause (tools/pause), the sandbox;
# - registry.k8s.io/coredns/coredns: CoreDNS (tools/coredns), static;
# - registry.k8s.io/e2e-test-images/agnhost: the upstream test binary
#   (k8s.io/kubernetes/test/images/agnhost, static), with busybox as its
#   shell and, as upstream's image has them (Kubernetes' e2e tests exec
#   them), curl, nc (OpenBSD's), dig and nslookup, ip, bash and getent from this
#   host's Debian packages with the libraries they load, and porter's TLS
#   pair;
# - registry.k8s.io/e2e-test-images/busybox: Debian's busybox-static with
#   every applet linked (Kubernetes' e2e tests run it with a command; no
#   entrypoint, as upstream).
# - registry.k8s.io/e2e-test-images/glibc-dns-testing: the glibc resolver
#   and tools (Debian's dig, getent, hostname, coreutils, bash as sh) with
#   their libraries, as upstream's Debian-based image: the DNS tests run
#   their probe loops in it next to agnhost.
# - agnhost again as 2.45, the tag sigs.k8s.io/network-policy-api's
#   conformance pods use, its SCTP listeners left out (below: no SCTP
#   sockets here).
# Redone only when a binary changes. Prints nothing when all is there.
set -euo pipefail
cd "$(dirname "$0")/.."

cache=${WEIR_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/weir-tools}
bin=$cache/bin
out=$cache/images
mkdir -p "$out"

AGNHOST_VERSION=2.63.0 # test/images/agnhost/VERSION at k8s.io/kubernetes v1.36.3
BUSYBOX_VERSION=1.37.0-1 # test/utils/image/manifest.go at k8s.io/kubernetes v1.36.3
GLIBC_DNS_VERSION=2.0.0  # same file
# The network-policy-api conformance suite's pods name this older tag; the
# same binary serves what they run (serve-hostname, porter).
AGNHOST_NPAPI_VERSION=2.45
PAUSE_VERSION=3.10.2   # the sandbox image containerd 2.4 names by default
COREDNS_VERSION=$(grep -oE 'coredns/coredns v[0-9.]+' tools/coredns/go.mod | cut -d' ' -f2)

busybox=/usr/bin/busybox
# What upstream's agnhost image adds to its binary (test/images/agnhost/Dockerfile).
agnhost_tools=(/usr/bin/curl /usr/bin/nc /usr/bin/dig /usr/bin/nslookup /usr/sbin/ip /usr/bin/bash /usr/bin/getent)
# What the DNS tests run in glibc-dns-testing (test/e2e/network/dns_common.go).
glibc_tools=(/usr/bin/bash /usr/bin/dig /usr/bin/getent /usr/bin/hostname /usr/bin/seq /usr/bin/sleep /usr/bin/cat /usr/bin/ls /usr/bin/grep /usr/bin/env /usr/bin/mkdir /usr/bin/rm /usr/bin/head /usr/bin/tail /usr/bin/cut /usr/bin/tr /usr/bin/wc /usr/bin/date /usr/bin/touch)
agnhost_src=$(cd tools/kubernetes && GOTOOLCHAIN=local go list -m -f '{{.Dir}}' k8s.io/kubernetes)/test/images/agnhost
stamp=$(sha256sum "$bin/pause" "$bin/agnhost" "$bin/coredns" "$busybox" "${agnhost_tools[@]}" "${glibc_tools[@]}" "$0" | sha256sum | cut -c1-16)
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
for tool in cat echo env hostname ls ping sleep wget ps grep seq sed awk head tail tr cut wc date test mkdir rm touch true false printf xargs timeout kill sort uniq tee id; do
  ln -s busybox "$stage/agnhost/bin/$tool"
done
# Dynamically linked tools into a root: each with the libraries it loads
# (ldd), from this host.
with_libs() {
  local root=$1
  shift
  mkdir -p "$root/usr/bin"
  for tool in "$@"; do
    cp "$tool" "$root/usr/bin/"
    for lib in $(ldd "$tool" | grep -oE '/[^ ]+\.so[^ ]*'); do
      mkdir -p "$root$(dirname "$lib")"
      cp -n "$lib" "$root$lib"
    done
  done
}
with_libs "$stage/agnhost" "${agnhost_tools[@]}"
# The shell is bash: Debian's static busybox runs its own applets before
# PATH (nc, nslookup), which are not the tools the tests expect.
ln -s /usr/bin/bash "$stage/agnhost/bin/sh"
ln -s /usr/bin/bash "$stage/agnhost/bin/bash"
cp "$agnhost_src/porter/localhost.crt" "$agnhost_src/porter/localhost.key" "$stage/agnhost/"
chmod 1777 "$stage/agnhost/tmp"
printf 'root:x:0:0:root:/:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\nuser-defined-in-image:x:1000:1000::/:/bin/sh\n' >"$stage/agnhost/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\nuser-defined-in-image:x:1000:\ngroup-defined-in-image:x:50000:user-defined-in-image\n' >"$stage/agnhost/etc/group"
mkdir -p "$stage/agnhost/uploads"
layer "$stage/agnhost" "$out/agnhost.tar"

# agnhost:2.45 for sigs.k8s.io/network-policy-api's conformance pods: the
# same files, but /agnhost is a thin wrapper that leaves SCTP ports
# unserved. This kernel has no SCTP sockets, and each of those pods runs
# `agnhost porter` with an SCTP port, which exits on the failed listen
# and keeps the pod from ever being ready; without it the suite's TCP and
# UDP tests could not run either. The SCTP tests fail, for that reason.
mv "$stage/agnhost/agnhost" "$stage/agnhost/agnhost.bin"
cat >"$stage/agnhost/agnhost" <<'SH'
#!/bin/bash
# weir's lab (scripts/images.sh): no SCTP sockets on this kernel; porter's
# SCTP ports are left unserved, everything else is upstream's agnhost.
if [ "$1" = porter ]; then
  for v in $(compgen -e | grep '^SERVE_SCTP_PORT_'); do unset "$v"; done
fi
exec /agnhost.bin "$@"
SH
chmod 755 "$stage/agnhost/agnhost"
layer "$stage/agnhost" "$out/agnhost-no-sctp.tar"

mkdir -p "$stage/busybox/bin" "$stage/busybox/etc" "$stage/busybox/tmp"
cp "$busybox" "$stage/busybox/bin/busybox"
for applet in $("$busybox" --list); do
  [ "$applet" = busybox ] || ln -s busybox "$stage/busybox/bin/$applet"
done
chmod 1777 "$stage/busybox/tmp"
printf 'root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/:/bin/sh
' >"$stage/busybox/etc/passwd"
printf 'root:x:0:
nogroup:x:65534:
' >"$stage/busybox/etc/group"
layer "$stage/busybox" "$out/busybox.tar"

mkdir -p "$stage/glibc/bin" "$stage/glibc/etc" "$stage/glibc/tmp"
with_libs "$stage/glibc" "${glibc_tools[@]}"
ln -s /usr/bin/bash "$stage/glibc/bin/sh"
chmod 1777 "$stage/glibc/tmp"
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n' >"$stage/glibc/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$stage/glibc/etc/group"
layer "$stage/glibc" "$out/glibc-dns-testing.tar"

mkdir -p "$stage/coredns/etc" "$stage/coredns/tmp"
cp "$bin/coredns" "$stage/coredns/coredns"
chmod 1777 "$stage/coredns/tmp"
printf 'nobody:x:65534:65534:nobody:/:/sbin/nologin\n' >"$stage/coredns/etc/passwd"
layer "$stage/coredns" "$out/coredns.tar"

printf 'registry.k8s.io/pause:%s\t/pause\tpause.tar\nregistry.k8s.io/e2e-test-images/agnhost:%s\t/agnhost\tagnhost.tar\tpause\nregistry.k8s.io/coredns/coredns:%s\t/coredns\tcoredns.tar\nregistry.k8s.io/e2e-test-images/busybox:%s\t\tbusybox.tar\nregistry.k8s.io/e2e-test-images/glibc-dns-testing:%s\t\tglibc-dns-testing.tar\nregistry.k8s.io/e2e-test-images/agnhost:%s\t/agnhost\tagnhost-no-sctp.tar\tpause\n' \
  "$PAUSE_VERSION" "$AGNHOST_VERSION" "$COREDNS_VERSION" "$BUSYBOX_VERSION" "$GLIBC_DNS_VERSION" "$AGNHOST_NPAPI_VERSION" >"$out/index.tsv"
echo "$stamp" >"$out/images.stamp"
