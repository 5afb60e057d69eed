#!/usr/bin/env bash
# The lab demo: a node (a network namespace running weir-agent), pods wired by
# the real weir-cni, traffic through the eBPF datapath, counters, drops, and a
# clean teardown. Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/deps.sh
cargo build --workspace --release --locked
weir=target/release/weir
export WEIR_LAB_DIR=${WEIR_LAB_DIR:-/run/weir-lab}

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
trap '"$weir" lab down >/dev/null 2>&1 || true' EXIT

"$weir" lab down >/dev/null 2>&1 || true
step "weir lab up lab/one-node.yaml"
"$weir" lab up lab/one-node.yaml

step "weir lab apply lab/demo/pods.yaml   (each pod: real CNI ADD as a runtime would)"
"$weir" lab apply lab/demo/pods.yaml

step "weir lab get pods -o yaml   (pod IPs filled in as a kubelet would)"
"$weir" lab get pods -n demo -o yaml | grep -E '^\s+(name|podIP|phase):' || "$weir" lab get pods -n demo -o yaml

step "probes from demo/client through the TC programs (redirected peer to peer, no bridge)"
"$weir" lab probe demo/client web-0:80/tcp
"$weir" lab probe demo/client web-1:53/udp
"$weir" lab probe demo/client web-0/icmp
echo "(port 81 is not served: expect 'refused')"
"$weir" lab probe demo/client web-0:81/tcp || true

step "weir lab status   (per-endpoint counters from per-CPU BPF maps, drops by reason)"
"$weir" lab status

step "delete web-1 (CNI DEL): it loses connectivity and its address returns to the pool"
web1_ip=$("$weir" lab get pod demo/web-1 -o yaml | awk '/podIP:/ {print $2; exit}')
cat <<'YAML' | "$weir" lab delete -
apiVersion: v1
kind: Pod
metadata: {name: web-1, namespace: demo}
YAML
"$weir" lab probe --timeout 1 demo/client "$web1_ip:80/tcp" || echo "(as expected: $web1_ip no longer answers)"

step "weir lab down"
"$weir" lab down
trap - EXIT
echo "demo complete"
