//! The agent against a real API server (v1.36.3, `weir_test_support::kube`):
//! the control plane runs in the node's network namespace, as on a
//! control-plane node; the agent and the operator use service-account
//! tokens bound to `install/rbac.yaml`'s roles; the node's pod CIDR comes
//! from kube-controller-manager's allocator; ClusterIPs from the API
//! server's; EndpointSlices from the EndpointSlice controller. The test
//! plays the kubelet: it creates each pod's netns through the real
//! `weir-cni` and reports the pod's IP and readiness in its status.
//!
//! What it shows: objects created, changed and deleted reach the datapath
//! (a Service's VIP answers, a NetworkPolicy allows and denies by pod
//! labels, so identities are allocated); the API server killed for 30 s
//! under traffic breaks no connection and flushes nothing (the VIP keeps
//! answering, the policy keeps denying); what changed meanwhile through a
//! second API server is applied when it returns (the expired watches
//! relist); a policy the agent cannot read (a loosened CRD let it in) is
//! logged, counted and denies.
use std::time::{Duration, Instant};

use weir_e2e::kube::{KubeNode, answers, apply, connect, metric, repo, round_trip, vip, wait_for};
use weir_e2e::require_root;

#[test]
fn the_agent_follows_a_real_api_server_and_keeps_its_datapath_while_it_is_away() {
    if !require_root() {
        return;
    }
    let Some(k) = KubeNode::start(&[]) else {
        return;
    };
    let KubeNode { node, mut cp, cidr, .. } = k;
    apply(&cp, "apiVersion: v1\nkind: Namespace\nmetadata: {name: demo}\n");
    let web = weir_e2e::kube::run_pod(&cp, &node, "demo", "web-1", "web");
    assert!(
        cidr.parse::<ipnet::Ipv4Net>().expect("a CIDR").contains(&web.ip),
        "the agent allocates from the Node's pod CIDR {cidr}: {}",
        web.ip
    );
    let client = weir_e2e::kube::run_pod(&cp, &node, "demo", "client", "client");
    let other = weir_e2e::kube::run_pod(&cp, &node, "demo", "other", "other");
    weir_e2e::kube::echo_server(&web, 8080);

    // A Service: the API server allocates its ClusterIP, the EndpointSlice
    // controller writes its endpoints, the agent programs the VIP.
    apply(
        &cp,
        "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: demo}\nspec: {selector: {app: web}, ports: [{port: 80, targetPort: echo}]}\n",
    );
    let web_vip = vip(&cp, "demo", "web", 80);
    let took = wait_for("the VIP answers", Duration::from_secs(30), || answers(&client, web_vip));
    eprintln!("Service applied to VIP answering: {took:?}");

    // A NetworkPolicy by pod labels: identities from the operator.
    let allow_client = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: web, namespace: demo}\nspec:\n  podSelector: {matchLabels: {app: web}}\n  ingress: [{from: [{podSelector: {matchLabels: {app: client}}}]}]\n";
    apply(&cp, allow_client);
    wait_for("other denied by the policy", Duration::from_secs(30), || {
        !answers(&other, web_vip)
    });
    assert!(answers(&client, web_vip), "the client is allowed");
    let ids = cp.kubectl_ok(&["get", "weiridentities", "-o", "jsonpath={.items[*].spec.labels.app}"]);
    for app in ["web", "client", "other"] {
        assert!(
            ids.split_whitespace().any(|a| a == app),
            "the operator numbered app={app}: {ids}"
        );
    }

    // The API server goes away for 30 s. Meanwhile a second API server on
    // the same etcd takes changes the agent cannot see yet.
    let second = cp.second_apiserver();
    let mut established = connect(&client, web_vip, Duration::from_secs(2)).expect("established connection");
    assert!(round_trip(&mut established, "before"));
    cp.stop("kube-apiserver");
    let via_second = |yaml: &str| {
        let path = cp.path().join("change.yaml");
        std::fs::write(&path, yaml).expect("change");
        let out = cp.kubectl_with(&second, &["apply", "-f", path.to_str().expect("utf-8")]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    via_second("apiVersion: v1\nkind: Service\nmetadata: {name: web2, namespace: demo}\nspec: {ports: [{port: 81}]}\n");
    // Without a selector, with its EndpointSlice written here: what the
    // agent applies does not wait on kube-controller-manager, whose own
    // watches back off up to a minute (client-go: 30 s, jittered) after
    // the server is away.
    via_second(&format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: web2-1, namespace: demo, labels: {{kubernetes.io/service-name: web2, endpointslice.kubernetes.io/managed-by: weir-e2e}}}}\naddressType: IPv4\nports: [{{port: 8080, protocol: TCP}}]\nendpoints: [{{addresses: [\"{}\"], conditions: {{ready: true}}}}]\n",
        web.ip
    ));
    via_second(&allow_client.replace(
        "ingress: [{from: [{podSelector: {matchLabels: {app: client}}}]}]",
        "ingress: [{from: [{podSelector: {matchExpressions: [{key: app, operator: In, values: [client, other]}]}}]}]",
    ));
    let down = Instant::now();
    let mut checks = 0;
    while down.elapsed() < Duration::from_secs(30) {
        assert!(
            round_trip(&mut established, &format!("down-{checks}")),
            "the established connection works while the API server is away"
        );
        assert!(
            answers(&client, web_vip),
            "new connections to the VIP work: nothing flushed"
        );
        assert!(
            !answers(&other, web_vip),
            "the policy still denies: nothing flushed, nothing widened"
        );
        checks += 1;
        std::thread::sleep(Duration::from_secs(2));
    }
    assert!(checks >= 8, "{checks} checks in 30 s");
    assert!(
        node.log().contains("Kubernetes watch failed"),
        "the agent saw the API server go: {}",
        node.log()
    );
    cp.restart("kube-apiserver");
    let took = wait_for("the change made while away is applied", Duration::from_secs(60), || {
        answers(&other, web_vip)
    });
    eprintln!("API server back to the missed policy change applied: {took:?}");
    let web2_vip = vip(&cp, "demo", "web2", 81);
    let took = wait_for("the Service made while away answers", Duration::from_secs(30), || {
        answers(&client, web2_vip)
    });
    eprintln!("then the Service made while away answering: {took:?}");
    assert!(
        round_trip(&mut established, "after"),
        "the established connection survived"
    );
    assert!(answers(&client, web_vip));
    // The restarted server's watch cache starts at etcd's current
    // revision: the agent's watches resume from older resourceVersions,
    // are told 410 Gone, and relist (kinds replaced only once complete).
    let relists = metric(&node, "weir_kubernetes_relists_total", "");
    eprintln!("relists after the API server came back: {relists}");
    assert!(relists >= 1.0, "the expired watches relisted");
    assert!(
        metric(&node, "weir_kubernetes_watch_errors_total", "") >= 1.0,
        "errors are counted"
    );

    // A policy the agent cannot read: the CRD's schema loosened so the API
    // server stores it. Logged with its name, counted, and it denies.
    let loose = repo("install/crds/weir-policies.yaml");
    let loose = loose
        .split("---\n")
        .find(|d| d.contains("name: weirnetworkpolicies.weir.dev"))
        .expect("the CRD")
        .to_owned();
    let i = loose
        .find("        properties:\n          spec:")
        .expect("the spec schema");
    let loose = format!(
        "{}        properties:\n          spec:\n            type: object\n            x-kubernetes-preserve-unknown-fields: true\n        type: object\n    served: true\n    storage: true\n    subresources:\n      status: {{}}\n",
        &loose[..i]
    );
    apply(&cp, &loose);
    apply(
        &cp,
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: web, namespace: demo}\nspec: {podSelector: {}, ingress: [{}]}\n",
    );
    std::thread::sleep(Duration::from_secs(1));
    apply(
        &cp,
        "apiVersion: weir.dev/v1alpha1\nkind: WeirNetworkPolicy\nmetadata: {name: mangled, namespace: demo}\nspec: {endpointSelector: {}, ingress: everything}\n",
    );
    wait_for("the unreadable policy denies", Duration::from_secs(30), || {
        !answers(&client, web_vip)
    });
    assert!(
        metric(&node, "weir_kubernetes_unreadable_objects_total", "WeirNetworkPolicy") >= 1.0,
        "counted"
    );
    let log = node.log();
    assert!(
        log.contains("cannot read this object") && log.contains("mangled"),
        "logged with its name: {log}"
    );
    cp.kubectl_ok(&["delete", "weirnetworkpolicy", "-n", "demo", "mangled"]);
    wait_for("access back once it is gone", Duration::from_secs(30), || {
        answers(&client, web_vip)
    });
    drop(established);
}
