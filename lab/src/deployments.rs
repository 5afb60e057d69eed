//! Deployments the lab's way: no ReplicaSets and no rolling updates, just
//! `spec.replicas` pods named `<deployment>-<i>`. Pure: which pods to create
//! and which to delete, given the pods the Deployment already owns.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentStatus};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
pub use weir_model::selector_matches;

/// The label Kubernetes puts on a Deployment's pods, a hash of the template.
pub const LABEL_TEMPLATE_HASH: &str = "pod-template-hash";

/// Why a Deployment cannot be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeploymentError {
    /// `spec.selector` is missing or selects nothing.
    #[error("spec.selector: required, and must not be empty")]
    NoSelector,
    /// The selector does not select the template's own labels.
    #[error("spec.template.metadata.labels: `selector` does not match template `labels`")]
    SelectorMismatch,
    /// Negative replicas.
    #[error("spec.replicas {0}: must be 0 or more")]
    BadReplicas(i32),
    /// A pod name would be too long.
    #[error("metadata.name {0:?}: too long for pod names `<name>-<i>`")]
    NameTooLong(String),
}

/// Default and validate a Deployment as the API server would (replicas 1
/// when unset; the selector must select the template). `old` is the stored
/// version; `generation` counts spec changes.
pub fn admit(d: &mut Deployment, old: Option<&Deployment>) -> Result<(), DeploymentError> {
    let name = d.metadata.name.clone().unwrap_or_default();
    if name.len() > 58 {
        return Err(DeploymentError::NameTooLong(name));
    }
    let spec = d.spec.get_or_insert_with(Default::default);
    let replicas = *spec.replicas.get_or_insert(1);
    if replicas < 0 {
        return Err(DeploymentError::BadReplicas(replicas));
    }
    let sel = &spec.selector;
    if sel.match_labels.as_ref().is_none_or(BTreeMap::is_empty)
        && sel.match_expressions.as_ref().is_none_or(Vec::is_empty)
    {
        return Err(DeploymentError::NoSelector);
    }
    let labels = spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    if !selector_matches(sel, &labels) {
        return Err(DeploymentError::SelectorMismatch);
    }
    let generation = match old {
        Some(o) if o.spec == d.spec => o.metadata.generation.unwrap_or(1),
        Some(o) => o.metadata.generation.unwrap_or(1) + 1,
        None => 1,
    };
    d.metadata.generation = Some(generation);
    if let Some(uid) = old.and_then(|o| o.metadata.uid.clone()) {
        d.metadata.uid = Some(uid);
    }
    d.status = old.and_then(|o| o.status.clone());
    Ok(())
}

/// `pod-template-hash` as Kubernetes spells it: FNV-1a (32 bit) of the
/// template, its decimal digits mapped onto a vowel-free alphabet.
pub fn template_hash(d: &Deployment) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let template = d
        .spec
        .as_ref()
        .map(|s| serde_json::to_string(&s.template).unwrap_or_default())
        .unwrap_or_default();
    let mut h: u32 = 0x811c_9dc5;
    for b in template.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h.to_string()
        .bytes()
        .map(|b| ALPHABET[usize::from(b) % ALPHABET.len()] as char)
        .collect()
}

/// Pod `index` of a Deployment, from its template.
pub fn pod(d: &Deployment, index: i32) -> Pod {
    let name = d.metadata.name.clone().unwrap_or_default();
    let template = d.spec.as_ref().map(|s| s.template.clone()).unwrap_or_default();
    let tmeta = template.metadata.unwrap_or_default();
    let mut labels = tmeta.labels.unwrap_or_default();
    labels.insert(LABEL_TEMPLATE_HASH.into(), template_hash(d));
    Pod {
        metadata: ObjectMeta {
            name: Some(format!("{name}-{index}")),
            namespace: d.metadata.namespace.clone(),
            labels: Some(labels),
            annotations: tmeta.annotations,
            owner_references: Some(vec![owner_ref(d)]),
            ..Default::default()
        },
        spec: template.spec,
        status: None,
    }
}

fn owner_ref(d: &Deployment) -> OwnerReference {
    OwnerReference {
        api_version: "apps/v1".into(),
        kind: "Deployment".into(),
        name: d.metadata.name.clone().unwrap_or_default(),
        uid: d.metadata.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// Whether `pod` belongs to the Deployment named `name`.
pub fn owned_by(pod: &Pod, name: &str) -> bool {
    pod.metadata
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.kind == "Deployment" && o.name == name)
}

/// Pods to delete (highest index first) and to create, to get from `existing`
/// (every pod of the namespace) to what `d` asks for.
#[derive(Debug, Default, PartialEq)]
pub struct ScalePlan {
    pub delete: Vec<String>,
    pub create: Vec<Pod>,
}

/// Pods beyond `replicas` go; pods of an older template, or never wired
/// (no IP), are replaced; missing indices are created.
pub fn plan(d: &Deployment, existing: &[Pod]) -> ScalePlan {
    let name = d.metadata.name.clone().unwrap_or_default();
    let replicas = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1).max(0);
    let hash = template_hash(d);
    let index_of = |p: &Pod| {
        let suffix = p.metadata.name.as_deref()?.strip_prefix(&format!("{name}-"))?;
        suffix.parse::<i32>().ok().filter(|i| i.to_string() == suffix)
    };
    let mut keep = std::collections::BTreeSet::new();
    let mut delete: Vec<(i32, String)> = Vec::new();
    for p in existing.iter().filter(|p| owned_by(p, &name)) {
        let pod_name = p.metadata.name.clone().unwrap_or_default();
        let current = p.metadata.labels.as_ref().and_then(|l| l.get(LABEL_TEMPLATE_HASH)) == Some(&hash);
        let wired = p.status.as_ref().is_some_and(|s| s.pod_ip.is_some());
        match index_of(p) {
            Some(i) if i < replicas && current && wired && p.metadata.deletion_timestamp.is_none() => {
                keep.insert(i);
            }
            Some(i) => delete.push((i, pod_name)),
            None => delete.push((i32::MAX, pod_name)),
        }
    }
    delete.sort_by(|a, b| b.cmp(a));
    ScalePlan {
        delete: delete.into_iter().map(|(_, n)| n).collect(),
        create: (0..replicas).filter(|i| !keep.contains(i)).map(|i| pod(d, i)).collect(),
    }
}

/// The status Kubernetes would report, from the pods the Deployment owns.
pub fn status(d: &Deployment, existing: &[Pod]) -> DeploymentStatus {
    let name = d.metadata.name.clone().unwrap_or_default();
    let hash = template_hash(d);
    let owned: Vec<&Pod> = existing
        .iter()
        .filter(|p| owned_by(p, &name) && p.metadata.deletion_timestamp.is_none())
        .collect();
    let count = |f: &dyn Fn(&Pod) -> bool| i32::try_from(owned.iter().filter(|p| f(p)).count()).unwrap_or(i32::MAX);
    let ready = count(&|p| p.status.as_ref().is_some_and(|s| s.pod_ip.is_some()) && super::controller::pod_ready(p));
    let replicas = count(&|_| true);
    let wanted = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    DeploymentStatus {
        observed_generation: d.metadata.generation,
        replicas: Some(replicas),
        updated_replicas: Some(count(&|p| {
            p.metadata.labels.as_ref().and_then(|l| l.get(LABEL_TEMPLATE_HASH)) == Some(&hash)
        })),
        ready_replicas: Some(ready),
        available_replicas: Some(ready),
        unavailable_replicas: Some((wanted - ready).max(0)),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

    const WEB: &str = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web, namespace: demo, uid: d-uid}\nspec:\n  replicas: 3\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n    spec: {containers: [{name: web, image: x, ports: [{name: http, containerPort: 80}]}]}\n";

    fn deploy(replicas: i32) -> Deployment {
        let mut d: Deployment = serde_yaml_ng::from_str(WEB).unwrap();
        d.spec.as_mut().unwrap().replicas = Some(replicas);
        d
    }

    fn running(mut p: Pod, ip: &str) -> Pod {
        super::super::manifests::set_running(&mut p, ip);
        p
    }

    fn names(pods: &[Pod]) -> Vec<String> {
        pods.iter().map(|p| p.metadata.name.clone().unwrap()).collect()
    }

    #[test]
    fn expands_into_named_pods_with_template_labels() {
        let d = deploy(3);
        let p = plan(&d, &[]);
        assert!(p.delete.is_empty());
        assert_eq!(names(&p.create), ["web-0", "web-1", "web-2"]);
        let pod0 = &p.create[0];
        let labels = pod0.metadata.labels.clone().unwrap();
        assert_eq!(labels["app"], "web");
        assert_eq!(labels[LABEL_TEMPLATE_HASH], template_hash(&d));
        assert_eq!(pod0.metadata.namespace.as_deref(), Some("demo"));
        assert!(owned_by(pod0, "web"));
        assert_eq!(pod0.metadata.owner_references.as_ref().unwrap()[0].uid, "d-uid");
        assert_eq!(
            pod0.spec.as_ref().unwrap().containers[0].ports.as_ref().unwrap()[0].container_port,
            80
        );
    }

    #[test]
    fn scales_down_highest_first_and_up_by_missing_indices() {
        let d3 = deploy(3);
        let pods: Vec<Pod> = plan(&d3, &[])
            .create
            .into_iter()
            .enumerate()
            .map(|(i, p)| running(p, &format!("10.0.0.{i}")))
            .collect();
        assert_eq!(plan(&d3, &pods), ScalePlan::default(), "nothing to do");
        let down = plan(&deploy(1), &pods);
        assert_eq!(down.delete, ["web-2", "web-1"]);
        assert!(down.create.is_empty());
        let up = plan(&deploy(5), &pods[..2]);
        assert!(up.delete.is_empty());
        assert_eq!(names(&up.create), ["web-2", "web-3", "web-4"]);
        let zero = plan(&deploy(0), &pods);
        assert_eq!(zero.delete, ["web-2", "web-1", "web-0"]);
    }

    #[test]
    fn replaces_pods_of_another_template_or_never_wired() {
        let d = deploy(2);
        let mut pods: Vec<Pod> = plan(&d, &[]).create;
        pods[0] = running(pods[0].clone(), "10.0.0.1"); // web-1 stays unwired
        let mut changed = deploy(2);
        changed
            .spec
            .as_mut()
            .unwrap()
            .template
            .metadata
            .as_mut()
            .unwrap()
            .labels
            .as_mut()
            .unwrap()
            .insert("v".into(), "2".into());
        assert_ne!(template_hash(&d), template_hash(&changed));
        let p = plan(&changed, &pods);
        assert_eq!(p.delete, ["web-1", "web-0"]);
        assert_eq!(names(&p.create), ["web-0", "web-1"]);
        let p = plan(&d, &pods);
        assert_eq!(p.delete, ["web-1"]);
        assert_eq!(names(&p.create), ["web-1"]);
        // A pod of another deployment is never touched.
        let mut stranger = pods[0].clone();
        stranger.metadata.owner_references.as_mut().unwrap()[0].name = "other".into();
        assert_eq!(plan(&deploy(0), &[stranger]), ScalePlan::default());
    }

    #[test]
    fn admit_defaults_validates_and_counts_generations() {
        let mut d: Deployment = serde_yaml_ng::from_str(&WEB.replace("  replicas: 3\n", "")).unwrap();
        admit(&mut d, None).unwrap();
        assert_eq!(d.spec.as_ref().unwrap().replicas, Some(1));
        assert_eq!(d.metadata.generation, Some(1));
        let mut same = d.clone();
        admit(&mut same, Some(&d)).unwrap();
        assert_eq!(same.metadata.generation, Some(1));
        let mut scaled = deploy(4);
        admit(&mut scaled, Some(&d)).unwrap();
        assert_eq!(scaled.metadata.generation, Some(2));

        let mut bad: Deployment =
            serde_yaml_ng::from_str(&WEB.replace("matchLabels: {app: web}", "matchLabels: {app: api}")).unwrap();
        assert_eq!(admit(&mut bad, None), Err(DeploymentError::SelectorMismatch));
        let mut none: Deployment = serde_yaml_ng::from_str(&WEB.replace("{matchLabels: {app: web}}", "{}")).unwrap();
        assert_eq!(admit(&mut none, None), Err(DeploymentError::NoSelector));
        let mut neg = deploy(-1);
        assert_eq!(admit(&mut neg, None), Err(DeploymentError::BadReplicas(-1)));
    }

    #[test]
    fn match_expressions() {
        let sel: LabelSelector = serde_yaml_ng::from_str(
            "matchExpressions: [{key: app, operator: In, values: [web, api]}, {key: canary, operator: DoesNotExist}]",
        )
        .unwrap();
        let l = |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        assert!(selector_matches(&sel, &l(&[("app", "api")])));
        assert!(!selector_matches(&sel, &l(&[("app", "db")])));
        assert!(!selector_matches(&sel, &l(&[("app", "web"), ("canary", "1")])));
    }

    #[test]
    fn status_counts_ready_pods() {
        let d = deploy(3);
        let mut pods = plan(&d, &[]).create;
        pods[0] = running(pods[0].clone(), "10.0.0.1");
        pods[1] = running(pods[1].clone(), "10.0.0.2");
        let s = status(&d, &pods);
        assert_eq!(
            (s.replicas, s.ready_replicas, s.updated_replicas, s.unavailable_replicas),
            (Some(3), Some(2), Some(3), Some(1))
        );
    }
}
