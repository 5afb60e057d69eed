#!/usr/bin/env bash
# The lab demo: two nodes (network namespaces on one lab segment, each running
# weir-agent), pods wired by the real weir-cni, pod-to-pod across nodes, a
# ClusterIP service load-balanced in eBPF, egress masqueraded to the node IP,
# counters and drops, live flows (weir observe, the stock hubble CLI, the
# relay merging both nodes), network policy (a drop named in the flows, an
# audit verdict), a Prometheus scrape, and a clean teardown; then the same
# services and policy on a real Kubernetes control plane the lab starts;
# last, weir installed with `kubectl apply -f install/weir.yaml` onto
# real nodes (the real kubelet and containerd) that had no CNI.
# Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/deps.sh
cargo build --workspace --release --locked
weir=target/release/weir
export WEIR_LAB_DIR=${WEIR_LAB_DIR:-/run/weir-lab}
topology=${1:-lab/two-nodes.yaml}

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
# Agents pick up applied manifests within about a second; wait for that.
wait_probe() { for _ in $(seq 1 20); do "$weir" lab probe --timeout 0.5 "$@" >/dev/null 2>&1 && return 0; sleep 0.5; done; return 1; }
trap '"$weir" lab down >/dev/null 2>&1 || true' EXIT

"$weir" lab down >/dev/null 2>&1 || true
step "weir lab up $topology   (nodes = netns on a shared segment, each with its own agent)"
"$weir" lab up "$topology"

step "weir lab apply lab/demo/services.yaml   (a Deployment, a client, Services; every pod is a real CNI ADD)"
"$weir" lab apply lab/demo/services.yaml

step "weir lab get svc -n svc-demo   (ClusterIPs and NodePorts allocated by the lab's control plane)"
"$weir" lab status | sed -n '/^SERVICE/,/^$/p'

vip=$("$weir" lab get svc svc-demo/web -o json | awk -F'"' '/"clusterIP"/ {print $4; exit}')
step "client → service web ($vip:80): each connection is balanced to a backend in the client's from_pod program"
wait_probe svc-demo/client "$vip:80/tcp"
for _ in 1 2 3 4 5 6; do "$weir" lab probe svc-demo/client "$vip:80/tcp"; done
"$weir" lab probe svc-demo/client "$vip:53/udp"

empty=$("$weir" lab get svc svc-demo/empty -o json | awk -F'"' '/"clusterIP"/ {print $4; exit}')
step "service 'empty' ($empty) has no endpoints: the datapath rejects at once (TCP reset, ICMP port unreachable)"
"$weir" lab probe svc-demo/client "$empty:80/tcp" || true
"$weir" lab probe svc-demo/client "$empty:53/udp" || true

node=$("$weir" lab get pod svc-demo/client -o json | awk -F'"' '/"nodeName"/ {print $4; exit}')
nodeport=$("$weir" lab get svc svc-demo/web-np -o json | awk -F'[:,]' '/"nodePort"/ {gsub(/ /, "", $2); print $2; exit}')
step "from node $node itself: the ClusterIP and its own NodePort $nodeport, given a backend at connect() by the socket programs (bpf_sock.c)"
for _ in 1 2 3; do "$weir" lab probe --from-node "$node" "$vip:80/tcp"; done
"$weir" lab probe --from-node "$node" "$node:$nodeport/tcp"
"$weir" lab probe --from-node "$node" "$empty:80/tcp" || true

step "pod to pod across nodes, and to the external host (masqueraded to the node IP in eBPF)"
"$weir" lab probe svc-demo/client web-0/icmp
"$weir" lab probe svc-demo/client web-1:80/tcp
"$weir" lab probe svc-demo/client external:8080/tcp

hubble=${WEIR_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/weir-tools}/bin/hubble
relay="unix://$WEIR_LAB_DIR/run/relay.sock"
step "flows: every probe above, seen by the datapath that forwarded it (weir lab observe: the relay, both nodes)"
echo "-- pod to pod over TCP (client -> web-1:80):"
"$weir" lab observe --from-pod svc-demo/client --to-pod svc-demo/web-1 --port 80 --last 2 | grep -v ' via ' || true
echo "-- across nodes (client -> web-0, ICMP echo; each node reports what it saw):"
"$weir" lab observe --from-pod svc-demo/client --to-pod svc-demo/web-0 --protocol icmp --last 2 --print-node-name
echo "-- a service connection: the VIP dialled and the backend reached, in one record:"
"$weir" lab observe --from-pod svc-demo/client --service svc-demo/web --protocol tcp --last 2
echo "-- the connection to the service without endpoints: DROPPED, with its reason:"
"$weir" lab observe --verdict DROPPED --last 2
step "the stock hubble CLI (built from the Go module proxy by scripts/tools.sh) against the relay"
"$hubble" observe --server "$relay" --from-pod svc-demo/client --last 4
"$hubble" status --server "$relay"
step "live: weir lab observe --follow while the client calls the service"
( timeout 3 "$weir" lab observe --follow --from-pod svc-demo/client --protocol tcp & sleep 1
  for _ in 1 2; do "$weir" lab probe svc-demo/client "$vip:80/tcp" >/dev/null; done; wait ) || true
step "network policy: weir lab apply lab/demo/policy.yaml   (web accepts only the client; an audit policy stages the client's egress)"
"$weir" lab apply lab/demo/policy.yaml
"$weir" lab probe svc-demo/client "$vip:80/tcp"
"$weir" lab probe svc-demo/intruder "$vip:80/tcp" --timeout 1 || true
"$weir" lab probe svc-demo/client external:8080/tcp
echo "-- the intruder's connection: DROPPED, and the policy that isolates web named:"
"$weir" lab observe --from-pod svc-demo/intruder --verdict DROPPED --last 1
echo "-- the client's call outside: forwarded, AUDIT (the staged policy would deny it):"
"$weir" lab observe --from-pod svc-demo/client --verdict AUDIT --last 1
echo "-- the same drop through the stock hubble CLI:"
"$hubble" observe --server "$relay" --from-pod svc-demo/intruder --verdict DROPPED --last 1
echo "-- who reaches whom (every pod of svc-demo to every pod, port 80):"
"$weir" lab matrix -n svc-demo --port 80/tcp

step "the service map: every workload and edge with its traffic, latency, drops and deciding policy, live (weir lab ui; the relay serves it on loopback)"
"$weir" lab ui --screenshot "${WEIR_DEMO_SCREENSHOT:-/tmp/weir-service-map.png}"

client_node=$("$weir" lab get pod svc-demo/client -o json | awk -F'"' '/"nodeName"/ {print $4; exit}')
step "Prometheus metrics of $client_node's agent, the client's node (http://127.0.0.1:9962/metrics in the node's netns)"
node_ns="$(awk '/^name:/ {print $2; exit}' "$topology")-$client_node"
ip netns exec "$node_ns" curl -s http://127.0.0.1:9962/metrics \
  | grep -E '^(hubble_flows_processed_total|weir_drop_count_total|weir_workload_connections_total|weir_tcp_handshake_seconds_count|weir_pod_bytes_total|hubble_policy_verdicts_total|weir_policy_verdicts_total)' \
  | awk -F'{' '{n[$1]++} n[$1] <= 3' || true
"$weir" status
step "the agent's controllers, each run and supervised by one runner: up, and how often one failed and was restarted (/healthz names a failing one)"
ip netns exec "$node_ns" curl -s http://127.0.0.1:9962/metrics | grep -E '^weir_controller_(up|failures_total)' || true

step "flow export: each agent re-reads its flowLogs file (the chart's ConfigMap in a cluster); drops to a file, read back by the stock hubble"
export_dir=$(mktemp -d /tmp/weir-demo-export.XXXXXX)
for n in $("$weir" lab status -o json | python3 -c 'import json,sys; print(" ".join(json.load(sys.stdin)["access"]["flowExport"]))'); do
  cat >"$WEIR_LAB_DIR/run/$n/flow-export.yaml" <<EOF
flowLogs:
  - name: drops
    filePath: $export_dir/$n-drops.log
    includeFilters: [{verdict: [DROPPED]}]
    fieldMask: [time, verdict, drop_reason_desc, event_type, source, destination, IP, l4, traffic_direction, is_reply, Summary]
EOF
done
sleep 2   # the agents read it within a second
"$weir" lab probe svc-demo/intruder "$vip:80/tcp" --timeout 1 || true
sleep 1.5 # exporters write at least every second
cat "$export_dir"/*-drops.log | "$hubble" observe --input-file - --last 2
rm -rf "$export_dir"

step "weir lab status   (per-endpoint counters from per-CPU BPF maps, drops by reason, identities)"
"$weir" lab status

step "identities: one number per label set, the same on every node (weir lab get weiridentities)"
"$weir" lab get weiridentities -o json | awk -F'"' '/"name"/ {id=$4} /"app"/ {print "  identity " id ": app=" $4}'

step "scale web to 1 replica: terminating endpoints drain, the service keeps answering"
"$weir" lab scale deployment/web --replicas 1 -n svc-demo
for _ in 1 2 3; do "$weir" lab probe svc-demo/client "$vip:80/tcp"; done

step "weir lab down"
"$weir" lab down

step "the same on a real Kubernetes control plane: weir lab up lab/two-nodes-kubernetes.yaml"
echo "(etcd, kube-apiserver, kube-controller-manager, kube-scheduler v1.36.3 on node1; agents, operator and relay"
echo " use service-account tokens; the lab plays only the kubelet: weir-cni ADD, pod IP and readiness in the status)"
"$weir" lab up lab/two-nodes-kubernetes.yaml
"$weir" lab apply lab/demo/services.yaml
"$weir" lab apply lab/demo/policy.yaml
step "the API server's view (kubectl get): ClusterIPs and NodePorts from its allocators, pods placed by the scheduler"
"$weir" lab get pods -n svc-demo -o table
"$weir" lab get svc -n svc-demo -o table
kvip=$("$weir" lab get svc svc-demo/web -o json | awk -F'"' '/"clusterIP"/ {print $4; exit}')
step "client → web ($kvip:80) through the EndpointSlices kube-controller-manager wrote; the intruder is dropped"
wait_probe svc-demo/client "$kvip:80/tcp"
for _ in 1 2 3; do "$weir" lab probe svc-demo/client "$kvip:80/tcp"; done
"$weir" lab probe svc-demo/intruder "$kvip:80/tcp" --timeout 1 || true
step "the relay found both agents from the Node objects (weir-relay --discover); the drop through hubble"
"$weir" status --server "$relay"
"$hubble" observe --server "$relay" --from-pod svc-demo/intruder --verdict DROPPED --last 1
step "weir lab down"
"$weir" lab down

step "weir installed into a cluster: real kubelets and containerd, no CNI yet (lab/real-nodes.yaml)"
echo "(each node: the real kubelet and containerd 2.4 in its own netns and mount namespace; images pulled from"
echo " the lab's registry; nothing of weir installed, so the nodes are NotReady)"
"$weir" lab up lab/real-nodes.yaml
"$weir" lab kubectl -- get nodes -o wide
step "install weir as on any cluster: the API server's address, then kubectl apply -f install/weir.yaml"
"$weir" lab kubectl -- -n kube-system create configmap weir-kube-api \
  --from-literal=KUBERNETES_SERVICE_HOST=172.30.0.11 --from-literal=KUBERNETES_SERVICE_PORT=6443
"$weir" lab kubectl -- apply -f install/weir.yaml
"$weir" lab kubectl -- wait --for=condition=Ready node --all --timeout=120s
"$weir" lab kubectl -- -n kube-system rollout status daemonset/weir-agent --timeout=120s
"$weir" lab kubectl -- get nodes
"$weir" lab kubectl -- -n kube-system get pods -o wide
step "pods from images, started by the kubelet through containerd, wired by weir-cni"
"$weir" lab apply lab/demo/agnhost.yaml
"$weir" lab kubectl -- -n real-demo get pods -o wide
rvip=$("$weir" lab get svc real-demo/web -o json | awk -F'"' '/"clusterIP"/ {print $4; exit}')
for _ in 1 2 3 4; do "$weir" lab probe real-demo/client "$rvip:80/tcp"; done
step "kubectl exec into the client (API server → kubelet → containerd), across nodes to both web pods"
for ip in $("$weir" lab kubectl -- -n real-demo get pods -l app=web -o jsonpath='{.items[*].status.podIP}'); do
  "$weir" lab kubectl -- -n real-demo exec client -- sh -c "nc -w 2 $ip 8080 </dev/null; echo"
done
step "the in-cluster relay, through kubectl port-forward, with the stock hubble CLI"
"$weir" lab kubectl -- -n kube-system port-forward service/weir-relay 4245:80 >/dev/null 2>&1 &
pf=$!
sleep 2
ip netns exec real-real-node1 "$hubble" status --server localhost:4245 || true
ip netns exec real-real-node1 "$hubble" observe --server localhost:4245 --namespace real-demo --last 6 || true
kill "$pf" 2>/dev/null || true
step "weir lab down"
"$weir" lab down
trap - EXIT
echo "demo complete"
