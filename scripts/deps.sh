#!/usr/bin/env bash
# Installs the system packages weir needs to build, test and run its lab,
# skipping what is already there. Debian 12+; needs root.
set -euo pipefail

packages=(
  clang-19 llvm-19 libbpf-dev linux-libc-dev gcc  # eBPF programs (C) and the Rust build
  libclang1-19                                    # bindgen: the Rust side of bpf/lib/abi.h
  iproute2 iputils-ping util-linux ethtool        # netns, veth, ping, nsenter, lab NIC offloads
  iperf3 sockperf procps iptables nftables        # benchmarks (iptables, nft: the kube-proxy baselines)
  prometheus curl                                 # a real Prometheus scrapes the agents; promtool checks /metrics
  openssl                                         # certificates and keys of the test control plane
  libseccomp-dev pkg-config busybox-static        # the lab's real nodes: runc (built by tools.sh) with seccomp; busybox is the test image's shell
  netcat-openbsd bind9-dnsutils bash              # the agnhost image's tools, as upstream's (curl, nc, dig, ip, bash): Kubernetes' e2e tests exec them
  chromium chromium-driver fonts-dejavu-core      # the service map's browser test (WebDriver) and the demo's screenshot
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "deps: cargo not found. Install Rust 1.95 (rustup) first: Debian's own cargo is too old." >&2
  exit 1
fi
# CI fails on unformatted code and on clippy warnings, so both must be there.
for c in fmt clippy; do
  if ! cargo "$c" --version >/dev/null 2>&1; then
    echo "deps: cargo $c not found: rustup component add rustfmt clippy" >&2
    exit 1
  fi
done

# The hubble CLI, grpcurl and the Kubernetes control plane, built once from
# the Go module proxy.
bash "$(dirname "$0")/tools.sh"
