//! End-to-end: the standalone control plane refuses, accepts and cascades
//! as the API server does (issue 18). One one-node lab: a Service with
//! duplicate port names is refused with the API server's reason and
//! nothing changes; a pod with a 253-character name is wired and answers;
//! deleting its Namespace unwires its pods and removes its Service, and
//! leaves other namespaces alone. Needs root and the workspace built.

use std::path::Path;

use serde_json::Value;

mod support;
use support::{Lab, privileged, show};

/// The longest name a pod may have: a DNS subdomain of 253 characters.
fn long_name() -> String {
    let name = format!("{}end", "long-name-".repeat(25));
    assert_eq!(name.len(), 253);
    name
}

fn base(long: &str) -> String {
    format!(
        "\
apiVersion: v1
kind: Namespace
metadata: {{name: gone}}
---
apiVersion: v1
kind: Pod
metadata: {{name: {long}, namespace: gone, labels: {{app: web}}}}
spec: {{containers: [{{name: c, image: x, ports: [{{name: http, containerPort: 80}}]}}]}}
---
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: gone}}
spec: {{selector: {{app: web}}, ports: [{{name: http, port: 80, targetPort: http}}]}}
---
apiVersion: v1
kind: Pod
metadata: {{name: client, namespace: stays}}
spec: {{containers: [{{name: c, image: x}}]}}
"
    )
}

/// A valid new Service and an update of `gone/web` the API server refuses.
const INVALID: &str = "\
apiVersion: v1
kind: Service
metadata: {name: extra, namespace: stays}
spec: {ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: gone}
spec:
  selector: {app: web}
  ports:
  - {name: http, port: 80, targetPort: http}
  - {name: http, port: 8080, targetPort: http}
";

/// Every Service and pod as the lab holds them.
fn snapshot(lab: &Lab) -> (Value, Value) {
    (lab.json(&["get", "svc"]), lab.json(&["get", "pod"]))
}

/// The pod's record in `weir lab status`, if the lab has one.
fn pod_status(lab: &Lab, namespace: &str, name: &str) -> Option<Value> {
    lab.json(&["status"])["pods"]
        .as_array()
        .expect("pods")
        .iter()
        .find(|p| p["namespace"] == namespace && p["name"] == name)
        .cloned()
}

/// The pod names the agents hold endpoints for.
fn agent_endpoints(lab: &Lab) -> Vec<String> {
    lab.json(&["status"])["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .flat_map(|n| n["endpoints"].as_array().cloned().unwrap_or_default())
        .map(|e| {
            format!(
                "{}/{}",
                e["pod"]["namespace"].as_str().unwrap_or(""),
                e["pod"]["name"].as_str().unwrap_or("")
            )
        })
        .collect()
}

#[test]
fn standalone_validates_accepts_long_names_and_cascades_namespace_deletes_as_the_api_server_does() {
    if !privileged() {
        return;
    }
    let lab = Lab::new("parity");
    let topo = lab.file(
        "topo.yaml",
        &format!(
            "name: {}\nclusterCIDR: 10.244.0.0/16\nnodes:\n  - name: n1\n    podCIDR: 10.244.1.0/24\n",
            lab.name
        ),
    );
    lab.ok(&["up", &topo]);
    let long = long_name();
    lab.ok(&["apply", &lab.file("base.yaml", &base(&long))]);

    // A 253-character pod name: wired (its netns name bounded), its server answers.
    let pod = pod_status(&lab, "gone", &long).expect("the long-named pod is in the lab");
    let netns = pod["netns"].as_str().expect("netns").to_owned();
    assert!(netns.len() <= 64, "netns name {netns:?}");
    assert!(Path::new("/var/run/netns").join(&netns).exists(), "{netns} missing");
    let ip = lab.pod_ip(&format!("gone/{long}"));
    let out = lab.cmd(&["probe", "stays/client", &format!("{ip}:80/tcp")]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("connected: {long}"),
        "{}",
        show(&out)
    );
    assert!(agent_endpoints(&lab).contains(&format!("gone/{long}")));
    let web = lab.json(&["get", "svc", "gone/web"]);
    let slices = lab.json(&["get", "endpointslice", "-n", "gone"]);
    assert_eq!(
        slices["items"][0]["endpoints"][0]["targetRef"]["name"], long,
        "the Service selects the pod: {slices}"
    );

    // Duplicate port names: refused with the API server's reason, and nothing
    // of the text (the valid Service with it) nor of the lab changes.
    let before = snapshot(&lab);
    let out = lab.cmd(&["apply", &lab.file("invalid.yaml", INVALID)]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{}", show(&out));
    assert!(
        stderr.contains(r#"service/gone/web: Service "web" is invalid: spec.ports[1].name: Duplicate value: "http""#),
        "{}",
        show(&out)
    );
    assert_eq!(snapshot(&lab), before, "an invalid apply changed the lab");
    assert_eq!(lab.json(&["get", "svc", "gone/web"]), web);

    // Delete the Namespace: its pod unwired (netns gone, no endpoint at the
    // agent), its Service and EndpointSlices gone; the other namespace stays.
    let out = lab.ok(&[
        "delete",
        &lab.file("ns.yaml", "apiVersion: v1\nkind: Namespace\nmetadata: {name: gone}\n"),
    ]);
    assert!(out.contains("namespace/gone deleted"), "{out}");
    assert!(
        !Path::new("/var/run/netns").join(&netns).exists(),
        "{netns} left behind"
    );
    assert!(pod_status(&lab, "gone", &long).is_none(), "the pod's record is left");
    let endpoints = agent_endpoints(&lab);
    assert!(!endpoints.contains(&format!("gone/{long}")), "{endpoints:?}");
    assert!(endpoints.contains(&"stays/client".to_string()), "{endpoints:?}");
    for kind in ["svc", "endpointslice", "pod"] {
        let items = lab.json(&["get", kind, "-n", "gone"]);
        assert_eq!(items["items"], serde_json::json!([]), "{kind} left in gone: {items}");
    }
    assert!(pod_status(&lab, "stays", "client").is_some());
    let out = lab.cmd(&["get", "namespace", "gone"]);
    assert!(!out.status.success(), "{}", show(&out));

    // Down leaves no netns and no pins of this lab.
    let name = lab.name.clone();
    drop(lab);
    let left: Vec<String> = std::fs::read_dir("/var/run/netns")
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&format!("{name}-")))
                .collect()
        })
        .unwrap_or_default();
    assert!(left.is_empty(), "netns left: {left:?}");
    assert!(!Path::new("/sys/fs/bpf/weir").join(&name).exists(), "bpffs pins left");
}
