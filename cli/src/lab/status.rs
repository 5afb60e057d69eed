//! `weir lab status` and `weir lab get`.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use weir_agent_api::{Client, Request, Response};

use super::manifests::{Kind, Object, Store};
use super::{Lab, Output, procs};

pub fn status(lab: &Lab, output: Output) -> Result<()> {
    let state = lab.dir.require()?;
    let mut nodes = Vec::new();
    for (name, node) in &state.nodes {
        let client = Client::new(&node.socket, Duration::from_secs(2));
        let alive = node.agent.as_ref().is_some_and(procs::alive);
        let (agent_status, status_error) = match client.call(Request::Status) {
            Ok(Response::Status(s)) => (serde_json::to_value(s)?, Value::Null),
            Ok(other) => (Value::Null, json!(format!("unexpected reply {other:?}"))),
            Err(e) => (Value::Null, json!(e.to_string())),
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
            "agentAlive": alive,
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
    let doc = json!({ "lab": state.name, "labDir": lab.dir.root, "nodes": nodes, "pods": pods });
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&doc)?),
        Output::Yaml => print!("{}", serde_yaml::to_string(&doc)?),
        Output::Table => print_table(&doc),
    }
    Ok(())
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
    println!("\nNODE            AGENT          POD CIDR          ENDPOINTS  DROPS");
    for n in doc["nodes"].as_array().into_iter().flatten() {
        let agent = format!("{} {}", s(&n["agentPid"]), if n["agentAlive"] == true { "up" } else { "DOWN" });
        let drops: u64 = n["status"]["drops"]
            .as_object()
            .map(|m| m.values().filter_map(|t| t["packets"].as_u64()).sum())
            .unwrap_or(0);
        println!("{:<15} {:<14} {:<17} {:<10} {}", s(&n["name"]), agent, s(&n["podCIDR"]), s(&n["status"]["endpoints"]), drops);
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
        println!("{:<25} {:<15} {}", format!("{}/{}", s(&p["namespace"]), s(&p["name"])), s(&p["node"]), s(&p["ip"]));
    }
    println!("\nENDPOINT                  NODE            IP             IN pkts/bytes      OUT pkts/bytes");
    for n in doc["nodes"].as_array().into_iter().flatten() {
        for e in n["endpoints"].as_array().into_iter().flatten() {
            let c = &e["counters"];
            let pod = format!("{}/{}", s(&e["pod"]["namespace"]), s(&e["pod"]["name"]));
            let ingress = format!("{}/{}", s(&c["ingress"]["packets"]), s(&c["ingress"]["bytes"]));
            let egress = format!("{}/{}", s(&c["egress"]["packets"]), s(&c["egress"]["bytes"]));
            println!("{pod:<25} {:<15} {:<14} {ingress:<18} {egress}", s(&n["name"]), s(&e["ipv4"]));
        }
    }
}

pub fn get(lab: &Lab, kind: &str, name: Option<&str>, namespace: Option<&str>, output: Output) -> Result<()> {
    let kind = Kind::parse(kind).with_context(|| {
        format!("unknown kind {kind:?} (pod, service, namespace, node, endpointslice, networkpolicy)")
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
                None => bail!("{} {}{name} not found", kind.dir(), ns.map(|n| format!("{n}/")).unwrap_or_default()),
            }
        }
        None => {
            let items: Vec<Value> = store.list(kind, namespace)?.iter().map(Object::to_json).collect();
            json!({ "apiVersion": "v1", "kind": "List", "metadata": {}, "items": items })
        }
    };
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&doc)?),
        Output::Yaml | Output::Table => print!("{}", serde_yaml::to_string(&doc)?),
    }
    Ok(())
}
