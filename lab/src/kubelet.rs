//! `weir-lab kubelet` (started by `up` with `controlPlane: kubernetes`):
//! the kubelet's part for every lab node. It watches the Pods the scheduler
//! (or a `nodeName`) binds to lab nodes; for each new one it makes the
//! sandbox netns, runs the real `weir-cni` ADD exactly as a runtime does,
//! starts the pod's port servers and reports phase Running, the pod IP and
//! Ready in the pod's status.
//!
//! A pod being deleted terminates gracefully: its servers keep answering
//! while the EndpointSlice controller marks its endpoints terminating and
//! until every node's agent has applied that (each reports the newest
//! resourceVersion it has applied; `weir lab apply` waits on the same), so
//! that no agent picks it for a new connection once it stops; but never
//! past its `deletionTimestamp` (the deletion's time plus its grace period,
//! set by the API server). Then its servers stop, CNI DEL unwires it and its
//! netns goes (`apply::unwire`, as in standalone mode, whose
//! `terminate_pods` also has the agents drop a pod before its CNI DEL), and
//! the deletion is finished (grace 0), as the kubelet finishes it once the
//! containers have stopped. A pod waiting so holds up no other: each pass
//! looks at it again. A pod gone from the API server already is unwired at
//! once; one deleted before it ran has its deletion finished at once.
//!
//! What it does not do: containers, probes, node leases (the control plane
//! runs without the node lifecycle controller, `weir_control_plane` says why).
use std::collections::BTreeMap;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use weir_k8s::kube;

use super::cni;
use super::state::{LabState, PodState};
use super::{Lab, manifests, netns, serve};

/// Retry what failed this often, even if nothing changes.
const RESYNC: Duration = Duration::from_secs(2);
/// How often a pass runs while a pod waits for the agents (their applied
/// revision is polled: it is not an event the kubelet watches).
const TERMINATING_POLL: Duration = Duration::from_millis(50);

pub fn run(lab: &Lab) -> Result<()> {
    let state = lab.dir.require()?;
    let kube_state = state.kube.clone().context("the lab has no control plane")?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async move {
        let client = weir_k8s::client(Some(&kube_state.admin_kubeconfig)).await?;
        let (tx, mut rx) = tokio::sync::mpsc::channel(1);
        let pods = follow::<Pod>(Api::all(client.clone()), "pod", tx.clone());
        let slices = follow::<EndpointSlice>(Api::all(client.clone()), "endpointslice", tx);
        pods.wait_until_ready().await?;
        slices.wait_until_ready().await?;
        eprintln!("kubelet: watching pods");
        let mut terminating = BTreeMap::new();
        loop {
            if let Err(e) = sync(lab, &pods, &slices, &client, &mut terminating).await {
                eprintln!("kubelet: {e:#}");
            }
            let pause = if terminating.is_empty() {
                RESYNC
            } else {
                TERMINATING_POLL
            };
            let _ = tokio::time::timeout(pause, rx.recv()).await;
            tokio::time::sleep(Duration::from_millis(20)).await;
            while rx.try_recv().is_ok() {}
        }
    })
}

/// A reflector of every object of `K`; each event nudges the loop.
fn follow<K>(api: Api<K>, what: &'static str, tx: tokio::sync::mpsc::Sender<()>) -> Store<K>
where
    K: kube::Resource<DynamicType = ()> + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
{
    let (store, writer) = reflector::store::<K>();
    tokio::spawn(async move {
        let stream = watcher(api, watcher::Config::default())
            .default_backoff()
            .reflect(writer);
        futures_util::pin_mut!(stream);
        while let Some(e) = stream.next().await {
            if let Err(e) = e {
                eprintln!("kubelet: {what} watch failed (retrying): {e}");
            }
            let _ = tx.try_send(());
        }
    });
    store
}

fn key_of(p: &Pod) -> String {
    format!(
        "{}/{}",
        p.metadata.namespace.as_deref().unwrap_or("default"),
        p.metadata.name.as_deref().unwrap_or_default()
    )
}

/// Whether a pod being deleted may be stopped and unwired now.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Termination {
    /// Not yet, and why.
    Wait(String),
    /// No agent sends it new connections any more: every endpoint of it is
    /// terminating (or not ready) and every agent has applied that.
    Drained,
    /// Its grace period is over (`deletionTimestamp` has passed).
    GraceOver,
}

/// Whether an endpoint takes new connections, as the agents judge it
/// (`weir_agent::services::desired`): not ready or terminating, it does not.
fn takes_new_connections(e: &k8s_openapi::api::discovery::v1::Endpoint) -> bool {
    let c = e.conditions.as_ref();
    c.and_then(|c| c.ready) != Some(false) && c.and_then(|c| c.terminating) != Some(true)
}

fn resource_version(m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> u64 {
    m.resource_version.as_deref().and_then(|v| v.parse().ok()).unwrap_or(0)
}

/// Decides for a pod being deleted, from the EndpointSlices, the revision
/// each node's agent has applied (`None`: it did not say) and the time:
/// wait while an EndpointSlice has one of its endpoints taking new
/// connections, or while an agent has not applied a revision at least as
/// new as the pod's and its slices' (so the agent's model has them
/// terminating); never past the pod's `deletionTimestamp`. (When a
/// service has no ready endpoint left, the agents still send new
/// connections to its terminating ones, as kube-proxy does: nothing to
/// wait out; the pod goes once the agents have applied its state.)
fn termination(
    pod: &Pod,
    slices: &[Arc<EndpointSlice>],
    applied: &BTreeMap<String, Option<u64>>,
    now: Timestamp,
) -> Termination {
    match &pod.metadata.deletion_timestamp {
        Some(deadline) if now < deadline.0 => {}
        _ => return Termination::GraceOver,
    }
    let uid = pod.metadata.uid.as_deref();
    let mut target = resource_version(&pod.metadata);
    for slice in slices {
        let mut mine = slice
            .endpoints
            .iter()
            .filter(|e| uid.is_some() && e.target_ref.as_ref().and_then(|r| r.uid.as_deref()) == uid)
            .peekable();
        if mine.peek().is_none() {
            continue;
        }
        if mine.any(takes_new_connections) {
            return Termination::Wait(format!(
                "endpointslice {}/{} still has it ready",
                slice.metadata.namespace.as_deref().unwrap_or_default(),
                slice.metadata.name.as_deref().unwrap_or_default()
            ));
        }
        target = target.max(resource_version(&slice.metadata));
    }
    for (node, r) in applied {
        match r {
            Some(r) if *r >= target => {}
            r => return Termination::Wait(format!("the agent of {node} has applied {r:?}, not yet {target}")),
        }
    }
    Termination::Drained
}

/// The revision each node's agent has applied.
fn agents_applied(state: &LabState) -> BTreeMap<String, Option<u64>> {
    state
        .nodes
        .iter()
        .map(|(name, n)| (name.clone(), super::apply::agent_applied(&n.socket)))
        .collect()
}

/// One pass: start what is bound and not running, stop what is going and
/// may go. `terminating` holds the pods still waiting to terminate: since
/// when, and why.
async fn sync(
    lab: &Lab,
    store: &Store<Pod>,
    slices: &Store<EndpointSlice>,
    client: &kube::Client,
    terminating: &mut BTreeMap<String, (Instant, String)>,
) -> Result<()> {
    let _lock = lab.dir.lock()?;
    let mut state = lab.dir.require()?;
    let pods: BTreeMap<String, Arc<Pod>> = store.state().into_iter().map(|p| (key_of(&p), p)).collect();
    let slices = slices.state();
    let mut applied = None;
    // Going: deleted, replaced by a pod of another uid, or being deleted
    // and no longer selected by any agent (or out of grace). Decided for
    // every pod before any is stopped, so one pod's CNI DEL does not hold
    // up another's decision.
    let mut going = Vec::new();
    for (key, ps) in &state.pods {
        let live = pods
            .get(key)
            .filter(|p| p.metadata.uid.as_deref() == Some(ps.uid.as_str()));
        let Some(p) = live else {
            going.push((key.clone(), None));
            continue;
        };
        if p.metadata.deletion_timestamp.is_none() {
            continue;
        }
        let applied = applied.get_or_insert_with(|| agents_applied(&state));
        let decision = termination(p, &slices, applied, Timestamp::now());
        let (since, why) = terminating.entry(key.clone()).or_insert_with(|| {
            eprintln!("kubelet: pod {key} terminating: it serves until no agent selects it for new connections");
            (Instant::now(), String::new())
        });
        match decision {
            Termination::Wait(now) => {
                *why = now;
                continue;
            }
            Termination::Drained => eprintln!(
                "kubelet: pod {key}: no agent selects it for new connections ({:?} after it was seen terminating); stopping it",
                since.elapsed()
            ),
            Termination::GraceOver => eprintln!(
                "kubelet: pod {key}: its grace period is over ({:?} after it was seen terminating; still waiting: {why}); stopping it",
                since.elapsed()
            ),
        }
        going.push((key.clone(), Some(p.clone())));
    }
    for (key, live) in going {
        terminating.remove(&key);
        for e in stop(lab, &mut state, &key) {
            eprintln!("kubelet: stopping {key}: {e}");
        }
        if let Some(p) = live {
            finish_deletion(client, &p).await;
        }
    }
    terminating.retain(|k, _| state.pods.contains_key(k));
    // New: bound to a lab node, not being deleted, not finished (one
    // deleted before it ran has its deletion finished at once).
    for (key, pod) in &pods {
        let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) else {
            continue;
        };
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        if !state.nodes.contains_key(&node) {
            continue;
        }
        if pod.metadata.deletion_timestamp.is_some() {
            // Deleted before it ran: nothing to stop.
            if !state.pods.contains_key(key) {
                finish_deletion(client, pod).await;
            }
            continue;
        }
        if matches!(phase, Some("Succeeded" | "Failed")) {
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

/// Deletes the pod with grace 0 (its uid a precondition), as the kubelet
/// does once its containers have stopped; gone already is fine.
async fn finish_deletion(client: &kube::Client, pod: &Pod) {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let dp = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(Preconditions {
            uid: pod.metadata.uid.clone(),
            resource_version: None,
        }),
        ..Default::default()
    };
    match api.delete(name, &dp).await {
        Ok(_) | Err(kube::Error::Api(_)) => {}
        Err(e) => eprintln!("kubelet: finishing the deletion of {ns}/{name}: {e}"),
    }
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

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::ObjectReference;
    use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

    use super::*;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + secs).expect("a time")
    }

    /// A pod of uid `uid`, resourceVersion `rv`, deleted with 30 s of grace at 0.
    fn pod(uid: &str, rv: u64) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(format!("p-{uid}")),
                namespace: Some("ns".into()),
                uid: Some(uid.into()),
                resource_version: Some(rv.to_string()),
                deletion_timestamp: Some(Time(at(30))),
                deletion_grace_period_seconds: Some(30),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    /// A slice at resourceVersion `rv` with one endpoint per `(uid, ready, terminating)`.
    fn slice(rv: u64, eps: &[(&str, Option<bool>, Option<bool>)]) -> Arc<EndpointSlice> {
        Arc::new(EndpointSlice {
            metadata: ObjectMeta {
                name: Some(format!("s{rv}")),
                namespace: Some("ns".into()),
                resource_version: Some(rv.to_string()),
                ..Default::default()
            },
            address_type: "IPv4".into(),
            endpoints: eps
                .iter()
                .map(|(uid, ready, terminating)| Endpoint {
                    addresses: vec!["10.0.0.1".into()],
                    conditions: Some(EndpointConditions {
                        ready: *ready,
                        serving: Some(true),
                        terminating: *terminating,
                    }),
                    target_ref: Some(ObjectReference {
                        kind: Some("Pod".into()),
                        uid: Some((*uid).into()),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
    }

    fn applied(revs: &[Option<u64>]) -> BTreeMap<String, Option<u64>> {
        revs.iter().enumerate().map(|(i, r)| (format!("n{i}"), *r)).collect()
    }

    #[test]
    fn waits_while_a_slice_has_the_pod_ready() {
        let p = pod("u1", 10);
        let slices = [slice(9, &[("u1", Some(true), Some(false)), ("u2", Some(true), None)])];
        let d = termination(&p, &slices, &applied(&[Some(100), Some(100)]), at(1));
        assert!(matches!(&d, Termination::Wait(why) if why.contains("ns/s9")), "{d:?}");
        // No conditions at all reads as ready, as the agents read it.
        let slices = [slice(9, &[("u1", None, None)])];
        let d = termination(&p, &slices, &applied(&[Some(100)]), at(1));
        assert!(matches!(d, Termination::Wait(_)), "{d:?}");
    }

    #[test]
    fn waits_until_every_agent_has_applied_the_terminating_endpoint() {
        let p = pod("u1", 10);
        let slices = [
            slice(12, &[("u1", Some(false), Some(true)), ("u2", Some(true), None)]),
            slice(11, &[("u3", Some(true), None)]),
        ];
        let d = termination(&p, &slices, &applied(&[Some(12), Some(11)]), at(1));
        assert_eq!(
            d,
            Termination::Wait("the agent of n1 has applied Some(11), not yet 12".into())
        );
        let d = termination(&p, &slices, &applied(&[Some(12), None]), at(1));
        assert!(matches!(d, Termination::Wait(_)), "an agent that does not say: {d:?}");
        let d = termination(&p, &slices, &applied(&[Some(12), Some(13)]), at(1));
        assert_eq!(d, Termination::Drained);
    }

    #[test]
    fn a_pod_in_no_slice_waits_for_the_agents_to_see_it_go() {
        let p = pod("u1", 20);
        let slices = [slice(12, &[("u2", Some(true), None)])];
        let d = termination(&p, &slices, &applied(&[Some(19)]), at(1));
        assert!(matches!(d, Termination::Wait(_)), "{d:?}");
        assert_eq!(
            termination(&p, &slices, &applied(&[Some(20)]), at(1)),
            Termination::Drained
        );
        assert_eq!(termination(&p, &[], &applied(&[]), at(1)), Termination::Drained);
    }

    #[test]
    fn never_past_the_grace_period() {
        let p = pod("u1", 10);
        let slices = [slice(9, &[("u1", Some(true), None)])];
        assert_eq!(
            termination(&p, &slices, &applied(&[None]), at(30)),
            Termination::GraceOver
        );
        // Deleted with no grace: at once.
        let mut p = pod("u1", 10);
        p.metadata.deletion_timestamp = Some(Time(at(0)));
        assert_eq!(
            termination(&p, &slices, &applied(&[None]), at(0)),
            Termination::GraceOver
        );
    }
}
