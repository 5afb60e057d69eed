//! What one pass of each controller costs on a cluster of the size
//! (`--scale-model`): the model built in memory, no kernel, no API server.
//! It shows where a busy agent's CPU goes when the cluster churns.
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use weir_model::policy::LocalEndpoint;
use weir_model::{ClusterState, IdentityKey, Kind, Object, ObjectKey, WeirIdentity};

use crate::median;

fn obj(kind: Kind, v: serde_json::Value) -> Object {
    Object::from_value(kind, v).expect("object")
}

fn pod(i: usize, node: &str, app: &str) -> Object {
    obj(
        Kind::Pod,
        json!({"metadata": {"name": format!("m{i}"), "namespace": "mem", "labels": {"app": app},
                "creationTimestamp": "2026-12-07T00:00:00Z"},
               "spec": {"nodeName": node, "containers": [{"name": "c", "image": "weir.lab/none",
                        "ports": [{"name": "http", "containerPort": 8080}]}]},
               "status": {"phase": "Running", "podIP": format!("10.250.{}.{}", i / 250, 1 + i % 250),
                          "podIPs": [{"ip": format!("10.250.{}.{}", i / 250, 1 + i % 250)}],
                          "conditions": [{"type": "Ready", "status": "True"}]}}),
    )
}

/// `n` pods (all but ten on another node), `n` Services with one
/// endpoint each, their identities, and `policies` NetworkPolicies
/// selecting the local pods (CIDR and pod-selector peers).
pub fn cluster(n: usize, policies: usize) -> (ClusterState, Vec<LocalEndpoint>) {
    let mut s = ClusterState::default();
    s.revision = Some(1);
    s.insert(obj(Kind::Namespace, json!({"metadata": {"name": "mem"}})));
    for (name, ip) in [("n1", "192.168.0.1"), ("elsewhere", "192.168.0.2")] {
        s.insert(obj(
            Kind::Node,
            json!({"metadata": {"name": name}, "status": {"addresses": [{"type": "InternalIP", "address": ip}]}}),
        ));
    }
    let mut locals = Vec::new();
    for i in 0..n {
        let local = i < 10;
        let app = if local { "srv".to_owned() } else { format!("m{i}") };
        let p = pod(i, if local { "n1" } else { "elsewhere" }, &app);
        if let Object::Pod(p) = &p {
            let key = IdentityKey::of_pod(p);
            if s.identity_of(&key).is_none() {
                s.insert(Object::WeirIdentity(WeirIdentity::numbered(256 + i as u32, key)));
            }
        }
        s.insert(p);
        if local {
            locals.push(LocalEndpoint {
                endpoint_id: 100 + i as u32,
                pod: ObjectKey::new("mem", format!("m{i}")),
            });
        }
        s.insert(obj(
            Kind::Service,
            json!({"metadata": {"name": format!("m{i}"), "namespace": "mem"},
                   "spec": {"clusterIP": format!("10.96.{}.{}", i / 250, 1 + i % 250), "selector": {"app": app},
                            "ports": [{"port": 80, "targetPort": 8080, "protocol": "TCP"}]}}),
        ));
        s.insert(obj(
            Kind::EndpointSlice,
            json!({"metadata": {"name": format!("m{i}-abcde"), "namespace": "mem",
                                "labels": {"kubernetes.io/service-name": format!("m{i}")}},
                   "addressType": "IPv4",
                   "endpoints": [{"addresses": [format!("10.250.{}.{}", i / 250, 1 + i % 250)],
                                  "conditions": {"ready": true}, "nodeName": "elsewhere"}],
                   "ports": [{"name": "", "port": 8080, "protocol": "TCP"}]}),
        ));
    }
    for i in 0..policies {
        let peer = if i % 2 == 0 {
            json!({"ipBlock": {"cidr": format!("10.{}.{}.0/24", 100 + i / 256, i % 256)}})
        } else {
            json!({"podSelector": {"matchLabels": {"app": format!("m{}", 10 + i)}}})
        };
        s.insert(obj(
            Kind::NetworkPolicy,
            json!({"metadata": {"name": format!("p{i}"), "namespace": "mem"},
                   "spec": {"podSelector": {"matchLabels": {"app": "srv"}},
                            "ingress": [{"from": [peer], "ports": [{"port": 20000 + i, "protocol": "TCP"}]}]}}),
        ));
    }
    (s, locals)
}

fn time(rounds: usize, mut f: impl FnMut()) -> f64 {
    let mut samples: Vec<f64> = (0..rounds)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    median(&mut samples)
}

pub fn model_costs() {
    let (n, policies) = (10_000, 1_000);
    let t = Instant::now();
    let rss0 = crate::rss_kib(std::process::id());
    let (state, locals) = cluster(n, policies);
    let rss1 = crate::rss_kib(std::process::id());
    println!(
        "## One full pass of each controller: {n} pods, {n} Services and EndpointSlices, {policies} NetworkPolicies (built in {:.1} s; 5 rounds, medians)\n",
        t.elapsed().as_secs_f64()
    );
    println!(
        "The model holds them in {:.0} MiB (this process's RSS before and after building it; a Pod is {} bytes before its strings and lists, a Service {}, an EndpointSlice {}).\n",
        (rss1.saturating_sub(rss0)) as f64 / 1024.0,
        std::mem::size_of::<k8s_openapi::api::core::v1::Pod>(),
        std::mem::size_of::<k8s_openapi::api::core::v1::Service>(),
        std::mem::size_of::<k8s_openapi::api::discovery::v1::EndpointSlice>()
    );
    println!("| pass | ms |\n|---|---|");
    let state = Arc::new(state);
    let row = |what: &str, ms: f64| println!("| {what} | {ms:.1} |");
    // A source's snapshot: the model cloned, then written again (one pod)
    // before the next one. The same objects in BTreeMaps, as the model
    // held them before issue 22, alternating with the model's own
    // persistent maps; 20 snapshots a sample, the figure is one.
    let mut btree = BTreeMaps::of(&state);
    let mut live = state.as_ref().clone();
    let Object::Pod(changed) = pod(5000, "elsewhere", "m5000-changed") else {
        unreachable!()
    };
    let (changed, key) = (Arc::new(changed), ObjectKey::new("mem", "m5000"));
    let (mut before, mut now) = (Vec::new(), Vec::new());
    let per_snapshot = |mut take: Box<dyn FnMut() + '_>| time(1, || (0..20).for_each(|_| take())) / 20.0;
    for _ in 0..5 {
        before.push(per_snapshot(Box::new(|| {
            let snapshot = btree.clone();
            btree.pods.insert(key.clone(), changed.clone());
            drop(snapshot);
        })));
        now.push(per_snapshot(Box::new(|| {
            let snapshot = live.clone();
            live.pods.insert(key.clone(), changed.clone());
            drop(snapshot);
        })));
    }
    println!(
        "| snapshot: the model's maps as BTreeMaps (before), clone and one write | {:.3} |",
        median(&mut before)
    );
    println!(
        "| snapshot: the model's persistent maps (now), clone and one write | {:.3} |",
        median(&mut now)
    );
    let node = weir_agent::services::NodeInfo {
        name: "n1".into(),
        ip: Some("192.168.0.1".parse().unwrap()),
    };
    let alg = weir_datapath::lb::Algorithm::Maglev;
    row(
        "services: desired table",
        time(5, || drop(weir_agent::services::desired(&state, alg, &node))),
    );
    row(
        "ipcache: desired table",
        time(5, || drop(weir_agent::ipcache::desired(&state, "n1"))),
    );
    let mut numbers = weir_model::policy::Numbers::default();
    row(
        "policy: compile",
        time(5, || {
            drop(weir_model::policy::compile(&state, &locals, &mut numbers));
        }),
    );
    let mut names = weir_flows::names::FlowNames::new(Duration::from_secs(30));
    row("flow names", time(5, || names.update(&state, "n1", Instant::now())));
    row(
        "external frontends",
        time(5, || drop(weir_model::frontends::external_frontends(&state))),
    );
}

/// One pod and its Service's EndpointSlice changed, as in a rollout: what
/// the incremental passes cost against the full ones.
pub fn change_costs() {
    let (n, policies) = (10_000, 1_000);
    let (state, locals) = cluster(n, policies);
    let state = Arc::new(state);
    let mut next = state.as_ref().clone();
    next.insert(pod(5000, "elsewhere", "m5000"));
    if let Some(Object::Pod(p)) = Some(pod(5000, "elsewhere", "m5000")) {
        let mut p = p;
        p.status.as_mut().unwrap().pod_ip = Some("10.250.200.200".into());
        p.status.as_mut().unwrap().pod_ips = None;
        next.insert(Object::Pod(p));
    }
    next.insert(obj(
        Kind::EndpointSlice,
        json!({"metadata": {"name": "m5000-abcde", "namespace": "mem",
                            "labels": {"kubernetes.io/service-name": "m5000"}},
               "addressType": "IPv4",
               "endpoints": [{"addresses": ["10.250.200.200"], "conditions": {"ready": true}, "nodeName": "elsewhere"}],
               "ports": [{"name": "", "port": 8080, "protocol": "TCP"}]}),
    ));
    let next = Arc::new(next);
    let node = weir_agent::services::NodeInfo {
        name: "n1".into(),
        ip: Some("192.168.0.1".parse().unwrap()),
    };
    let alg = weir_datapath::lb::Algorithm::Maglev;
    println!("\n## One pod and its EndpointSlice changed (same cluster; 5 rounds, medians)\n");
    println!("| pass | full (ms) | incremental (ms) |\n|---|---|---|");
    let changes = weir_model::Changes::between(&state, &next);
    let diff = time(5, || drop(weir_model::Changes::between(&state, &next)));
    println!("| what changed (`Changes::between`) | | {diff:.2} |");
    // Each round updates a table of its own, made beforehand and dropped
    // afterwards: what is timed is the update.
    let full = time(5, || drop(weir_agent::ipcache::Table::full(&next, "n1")));
    let mut tables: Vec<_> = (0..5).map(|_| weir_agent::ipcache::Table::full(&state, "n1")).collect();
    let mut i = 0;
    let inc = time(5, || {
        tables[i].update(&next, &changes);
        i += 1;
    });
    drop(tables);
    println!("| ipcache table | {full:.1} | {inc:.3} |");
    let full = time(5, || drop(weir_agent::services::Table::full(&next, alg, &node)));
    let mut tables: Vec<_> = (0..5)
        .map(|_| weir_agent::services::Table::full(&state, alg, &node))
        .collect();
    let mut i = 0;
    let inc = time(5, || {
        tables[i].update(&next, &changes);
        i += 1;
    });
    drop(tables);
    println!("| service table | {full:.1} | {inc:.3} |");
    let grace = Duration::from_secs(30);
    let mut names: Vec<_> = (0..6)
        .map(|_| {
            let mut n = weir_flows::names::FlowNames::new(grace);
            n.update(&state, "n1", Instant::now());
            n
        })
        .collect();
    let mut i = 0;
    let full = time(5, || {
        names[i].update(&next, "n1", Instant::now());
        i += 1;
    });
    let mut names: Vec<_> = (0..5)
        .map(|_| {
            let mut n = weir_flows::names::FlowNames::new(grace);
            n.update(&state, "n1", Instant::now());
            n
        })
        .collect();
    let mut i = 0;
    let inc = time(5, || {
        names[i].update_with(&next, Some(&changes), "n1", Instant::now());
        i += 1;
    });
    println!("| flow names | {full:.1} | {inc:.3} |");
    let mut numbers = weir_model::policy::Numbers::default();
    let full = time(5, || drop(weir_model::policy::compile(&next, &locals, &mut numbers)));
    let peers = weir_model::policy::PeerSelectors::of(&state);
    let inc = time(5, || {
        assert!(!weir_agent::policy::changes_matter(
            &changes, &state, &next, &locals, &peers
        ));
    });
    println!("| policy (the change is none of its inputs: no compile) | {full:.1} | {inc:.3} |");
}

/// The agent's CPU time so far (user and system), in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command (which may hold spaces): utime is the 14th
    // field, stime the 15th, in clock ticks (100 a second here).
    let rest = stat.rsplit_once(") ").map(|(_, r)| r).unwrap_or_default();
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f
        .get(11..13)
        .into_iter()
        .flatten()
        .filter_map(|t| t.parse::<f64>().ok())
        .sum();
    ticks / 100.0
}

/// A histogram's cumulative buckets (upper bound, count) from /metrics.
fn buckets(text: &str, name: &str) -> Vec<(f64, f64)> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}_bucket{{")))
        .filter_map(|l| {
            let le = l.split("le=\"").nth(1)?.split('"').next()?;
            let le = if le == "+Inf" { f64::INFINITY } else { le.parse().ok()? };
            Some((le, l.rsplit(' ').next()?.parse().ok()?))
        })
        .collect()
}

/// The `q` quantile of what a histogram counted between two scrapes,
/// interpolated within its bucket as Prometheus' histogram_quantile does.
fn quantile(before: &[(f64, f64)], after: &[(f64, f64)], q: f64) -> Option<f64> {
    let delta: Vec<(f64, f64)> = after
        .iter()
        .map(|(le, n)| (*le, n - before.iter().find(|(l, _)| l == le).map_or(0.0, |(_, b)| *b)))
        .collect();
    let total = delta.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut prev = (0.0, 0.0);
    for (le, n) in &delta {
        if *n >= rank {
            if le.is_infinite() {
                return Some(prev.0);
            }
            let within = if n - prev.1 > 0.0 {
                (rank - prev.1) / (n - prev.1)
            } else {
                1.0
            };
            return Some(prev.0 + (le - prev.0) * within);
        }
        prev = (*le, *n);
    }
    None
}

/// In the node's netns (the API server listens on its loopback), on a
/// runtime of its own.
pub fn in_node<T: Send + 'static>(
    k: &weir_e2e::kube::KubeNode,
    f: impl FnOnce(weir_k8s::kube::Client) -> std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>
    + Send
    + 'static,
) -> T {
    let kubeconfig = k.cp.kubeconfig.clone();
    weir_e2e::in_netns(k.node.ns.path(), move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let client = weir_k8s::client(Some(&kubeconfig)).await.expect("client");
            f(client).await
        })
    })
}

fn network_policy(i: usize) -> k8s_openapi::api::networking::v1::NetworkPolicy {
    serde_json::from_value(json!({
        "metadata": {"name": format!("p{i}"), "namespace": "bench"},
        "spec": {"podSelector": {"matchLabels": {"app": "srv"}},
                 "ingress": [{"from": [{"ipBlock": {"cidr": format!("10.{}.{}.0/24", 100 + i / 256, i % 256)}}],
                              "ports": [{"port": 20000 + i, "protocol": "TCP"}]}]}
    }))
    .expect("policy")
}

/// `weir-bench --scale[=N]`: the agent on a real API server with N pods,
/// N Services and their EndpointSlices and 1,000 NetworkPolicies; its
/// memory, its first sync, its CPU and network programming latency while
/// pods churn, and a policy change with the 1,000 in place.
pub fn api() {
    use futures_util::{StreamExt, TryStreamExt};
    use k8s_openapi::api::core::v1::Pod;
    use k8s_openapi::api::networking::v1::NetworkPolicy;
    use weir_k8s::kube::api::{Api, DeleteParams, PostParams};

    let n: usize = std::env::args()
        .find_map(|a| a.strip_prefix("--scale=").and_then(|v| v.parse().ok()))
        .unwrap_or(10_000);
    let k = weir_e2e::kube::KubeNode::start(&[]).expect("the control plane is built (scripts/tools.sh)");
    k.apply("apiVersion: v1\nkind: Namespace\nmetadata: {name: bench}\n");
    let client = k.run_pod("bench", "client", "client");
    let server = k.run_pod("bench", "srv", "srv");
    weir_e2e::kube::echo_server(&server, 9000);
    let to = std::net::SocketAddr::from((server.ip, 9000));
    let pid = k.node.agent_pid().expect("agent");
    let rss0 = crate::rss_kib(pid);
    println!(
        "## The agent on a real API server at scale: {n} pods, {n} Services and EndpointSlices, 1,000 NetworkPolicies\n"
    );

    // Everything in place, as fast as the API server takes it.
    let cpu0 = cpu_seconds(pid);
    let t0 = Instant::now();
    super::kubernetes::bulk(&k, n);
    in_node(&k, |c| {
        Box::pin(async move {
            let api: Api<NetworkPolicy> = Api::namespaced(c, "bench");
            futures_util::stream::iter(0..1000)
                .map(|i| {
                    let api = api.clone();
                    async move { api.create(&PostParams::default(), &network_policy(i)).await.map(|_| ()) }
                })
                .buffer_unordered(16)
                .try_collect::<()>()
                .await
                .expect("policies")
        })
    });
    let created = t0.elapsed();
    let lag = weir_e2e::kube::wait_for("the agent holds them all", Duration::from_secs(900), || {
        obj_of(&k.node, "Pod") >= n as f64
            && obj_of(&k.node, "Service") >= n as f64
            && obj_of(&k.node, "EndpointSlice") >= n as f64
            && obj_of(&k.node, "NetworkPolicy") >= 1000.0
    });
    let cpu_create = (cpu_seconds(pid) - cpu0) / t0.elapsed().as_secs_f64();
    weir_e2e::kube::wait_for(
        "the 1,000 policies isolate the server",
        Duration::from_secs(120),
        || !weir_e2e::kube::answers(&client, to),
    );
    std::thread::sleep(Duration::from_secs(5));
    let rss = crate::rss_kib(pid);
    println!("| measure | result |\n|---|---|");
    println!(
        "| creating the objects (API server, controller manager, operator, agent on 2 cores) | {:.0} s ({:.0} objects/s written by the benchmark) |",
        created.as_secs_f64(),
        (3 * n + 1000) as f64 / created.as_secs_f64()
    );
    println!(
        "| ... then until the agent holds all of it (the controller manager's EndpointSlices, the operator's identities) | {:.1} s |",
        lag.as_secs_f64()
    );
    println!("| ... the agent's CPU meanwhile | {:.2} of a core |", cpu_create);
    println!("| agent RSS, ~2 pods | {:.0} MiB |", rss0 as f64 / 1024.0);
    println!("| agent RSS, all in place | {:.0} MiB |", rss as f64 / 1024.0);

    // A restart: the first list of all of it.
    let mut k = k;
    k.node.stop_agent();
    let t0 = Instant::now();
    k.node.start_agent();
    let pid = k.node.agent_pid().expect("agent");
    weir_e2e::kube::wait_for("the restarted agent holds them all", Duration::from_secs(600), || {
        obj_of(&k.node, "EndpointSlice") >= n as f64 && obj_of(&k.node, "Pod") >= n as f64
    });
    let first_sync = t0.elapsed();
    std::thread::sleep(Duration::from_secs(5));
    println!(
        "| restarted: its first sync of all of it | {:.1} s |",
        first_sync.as_secs_f64()
    );
    println!("| restarted: RSS | {:.0} MiB |", crate::rss_kib(pid) as f64 / 1024.0);

    // Churn: each second 100 pods created (Running, Ready, each joining an
    // existing Service) and the 100 of the second before deleted.
    let (hist, sync) = (
        "weir_network_programming_duration_seconds",
        "weir_services_sync_duration_seconds",
    );
    let text = weir_e2e::kube::scrape(&k.node);
    let (before, sync_before) = (buckets(&text, hist), buckets(&text, sync));
    let cpu0 = cpu_seconds(pid);
    let t0 = Instant::now();
    let secs = 60usize;
    let (made, gone) = in_node(&k, move |c| {
        Box::pin(async move {
            let pods: Api<Pod> = Api::namespaced(c, "mem");
            let (mut made, mut gone) = (0usize, 0usize);
            let start = tokio::time::Instant::now();
            for sec in 0..secs {
                let ops: Vec<(bool, usize)> = (0..100)
                    .map(|j| (true, sec * 100 + j))
                    .chain((0..if sec > 0 { 100 } else { 0 }).map(|j| (false, (sec - 1) * 100 + j)))
                    .collect();
                let done: Vec<bool> = futures_util::stream::iter(ops)
                    .map(|(create, i)| churn_op(pods.clone(), create, i, n))
                    .buffer_unordered(32)
                    .try_collect()
                    .await
                    .expect("churn");
                made += done.iter().filter(|d| **d).count();
                gone += done.iter().filter(|d| !**d).count();
                tokio::time::sleep_until(start + Duration::from_secs(sec as u64 + 1)).await;
            }
            (made, gone)
        })
    });
    let churned = t0.elapsed();
    let cpu_churn = (cpu_seconds(pid) - cpu0) / churned.as_secs_f64();
    std::thread::sleep(Duration::from_secs(2));
    let text = weir_e2e::kube::scrape(&k.node);
    let (after, sync_after) = (buckets(&text, hist), buckets(&text, sync));
    let count = after.last().map_or(0.0, |b| b.1) - before.last().map_or(0.0, |b| b.1);
    let q = |x| quantile(&before, &after, x).map_or("none".to_owned(), |s| format!("{:.0} ms", s * 1e3));
    let qs = |x| quantile(&sync_before, &sync_after, x).map_or("none".to_owned(), |s| format!("{:.0} ms", s * 1e3));
    println!(
        "| churn: {made} pods created and {gone} deleted in {:.0} s ({:.0} a second each way) | |",
        churned.as_secs_f64(),
        made as f64 / churned.as_secs_f64()
    );
    println!("| ... the agent's CPU | {cpu_churn:.2} of a core |");
    println!(
        "| ... a Service's endpoints changing, from the agent receiving the change to the datapath ({:.0} passes): p50, p99 | {}, {} |",
        sync_after.last().map_or(0.0, |b| b.1) - sync_before.last().map_or(0.0, |b| b.1),
        qs(0.5),
        qs(0.99)
    );
    println!(
        "| ... from the pod's Ready transition (the EndpointSlice's trigger time, whole seconds) to the datapath ({count:.0} slice changes): p50, p99 | {}, {} |",
        q(0.5),
        q(0.99)
    );

    // One policy change with the 1,000 in place: from the API write.
    let gate: NetworkPolicy = serde_json::from_value(json!({
        "metadata": {"name": "gate", "namespace": "bench"},
        "spec": {"podSelector": {"matchLabels": {"app": "srv"}},
                 "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "client"}}}], "ports": [{"port": 9000}]}]}
    }))
    .expect("gate");
    let (mut allow, mut deny) = (Vec::new(), Vec::new());
    for _ in 0..crate::ROUNDS {
        let g = gate.clone();
        let t0 = Instant::now();
        in_node(&k, move |c| {
            Box::pin(async move {
                Api::<NetworkPolicy>::namespaced(c, "bench")
                    .create(&PostParams::default(), &g)
                    .await
                    .expect("gate");
            })
        });
        allow.push(super::kubernetes::until(t0, &client, to, true).as_secs_f64() * 1e3);
        let t0 = Instant::now();
        in_node(&k, move |c| {
            Box::pin(async move {
                Api::<NetworkPolicy>::namespaced(c, "bench")
                    .delete("gate", &DeleteParams::default())
                    .await
                    .expect("gate");
            })
        });
        deny.push(super::kubernetes::until(t0, &client, to, false).as_secs_f64() * 1e3);
    }
    println!(
        "| one policy added with 1,000 in place: API write to allowed, p50 of {} | {:.0} ms |",
        crate::ROUNDS,
        median(&mut allow)
    );
    println!(
        "| ... deleted: API write to denied, p50 | {:.0} ms |",
        median(&mut deny)
    );
}

fn obj_of(node: &weir_e2e::Node, kind: &str) -> f64 {
    weir_e2e::kube::metric(node, "weir_kubernetes_objects", &format!("kind=\"{kind}\""))
}

/// One pod of the churn created (Running, Ready, joining Service
/// `m{i % n}`) or deleted; true for a create.
async fn churn_op(
    pods: weir_k8s::kube::Api<k8s_openapi::api::core::v1::Pod>,
    create: bool,
    i: usize,
    n: usize,
) -> Result<bool, weir_k8s::kube::Error> {
    use weir_k8s::kube::api::{DeleteParams, Patch, PatchParams, PostParams};
    let name = format!("c{i}");
    if !create {
        pods.delete(&name, &DeleteParams::default().grace_period(0)).await?;
        return Ok(false);
    }
    let pod = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": format!("m{}", i % n)}},
        "spec": {"nodeName": "elsewhere", "containers": [{"name": "c", "image": "weir.lab/none"}]},
    }))
    .expect("pod");
    pods.create(&PostParams::default(), &pod).await?;
    let ip = format!("10.251.{}.{}", (i / 250) % 250, 1 + i % 250);
    // The Ready transition's time is what the EndpointSlice controller
    // reports as the change's trigger (second precision, as a kubelet's).
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let status = json!({"status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
        "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": now}]}});
    pods.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
        .await?;
    Ok(true)
}

/// The model's maps as `BTreeMap`s, the way `ClusterState` held them
/// before its persistent maps: what a snapshot cost then, measured on the
/// same objects.
#[derive(Clone)]
#[allow(dead_code, reason = "only cloned and written: a snapshot's cost")]
struct BTreeMaps {
    namespaces: BTreeMap<ObjectKey, Arc<k8s_openapi::api::core::v1::Namespace>>,
    nodes: BTreeMap<ObjectKey, Arc<k8s_openapi::api::core::v1::Node>>,
    pods: BTreeMap<ObjectKey, Arc<k8s_openapi::api::core::v1::Pod>>,
    services: BTreeMap<ObjectKey, Arc<k8s_openapi::api::core::v1::Service>>,
    endpoint_slices: BTreeMap<ObjectKey, Arc<k8s_openapi::api::discovery::v1::EndpointSlice>>,
    network_policies: BTreeMap<ObjectKey, Arc<k8s_openapi::api::networking::v1::NetworkPolicy>>,
    identities: BTreeMap<ObjectKey, Arc<WeirIdentity>>,
    identity_ids: BTreeMap<IdentityKey, u32>,
}

impl BTreeMaps {
    fn of(s: &ClusterState) -> Self {
        fn copy<T>(m: &weir_model::Objects<T>) -> BTreeMap<ObjectKey, Arc<T>> {
            m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
        }
        Self {
            namespaces: copy(&s.namespaces),
            nodes: copy(&s.nodes),
            pods: copy(&s.pods),
            services: copy(&s.services),
            endpoint_slices: copy(&s.endpoint_slices),
            network_policies: copy(&s.network_policies),
            identities: copy(&s.identities),
            identity_ids: s
                .identities
                .values()
                .map(|i| (i.spec.clone(), i.id().unwrap_or_default()))
                .collect(),
        }
    }
}
