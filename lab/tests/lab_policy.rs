//! weir's network-policy conformance suite, on a real two-node lab.
//!
//! Three namespaces (x, y, z) of three pods each (a, b, c), spread over
//! both nodes; every pod serves TCP and UDP on ports 80 and 81 and SCTP on
//! 82 (crafted packets: this kernel has no SCTP sockets), and has a Service
//! of its own name. Each case applies policies and then every pod probes
//! every pod through that pod's Service IP on every port (`weir lab
//! matrix --via-service`: 405 probes at once), and the result is compared
//! with the case's truth table, written here independently of the policy
//! compiler. A failure says how many probes differ and which. A pod always
//! reaches itself (loopback, as the upstream Kubernetes suite assumes).
//!
//! Runs in both routing modes. Needs root.

mod support;

use std::collections::BTreeMap;

use serde_json::Value;
use support::{Lab, privileged, show};

const NAMESPACES: [&str; 3] = ["x", "y", "z"];
const PODS: [&str; 3] = ["a", "b", "c"];
const PORTS: [(u16, &str); 5] = [(80, "TCP"), (81, "TCP"), (80, "UDP"), (81, "UDP"), (82, "SCTP")];

/// A pod of the suite: namespace, name and the node it runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct P {
    ns: &'static str,
    name: &'static str,
}

impl P {
    fn node(self) -> &'static str {
        // x/a, y/b, z/c, x/c, y/a, z/b on a; the rest on b.
        let i = NAMESPACES.iter().position(|n| *n == self.ns).unwrap();
        let j = PODS.iter().position(|n| *n == self.name).unwrap();
        if (i + j) % 3 == 0 || (i + 2 * j) % 3 == 1 {
            "a"
        } else {
            "b"
        }
    }

    fn key(self) -> String {
        format!("{}/{}", self.ns, self.name)
    }
}

fn all_pods() -> Vec<P> {
    NAMESPACES
        .iter()
        .flat_map(|ns| PODS.iter().map(move |name| P { ns, name }))
        .collect()
}

/// A port probed: number and protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Port {
    port: u16,
    proto: &'static str,
}

/// Connectivity a case expects: `(source, destination, port) -> allowed`.
type Truth = Box<dyn Fn(P, P, Port) -> bool>;

fn namespace_manifest(ns: &str, label: &str) -> String {
    format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}, labels: {{ns: {label}}}}}\n---\n")
}

/// A pod of the suite, with `extra` labels (`k: v, ...`) besides its own.
fn pod_manifest(p: P, extra: &str) -> String {
    // The named port `web` is 80 on pods a and 81 on b and c: one rule,
    // different numbers per destination pod.
    let (web80, web81) = if p.name == "a" { ("web", "t81") } else { ("t80", "web") };
    let labels = if extra.is_empty() {
        format!("pod: {}", p.name)
    } else {
        format!("pod: {}, {extra}", p.name)
    };
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}, labels: {{{labels}}}}}\nspec:\n  nodeName: {node}\n  containers:\n  - name: serve\n    image: weir.lab/serve\n    ports:\n    - {{name: {web80}, containerPort: 80, protocol: TCP}}\n    - {{name: {web81}, containerPort: 81, protocol: TCP}}\n    - {{name: u80, containerPort: 80, protocol: UDP}}\n    - {{name: u81, containerPort: 81, protocol: UDP}}\n    - {{name: s82, containerPort: 82, protocol: SCTP}}\n---\n",
        name = p.name,
        ns = p.ns,
        node = p.node()
    )
}

fn setup_manifests() -> String {
    let mut out = String::new();
    for ns in NAMESPACES {
        out.push_str(&namespace_manifest(ns, ns));
    }
    for p in all_pods() {
        out.push_str(&pod_manifest(p, ""));
        out.push_str(&format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  selector: {{pod: {name}}}\n  ports:\n  - {{name: t80, port: 80, protocol: TCP}}\n  - {{name: t81, port: 81, protocol: TCP}}\n  - {{name: u80, port: 80, protocol: UDP}}\n  - {{name: u81, port: 81, protocol: UDP}}\n  - {{name: s82, port: 82, protocol: SCTP}}\n---\n",
            name = p.name,
            ns = p.ns
        ));
    }
    out
}

struct Suite {
    lab: Lab,
    routing: &'static str,
    control_plane: String,
    /// Cases run, and the probes that differed (case, detail).
    failures: Vec<(String, Vec<String>)>,
    cases: usize,
}

impl Suite {
    fn new(routing: &'static str, control_plane: &str) -> Suite {
        let lab = Lab::new(&format!("pol{}{}", &routing[..1], &control_plane[..1]));
        let topo = lab.file(
            "topo.yaml",
            &format!(
                "name: {}\nclusterCIDR: 10.246.0.0/16\nnodeCIDR: 172.31.246.0/24\nrouting: {routing}\ncontrolPlane: {control_plane}\nnodes:\n  - {{name: a, podCIDR: 10.246.1.0/24}}\n  - {{name: b, podCIDR: 10.246.2.0/24}}\n",
                lab.name
            ),
        );
        lab.ok(&["up", &topo]);
        lab.ok(&["apply", &lab.file("setup.yaml", &setup_manifests())]);
        Suite {
            lab,
            routing,
            control_plane: control_plane.to_owned(),
            failures: Vec::new(),
            cases: 0,
        }
    }

    fn apply(&self, yaml: &str) {
        self.lab.ok(&["apply", &self.lab.file("case.yaml", yaml)]);
    }

    fn delete(&self, yaml: &str) {
        self.lab.ok(&["delete", &self.lab.file("case.yaml", yaml)]);
    }

    /// The dropped flows, asked for until one matches `want` (5 s at most:
    /// flows reach the relay within a second or so).
    fn drops_until(&self, want: impl Fn(&Value) -> bool) -> Vec<Value> {
        let mut dropped = Vec::new();
        for _ in 0..20 {
            dropped = self.observe(
                &weir_test_support::bin("weir"),
                &["--verdict", "DROPPED", "--last", "5000"],
            );
            if dropped.iter().any(&want) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(250));
        }
        dropped
    }

    /// Every probe, by (from, to, port, proto).
    fn matrix(&self, timeout: &str) -> BTreeMap<(String, String, u16, String), (bool, String)> {
        let mut args = vec!["matrix", "--via-service", "--timeout", timeout];
        for ns in NAMESPACES {
            args.extend(["-n", ns]);
        }
        let ports: Vec<String> = PORTS.iter().map(|(n, p)| format!("{n}/{p}")).collect();
        for p in &ports {
            args.extend(["--port", p.as_str()]);
        }
        let v = self.lab.json(&args);
        v.as_array()
            .expect("matrix JSON is a list")
            .iter()
            .map(|c: &Value| {
                (
                    (
                        c["from"].as_str().unwrap().to_owned(),
                        c["to"].as_str().unwrap().to_owned(),
                        c["port"].as_u64().unwrap() as u16,
                        c["proto"].as_str().unwrap().to_owned(),
                    ),
                    (c["ok"].as_bool().unwrap(), c["outcome"].as_str().unwrap().to_owned()),
                )
            })
            .collect()
    }

    /// Probes everything and compares with `truth`. A probe expected to
    /// connect that did not is tried once more on its own with a longer
    /// wait (a loaded machine is slow, never permissive); one expected
    /// blocked that connected is a failure at once.
    fn check(&mut self, case: &str, truth: Truth) {
        self.cases += 1;
        let got = self.matrix("1.5");
        let pods = all_pods();
        let mut diffs = Vec::new();
        assert_eq!(
            got.len(),
            pods.len() * pods.len() * PORTS.len(),
            "{case}: every probe ran"
        );
        for s in &pods {
            for d in &pods {
                for (port, proto) in PORTS {
                    let pp = Port { port, proto };
                    let want = s == d || truth(*s, *d, pp);
                    let (ok, outcome) = &got[&(s.key(), d.key(), port, proto.to_owned())];
                    let mut ok = *ok;
                    let mut outcome = outcome.clone();
                    if want && !ok {
                        let svc = self.service_ip(*d);
                        let out = self.lab.cmd(&[
                            "probe",
                            &s.key(),
                            &format!("{svc}:{port}/{}", proto.to_ascii_lowercase()),
                            "--timeout",
                            "4",
                        ]);
                        ok = out.status.success();
                        outcome = String::from_utf8_lossy(&out.stdout).trim().to_owned();
                    }
                    if ok != want {
                        diffs.push(format!(
                            "{} -> {} {port}/{proto}: expected {}, got {outcome}",
                            s.key(),
                            d.key(),
                            if want { "allowed" } else { "blocked" }
                        ));
                    }
                }
            }
        }
        eprintln!(
            "[{}] {case}: {} of {} probes differ",
            self.routing,
            diffs.len(),
            got.len()
        );
        if !diffs.is_empty() {
            self.failures.push((case.to_owned(), diffs));
        }
    }

    /// `weir observe` (or the stock `hubble`) against the lab's relay.
    fn observe(&self, program: &std::path::Path, args: &[&str]) -> Vec<Value> {
        let server = format!("unix://{}", self.lab.dir.join("run/relay.sock").display());
        let mut all = vec!["observe", "--server", &server, "-o", "json"];
        all.extend(args);
        let out = std::process::Command::new(program)
            .args(&all)
            .output()
            .expect("running observe");
        assert!(out.status.success(), "{} {all:?}: {}", program.display(), show(&out));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    fn service_ip(&self, p: P) -> String {
        let v: Value = serde_json::from_str(&self.lab.ok(&["get", "service", &p.key(), "-o", "json"])).unwrap();
        v["spec"]["clusterIP"].as_str().unwrap().to_owned()
    }

    fn finish(self) {
        let total: usize = self.failures.iter().map(|(_, d)| d.len()).sum();
        let mut report = String::new();
        for (case, diffs) in &self.failures {
            report.push_str(&format!("\n{case}: {} probes differ\n", diffs.len()));
            for d in diffs.iter().take(20) {
                report.push_str(&format!("  {d}\n"));
            }
        }
        if total > 0 {
            panic!(
                "[{}] {total} probes differ in {} of {} cases:{report}\n{}",
                self.routing,
                self.failures.len(),
                self.cases,
                self.lab.logs()
            );
        }
    }
}

fn np(name: &str, ns: &str, spec: &str) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n{spec}\n---\n"
    )
}

fn wnp(name: &str, ns: &str, spec: &str) -> String {
    format!(
        "apiVersion: weir.dev/v1alpha1\nkind: WeirNetworkPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n{spec}\n---\n"
    )
}

fn wcnp(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: weir.dev/v1alpha1\nkind: WeirClusterNetworkPolicy\nmetadata: {{name: {name}}}\nspec:\n{spec}\n---\n"
    )
}

/// A `policy.networking.k8s.io` ClusterNetworkPolicy.
fn cnp(name: &str, tier: &str, priority: u32, spec: &str) -> String {
    format!(
        "apiVersion: policy.networking.k8s.io/v1beta1\nkind: ClusterNetworkPolicy\nmetadata: {{name: {name}}}\nspec:\n  tier: {tier}\n  priority: {priority}\n{spec}\n---\n"
    )
}

const ALL: fn(P, P, Port) -> bool = |_, _, _| true;

fn tcp(p: Port) -> bool {
    p.proto == "TCP"
}

/// The cases of Kubernetes NetworkPolicy.
fn networkpolicy_cases(s: &mut Suite) {
    s.check("no policy: everything connects", Box::new(ALL));

    let deny_x = np("deny-all", "x", "  podSelector: {}\n  policyTypes: [Ingress]");
    s.apply(&deny_x);
    s.check(
        "ingress: [] in x isolates every pod of x",
        Box::new(|_, d, _| d.ns != "x"),
    );
    s.delete(&deny_x);
    s.check("deleting it restores access", Box::new(ALL));

    let same_ns = np(
        "same-ns",
        "x",
        "  podSelector: {}\n  ingress: [{from: [{podSelector: {}}]}]",
    );
    s.apply(&same_ns);
    s.check(
        "an empty podSelector peer: the policy's own namespace",
        Box::new(|a, d, _| d.ns != "x" || a.ns == "x"),
    );
    s.delete(&same_ns);

    let and = np(
        "and",
        "x",
        "  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}, podSelector: {matchLabels: {pod: b}}}]}]",
    );
    s.apply(&and);
    s.check(
        "namespaceSelector and podSelector in one peer: AND",
        Box::new(|a, d, _| d.key() != "x/a" || a.key() == "y/b"),
    );
    s.delete(&and);

    let or = np(
        "or",
        "x",
        "  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}, {podSelector: {matchLabels: {pod: b}}}]}]",
    );
    s.apply(&or);
    s.check(
        "two peers: OR",
        Box::new(|a, d, _| d.key() != "x/a" || a.ns == "y" || a.key() == "x/b"),
    );
    s.delete(&or);

    let exprs = np(
        "exprs",
        "y",
        "  podSelector: {matchExpressions: [{key: pod, operator: NotIn, values: [c]}]}\n  ingress: [{from: [{namespaceSelector: {matchExpressions: [{key: ns, operator: In, values: [x, z]}]}, podSelector: {matchExpressions: [{key: pod, operator: Exists}, {key: team, operator: DoesNotExist}]}}]}]",
    );
    s.apply(&exprs);
    s.check(
        "matchExpressions In, NotIn, Exists, DoesNotExist",
        Box::new(|a, d, _| d.ns != "y" || d.name == "c" || a.ns == "x" || a.ns == "z"),
    );
    s.delete(&exprs);

    let ports = np(
        "ports",
        "z",
        "  podSelector: {}\n  ingress: [{ports: [{port: 80}, {port: 81, protocol: UDP}]}]",
    );
    s.apply(&ports);
    s.check(
        "ports by number, TCP by default, UDP when said",
        Box::new(|_, d, p| d.ns != "z" || (p.port == 80 && tcp(p)) || (p.port == 81 && p.proto == "UDP")),
    );
    s.delete(&ports);

    let range = np(
        "range",
        "z",
        "  podSelector: {}\n  ingress: [{ports: [{port: 80, endPort: 81, protocol: UDP}, {port: 82, protocol: SCTP}]}]",
    );
    s.apply(&range);
    s.check(
        "endPort ranges; SCTP",
        Box::new(|_, d, p| d.ns != "z" || p.proto != "TCP"),
    );
    s.delete(&range);

    let named = np("named", "x", "  podSelector: {}\n  ingress: [{ports: [{port: web}]}]");
    s.apply(&named);
    s.check(
        "a named port means each destination pod's number (a: 80, b and c: 81)",
        Box::new(|_, d, p| d.ns != "x" || (tcp(p) && p.port == if d.name == "a" { 80 } else { 81 })),
    );
    s.delete(&named);

    let cidr = np(
        "cidr",
        "y",
        "  podSelector: {}\n  ingress: [{from: [{ipBlock: {cidr: 10.246.1.0/24, except: [POD_XA/32]}}]}]",
    );
    let xa_ip = s.lab.pod_ip("x/a");
    s.apply(&cidr.replace("POD_XA", &xa_ip));
    s.check(
        "ipBlock matches pod addresses (node a's pods), except one",
        Box::new(|a, d, _| d.ns != "y" || (a.node() == "a" && a.key() != "x/a")),
    );
    s.delete(&cidr.replace("POD_XA", &xa_ip));

    let egress = np("egress-deny", "x", "  podSelector: {}\n  policyTypes: [Egress]");
    s.apply(&egress);
    s.check("egress isolation: x reaches nothing", Box::new(|a, _, _| a.ns != "x"));
    s.delete(&egress);

    let both = np(
        "both",
        "x",
        "  podSelector: {matchLabels: {pod: b}}\n  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: z}}}]}]\n  egress: [{to: [{namespaceSelector: {matchLabels: {ns: y}}}]}]",
    );
    s.apply(&both);
    s.check(
        "policyTypes omitted with egress rules: both directions, independently",
        Box::new(|a, d, _| (d.key() != "x/b" || a.ns == "z") && (a.key() != "x/b" || d.ns == "y")),
    );
    s.delete(&both);

    let add = np(
        "one",
        "z",
        "  podSelector: {}\n  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: x}}}]}]",
    ) + &np("two", "z", "  podSelector: {matchLabels: {pod: a}}\n  ingress: [{}]");
    s.apply(&add);
    s.check(
        "policies add up; ingress: [{}] allows all",
        Box::new(|a, d, _| d.ns != "z" || a.ns == "x" || d.name == "a"),
    );
    s.delete(&add);

    // Updates in several steps.
    let v1 = np(
        "steps",
        "y",
        "  podSelector: {}\n  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: x}}}]}]",
    );
    s.apply(&v1);
    s.check("steps 1: y from x", Box::new(|a, d, _| d.ns != "y" || a.ns == "x"));
    let v2 = np(
        "steps",
        "y",
        "  podSelector: {}\n  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: z}}}, {podSelector: {matchLabels: {role: friend}}}]}]",
    );
    s.apply(&v2);
    s.check(
        "steps 2: policy edited, y from z",
        Box::new(|a, d, _| d.ns != "y" || a.ns == "z"),
    );
    let ya = P { ns: "y", name: "a" };
    s.apply(&pod_manifest(ya, "role: friend"));
    s.check(
        "steps 3: a pod relabelled into the policy",
        Box::new(|a, d, _| d.ns != "y" || a.ns == "z" || a.key() == "y/a"),
    );
    s.apply(&namespace_manifest("z", "w"));
    s.check(
        "steps 4: a namespace relabelled out of it",
        Box::new(|a, d, _| d.ns != "y" || a.key() == "y/a"),
    );
    s.apply(&namespace_manifest("z", "z"));
    s.apply(&pod_manifest(ya, ""));
    s.delete(&v2);
    s.check("steps 5: policy deleted, labels back", Box::new(ALL));
}

/// weir's own kinds: deny, audit, entities, cluster-wide, cross-namespace.
fn crd_cases(s: &mut Suite) {
    let deny = wnp(
        "allow-all-but-y",
        "x",
        "  endpointSelector: {}\n  ingress: [{from: [{entities: [cluster]}]}]\n  ingressDeny: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}], ports: [{port: 80}]}]",
    );
    s.apply(&deny);
    s.check(
        "deny beats allow (port 80 of every protocol from y)",
        Box::new(|a, d, p| d.ns != "x" || a.ns != "y" || p.port != 80),
    );
    s.delete(&deny);

    let world = wnp(
        "world-only",
        "z",
        "  endpointSelector: {}\n  ingress: [{from: [{entities: [world]}]}]",
    );
    s.apply(&world);
    s.check("entity world: no pod is world", Box::new(|_, d, _| d.ns != "z"));
    s.delete(&world);

    let cross = wnp(
        "cross",
        "y",
        "  endpointSelector: {matchLabels: {pod: c}}\n  ingress: [{from: [{podSelector: {matchLabels: {pod: a}}, namespaceSelector: {}}]}]",
    );
    s.apply(&cross);
    s.check(
        "peers across namespaces: pod a of any namespace",
        Box::new(|a, d, _| d.key() != "y/c" || a.name == "a"),
    );
    s.delete(&cross);

    let cluster = wcnp(
        "no-z-to-b",
        "  endpointSelector: {matchLabels: {pod: b}}\n  ingressDeny: [{from: [{namespaceSelector: {matchLabels: {ns: z}}}]}]",
    );
    s.apply(&cluster);
    s.check(
        "cluster-wide: pod b of every namespace refuses z, deny-only isolates nothing else",
        Box::new(|a, d, _| d.name != "b" || a.ns != "z"),
    );
    s.delete(&cluster);

    let audit = wnp(
        "stage",
        "y",
        "  endpointSelector: {}\n  enforcement: audit\n  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}]}]",
    );
    s.apply(&audit);
    s.check("audit never drops", Box::new(ALL));
    // ...and says what it would have denied, naming itself.
    let audits = s.observe(
        &weir_test_support::bin("weir"),
        &["--verdict", "AUDIT", "--last", "5000"],
    );
    let text = format!("{audits:#?}");
    assert!(
        audits.iter().any(|f| f["destination"]["namespace"] == "y"
            && f["source"]["namespace"] == "x"
            && f["policy"]
                .as_str()
                .is_some_and(|p| p.contains("WeirNetworkPolicy y/stage"))),
        "AUDIT flows from x into y naming the policy: {text}"
    );
    assert!(
        !audits
            .iter()
            .any(|f| f["source"]["namespace"] == "y" && f["destination"]["namespace"] == "y"),
        "y to y is allowed by the audit policy: no AUDIT for it"
    );
    s.delete(&audit);

    // A policy that cannot be used: its pods deny, every other policy works.
    let bad_np = np(
        "bad",
        "z",
        "  podSelector: {}\n  ingress: [{from: [{ipBlock: {cidr: 10.246.0.0/33}}]}]",
    );
    let bad = if s.control_plane == "kubernetes" {
        // The API server validates NetworkPolicy itself; weir's own kind,
        // whose schema says only "a string", reaches the agents.
        let out = s.lab.cmd(&["apply", &s.lab.file("case.yaml", &bad_np)]);
        assert!(
            !out.status.success() && show(&out).contains("must be a valid CIDR"),
            "the API server refuses the bad NetworkPolicy: {}",
            show(&out)
        );
        wnp(
            "bad",
            "z",
            "  endpointSelector: {}\n  ingress: [{from: [{cidr: 10.246.0.0/33}]}]",
        )
    } else {
        bad_np
    } + &np(
        "good",
        "x",
        "  podSelector: {}\n  ingress: [{from: [{podSelector: {}}]}]",
    );
    s.apply(&bad);
    s.check(
        "an invalid policy denies what it selects; the others keep working",
        Box::new(|a, d, _| d.ns != "z" && (d.ns != "x" || a.ns == "x")),
    );
    let logs = s.lab.logs();
    assert!(
        logs.contains("policy rejected") && logs.contains("10.246.0.0/33"),
        "the agents say why: {logs}"
    );
    s.delete(&bad);
}

/// ClusterNetworkPolicy (network-policy-api's tiers): Admin rules before
/// NetworkPolicy, the first matching rule by priority deciding, Pass
/// handing over; Baseline only where no NetworkPolicy isolates; egress to
/// networks and port ranges.
fn cluster_network_policy_cases(s: &mut Suite) {
    // Priority 1 passes y's traffic to x on; priority 10 denies everything
    // else to x; x's NetworkPolicy then allows y on TCP 80 only.
    let pass = cnp(
        "x-pass-y",
        "Admin",
        1,
        "  subject: {namespaces: {matchLabels: {ns: x}}}\n  ingress: [{name: hand-y-over, action: Pass, from: [{namespaces: {matchLabels: {ns: y}}}]}]",
    );
    let deny = cnp(
        "x-deny-all",
        "Admin",
        10,
        "  subject: {namespaces: {matchLabels: {ns: x}}}\n  ingress: [{name: everyone, action: Deny, from: [{namespaces: {}}]}]",
    );
    let allow_y = np(
        "allow-y-80",
        "x",
        "  podSelector: {}\n  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}], ports: [{port: 80}]}]",
    );
    let both = format!("{pass}{deny}{allow_y}");
    s.apply(&both);
    s.check(
        "Admin: Pass by priority 1, then NetworkPolicy; Deny by priority 10 for the rest",
        Box::new(|a, d, p| d.ns != "x" || (a.ns == "y" && p.port == 80 && tcp(p))),
    );
    // The same deny at priority 0 comes before the pass.
    let first = cnp(
        "x-deny-all",
        "Admin",
        0,
        "  subject: {namespaces: {matchLabels: {ns: x}}}\n  ingress: [{name: everyone, action: Deny, from: [{namespaces: {}}]}]",
    );
    s.apply(&first);
    s.check(
        "Admin: a lower priority number is judged first",
        Box::new(|_, d, _| d.ns != "x"),
    );
    s.delete(&both);

    // Baseline denies z everywhere, but y's NetworkPolicy (allowing every
    // namespace) decides for y.
    let baseline = cnp(
        "no-z",
        "Baseline",
        5,
        "  subject: {namespaces: {}}\n  ingress: [{action: Deny, from: [{namespaces: {matchLabels: {ns: z}}}]}]",
    );
    let open_y = np(
        "open-y",
        "y",
        "  podSelector: {}\n  ingress: [{from: [{namespaceSelector: {}}]}]",
    );
    let both = format!("{baseline}{open_y}");
    s.apply(&both);
    s.check(
        "Baseline: only where no NetworkPolicy isolates",
        Box::new(|a, d, _| d.ns == "y" || a.ns != "z"),
    );
    s.delete(&both);

    // Egress: x may not reach y/a's address; y's pods may not send UDP
    // 80-81 to z (ranges); an IPv6 network names nothing here.
    let ya = s.lab.pod_ip("y/a");
    let egress = cnp(
        "egress",
        "Admin",
        20,
        &format!(
            "  subject: {{namespaces: {{matchLabels: {{ns: x}}}}}}\n  egress: [{{action: Deny, to: [{{networks: [{ya}/32, \"fd00::/64\"]}}]}}]"
        ),
    );
    let udp = cnp(
        "y-no-udp-to-z",
        "Admin",
        21,
        "  subject: {pods: {namespaceSelector: {matchLabels: {ns: y}}, podSelector: {}}}\n  egress: [{action: Deny, to: [{namespaces: {matchLabels: {ns: z}}}], protocols: [{udp: {destinationPort: {range: {start: 80, end: 81}}}}]}]",
    );
    let both = format!("{egress}{udp}");
    s.apply(&both);
    s.check(
        "Admin egress: networks, pods subject, UDP port range",
        Box::new(|a, d, p| {
            let x_to_ya = a.ns == "x" && d.key() == "y/a";
            let y_udp_to_z = a.ns == "y" && d.ns == "z" && p.proto == "UDP";
            !x_to_ya && !y_udp_to_z
        }),
    );
    s.delete(&both);
}

/// The node reaches its own pods whatever isolates them (Kubernetes
/// requires it for probes); a NodePort client is judged as reaching the
/// backend pod, by its own address.
fn node_and_nodeport_cases(s: &mut Suite) {
    let xa = P { ns: "x", name: "a" };
    let ip = s.lab.pod_ip("x/a");
    let nodeport = "apiVersion: v1\nkind: Service\nmetadata: {name: np, namespace: x}\nspec:\n  type: NodePort\n  selector: {pod: a}\n  ports: [{port: 80, nodePort: 30080, protocol: TCP}]\n---\n";
    s.apply(nodeport);
    let deny = np("deny-all", "x", "  podSelector: {}\n  policyTypes: [Ingress]");
    s.apply(&deny);
    let node_ns = format!("{}-{}", s.lab.name, xa.node());
    let from_node = |s: &Suite| {
        std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                &node_ns,
                "timeout",
                "3",
                "bash",
                "-c",
                &format!("exec 3<>/dev/tcp/{ip}/80"),
            ])
            .status()
            .expect("ip netns exec")
            .success()
            && !s.lab.name.is_empty()
    };
    assert!(from_node(s), "[{}] the node reaches its isolated pod", s.routing);
    let target = format!("{}:30080/tcp", xa.node());
    assert!(
        s.lab.external(&target).is_err(),
        "[{}] an outside client is denied",
        s.routing
    );
    let allow = np(
        "from-outside",
        "x",
        "  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: [{ipBlock: {cidr: 172.31.246.0/24}}], ports: [{port: 80}]}]",
    );
    s.apply(&allow);
    assert_eq!(
        s.lab.external(&target).as_deref(),
        Ok("a"),
        "[{}] allowed by an ipBlock of the client's address, through the NodePort",
        s.routing
    );
    s.delete(&(allow + &deny));
    s.delete(nodeport);
}

/// VXLAN: a packet encapsulated by the external host (no node), claiming
/// to come from a pod on node b, is dropped by node a's tunnel device
/// before it reaches a pod, and named so in flows. Without the check the
/// inner source alone gave it b's pod identity.
fn forged_tunnel_case(s: &mut Suite) {
    let target: std::net::Ipv4Addr = s.lab.pod_ip("x/a").parse().unwrap();
    let claimed: std::net::Ipv4Addr = s.lab.pod_ip("x/b").parse().unwrap();
    let inner = weir_test_support::packet::Flow {
        src: claimed,
        sport: 47_474,
        dst: target,
        dport: 80,
        proto: weir_test_support::packet::TCP,
    }
    .packet(0x02);
    // VXLAN header: flags (VNI valid), VNI 0 (the device is in external
    // mode and takes any), then the inner Ethernet frame.
    let mut datagram = vec![0x08, 0, 0, 0, 0, 0, 0, 0];
    datagram.extend_from_slice(&inner);
    let node_a = "172.31.246.11:8472";
    let ns = format!("/var/run/netns/{}-external", s.lab.name);
    weir_test_support::netns::in_netns(ns, move || {
        let sock = std::net::UdpSocket::bind("0.0.0.0:0").expect("udp socket");
        for _ in 0..3 {
            sock.send_to(&datagram, node_a).expect("sending the forged datagram");
        }
    });
    let dropped = s.drops_until(|f| f["drop_reason"] == "tunnel_source");
    assert!(
        dropped.iter().any(|f| f["drop_reason"] == "tunnel_source"),
        "[vxlan] a datagram encapsulated by no node is dropped as tunnel_source: {dropped:#?}"
    );
    s.cases += 1;
}

/// Native routing: a SYN from the external host claiming the address of a
/// pod on node b, routed to node a's pod, is dropped before it reaches the
/// pod (it did not come from b), and named so in flows. Without the check
/// the source address alone gave it b's pod identity.
fn forged_routed_case(s: &mut Suite) {
    use nix::sys::socket::{AddressFamily, MsgFlags, SockFlag, SockProtocol, SockType, SockaddrIn, sendto, socket};
    use std::os::fd::AsRawFd;

    let target: std::net::Ipv4Addr = s.lab.pod_ip("x/a").parse().unwrap();
    let claimed: std::net::Ipv4Addr = s.lab.pod_ip("x/b").parse().unwrap();
    // Node a talks to b (a's pod to b's pod), so a knows b's MAC: the
    // check compares with it.
    s.lab
        .cmd(&["probe", "x/a", &format!("{claimed}:80/tcp"), "--timeout", "1"]);
    let external = format!("{}-external", s.lab.name);
    let route = std::process::Command::new("ip")
        .args([
            "-n",
            &external,
            "route",
            "replace",
            &format!("{target}/32"),
            "via",
            "172.31.246.11",
        ])
        .output()
        .expect("ip route");
    assert!(route.status.success(), "{}", show(&route));
    weir_test_support::netns::in_netns(format!("/var/run/netns/{external}"), move || {
        // IPPROTO_RAW: the packet carries its own IPv4 header, b's pod as source.
        let fd = socket(AddressFamily::Inet, SockType::Raw, SockFlag::empty(), SockProtocol::Raw).expect("raw socket");
        let syn = weir_test_support::packet::Flow {
            src: claimed,
            sport: 47_475,
            dst: target,
            dport: 80,
            proto: weir_test_support::packet::TCP,
        }
        .packet(0x02);
        let to = SockaddrIn::from(std::net::SocketAddrV4::new(target, 80));
        for _ in 0..3 {
            sendto(fd.as_raw_fd(), &syn[14..], &to, MsgFlags::empty()).expect("sending the forged SYN");
        }
    });
    let dropped = s.drops_until(|f| f["drop_reason"] == "routed_source");
    let _ = std::process::Command::new("ip")
        .args(["-n", &external, "route", "del", &format!("{target}/32")])
        .output();
    let seen: Vec<Value> = s
        .observe(&weir_test_support::bin("weir"), &["--last", "5000"])
        .into_iter()
        .filter(|f| f.to_string().contains("47475"))
        .collect();
    let neigh = std::process::Command::new("ip")
        .args(["-n", &format!("{}-a", s.lab.name), "neigh"])
        .output()
        .expect("ip neigh");
    assert!(
        dropped.iter().any(|f| f["drop_reason"] == "routed_source"),
        "[native] a SYN routed in by the external host with b's pod address is dropped as routed_source: {seen:#?}\nnode a's neighbours: {}",
        show(&neigh)
    );
    s.cases += 1;
}

fn suite(routing: &'static str, control_plane: &str) {
    let mut s = Suite::new(routing, control_plane);
    node_and_nodeport_cases(&mut s);
    networkpolicy_cases(&mut s);
    crd_cases(&mut s);
    // On a real API server ClusterNetworkPolicy needs upstream's CRD:
    // `scripts/conformance.sh --suite policy-api` installs it and runs
    // upstream's own suite there.
    let cnp = control_plane == "standalone";
    if cnp {
        cluster_network_policy_cases(&mut s);
    }
    if routing == "vxlan" {
        forged_tunnel_case(&mut s);
    } else {
        forged_routed_case(&mut s);
    }
    // Policy drops are named in flows, and both CLIs' DROPPED filter shows
    // them.
    let drops = s.observe(
        &weir_test_support::bin("weir"),
        &["--verdict", "DROPPED", "--last", "5000"],
    );
    assert!(
        drops.iter().any(|f| f["drop_reason"] == "policy_denied"
            && f["policy"]
                .as_str()
                .is_some_and(|p| p.contains("denied by NetworkPolicy"))),
        "policy drops named in weir observe: {drops:#?}"
    );
    assert!(
        !cnp || drops.iter().any(|f| f["policy"]
            .as_str()
            .is_some_and(|p| p.contains("ClusterNetworkPolicy x-deny-all ingress[0] \"everyone\" (Deny)"))),
        "a ClusterNetworkPolicy drop names the policy and its rule: {drops:#?}"
    );
    if let Some(hubble) = weir_test_support::tool("hubble") {
        let drops = s.observe(&hubble, &["--verdict", "DROPPED", "--last", "5000"]);
        assert!(
            drops.iter().any(|f| f["flow"]["drop_reason_desc"] == "POLICY_DENIED"
                && f["flow"]["ingress_denied_by"][0]["kind"] == "NetworkPolicy"),
            "hubble observe --verdict DROPPED shows the policy drop and its policy: {drops:#?}"
        );
    }
    s.finish();
}

#[test]
fn conformance_native_routing() {
    if !privileged() {
        return;
    }
    suite("native", "standalone");
}

#[test]
fn conformance_vxlan_routing() {
    if !privileged() {
        return;
    }
    suite("vxlan", "standalone");
}

/// The same suite on a real control plane (`controlPlane: kubernetes`):
/// the API server allocates the Service IPs and NodePorts, the
/// EndpointSlice controller writes the endpoints, the operator numbers the
/// identities, the agents watch it all.
#[test]
fn conformance_on_a_real_api_server() {
    if !privileged() {
        return;
    }
    suite("native", "kubernetes");
}

/// The demo's policy (`lab/demo/policy.yaml`, what `scripts/demo.sh`
/// shows): the client reaches web, the intruder is dropped with the policy
/// named, and the client's call outside is an AUDIT flow of the staged
/// policy, forwarded.
#[test]
fn the_demo_policy_drops_the_intruder_and_audits_the_client() {
    if !privileged() {
        return;
    }
    demo_policy("standalone");
}

/// The demo on a real control plane: what `scripts/demo.sh` shows with
/// `lab/demo-kubernetes.yaml`.
#[test]
fn the_demo_policy_on_a_real_api_server() {
    if !privileged() {
        return;
    }
    let lab = demo_policy("kubernetes");
    // The relay follows the Node objects: a node joins, then leaves.
    let kubectl = |args: &[&str]| {
        let out = std::process::Command::new("nsenter")
            .arg(format!("--net=/var/run/netns/{}-a", lab.name))
            .arg("--")
            .arg(weir_test_support::tool("kubectl").expect("kubectl"))
            .arg(format!(
                "--kubeconfig={}",
                lab.dir.join("kube/admin.kubeconfig").display()
            ))
            .args(args)
            .output()
            .expect("kubectl");
        assert!(out.status.success(), "kubectl {args:?}: {}", show(&out));
    };
    let relay_says = |want: &str| {
        let server = format!("unix://{}", lab.dir.join("run/relay.sock").display());
        let t0 = std::time::Instant::now();
        loop {
            let out = std::process::Command::new(weir_test_support::bin("weir"))
                .args(["status", "--server", &server])
                .output()
                .expect("weir status");
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            if text.contains(want) {
                return;
            }
            assert!(t0.elapsed().as_secs() < 30, "relay status has {want:?}: {text}");
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    };
    relay_says("Nodes:       2 connected, 0 unavailable");
    let file = lab.file("ghost.yaml", "apiVersion: v1\nkind: Node\nmetadata: {name: ghost}\n");
    kubectl(&["apply", "-f", &file]);
    kubectl(&[
        "patch",
        "node",
        "ghost",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"addresses":[{"type":"InternalIP","address":"172.31.246.99"}]}}"#,
    ]);
    relay_says("2 connected, 1 unavailable: ghost");
    kubectl(&["delete", "node", "ghost"]);
    relay_says("Nodes:       2 connected, 0 unavailable");

    // `weir policy check` reads the cluster from the API server: a change
    // leaving the client only DNS is reported as cutting its HTTP to web.
    let change = lab.file(
        "cut.yaml",
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: web-from-client, namespace: svc-demo}\n\
         spec:\n  podSelector: {matchLabels: {app: web}}\n  ingress:\n  \
         - from: [{podSelector: {matchLabels: {app: client}}}]\n    ports: [{port: dns, protocol: UDP}]\n",
    );
    let out = std::process::Command::new("nsenter")
        .arg(format!("--net=/var/run/netns/{}-a", lab.name))
        .arg("--")
        .arg(weir_test_support::bin("weir"))
        .args(["policy", "check", "-f", &change, "-o", "json", "--server"])
        .arg(format!("unix://{}", lab.dir.join("run/relay.sock").display()))
        .arg(format!(
            "--kubeconfig={}",
            lab.dir.join("kube/admin.kubeconfig").display()
        ))
        .output()
        .expect("weir policy check");
    assert!(out.status.success(), "{}", show(&out));
    let groups: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON group"))
        .collect();
    assert!(
        groups.iter().any(|g| g["client"] == "svc-demo/client"
            && g["server"] == "svc-demo/web"
            && g["port"] == "80/TCP"
            && g["now"] == "allowed"
            && g["after"] == "denied"),
        "{groups:#?}\n{}",
        show(&out)
    );

    // Scaled down by the ReplicaSet controller: the lab's kubelet unwires
    // the pods it deletes (CNI DEL, netns gone) and the Service goes on.
    let web_pods = |lab: &Lab| {
        let v = lab.json(&["status"]);
        v["pods"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["namespace"] == "svc-demo" && p["name"].as_str().is_some_and(|n| n.starts_with("web-")))
            .count()
    };
    assert_eq!(web_pods(&lab), 3);
    lab.ok(&["scale", "deployment/web", "--replicas", "1", "-n", "svc-demo"]);
    assert_eq!(web_pods(&lab), 1, "two pods unwired");
    let vip = support::cluster_ip(&lab, "svc-demo/web");
    for _ in 0..3 {
        assert!(
            lab.cmd(&["probe", "svc-demo/client", &format!("{vip}:80/tcp")])
                .status
                .success()
        );
    }
}

fn demo_policy(control_plane: &str) -> Lab {
    let lab = support::demo_lab_on(
        &format!("pold{}", &control_plane[..1]),
        "172.31.246.0/24",
        control_plane,
    );
    lab.ok(&["apply", &format!("{}/demo/policy.yaml", env!("CARGO_MANIFEST_DIR"))]);
    let vip = support::cluster_ip(&lab, "svc-demo/web");
    let probe = |from: &str, target: &str| lab.cmd(&["probe", from, target, "--timeout", "2"]).status.success();
    assert!(
        probe("svc-demo/client", &format!("{vip}:80/tcp")),
        "the client reaches web"
    );
    assert!(
        !probe("svc-demo/intruder", &format!("{vip}:80/tcp")),
        "the intruder does not"
    );
    assert!(probe("svc-demo/client", "external:8080/tcp"), "audit never drops");
    let weir = weir_test_support::bin("weir");
    let server = format!("unix://{}", lab.dir.join("run/relay.sock").display());
    let flows = |args: &[&str]| -> Vec<Value> {
        let mut all = vec!["observe", "--server", &server, "-o", "json", "--last", "1000"];
        all.extend(args);
        let out = std::process::Command::new(&weir)
            .args(&all)
            .output()
            .expect("weir observe");
        assert!(out.status.success(), "{}", show(&out));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    };
    let drops = flows(&["--from-pod", "svc-demo/intruder", "--verdict", "DROPPED"]);
    assert!(
        drops.iter().any(|f| f["drop_reason"] == "policy_denied"
            && f["policy"]
                .as_str()
                .is_some_and(|p| p.contains("NetworkPolicy svc-demo/web-from-client"))),
        "{drops:#?}"
    );
    let audits = flows(&["--from-pod", "svc-demo/client", "--verdict", "AUDIT"]);
    assert!(
        audits.iter().any(|f| f["policy"]
            .as_str()
            .is_some_and(|p| p.contains("WeirNetworkPolicy svc-demo/stage-client"))),
        "{audits:#?}"
    );
    lab
}
