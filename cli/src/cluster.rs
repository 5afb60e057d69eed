//! `weir status --kubeconfig`: weir's health in a cluster, as `cilium
//! status` shows Cilium's: the agent DaemonSet, the operator and the relay
//! (desired / ready / available), each node's agent (ready, version,
//! restarts) and CNI (the kubelet's network readiness), and for whatever
//! is not ready, the reason Kubernetes gives; and the nodes the relay
//! reaches, asked of the relay itself through a port-forward to its pod.
//! The report is computed from what was read ([`report`]); reading it is
//! [`status`]'s.
use std::collections::BTreeMap;

use anyhow::{Context, Result};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{Node, Pod};

/// What `weir status` prints, and whether everything is ready.
#[derive(Debug, Default, PartialEq)]
pub struct Report {
    pub lines: Vec<String>,
    pub problems: Vec<String>,
}

/// The objects a report is made from.
#[derive(Debug, Default)]
pub struct Objects {
    pub agents: Option<DaemonSet>,
    pub operator: Option<Deployment>,
    pub relay: Option<Deployment>,
    pub agent_pods: Vec<Pod>,
    pub nodes: Vec<Node>,
    /// What the relay said of its nodes, or why it could not be asked
    /// (`None`: no relay deployed).
    pub relay_nodes: Option<Result<RelayNodes, String>>,
}

/// The relay's own count of the agents it reaches (ServerStatus).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayNodes {
    pub connected: u32,
    pub unavailable: Vec<String>,
}

fn image_tag(pod: &Pod) -> String {
    pod.spec
        .as_ref()
        .and_then(|s| s.containers.first())
        .and_then(|c| c.image.as_deref())
        .and_then(|i| i.rsplit_once(':').map(|(_, t)| t.to_owned()))
        .unwrap_or_else(|| "?".into())
}

/// Why a pod's container is not running or not ready, in Kubernetes' words.
fn pod_trouble(pod: &Pod) -> Option<String> {
    let status = pod.status.as_ref()?;
    for c in status
        .init_container_statuses
        .iter()
        .flatten()
        .chain(status.container_statuses.iter().flatten())
    {
        if let Some(w) = c.state.as_ref().and_then(|s| s.waiting.as_ref()) {
            let reason = w.reason.clone().unwrap_or_else(|| "Waiting".into());
            return Some(match &w.message {
                Some(m) => format!("{}: {reason}: {m}", c.name),
                None => format!("{}: {reason}", c.name),
            });
        }
    }
    let ready = status
        .conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    (!ready).then(|| format!("not ready (phase {})", status.phase.as_deref().unwrap_or("unknown")))
}

fn deployment_line(name: &str, d: Option<&Deployment>, problems: &mut Vec<String>) -> String {
    let Some(d) = d else {
        problems.push(format!(
            "Deployment {name} not found: weir is not installed here (kubectl apply -f install/weir.yaml)"
        ));
        return format!("{name:<14} not installed");
    };
    let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let st = d.status.clone().unwrap_or_default();
    let (ready, available) = (st.ready_replicas.unwrap_or(0), st.available_replicas.unwrap_or(0));
    if available < want.min(1) {
        problems.push(format!("{name}: {available} of {want} replicas available"));
    }
    format!("{name:<14} desired {want}, ready {ready}, available {available}")
}

/// The report of a cluster's weir.
pub fn report(o: &Objects) -> Report {
    let mut r = Report::default();
    match &o.agents {
        None => {
            r.problems.push(
                "DaemonSet weir-agent not found: weir is not installed here (kubectl apply -f install/weir.yaml)"
                    .into(),
            );
            r.lines.push(format!("{:<14} not installed", "weir-agent"));
        }
        Some(ds) => {
            let st = ds.status.clone().unwrap_or_default();
            let (want, ready, available) = (
                st.desired_number_scheduled,
                st.number_ready,
                st.number_available.unwrap_or(0),
            );
            r.lines.push(format!(
                "{:<14} desired {want}, ready {ready}, available {available}, up to date {}",
                "weir-agent",
                st.updated_number_scheduled.unwrap_or(0)
            ));
            if ready < want {
                r.problems.push(format!("weir-agent: {ready} of {want} agents ready"));
            }
        }
    }
    r.lines
        .push(deployment_line("weir-operator", o.operator.as_ref(), &mut r.problems));
    r.lines
        .push(deployment_line("weir-relay", o.relay.as_ref(), &mut r.problems));
    match &o.relay_nodes {
        None => {}
        Some(Ok(n)) => {
            let total = n.connected as usize + n.unavailable.len();
            r.lines
                .push(format!("{:<14} {} of {total} nodes connected", "", n.connected));
            if !n.unavailable.is_empty() {
                r.problems
                    .push(format!("weir-relay: nodes unavailable: {}", n.unavailable.join(", ")));
            }
            // Right after an install the relay may know no peer yet: it
            // then reports "0 of 0", which is not a ready relay.
            let agents = o
                .agents
                .as_ref()
                .and_then(|ds| ds.status.as_ref())
                .map_or(0, |st| st.desired_number_scheduled);
            if n.unavailable.is_empty() && (n.connected as i64) < i64::from(agents) {
                r.problems.push(format!(
                    "weir-relay: reaches {} of {agents} agents (peers not yet discovered)",
                    n.connected
                ));
            }
        }
        Some(Err(why)) => {
            r.lines.push(format!("{:<14} nodes unknown", ""));
            r.problems
                .push(format!("weir-relay: cannot ask it for its nodes: {why}"));
        }
    }

    let by_node: BTreeMap<&str, &Pod> = o
        .agent_pods
        .iter()
        .filter_map(|p| Some((p.spec.as_ref()?.node_name.as_deref()?, p)))
        .collect();
    r.lines.push(String::new());
    r.lines.push(format!(
        "{:<20} {:<10} {:<12} {:<9} CNI",
        "NODE", "AGENT", "VERSION", "RESTARTS"
    ));
    for node in &o.nodes {
        let name = node.metadata.name.as_deref().unwrap_or_default();
        let ready = node
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "Ready"));
        let cni = match ready {
            Some(c) if c.status == "True" => "ready".to_owned(),
            Some(c) => {
                let why = c.message.clone().unwrap_or_default();
                r.problems.push(format!("node {name} NotReady: {why}"));
                if why.contains("cni") || why.contains("network") {
                    "no CNI config".into()
                } else {
                    "node NotReady".into()
                }
            }
            None => "unknown".into(),
        };
        let (agent, version, restarts) = match by_node.get(name) {
            None => {
                r.problems.push(format!("node {name}: no weir-agent pod"));
                ("missing".to_owned(), "-".to_owned(), 0)
            }
            Some(pod) => {
                let restarts = pod
                    .status
                    .as_ref()
                    .and_then(|s| s.container_statuses.as_ref())
                    .map(|cs| cs.iter().map(|c| c.restart_count).sum())
                    .unwrap_or(0);
                let agent = match pod_trouble(pod) {
                    None => "ready".to_owned(),
                    Some(why) => {
                        r.problems.push(format!(
                            "node {name}: agent {}: {why}",
                            pod.metadata.name.as_deref().unwrap_or_default()
                        ));
                        "NOT ready".to_owned()
                    }
                };
                (agent, image_tag(pod), restarts)
            }
        };
        r.lines
            .push(format!("{name:<20} {agent:<10} {version:<12} {restarts:<9} {cni}"));
    }
    r
}

/// Asks a ready relay pod for its nodes, through a port-forward to its
/// gRPC port (TLS when it serves TLS, trusting weir's CA from the Secret
/// the operator keeps). `None`: no relay pod.
async fn relay_nodes(client: &kube::Client, namespace: &str) -> Option<Result<RelayNodes, String>> {
    use kube::api::{Api, ListParams};
    use weir_proto::observer::ServerStatusRequest;
    use weir_proto::observer::observer_client::ObserverClient;
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let list = match pods
        .list(&ListParams::default().labels("app.kubernetes.io/name=weir-relay"))
        .await
    {
        Ok(l) => l.items,
        Err(e) => return Some(Err(format!("listing its pods: {e}"))),
    };
    if list.is_empty() {
        return None;
    }
    let Some(pod) = list.iter().find(|p| pod_trouble(p).is_none()) else {
        return Some(Err("no relay pod is ready".into()));
    };
    let ask = async {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let container = pod
            .spec
            .as_ref()
            .and_then(|s| s.containers.first())
            .ok_or("no container")?;
        let port = container
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some("grpc"))
            .and_then(|p| u16::try_from(p.container_port).ok())
            .ok_or("no port named grpc")?;
        let serves_tls = container.args.iter().flatten().any(|a| a.starts_with("--tls-cert="));
        let tls = match serves_tls {
            false => None,
            true => {
                let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), namespace);
                let secret = secrets
                    .get("weir-hubble-ca")
                    .await
                    .map_err(|e| format!("the relay serves TLS; weir's CA (Secret weir-hubble-ca): {e}"))?;
                let pem = secret
                    .data
                    .and_then(|d| d.get("ca.crt").map(|b| b.0.clone()))
                    .ok_or("Secret weir-hubble-ca has no ca.crt")?;
                let config =
                    weir_proto::tls::ClientTls::from_ca_pem(pem, "Secret weir-hubble-ca").map_err(|e| e.to_string())?;
                Some(weir_proto::client::Tls {
                    config,
                    server_name: "relay.weir.dev".into(),
                })
            }
        };
        let mut forward = pods
            .portforward(&name, &[port])
            .await
            .map_err(|e| format!("port-forward to {name}: {e}"))?;
        let stream = forward.take_stream(port).ok_or("port-forward gave no stream")?;
        let channel = weir_proto::client::over_stream(stream, tls.as_ref())
            .await
            .map_err(|e| e.to_string())?;
        let status = ObserverClient::new(channel)
            .server_status(ServerStatusRequest::default())
            .await
            .map_err(|e| format!("ServerStatus: {}", e.message()))?
            .into_inner();
        Ok::<_, String>(RelayNodes {
            connected: status.num_connected_nodes.unwrap_or(0),
            unavailable: status.unavailable_nodes,
        })
    };
    Some(
        tokio::time::timeout(std::time::Duration::from_secs(10), ask)
            .await
            .unwrap_or_else(|_| Err("no answer within 10s".into())),
    )
}

/// Reads weir's objects in `namespace` and the Nodes; prints the report
/// and its problems. `Ok(false)` when something is not ready.
pub async fn status(kubeconfig: Option<&std::path::Path>, namespace: &str) -> Result<bool> {
    use kube::api::{Api, ListParams};
    let client = weir_k8s::client(kubeconfig)
        .await
        .context("connecting to the API server")?;
    let ds: Api<DaemonSet> = Api::namespaced(client.clone(), namespace);
    let deps: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let nodes: Api<Node> = Api::all(client.clone());
    let relay = deps.get_opt("weir-relay").await?;
    let relay_nodes = match &relay {
        Some(_) => relay_nodes(&client, namespace).await,
        None => None,
    };
    let objects = Objects {
        agents: ds.get_opt("weir-agent").await?,
        operator: deps.get_opt("weir-operator").await?,
        relay,
        agent_pods: pods
            .list(&ListParams::default().labels("app.kubernetes.io/name=weir-agent"))
            .await?
            .items,
        nodes: nodes.list(&ListParams::default()).await?.items,
        relay_nodes,
    };
    let r = report(&objects);
    for l in &r.lines {
        println!("{l}");
    }
    if r.problems.is_empty() {
        println!("\nweir is ready");
    } else {
        println!("\nnot ready:");
        for p in &r.problems {
            println!("  {p}");
        }
    }
    Ok(r.problems.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from_json<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
        serde_json::from_value(v).expect("object")
    }

    fn node(name: &str, ready: bool, message: &str) -> Node {
        from_json(
            serde_json::json!({"metadata": {"name": name}, "status": {"conditions": [
            {"type": "Ready", "status": if ready { "True" } else { "False" }, "message": message}]}}),
        )
    }

    fn agent(node: &str, ready: bool) -> Pod {
        from_json(serde_json::json!({
            "metadata": {"name": format!("weir-agent-{node}")},
            "spec": {"nodeName": node, "containers": [{"name": "agent", "image": "ghcr.io/weir-dev/weir:0.1.0"}]},
            "status": {"phase": "Running",
                "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}],
                "containerStatuses": [{"name": "agent", "ready": ready, "restartCount": 2, "image": "", "imageID": "",
                    "state": if ready { serde_json::json!({"running": {}}) }
                             else { serde_json::json!({"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 10s"}}) }}]}
        }))
    }

    fn installed(ready: i32) -> Objects {
        Objects {
            agents: Some(from_json(serde_json::json!({"metadata": {"name": "weir-agent"},
                "status": {"desiredNumberScheduled": 2, "numberReady": ready, "numberAvailable": ready,
                           "currentNumberScheduled": 2, "numberMisscheduled": 0, "updatedNumberScheduled": 2}}))),
            operator: Some(from_json(serde_json::json!({"metadata": {"name": "weir-operator"},
                "spec": {"replicas": 2, "selector": {}, "template": {}},
                "status": {"readyReplicas": 2, "availableReplicas": 2}}))),
            relay: Some(from_json(serde_json::json!({"metadata": {"name": "weir-relay"},
                "spec": {"replicas": 1, "selector": {}, "template": {}},
                "status": {"readyReplicas": 1, "availableReplicas": 1}}))),
            agent_pods: vec![agent("n1", true), agent("n2", ready == 2)],
            nodes: vec![
                node("n1", true, "kubelet is posting ready status"),
                node(
                    "n2",
                    ready == 2,
                    "container runtime network not ready: NetworkReady=false reason:NetworkPluginNotReady message:Network plugin returns error: cni plugin not initialized",
                ),
            ],
            relay_nodes: Some(Ok(RelayNodes {
                connected: ready as u32,
                unavailable: (ready < 2).then(|| "n2".to_owned()).into_iter().collect(),
            })),
        }
    }

    #[test]
    fn a_ready_install_has_no_problems() {
        let r = report(&installed(2));
        assert_eq!(r.problems, Vec::<String>::new());
        assert!(r.lines[0].contains("desired 2, ready 2"), "{:?}", r.lines);
        assert!(
            r.lines.iter().any(|l| l.contains("2 of 2 nodes connected")),
            "{:?}",
            r.lines
        );
        assert!(
            r.lines
                .iter()
                .any(|l| l.starts_with("n2") && l.contains("0.1.0") && l.ends_with("ready"))
        );
    }

    #[test]
    fn what_is_not_ready_is_explained() {
        let r = report(&installed(1));
        let all = r.problems.join("\n");
        assert!(all.contains("weir-agent: 1 of 2 agents ready"), "{all}");
        assert!(all.contains("weir-relay: nodes unavailable: n2"), "{all}");
        assert!(all.contains("CrashLoopBackOff: back-off 10s"), "{all}");
        assert!(
            all.contains("node n2 NotReady") && all.contains("cni plugin not initialized"),
            "{all}"
        );
        assert!(
            r.lines
                .iter()
                .any(|l| l.starts_with("n2") && l.contains("no CNI config"))
        );
    }

    #[test]
    fn nothing_installed_says_how_to_install() {
        let r = report(&Objects {
            nodes: vec![node("n1", false, "cni plugin not initialized")],
            ..Default::default()
        });
        assert!(
            r.problems[0].contains("kubectl apply -f install/weir.yaml"),
            "{:?}",
            r.problems
        );
        assert!(r.problems.iter().any(|p| p.contains("no weir-agent pod")));
    }

    #[test]
    fn a_relay_that_knows_fewer_nodes_than_agents_is_not_ready() {
        let r = report(&Objects {
            relay_nodes: Some(Ok(RelayNodes {
                connected: 0,
                unavailable: vec![],
            })),
            ..installed(2)
        });
        assert_eq!(
            r.problems,
            ["weir-relay: reaches 0 of 2 agents (peers not yet discovered)"]
        );
    }

    #[test]
    fn a_relay_that_cannot_be_asked_is_a_problem() {
        let r = report(&Objects {
            relay_nodes: Some(Err("no relay pod is ready".into())),
            ..installed(2)
        });
        assert_eq!(
            r.problems,
            ["weir-relay: cannot ask it for its nodes: no relay pod is ready"]
        );
    }
}
