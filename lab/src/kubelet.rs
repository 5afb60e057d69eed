//! `weir-lab kubelet` (started by `up` with `controlPlane: kubernetes`):
//! the kubelet's part for every lab node. It watches the Pods the scheduler
//! (or a `nodeName`) binds to lab nodes; for each new one it makes the
//! sandbox netns, runs the real `weir-cni` ADD exactly as a runtime does,
//! starts the pod's port servers and reports phase Running, the pod IP and
//! Ready in the pod's status. A pod being deleted (or gone) is unwired with
//! CNI DEL, its netns removed, and the deletion finished (grace 0), as the
//! kubelet finishes it once the containers have stopped.
//!
//! What it does not do: containers, probes, node leases (the control plane
//! runs without the node lifecycle controller, `weir_k8s::local` says why).
use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use weir_k8s::kube;

use super::cni;
use super::state::{LabState, PodState};
use super::{Lab, manifests, netns, serve};

/// Retry what failed this often, even if nothing changes.
const RESYNC: Duration = Duration::from_secs(2);

pub fn run(lab: &Lab) -> Result<()> {
    let state = lab.dir.require()?;
    let kube_state = state.kube.clone().context("the lab has no control plane")?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async move {
        let client = weir_k8s::client(Some(&kube_state.admin_kubeconfig)).await?;
        let api: Api<Pod> = Api::all(client.clone());
        let (store, writer) = reflector::store::<Pod>();
        let (tx, mut rx) = tokio::sync::mpsc::channel(1);
        let watch = api.clone();
        tokio::spawn(async move {
            let stream = watcher(watch, watcher::Config::default())
                .default_backoff()
                .reflect(writer);
            futures_util::pin_mut!(stream);
            while let Some(e) = stream.next().await {
                if let Err(e) = e {
                    eprintln!("kubelet: pod watch failed (retrying): {e}");
                }
                let _ = tx.try_send(());
            }
        });
        store.wait_until_ready().await?;
        eprintln!("kubelet: watching pods");
        loop {
            if let Err(e) = sync(lab, &store, &client).await {
                eprintln!("kubelet: {e:#}");
            }
            let _ = tokio::time::timeout(RESYNC, rx.recv()).await;
            tokio::time::sleep(Duration::from_millis(20)).await;
            while rx.try_recv().is_ok() {}
        }
    })
}

fn key_of(p: &Pod) -> String {
    format!(
        "{}/{}",
        p.metadata.namespace.as_deref().unwrap_or("default"),
        p.metadata.name.as_deref().unwrap_or_default()
    )
}

/// One pass: start what is bound and not running, stop what is going.
async fn sync(lab: &Lab, store: &Store<Pod>, client: &kube::Client) -> Result<()> {
    let _lock = lab.dir.lock()?;
    let mut state = lab.dir.require()?;
    let pods: BTreeMap<String, std::sync::Arc<Pod>> = store.state().into_iter().map(|p| (key_of(&p), p)).collect();
    // Going: deleted, replaced by a pod of another uid, or being deleted.
    for (key, ps) in state.pods.clone() {
        let live = pods
            .get(&key)
            .filter(|p| p.metadata.uid.as_deref() == Some(ps.uid.as_str()));
        let going = live.is_none_or(|p| p.metadata.deletion_timestamp.is_some());
        if !going {
            continue;
        }
        for e in stop(lab, &mut state, &key) {
            eprintln!("kubelet: stopping {key}: {e}");
        }
        if let Some(p) = live {
            let api: Api<Pod> = Api::namespaced(client.clone(), &ps.namespace);
            let dp = DeleteParams {
                grace_period_seconds: Some(0),
                preconditions: Some(Preconditions {
                    uid: p.metadata.uid.clone(),
                    resource_version: None,
                }),
                ..Default::default()
            };
            match api.delete(&ps.name, &dp).await {
                Ok(_) | Err(kube::Error::Api(_)) => {}
                Err(e) => eprintln!("kubelet: finishing the deletion of {key}: {e}"),
            }
        }
    }
    // New: bound to a lab node, not being deleted, not finished.
    for (key, pod) in &pods {
        let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) else {
            continue;
        };
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        if !state.nodes.contains_key(&node)
            || pod.metadata.deletion_timestamp.is_some()
            || matches!(phase, Some("Succeeded" | "Failed"))
        {
            continue;
        }
        let ip = match state.pods.get(key).and_then(|p| p.ip.clone()) {
            Some(ip) => ip,
            None => match start(lab, &mut state, pod, &node) {
                Ok(ip) => {
                    println!("kubelet: pod {key} on {node}: {ip}");
                    ip
                }
                Err(e) => {
                    eprintln!("kubelet: pod {key} on {node}: {e:#}");
                    continue;
                }
            },
        };
        let reported =
            pod.status.as_ref().and_then(|s| s.pod_ip.as_deref()) == Some(ip.as_str()) && phase == Some("Running");
        if !reported {
            report_running(client, &state, pod, &node, &ip).await?;
        }
    }
    Ok(())
}

/// Sandbox, CNI ADD, servers; the pod is recorded before anything is made,
/// so `down` can always clean up. Returns the pod's IP.
fn start(lab: &Lab, state: &mut LabState, pod: &Pod, node: &str) -> Result<String> {
    let ns = pod.metadata.namespace.clone().unwrap_or_else(|| "default".into());
    let name = pod.metadata.name.clone().unwrap_or_default();
    let key = format!("{ns}/{name}");
    let uid = pod
        .metadata
        .uid
        .clone()
        .context("a pod from the API server has a uid")?;
    let pod_netns = netns::pod_netns_name(&state.name, &ns, &name);
    let container_id: String = uid.chars().filter(char::is_ascii_alphanumeric).collect();
    if !state.nodes.contains_key(node) {
        anyhow::bail!("node {node} is not in the lab");
    }
    state.pods.insert(
        key.clone(),
        PodState {
            namespace: ns.clone(),
            name: name.clone(),
            node: node.to_owned(),
            netns: pod_netns.clone(),
            container_id,
            uid,
            ip: None,
            servers: Vec::new(),
        },
    );
    lab.dir.save(state)?;
    let inv = super::apply::invocation(lab, state, &state.pods[&key])?;
    let made = (|| -> Result<(String, Vec<super::state::Proc>)> {
        if netns::exists(&pod_netns) {
            // A sandbox of a run that did not finish: start over.
            let _ = cni::del(&inv);
            netns::delete(&pod_netns)?;
        }
        netns::create(&pod_netns)?;
        let ip = cni::add(&inv)?;
        let ports = manifests::container_ports(pod);
        let mut servers = Vec::new();
        if !ports.is_empty() {
            let exe = std::env::current_exe().context("locating the weir binary")?;
            let log = lab.dir.logs().join(format!("serve-{ns}-{name}.log"));
            servers.push(serve::start(
                Command::new(exe),
                &inv.pod_netns_path,
                &name,
                &ports,
                false,
                format!("serve {key}"),
                &log,
            )?);
        }
        Ok((ip, servers))
    })();
    match made {
        Ok((ip, servers)) => {
            if let Some(ps) = state.pods.get_mut(&key) {
                ps.ip = Some(ip.clone());
                ps.servers = servers;
            }
            lab.dir.save(state)?;
            Ok(ip)
        }
        Err(e) => {
            for err in stop(lab, state, &key) {
                eprintln!("kubelet: rolling back {key}: {err}");
            }
            Err(e)
        }
    }
}

/// Servers, CNI DEL, netns, record; keeps going, returns every error.
fn stop(lab: &Lab, state: &mut LabState, key: &str) -> Vec<String> {
    super::apply::unwire(lab, state, key)
}

async fn report_running(client: &kube::Client, state: &LabState, pod: &Pod, node: &str, ip: &str) -> Result<()> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    let host_ip = state
        .topology
        .nodes
        .iter()
        .position(|n| n.name == node)
        .map(|i| state.topology.node_ip(i).to_string())
        .unwrap_or_default();
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let cond = |t: &str| serde_json::json!({"type": t, "status": "True", "lastTransitionTime": now});
    // Each container "runs": kubectl's READY column counts these.
    let containers: Vec<serde_json::Value> = pod
        .spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .map(|c| {
            serde_json::json!({"name": c.name, "image": c.image.clone().unwrap_or_default(), "imageID": "",
                "ready": true, "started": true, "restartCount": 0, "state": {"running": {"startedAt": now}}})
        })
        .collect();
    let status = serde_json::json!({"status": {
        "phase": "Running",
        "podIP": ip,
        "podIPs": [{"ip": ip}],
        "hostIP": host_ip,
        "hostIPs": [{"ip": host_ip}],
        "startTime": now,
        "conditions": [cond("PodScheduled"), cond("Initialized"), cond("ContainersReady"), cond("Ready")],
        "containerStatuses": containers,
    }});
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .with_context(|| format!("reporting {ns}/{name} running"))?;
    Ok(())
}
