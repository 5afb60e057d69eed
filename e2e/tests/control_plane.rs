//! The real Kubernetes control plane (etcd, kube-apiserver,
//! kube-controller-manager, kube-scheduler v1.36.3, built by
//! scripts/tools.sh) started by the test harness
//! (`weir_test_support::kube`), and weir's CRDs against it: the API server
//! accepts `install/crds/` as structural schemas, stores the policies weir
//! writes as the agent parses them, and refuses what the schema forbids.
//! The controllers run Deployments into pods and the scheduler binds them.
use std::time::{Duration, Instant};

use weir_test_support::kube::ControlPlane;

fn wait_for(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !ok() {
        assert!(t0.elapsed() < limit, "{what} within {limit:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn weir_crds_and_policies_on_a_real_api_server_and_its_controllers_run() {
    let Some(cp) = ControlPlane::start() else { return };
    let crds = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../install/crds/weir-policies.yaml"
    ))
    .expect("install/crds");
    let out = cp.apply(&crds);
    assert!(out.status.success(), "CRDs: {}", String::from_utf8_lossy(&out.stderr));
    cp.kubectl_ok(&[
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/weirnetworkpolicies.weir.dev",
        "crd/weirclusternetworkpolicies.weir.dev",
    ]);

    let policy = "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n---\napiVersion: weir.dev/v1alpha1\nkind: WeirNetworkPolicy\nmetadata: {name: web, namespace: shop}\nspec:\n  endpointSelector: {matchLabels: {app: web}}\n  enforcement: audit\n  ingress: [{from: [{entities: [cluster]}], ports: [{port: http}, {port: 8080, endPort: 8090, protocol: TCP}]}]\n  ingressDeny: [{from: [{cidr: 10.0.0.0/8, except: [10.1.0.0/16]}]}]\n---\napiVersion: weir.dev/v1alpha1\nkind: WeirClusterNetworkPolicy\nmetadata: {name: no-world}\nspec:\n  namespaceSelector: {matchLabels: {team: shop}}\n  egressDeny: [{to: [{entities: [world]}]}]\n";
    let out = cp.apply(policy);
    assert!(
        out.status.success(),
        "policies: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // What the API server stores is what weir's parser reads.
    let stored = cp.kubectl_ok(&["get", "weirnetworkpolicies", "-n", "shop", "web", "-o", "yaml"])
        + "---\n"
        + &cp.kubectl_ok(&["get", "wcnp", "no-world", "-o", "yaml"]);
    let objs = weir_model::parse_documents(&stored).expect("weir parses what the API server stored");
    assert_eq!(objs.len(), 2);
    let weir_model::Object::WeirNetworkPolicy(p) = &objs[0] else {
        panic!("{:?}", objs[0])
    };
    let parsed = weir_model::policy::parse::weir_network_policy(p).expect("valid");
    assert!(parsed.audit);
    assert_eq!(parsed.rules.len(), 2);
    // The schema refuses what cannot be a policy.
    let out = cp.apply("apiVersion: weir.dev/v1alpha1\nkind: WeirNetworkPolicy\nmetadata: {name: bad, namespace: shop}\nspec:\n  enforcement: sometimes\n");
    assert!(!out.status.success(), "an unknown enforcement is refused by the schema");

    // The controllers and the scheduler are real: a Deployment becomes a
    // ReplicaSet and pods, bound to a (kubelet-less) node that is Ready.
    let node = "apiVersion: v1\nkind: Node\nmetadata: {name: n1, labels: {kubernetes.io/hostname: n1}}\n";
    assert!(cp.apply(node).status.success());
    let status = r#"{"status":{"conditions":[{"type":"Ready","status":"True","reason":"KubeletReady","message":"test","lastHeartbeatTime":null}],"allocatable":{"cpu":"8","memory":"16Gi","pods":"110"},"capacity":{"cpu":"8","memory":"16Gi","pods":"110"}}}"#;
    cp.kubectl_ok(&[
        "patch",
        "node",
        "n1",
        "--subresource=status",
        "--type=merge",
        "-p",
        status,
    ]);
    let deploy = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web, namespace: shop}\nspec:\n  replicas: 2\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n    spec:\n      tolerations: [{operator: Exists}]\n      containers: [{name: web, image: weir.lab/serve}]\n";
    assert!(cp.apply(deploy).status.success());
    wait_for("two pods bound to n1 by the scheduler", Duration::from_secs(60), || {
        let out = cp.kubectl(&["get", "pods", "-n", "shop", "-o", "jsonpath={.items[*].spec.nodeName}"]);
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter(|n| *n == "n1")
            .count()
            == 2
    });
    let svc = "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}\nspec: {selector: {app: web}, ports: [{port: 80}], type: NodePort}\n";
    assert!(cp.apply(svc).status.success());
    let ip = cp.kubectl_ok(&[
        "get",
        "svc",
        "-n",
        "shop",
        "web",
        "-o",
        "jsonpath={.spec.clusterIP}/{.spec.ports[0].nodePort}",
    ]);
    assert!(
        ip.starts_with("10.96."),
        "the API server allocated a ClusterIP and a NodePort: {ip}"
    );
}
