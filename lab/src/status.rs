//! `weir lab status` and `weir lab get`.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::{Value, json};
use weir_agent_api::{Client, Request, Response};

use super::controller::LABEL_SERVICE_NAME;
use super::manifests::{Kind, Object, Store};
use super::{Lab, Output, procs};

pub fn status(lab: &Lab, output: Output) -> Result<()> {
    let state = lab.observed()?;
    let installed = state.topology.install == super::topology::Install::None;
    let mut nodes = Vec::new();
    for (name, node) in &state.nodes {
        let client = Client::new(&node.socket, Duration::from_secs(2));
        // weir's DaemonSet (install: none) runs the agent in a pod: it is
        // alive when it answers.
        let alive = match &node.agent {
            Some(p) => procs::alive(p),
            None => installed,
        };
        let (agent_status, status_error) = match client.call(Request::Status) {
            Ok(Response::Status(s)) => (serde_json::to_value(s)?, Value::Null),
            Ok(other) => (Value::Null, json!(format!("unexpected reply {other:?}"))),
            Err(e) => (Value::Null, json!(weir_error::report(&e))),
        };
        let endpoints = match client.call(Request::EndpointList) {
            Ok(Response::Endpoints { endpoints }) => serde_json::to_value(endpoints)?,
            _ => json!([]),
        };
        nodes.push(json!({
            "name": name,
            "netns": node.netns,
            "podCIDR": node.pod_cidr,
            "agentPid": node.agent.as_ref().map(|p| p.pid),
            "agentAlive": alive && (node.agent.is_some() || !agent_status.is_null()),
            "status": agent_status,
            "error": status_error,
            "endpoints": endpoints,
        }));
    }
    let pods: Vec<Value> = state
        .pods
        .values()
        .map(|p| {
            json!({
                "namespace": p.namespace, "name": p.name, "node": p.node, "ip": p.ip,
                "netns": p.netns, "containerID": p.container_id,
                "serversAlive": p.servers.iter().all(procs::alive),
            })
        })
        .collect();
    let services = match &state.kube {
        Some(kube) => services(
            super::kube::list(kube, "services")?,
            super::kube::list(kube, "endpointslices")?,
        ),
        None => {
            let store = Store::new(lab.dir.manifests());
            let all = |k: Kind| store.list(k, None);
            let svcs = all(Kind::Service)?.into_iter().filter_map(|o| match o {
                Object::Service(s) => Some(s),
                _ => None,
            });
            let slices = all(Kind::EndpointSlice)?.into_iter().filter_map(|o| match o {
                Object::EndpointSlice(s) => Some(s),
                _ => None,
            });
            services(svcs.collect(), slices.collect())
        }
    };
    // Where users point their tools: the relay, each agent's metrics (on
    // its node's loopback), the kubeconfig.
    let access = json!({
        "relay": match installed {
            true => "in-cluster: weir lab kubectl -- -n kube-system port-forward service/weir-relay 4245:80".to_owned(),
            false => format!("unix://{}", lab.dir.relay_socket().display()),
        },
        "serviceMap": lab.dir.ui_url().map(|u| match &state.kube {
            Some(k) => format!("netns {}: {u}", k.netns),
            None => u,
        }),
        "metrics": state.nodes.iter().map(|(n, ns)| (n.clone(), json!(format!("netns {}: http://127.0.0.1:9962/metrics", ns.netns)))).collect::<serde_json::Map<_, _>>(),
        "flowExport": state.nodes.iter().filter(|(_, ns)| ns.agent.is_some()).map(|(n, _)| (n.clone(), json!(lab.dir.node_flow_export(n)))).collect::<serde_json::Map<_, _>>(),
        "kubeconfig": state.kube.as_ref().map(|k| json!({"path": k.admin_kubeconfig, "netns": k.netns})),
    });
    let doc = json!({ "lab": state.name, "labDir": lab.dir.root, "access": access, "nodes": nodes, "pods": pods, "services": services });
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&doc)?),
        Output::Yaml => print!("{}", serde_yaml_ng::to_string(&doc)?),
        Output::Table => print_table(&doc),
    }
    Ok(())
}

/// Every Service: type, ClusterIP, ports (`port[:nodePort]/PROTO`) and ready endpoints.
fn services(services: Vec<k8s_openapi::api::core::v1::Service>, slices: Vec<EndpointSlice>) -> Vec<Value> {
    let mut out = Vec::new();
    for svc in services {
        let ns = svc.metadata.namespace.clone().unwrap_or_else(|| "default".into());
        let name = svc.metadata.name.clone().unwrap_or_default();
        let spec = svc.spec.clone().unwrap_or_default();
        let ports = super::apply::service_ports(&spec);
        let mut ready = BTreeSet::new();
        let mut total = BTreeSet::new();
        for slice in slices.iter().filter(|sl| {
            sl.metadata.namespace.as_deref() == Some(ns.as_str())
                && sl.metadata.labels.as_ref().and_then(|l| l.get(LABEL_SERVICE_NAME)) == Some(&name)
        }) {
            for e in &slice.endpoints {
                total.insert(e.addresses.clone());
                if e.conditions.as_ref().and_then(|c| c.ready) != Some(false) {
                    ready.insert(e.addresses.clone());
                }
            }
        }
        let lb: Vec<String> = svc
            .status
            .iter()
            .flat_map(|s| s.load_balancer.iter())
            .flat_map(|l| l.ingress.iter().flatten())
            .filter_map(|i| i.ip.clone())
            .collect();
        out.push(json!({
            "namespace": ns, "name": name,
            "type": spec.type_.unwrap_or_else(|| "ClusterIP".into()),
            "clusterIP": spec.cluster_ip, "externalIPs": lb, "ports": ports,
            "readyEndpoints": ready.len(), "endpoints": total.len(),
        }));
    }
    out
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn print_table(doc: &Value) {
    println!("lab {} ({})", s(&doc["lab"]), s(&doc["labDir"]));
    let access = &doc["access"];
    println!(
        "  relay:      {} (weir lab observe, weir observe --server)",
        s(&access["relay"])
    );
    if !access["serviceMap"].is_null() {
        println!("  map:        {} (weir lab ui)", s(&access["serviceMap"]));
    }
    for (node, at) in access["metrics"].as_object().into_iter().flatten() {
        println!("  metrics {node}: {}", s(at));
    }
    for (node, at) in access["flowExport"].as_object().into_iter().flatten() {
        println!("  flow export {node}: {} (flowLogs; read when it changes)", s(at));
    }
    if !access["kubeconfig"].is_null() {
        println!(
            "  kubeconfig: {} (kubectl in netns {})",
            s(&access["kubeconfig"]["path"]),
            s(&access["kubeconfig"]["netns"])
        );
    }
    println!("\nNODE            AGENT          POD CIDR          ENDPOINTS  DROPS");
    for n in doc["nodes"].as_array().into_iter().flatten() {
        let agent = format!(
            "{} {}",
            s(&n["agentPid"]),
            if n["agentAlive"] == true { "up" } else { "DOWN" }
        );
        let drops: u64 = n["status"]["drops"]
            .as_object()
            .map(|m| m.values().filter_map(|t| t["packets"].as_u64()).sum())
            .unwrap_or(0);
        println!(
            "{:<15} {:<14} {:<17} {:<10} {}",
            s(&n["name"]),
            agent,
            s(&n["podCIDR"]),
            s(&n["status"]["endpoints"]),
            drops
        );
        if !n["error"].is_null() {
            println!("  agent error: {}", s(&n["error"]));
        }
        if let Some(d) = n["status"]["drops"].as_object().filter(|d| !d.is_empty()) {
            for (reason, t) in d {
                println!("  drop {reason}: {} packets", s(&t["packets"]));
            }
        }
    }
    println!("\nPOD                       NODE            IP");
    for p in doc["pods"].as_array().into_iter().flatten() {
        println!(
            "{:<25} {:<15} {}",
            format!("{}/{}", s(&p["namespace"]), s(&p["name"])),
            s(&p["node"]),
            s(&p["ip"])
        );
    }
    println!("\nSERVICE                   TYPE          CLUSTER-IP     EXTERNAL-IP    PORTS                  READY");
    for v in doc["services"].as_array().into_iter().flatten() {
        let ports: Vec<String> = v["ports"].as_array().into_iter().flatten().map(s).collect();
        let ext: Vec<String> = v["externalIPs"].as_array().into_iter().flatten().map(s).collect();
        println!(
            "{:<25} {:<13} {:<14} {:<14} {:<22} {}/{}",
            format!("{}/{}", s(&v["namespace"]), s(&v["name"])),
            s(&v["type"]),
            s(&v["clusterIP"]),
            if ext.is_empty() { "-".to_string() } else { ext.join(",") },
            if ports.is_empty() {
                "-".to_string()
            } else {
                ports.join(",")
            },
            s(&v["readyEndpoints"]),
            s(&v["endpoints"]),
        );
    }
    println!("\nENDPOINT                  NODE            IP             IDENTITY  IN pkts/bytes      OUT pkts/bytes");
    for n in doc["nodes"].as_array().into_iter().flatten() {
        for e in n["endpoints"].as_array().into_iter().flatten() {
            let c = &e["counters"];
            let pod = format!("{}/{}", s(&e["pod"]["namespace"]), s(&e["pod"]["name"]));
            let ingress = format!("{}/{}", s(&c["ingress"]["packets"]), s(&c["ingress"]["bytes"]));
            let egress = format!("{}/{}", s(&c["egress"]["packets"]), s(&c["egress"]["bytes"]));
            println!(
                "{pod:<25} {:<15} {:<14} {:<9} {ingress:<18} {egress}",
                s(&n["name"]),
                s(&e["ipv4"]),
                s(&e["identity"])
            );
        }
    }
}

pub fn get(lab: &Lab, kind: &str, name: Option<&str>, namespace: Option<&str>, output: Output) -> Result<()> {
    let kind = Kind::parse(kind).with_context(|| {
        format!("unknown kind {kind:?} (pod, deployment, service, namespace, node, endpointslice, networkpolicy, weiridentity)")
    })?;
    lab.dir.require()?;
    let store = Store::new(lab.dir.manifests());
    let doc = match name {
        Some(name) => {
            let (ns, name) = match name.split_once('/') {
                Some((ns, n)) => (Some(ns), n),
                None => (Some(namespace.unwrap_or("default")), name),
            };
            let ns = if kind.namespaced() { ns } else { None };
            let obj = store.get(kind, ns, name)?;
            match obj {
                Some(o) => o.to_json(),
                None => bail!(
                    "{} {}{name} not found",
                    kind.dir(),
                    ns.map(|n| format!("{n}/")).unwrap_or_default()
                ),
            }
        }
        None => {
            let items: Vec<Value> = store.list(kind, namespace)?.iter().map(Object::to_json).collect();
            json!({ "apiVersion": "v1", "kind": "List", "metadata": {}, "items": items })
        }
    };
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&doc)?),
        Output::Yaml | Output::Table => print!("{}", serde_yaml_ng::to_string(&doc)?),
    }
    Ok(())
}
