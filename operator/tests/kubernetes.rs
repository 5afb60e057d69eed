//! The operator's binary against a real API server (v1.36.3,
//! `weir_test_support::kube`), every replica with a token of its service
//! account, bound to `install/rbac.yaml`'s roles: a call the rules do not
//! allow fails the test.
//!
//! - Two replicas, one Lease: pods and Nodes are created continuously while
//!   the leader is SIGKILLed; the other takes over within the lease
//!   duration; a SIGTERMed leader hands over at once; a leader paused
//!   (SIGSTOP) past its lease is taken over and, woken, writes nothing and
//!   stands by. Afterwards every
//!   label set has exactly one identity, no number ever stood for two
//!   label sets, and every Node has a pod CIDR of its own from the pool.
//!   An exhausted pool leaves a Node waiting (with an Event) until a Node
//!   is deleted and its CIDR freed. Identities of pods deleted while no
//!   operator ran go when one starts.
//! - Policy status: `kubectl get` shows each weir policy Accepted or not,
//!   with the agents' reason.
//!
//! Lease timings are shortened (4 s / 3 s / 500 ms) to keep the test short;
//! the defaults (15 s / 10 s / 2 s) scale the takeover times.
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::json;
use weir_k8s::kube;
use weir_model::identity::{IdentityKey, WeirIdentity};
use weir_test_support::kube::ControlPlane;

const LEASE: Duration = Duration::from_secs(4);
const RETRY: Duration = Duration::from_millis(500);
const FAST_LEASE: [&str; 3] = [
    "--leader-elect-lease-duration=4s",
    "--leader-elect-renew-deadline=3s",
    "--leader-elect-retry-period=500ms",
];
/// 16 node CIDRs.
const POOL: &str = "10.244.0.0/20";

fn wait_for(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) -> Duration {
    let t0 = Instant::now();
    while !ok() {
        assert!(t0.elapsed() < limit, "{what} within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    t0.elapsed()
}

fn repo(path: &str) -> String {
    std::fs::read_to_string(format!("{}/../{path}", env!("CARGO_MANIFEST_DIR"))).expect(path)
}

fn apply(cp: &ControlPlane, yaml: &str) {
    let out = cp.apply(yaml);
    assert!(
        out.status.success(),
        "apply: {}\n{yaml}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// weir's CRDs and RBAC, established; the operator's kubeconfig (its
/// service account's token).
fn install(cp: &ControlPlane) -> PathBuf {
    for f in [
        "install/crds/weir-policies.yaml",
        "install/crds/weir-identities.yaml",
        "install/rbac.yaml",
    ] {
        apply(cp, &repo(f));
    }
    let wait = weir_k8s::wait_for_crds_args();
    cp.kubectl_ok(&wait.iter().map(String::as_str).collect::<Vec<_>>());
    cp.kubeconfig_for("kube-system", "weir-operator")
}

/// One replica of the operator, killed on drop.
struct Operator {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Operator {
    fn start(cp: &ControlPlane, kubeconfig: &Path, name: &str, args: &[&str]) -> Operator {
        let log = cp.path().join(format!("{name}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_weir-operator"))
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(args)
            .env("POD_NAME", name)
            .env("WEIR_LOG", "info,weir_operator=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("weir-operator");
        Operator {
            name: name.into(),
            child,
            log,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn signal(&mut self, signal: Signal) -> ExitStatus {
        let pid = Pid::from_raw(i32::try_from(self.child.id()).expect("pid"));
        kill(pid, signal).expect("kill");
        let t0 = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(t0.elapsed() < Duration::from_secs(10), "{} did not exit", self.name);
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- {} log:\n{}", self.name, self.log());
        }
    }
}

fn holder(cp: &ControlPlane) -> String {
    let out = cp.kubectl(&[
        "get",
        "lease",
        "-n",
        "kube-system",
        "weir-operator",
        "-o",
        "jsonpath={.spec.holderIdentity}",
    ]);
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime")
}

fn pod(name: &str, app: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": app}},
        "spec": {"containers": [{"name": "c", "image": "weir.lab/serve"}]},
    }))
    .expect("pod")
}

fn node(name: &str) -> Node {
    serde_json::from_value(json!({"metadata": {"name": name}})).expect("node")
}

/// Every Node's pod CIDR ("" when it has none).
fn node_cidrs(cp: &ControlPlane) -> BTreeMap<String, String> {
    let out = cp.kubectl_ok(&[
        "get",
        "nodes",
        "-o",
        r#"jsonpath={range .items[*]}{.metadata.name}={.spec.podCIDR},{.spec.podCIDRs[*]}{"\n"}{end}"#,
    ]);
    out.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(n, c)| {
            let (cidr, cidrs) = c.split_once(',').unwrap_or((c, ""));
            assert_eq!(cidr, cidrs, "podCIDR and podCIDRs agree on {n}");
            (n.to_owned(), cidr.to_owned())
        })
        .collect()
}

/// The identities: number → label set.
fn identities(cp: &ControlPlane) -> BTreeMap<u32, IdentityKey> {
    let out = cp.kubectl_ok(&["get", "weiridentities", "-o", "json"]);
    let list: serde_json::Value = serde_json::from_str(&out).expect("json");
    list["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| serde_json::from_value::<WeirIdentity>(i.clone()).expect("identity"))
        .filter_map(|i| Some((i.id()?, i.spec)))
        .collect()
}

/// The label sets of the pods of namespace `ns`.
fn label_sets(cp: &ControlPlane, ns: &str) -> BTreeSet<IdentityKey> {
    let out = cp.kubectl_ok(&["get", "pods", "-n", ns, "-o", "json"]);
    let list: serde_json::Value = serde_json::from_str(&out).expect("json");
    list["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|p| IdentityKey::of_pod(&serde_json::from_value(p.clone()).expect("pod")))
        .collect()
}

/// Every label set of `ns` numbered exactly once, nothing else numbered.
fn one_identity_per_label_set(cp: &ControlPlane, ns: &str) -> bool {
    let ids = identities(cp);
    let numbered: Vec<&IdentityKey> = ids.values().filter(|k| k.namespace == ns).collect();
    let unique: BTreeSet<&IdentityKey> = numbered.iter().copied().collect();
    let wanted = label_sets(cp, ns);
    numbered.len() == unique.len() && unique.into_iter().cloned().collect::<BTreeSet<_>>() == wanted
}

#[test]
fn two_replicas_hand_over_and_nothing_is_allocated_twice() {
    let Some(cp) = ControlPlane::start_with(None, |o| o.allocate_node_cidrs = false) else {
        return;
    };
    let kubeconfig = install(&cp);
    apply(&cp, "apiVersion: v1\nkind: Namespace\nmetadata: {name: churn}\n");
    // Pods need the namespace's default service account.
    wait_for("the churn namespace's service account", Duration::from_secs(30), || {
        cp.kubectl(&["get", "serviceaccount", "-n", "churn", "default"])
            .status
            .success()
    });
    let mut args: Vec<&str> = FAST_LEASE.to_vec();
    args.extend(["--cluster-cidr", POOL, "--node-cidr-mask-size", "24"]);
    let (a, b) = (
        Operator::start(&cp, &kubeconfig, "op-a", &args),
        Operator::start(&cp, &kubeconfig, "op-b", &args),
    );
    wait_for("a leader", Duration::from_secs(20), || {
        ["op-a", "op-b"].contains(&holder(&cp).as_str())
    });
    let (mut first, mut second) = match holder(&cp).as_str() {
        "op-a" => (a, b),
        _ => (b, a),
    };

    // Watch every identity ever written: a number seen with two label sets
    // would be a number allocated twice.
    let rt = runtime();
    let client = rt.block_on(weir_k8s::client(Some(&cp.kubeconfig))).expect("client");
    let seen: Arc<Mutex<BTreeMap<String, IdentityKey>>> = Arc::default();
    let twice: Arc<Mutex<Vec<String>>> = Arc::default();
    {
        let (seen, twice, api) = (seen.clone(), twice.clone(), Api::<WeirIdentity>::all(client.clone()));
        rt.spawn(async move {
            let events = watcher(api, watcher::Config::default()).applied_objects();
            futures_util::pin_mut!(events);
            while let Some(Ok(id)) = events.next().await {
                let name = id.metadata.name.clone().unwrap_or_default();
                let mut seen = seen.lock().unwrap();
                match seen.get(&name) {
                    Some(k) if *k != id.spec => twice.lock().unwrap().push(format!("{name}: {k:?} and {:?}", id.spec)),
                    _ => {
                        seen.insert(name, id.spec);
                    }
                }
            }
        });
    }
    // Pods (two per label set) and Nodes, created continuously.
    let stop = Arc::new(AtomicBool::new(false));
    let churn = {
        let (stop, client) = (stop.clone(), client.clone());
        rt.spawn(async move {
            let pods: Api<Pod> = Api::namespaced(client.clone(), "churn");
            let nodes: Api<Node> = Api::all(client);
            let mut i: u32 = 0;
            while !stop.load(Ordering::Relaxed) {
                let p = pod(&format!("p-{i}"), &format!("app-{}", i / 2));
                pods.create(&PostParams::default(), &p).await.expect("pod created");
                if i.is_multiple_of(3) && i / 3 < 10 {
                    nodes
                        .create(&PostParams::default(), &node(&format!("n-{}", i / 3)))
                        .await
                        .expect("node created");
                }
                i += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            i
        })
    };
    wait_for("the leader numbers the first pods", Duration::from_secs(20), || {
        !identities(&cp).is_empty()
    });

    // SIGKILL: no release; the other replica waits out the lease.
    let killed_at = Instant::now();
    first.signal(Signal::SIGKILL);
    wait_for("the other replica takes over", LEASE + Duration::from_secs(5), || {
        holder(&cp) == second.name
    });
    let after_kill = killed_at.elapsed();
    eprintln!("takeover after SIGKILL: {after_kill:?} (lease {LEASE:?}, retry {RETRY:?})");
    assert!(
        after_kill <= LEASE + 2 * RETRY + Duration::from_millis(500),
        "{after_kill:?}"
    );
    std::thread::sleep(Duration::from_secs(1));

    // The killed one comes back (as its Deployment would have it) and
    // stands by; SIGTERM to the leader releases the Lease: at once.
    let mut third = Operator::start(&cp, &kubeconfig, "op-c", &args);
    wait_for("op-c stands by", Duration::from_secs(20), || {
        third.log().contains("standing by")
    });
    let terminated_at = Instant::now();
    let status = second.signal(Signal::SIGTERM);
    assert!(status.success(), "a SIGTERMed operator exits cleanly: {status}");
    wait_for("op-c takes over the released Lease", Duration::from_secs(5), || {
        holder(&cp) == "op-c"
    });
    let after_term = terminated_at.elapsed();
    eprintln!("takeover after SIGTERM: {after_term:?}");
    assert!(after_term < LEASE, "released, not expired: {after_term:?}");
    assert!(second.log().contains("Lease released"), "{}", second.log());

    // A leader that cannot renew (paused: SIGSTOP) past its lease: another
    // takes over; when it wakes up it writes nothing and stands by.
    let mut fourth = Operator::start(&cp, &kubeconfig, "op-d", &args);
    wait_for("op-d stands by", Duration::from_secs(20), || {
        fourth.log().contains("standing by")
    });
    let paused = Pid::from_raw(i32::try_from(third.child.id()).expect("pid"));
    kill(paused, Signal::SIGSTOP).expect("SIGSTOP");
    let stopped_at = Instant::now();
    wait_for(
        "op-d takes over from the paused leader",
        LEASE + Duration::from_secs(5),
        || holder(&cp) == "op-d",
    );
    eprintln!("takeover from a paused leader: {:?}", stopped_at.elapsed());
    std::thread::sleep(Duration::from_millis(500));
    // What the server holds while the old leader is still paused: a write
    // it sent before the pause (in its term) is in here even if its log
    // line only prints after the wake-up, when the response is read.
    let ids_at_wake = identities(&cp);
    let cidrs_at_wake: BTreeSet<String> = node_cidrs(&cp).into_values().collect();
    let before_wake = third.log().len();
    kill(paused, Signal::SIGCONT).expect("SIGCONT");
    wait_for("the woken leader knows it lost", Duration::from_secs(10), || {
        third.log()[before_wake..].contains("lost the Lease")
    });
    std::thread::sleep(Duration::from_millis(500));
    let woken = third.log()[before_wake..].to_owned();
    let field = |line: &str, key: &str| -> String {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(key))
            .unwrap_or_else(|| panic!("no {key} in {line}"))
            .to_owned()
    };
    for line in woken.lines() {
        let past_term = if line.contains("identity allocated") {
            let id: u32 = field(line, "id=").parse().expect("id");
            !ids_at_wake.contains_key(&id)
        } else if line.contains("identity released") {
            let id: u32 = field(line, "id=").parse().expect("id");
            ids_at_wake.contains_key(&id)
        } else if line.contains("pod CIDR allocated") {
            !cidrs_at_wake.contains(&field(line, "cidr="))
        } else {
            line.contains("policy accepted") || line.contains("policy invalid")
        };
        assert!(
            !past_term,
            "a leader past its term wrote:\n{line}\n\nwoken log:\n{woken}"
        );
    }
    assert!(woken.contains("standing by"), "{woken}");
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let created = rt.block_on(churn).expect("churn");
    eprintln!(
        "{created} pods ({} label sets) created across three handovers",
        created.div_ceil(2)
    );

    // Every label set numbered once; no number for two; every Node a CIDR
    // of its own.
    wait_for(
        "every label set has exactly one identity",
        Duration::from_secs(20),
        || one_identity_per_label_set(&cp, "churn"),
    );
    assert!(
        twice.lock().unwrap().is_empty(),
        "numbers used twice: {:?}",
        twice.lock().unwrap()
    );
    let pool: ipnet::Ipv4Net = POOL.parse().unwrap();
    let mut cidrs = BTreeMap::new();
    wait_for("every Node has a pod CIDR", Duration::from_secs(20), || {
        cidrs = node_cidrs(&cp);
        cidrs.len() == 10 && cidrs.values().all(|c| !c.is_empty())
    });
    let unique: BTreeSet<&String> = cidrs.values().collect();
    assert_eq!(unique.len(), cidrs.len(), "a CIDR given twice: {cidrs:?}");
    for c in cidrs.values() {
        let c: ipnet::Ipv4Net = c.parse().expect("a CIDR");
        assert!(pool.contains(&c) && c.prefix_len() == 24, "{c} from {POOL}");
    }

    // The pool exhausted: the 17th Node waits, told why, until a Node is
    // deleted.
    for i in 10..17 {
        apply(&cp, &format!("apiVersion: v1\nkind: Node\nmetadata: {{name: n-{i}}}\n"));
    }
    wait_for("16 Nodes with CIDRs", Duration::from_secs(20), || {
        node_cidrs(&cp).values().filter(|c| !c.is_empty()).count() == 16
    });
    let waiting = node_cidrs(&cp)
        .into_iter()
        .find(|(_, c)| c.is_empty())
        .expect("one waits")
        .0;
    wait_for("an Event on the waiting Node", Duration::from_secs(10), || {
        let out = cp.kubectl_ok(&["get", "events.events.k8s.io", "-n", "default", "-o", "json"]);
        let list: serde_json::Value = serde_json::from_str(&out).expect("json");
        list["items"].as_array().expect("items").iter().any(|e| {
            e["reason"] == "CIDRNotAvailable" && e["regarding"]["name"] == waiting.as_str() && e["type"] == "Warning"
        })
    });
    assert!(fourth.log().contains("pod CIDR pool exhausted"));
    let freed = node_cidrs(&cp)["n-3"].clone();
    cp.kubectl_ok(&["delete", "node", "n-3"]);
    let took = wait_for("the waiting Node gets the freed CIDR", Duration::from_secs(10), || {
        node_cidrs(&cp).get(&waiting) == Some(&freed)
    });
    eprintln!("freed CIDR {freed} handed to {waiting} in {took:?}");

    // No operator runs while pods go: the next one to start releases
    // their identities, and keeps the others' numbers.
    let before = identities(&cp);
    for op in [&mut third, &mut fourth] {
        let status = op.signal(Signal::SIGTERM);
        assert!(status.success(), "{}: {status}", op.name);
    }
    let gone: Vec<String> = (0..4).map(|i| format!("app-{i}")).collect();
    for i in 0..8 {
        cp.kubectl_ok(&["delete", "pod", "-n", "churn", &format!("p-{i}"), "--wait=false"]);
    }
    wait_for("the pods are gone", Duration::from_secs(20), || {
        label_sets(&cp, "churn")
            .iter()
            .all(|k| !gone.contains(&k.labels["app"]))
    });
    assert_eq!(identities(&cp), before, "nothing changes while no operator runs");
    let _fifth = Operator::start(&cp, &kubeconfig, "op-e", &args);
    let took = wait_for("their identities are released", Duration::from_secs(20), || {
        one_identity_per_label_set(&cp, "churn")
    });
    eprintln!("identities of pods deleted while no operator ran released {took:?} after a start");
    let after = identities(&cp);
    for (id, key) in &before {
        match gone.contains(&key.labels["app"]) {
            true => assert!(!after.contains_key(id), "{id} released"),
            false => assert_eq!(after.get(id), Some(key), "{id} kept its label set"),
        }
    }
    assert!(
        twice.lock().unwrap().is_empty(),
        "numbers used twice: {:?}",
        twice.lock().unwrap()
    );
}

#[test]
fn policy_status_says_whether_the_agents_accept_each_policy() {
    let Some(cp) = ControlPlane::start() else { return };
    let kubeconfig = install(&cp);
    let op = Operator::start(&cp, &kubeconfig, "op-0", &FAST_LEASE);
    apply(
        &cp,
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n---\napiVersion: weir.dev/v1alpha1\nkind: WeirNetworkPolicy\nmetadata: {name: web, namespace: shop}\nspec:\n  endpointSelector: {matchLabels: {app: web}}\n  ingress: [{from: [{entities: [cluster]}]}]\n---\napiVersion: weir.dev/v1alpha1\nkind: WeirNetworkPolicy\nmetadata: {name: typo, namespace: shop}\nspec:\n  endpointSelector: {matchExpressions: [{key: app, operator: In}]}\n  ingress: [{}]\n---\napiVersion: weir.dev/v1alpha1\nkind: WeirClusterNetworkPolicy\nmetadata: {name: no-world}\nspec:\n  namespaceSelector: {matchExpressions: [{key: team, operator: Sometimes}]}\n  egressDeny: [{to: [{entities: [world]}]}]\n",
    );
    // What `kubectl get` shows: NAME ACCEPTED REASON ENFORCEMENT AGE.
    let table = |args: &[&str]| -> BTreeMap<String, Vec<String>> {
        let out = cp.kubectl_ok(args);
        let mut lines = out.lines();
        let header: Vec<&str> = lines.next().unwrap_or_default().split_whitespace().collect();
        assert_eq!(header, ["NAME", "ACCEPTED", "REASON", "ENFORCEMENT", "AGE"], "{out}");
        lines
            .map(|l| l.split_whitespace().map(String::from).collect::<Vec<_>>())
            .map(|cols| (cols[0].clone(), cols[1..].to_vec()))
            .collect()
    };
    let took = wait_for("both namespaced policies judged", Duration::from_secs(30), || {
        let t = table(&["get", "weirnetworkpolicies", "-n", "shop"]);
        t.get("web").is_some_and(|c| c[0] == "True") && t.get("typo").is_some_and(|c| c[0] == "False")
    });
    eprintln!("policy status written {took:?} after apply");
    let t = table(&["get", "weirnetworkpolicies", "-n", "shop"]);
    assert_eq!(t["web"][..3], ["True", "Valid", "enforce"]);
    assert_eq!(t["typo"][..3], ["False", "Invalid", "enforce"]);
    let jsonpath = |kind: &str, name: &str, path: &str| {
        let mut args = vec!["get", kind, name, "-o"];
        let path = format!("jsonpath={path}");
        args.push(&path);
        if kind == "wnp" {
            args.extend(["-n", "shop"]);
        }
        cp.kubectl_ok(&args)
    };
    let accepted = r#"{.status.conditions[?(@.type=="Accepted")]"#;
    let message = jsonpath("wnp", "typo", &format!("{accepted}.message}}"));
    assert!(
        message.contains("endpointSelector") && message.contains("needs values"),
        "the agents' reason: {message}"
    );
    assert_eq!(jsonpath("wnp", "typo", "{.status.observedGeneration}"), "1");
    assert_eq!(
        jsonpath(
            "wnp",
            "web",
            r#"{.metadata.managedFields[?(@.subresource=="status")].manager}"#
        ),
        "weir-operator",
        "one field manager, server-side apply"
    );
    wait_for("the cluster-wide policy judged", Duration::from_secs(10), || {
        table(&["get", "weirclusternetworkpolicies"])
            .get("no-world")
            .is_some_and(|c| c[..2] == ["False", "Invalid"])
    });
    let message = jsonpath("wcnp", "no-world", &format!("{accepted}.message}}"));
    assert!(message.contains("unknown operator"), "{message}");

    // Fixed: a new generation, judged again.
    apply(
        &cp,
        "apiVersion: weir.dev/v1alpha1\nkind: WeirNetworkPolicy\nmetadata: {name: typo, namespace: shop}\nspec:\n  endpointSelector: {matchExpressions: [{key: app, operator: In, values: [db]}]}\n  ingress: [{}]\n",
    );
    wait_for("the fixed policy accepted", Duration::from_secs(10), || {
        table(&["get", "wnp", "-n", "shop"])
            .get("typo")
            .is_some_and(|c| c[..2] == ["True", "Valid"])
    });
    assert_eq!(jsonpath("wnp", "typo", "{.status.observedGeneration}"), "2");
    assert_eq!(
        jsonpath("wnp", "typo", &format!("{accepted}.observedGeneration}}")),
        "2"
    );
    assert!(op.log().contains("policy invalid"), "{}", op.log());

    // Upstream's ClusterNetworkPolicy, its CRD installed after the
    // operator started (as a cluster admin would): found, and judged.
    let Some(crd) = weir_test_support::tools_file("policy-api/crd.yaml") else {
        return;
    };
    apply(&cp, &std::fs::read_to_string(crd).expect("the upstream CRD"));
    cp.kubectl_ok(&[
        "wait",
        "--for=condition=Established",
        "crd/clusternetworkpolicies.policy.networking.k8s.io",
        "--timeout=30s",
    ]);
    apply(
        &cp,
        "apiVersion: policy.networking.k8s.io/v1beta1\nkind: ClusterNetworkPolicy\nmetadata: {name: guard}\nspec:\n  tier: Admin\n  priority: 5\n  subject: {namespaces: {matchLabels: {team: shop}}}\n  ingress: [{action: Deny, from: [{namespaces: {matchLabels: {trust: none}}}]}]\n---\napiVersion: policy.networking.k8s.io/v1beta1\nkind: ClusterNetworkPolicy\nmetadata: {name: typo}\nspec:\n  tier: Baseline\n  priority: 5\n  subject: {namespaces: {matchExpressions: [{key: team, operator: Sometimes}]}}\n  ingress: [{action: Deny, from: [{namespaces: {}}]}]\n",
    );
    let condition = |name: &str, field: &str| {
        cp.kubectl_ok(&[
            "get",
            "clusternetworkpolicy",
            name,
            "-o",
            &format!("jsonpath={accepted}.{field}}}"),
        ])
    };
    let took = wait_for("both ClusterNetworkPolicies judged", Duration::from_secs(40), || {
        condition("guard", "status") == "True" && condition("typo", "status") == "False"
    });
    eprintln!("ClusterNetworkPolicy status written {took:?} after its CRD");
    assert_eq!(condition("guard", "reason"), "Valid");
    assert!(
        condition("typo", "message").contains("unknown operator"),
        "{}",
        condition("typo", "message")
    );
    assert_eq!(condition("typo", "observedGeneration"), "1");
}

#[test]
fn a_service_claiming_another_services_address_is_told_why() {
    let Some(cp) = ControlPlane::start() else { return };
    let kubeconfig = install(&cp);
    let op = Operator::start(&cp, &kubeconfig, "op-0", &FAST_LEASE);
    apply(
        &cp,
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: tenant}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}\nspec: {ports: [{port: 80}], externalIPs: [192.0.2.10]}\n",
    );
    let web_ip = cp.kubectl_ok(&[
        "get",
        "service",
        "-n",
        "shop",
        "web",
        "-o",
        "jsonpath={.spec.clusterIP}",
    ]);
    // Later, from another namespace: web's ClusterIP and its external IP.
    apply(
        &cp,
        &format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: evil, namespace: tenant}}\nspec: {{ports: [{{port: 80}}], externalIPs: [{web_ip}, 192.0.2.10, 192.0.2.99]}}\n"
        ),
    );
    let refused = |ns: &str| -> Vec<(String, String)> {
        let out = cp.kubectl_ok(&["get", "events.events.k8s.io", "-n", ns, "-o", "json"]);
        let list: serde_json::Value = serde_json::from_str(&out).expect("json");
        list["items"]
            .as_array()
            .expect("items")
            .iter()
            .filter(|e| e["reason"] == "ExternalFrontendRefused" && e["type"] == "Warning")
            .map(|e| {
                (
                    e["regarding"]["name"].as_str().unwrap_or_default().to_owned(),
                    e["note"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect()
    };
    let took = wait_for("two Events on evil", Duration::from_secs(30), || {
        refused("tenant").len() == 2
    });
    eprintln!("refusals reported {took:?} after apply");
    let mut notes: Vec<String> = refused("tenant")
        .into_iter()
        .map(|(svc, note)| {
            assert_eq!(svc, "evil");
            note
        })
        .collect();
    notes.sort();
    assert_eq!(
        notes,
        [
            format!("external frontend {web_ip}:80/TCP not served: it is the ClusterIP of Service shop/web"),
            "external frontend 192.0.2.10:80/TCP not served: it is held by the older Service shop/web".to_string(),
        ]
    );
    assert!(refused("shop").is_empty(), "web keeps its address and hears nothing");
    drop(op);
}

#[test]
fn bad_flags_exit_64_before_any_request() {
    let out = Command::new(env!("CARGO_BIN_EXE_weir-operator"))
        .args([
            "--kubeconfig=/nonexistent",
            "--leader-elect-renew-deadline=20s",
            "--cluster-cidr=10.244.1.0/16",
        ])
        .output()
        .expect("weir-operator");
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--leader-elect-renew-deadline") && err.contains("host bits"),
        "every error at once: {err}"
    );
}

/// The Secret `name` in kube-system, its data as text, when it exists.
fn secret_data(cp: &ControlPlane, name: &str) -> Option<BTreeMap<String, String>> {
    let out = cp.kubectl(&["get", "secret", "-n", "kube-system", name, "-o", "json"]);
    if !out.status.success() {
        return None;
    }
    let secret: k8s_openapi::api::core::v1::Secret = serde_json::from_slice(&out.stdout).expect("Secret JSON");
    Some(
        secret
            .data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, String::from_utf8(v.0).expect("PEM")))
            .collect(),
    )
}

/// `openssl` on PEM files written to a directory of their own under the
/// control plane's (whose `ca.crt` is kubectl's).
fn openssl(cp: &ControlPlane, args: &[&str], files: &[(&str, &str)]) -> String {
    let mut all: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    let dir = cp.path().join("observer-pem");
    std::fs::create_dir_all(&dir).expect("PEM dir");
    for (name, pem) in files {
        let path = dir.join(name);
        std::fs::write(&path, pem).expect("PEM file");
        all = all
            .into_iter()
            .map(|a| a.replace(&format!("{{{name}}}"), &path.to_string_lossy()))
            .collect();
    }
    let out = Command::new("openssl").args(&all).output().expect("openssl");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "openssl {all:?}: {text}");
    text
}

#[test]
fn observer_certificates_are_issued_renewed_and_follow_a_new_ca() {
    let Some(cp) = ControlPlane::start() else { return };
    let kubeconfig = install(&cp);
    let mut args: Vec<&str> = FAST_LEASE.to_vec();
    args.extend(["--hubble-certs=true", "--hubble-cert-validity", "15s"]);
    let op = Operator::start(&cp, &kubeconfig, "op-0", &args);
    let secrets = [
        "weir-hubble-ca",
        "weir-hubble-server-certs",
        "weir-hubble-relay-client-certs",
        "weir-relay-server-certs",
    ];
    let took = wait_for("the four Secrets", Duration::from_secs(30), || {
        secrets.iter().all(|s| secret_data(&cp, s).is_some())
    });
    eprintln!("certificates issued {took:?} after the operator started");
    let ca = secret_data(&cp, "weir-hubble-ca").expect("CA")["ca.crt"].clone();
    // Each leaf: signed by the CA stored beside it, for what it is for.
    for (name, want) in [
        ("weir-hubble-server-certs", "DNS:*.weir-agent.weir.dev"),
        ("weir-hubble-relay-client-certs", "TLS Web Client Authentication"),
        ("weir-relay-server-certs", "DNS:relay.weir.dev"),
    ] {
        let data = secret_data(&cp, name).expect(name);
        assert_eq!(data["ca.crt"], ca, "{name} carries the CA");
        openssl(
            &cp,
            &["verify", "-CAfile", "{ca.crt}", "{leaf.crt}"],
            &[("ca.crt", &ca), ("leaf.crt", &data["tls.crt"])],
        );
        let text = openssl(
            &cp,
            &[
                "x509",
                "-noout",
                "-ext",
                "subjectAltName,extendedKeyUsage",
                "-in",
                "{leaf.crt}",
            ],
            &[("leaf.crt", &data["tls.crt"])],
        );
        assert!(text.contains(want), "{name}: {text}");
        openssl(
            &cp,
            &["pkey", "-noout", "-in", "{leaf.key}"],
            &[("leaf.key", &data["tls.key"])],
        );
    }

    // Renewed with a third of its life left: a new certificate from the
    // same CA while the old one is still valid.
    let first = secret_data(&cp, "weir-hubble-server-certs").expect("server")["tls.crt"].clone();
    let t0 = Instant::now();
    wait_for("the server certificate renewed", Duration::from_secs(20), || {
        secret_data(&cp, "weir-hubble-server-certs").expect("server")["tls.crt"] != first
    });
    eprintln!("renewed {:?} after it was first seen (valid 15s)", t0.elapsed());
    openssl(
        &cp,
        &["x509", "-noout", "-checkend", "0", "-in", "{old.crt}"],
        &[("old.crt", &first)],
    );
    let renewed = secret_data(&cp, "weir-hubble-server-certs").expect("server");
    assert_eq!(renewed["ca.crt"], ca, "same CA");

    // The CA gone: a new one, and every leaf follows it.
    cp.kubectl_ok(&["delete", "secret", "-n", "kube-system", "weir-hubble-ca"]);
    wait_for("a new CA, followed by every leaf", Duration::from_secs(20), || {
        let Some(new_ca) = secret_data(&cp, "weir-hubble-ca").map(|d| d["ca.crt"].clone()) else {
            return false;
        };
        new_ca != ca
            && secrets[1..]
                .iter()
                .all(|s| secret_data(&cp, s).is_some_and(|d| d["ca.crt"] == new_ca))
    });
    let log = op.log();
    assert!(log.contains("Observer CA issued"), "{log}");
    assert!(
        !log.contains("not written"),
        "every write allowed by install/rbac.yaml: {log}"
    );
}
