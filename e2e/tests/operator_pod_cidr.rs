//! The pod CIDR path end to end on a real API server, with
//! kube-controller-manager's allocator off: the operator (its service
//! account's token, `--cluster-cidr`) gives the Node its pod CIDR, and the
//! agent, run without `--pod-cidr`, reads it from its Node and allocates
//! its pods' addresses from it.
use std::process::Stdio;
use std::time::Duration;

use weir_e2e::kube::{Proc, apply, repo, run_pod, wait_for};
use weir_e2e::{Node, bin, require_root};
use weir_test_support::kube::ControlPlane;

#[test]
fn the_agent_allocates_from_the_pod_cidr_the_operator_gave_its_node() {
    if !require_root() {
        return;
    }
    let mut node = Node::without_agent("", &[]);
    let Some(cp) = ControlPlane::start_with(Some((&node.ns.path(), None)), |o| {
        o.cluster_cidr = "10.244.0.0/16".into();
        o.allocate_node_cidrs = false;
    }) else {
        return;
    };
    for f in [
        "install/crds/weir-policies.yaml",
        "install/crds/weir-identities.yaml",
        "install/rbac.yaml",
    ] {
        apply(&cp, &repo(f));
    }
    let wait = weir_k8s::wait_for_crds_args();
    cp.kubectl_ok(&wait.iter().map(String::as_str).collect::<Vec<_>>());
    apply(
        &cp,
        &format!(
            "apiVersion: v1\nkind: Node\nmetadata: {{name: {0}, labels: {{kubernetes.io/hostname: {0}}}}}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: demo}}\n",
            node.name
        ),
    );
    let status = r#"{"status":{"conditions":[{"type":"Ready","status":"True","reason":"KubeletReady","message":"the test plays the kubelet"}]}}"#;
    cp.kubectl_ok(&[
        "patch",
        "node",
        &node.name,
        "--subresource=status",
        "--type=merge",
        "-p",
        status,
    ]);

    let kubeconfig = cp.kubeconfig_for("kube-system", "weir-operator");
    let log = std::fs::File::create(cp.path().join("weir-operator.log")).expect("log");
    let _operator = Proc(
        node.ns
            .command(bin("weir-operator").to_str().expect("utf-8"))
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(["--cluster-cidr", "10.244.0.0/16", "--node-cidr-mask-size", "24"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("weir-operator"),
    );
    let mut cidr = String::new();
    let took = wait_for(
        "the operator gives the Node a pod CIDR",
        Duration::from_secs(30),
        || {
            cidr = cp.kubectl_ok(&["get", "node", &node.name, "-o", "jsonpath={.spec.podCIDR}"]);
            !cidr.is_empty()
        },
    );
    eprintln!("pod CIDR {cidr} from the operator in {took:?}");
    assert_eq!(cidr, "10.244.0.0/24", "the pool's first block");
    let cidr: ipnet::Ipv4Net = cidr.parse().expect("a CIDR");

    node.kubeconfig = Some(cp.kubeconfig_for("kube-system", "weir-agent"));
    node.start_agent();
    // Pods need their namespace's default service account.
    wait_for("the demo namespace's service account", Duration::from_secs(30), || {
        cp.kubectl(&["get", "serviceaccount", "-n", "demo", "default"])
            .status
            .success()
    });
    let pods = [
        run_pod(&cp, &node, "demo", "web-1", "web"),
        run_pod(&cp, &node, "demo", "web-2", "web"),
    ];
    for pod in &pods {
        assert!(
            cidr.contains(&pod.ip),
            "the agent allocates from the operator's CIDR {cidr}: {}",
            pod.ip
        );
    }
    assert_ne!(pods[0].ip, pods[1].ip);
}
