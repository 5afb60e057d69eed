//! Policy status: on every `WeirNetworkPolicy`, `WeirClusterNetworkPolicy`
//! and (once its upstream CRD is served) `ClusterNetworkPolicy`, condition
//! `Accepted` (`True`, or `False` with reason `Invalid` and the message the
//! agents log) and the generation it was judged on (on the condition only
//! for `ClusterNetworkPolicy`, whose status schema has nothing else). The judging is the model's
//! (`weir_model::policy::status`): the same read and parse the agents do.
//!
//! A kube-runtime Controller per kind, over untyped objects: a policy that
//! does not fit its type (a loosened schema let it in) is reported as
//! invalid, it does not fail the watch. The status subresource is written
//! with server-side apply (field manager `weir-operator`), only when it
//! would change, so the write's own watch event ends there.
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use serde_json::json;
use weir_k8s::kube;
use weir_model::policy::PolicyKind;
use weir_model::policy::crd::PolicyStatus;
use weir_model::policy::status::{self, Verdict};

use crate::leader::{NotLeading, Term};

/// The field manager of the operator's writes.
pub const MANAGER: &str = "weir-operator";
/// A failed write is tried again after this.
const RETRY: Duration = Duration::from_secs(2);
/// How often a kind whose CRD is not installed is looked for again.
const NOT_SERVED_POLL: Duration = Duration::from_secs(10);

/// A status not written.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API server refused the write or could not be reached.
    #[error("status of {object}")]
    Write {
        object: String,
        #[source]
        source: kube::Error,
    },
    /// This replica's term ended: no writes.
    #[error(transparent)]
    NotLeading(#[from] NotLeading),
    /// Both controllers ended: only when the runtime shuts down.
    #[error("the policy status controllers ended")]
    Ended,
}

struct Ctx {
    client: kube::Client,
    kind: PolicyKind,
    resource: ApiResource,
    term: Term,
}

/// Runs until the process ends (or the task is aborted: leadership lost).
pub async fn run(client: kube::Client, term: Term) -> Result<Infallible, Error> {
    futures_util::future::join3(
        controller(client.clone(), PolicyKind::WeirNetworkPolicy, term.clone()),
        controller(client.clone(), PolicyKind::WeirClusterNetworkPolicy, term.clone()),
        when_served(client, PolicyKind::ClusterNetworkPolicy, term),
    )
    .await;
    Err(Error::Ended)
}

/// The controller of a kind whose CRD is not weir's (upstream's
/// ClusterNetworkPolicy: the cluster may not have it), started once the
/// API server serves the kind; until then, looked for every
/// [`NOT_SERVED_POLL`] and said once.
async fn when_served(client: kube::Client, kind: PolicyKind, term: Term) {
    let resource = weir_k8s::resource(kind.kind());
    let api = Api::<DynamicObject>::all_with(client.clone(), &resource);
    let (mut said, mut failed) = (false, false);
    loop {
        match api.list_metadata(&kube::api::ListParams::default().limit(1)).await {
            Ok(_) => break,
            Err(kube::Error::Api(s)) if s.code == 404 => {
                if !said {
                    tracing::info!(kind = kind.name(), resource = %resource.plural,
                        "not served (CRD not installed): its status waits until it is");
                    said = true;
                }
            }
            // Not an answer either way (API server unreachable, a token
            // not yet valid): ask again rather than start a watch on a
            // resource that may not exist.
            Err(e) => {
                if !failed {
                    tracing::warn!(kind = kind.name(), error = %weir_error::Report(&e),
                        "cannot tell whether the kind is served yet; asking again");
                    failed = true;
                }
            }
        }
        tokio::time::sleep(NOT_SERVED_POLL).await;
    }
    controller(client, kind, term).await
}

async fn controller(client: kube::Client, kind: PolicyKind, term: Term) {
    let resource = weir_k8s::resource(kind.kind());
    let api = Api::<DynamicObject>::all_with(client.clone(), &resource);
    let ctx = Arc::new(Ctx {
        client,
        kind,
        resource: resource.clone(),
        term,
    });
    Controller::new_with(api, watcher::Config::default(), resource)
        .run(reconcile, error_policy, ctx)
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(kind = kind.name(), error = %weir_error::Report(&e), "policy status");
            }
        })
        .await;
}

fn describe(obj: &DynamicObject) -> String {
    match obj.namespace() {
        Some(ns) => format!("{ns}/{}", obj.name_any()),
        None => obj.name_any(),
    }
}

#[tracing::instrument(skip_all, fields(kind = ctx.kind.name(), object = %describe(&obj)))]
async fn reconcile(obj: Arc<DynamicObject>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let value = serde_json::to_value(obj.as_ref()).unwrap_or_default();
    let old: Option<PolicyStatus> = value.get("status").and_then(|s| serde_json::from_value(s.clone()).ok());
    let verdict = status::judge(ctx.kind, value);
    let generation = obj.meta().generation;
    let mut desired = status::desired(&verdict, generation, old.as_ref(), Time(Timestamp::now()));
    if ctx.kind == PolicyKind::ClusterNetworkPolicy {
        // Upstream's status has conditions only: a field its schema does
        // not declare would fail the apply.
        desired.observed_generation = None;
    }
    if status::up_to_date(old.as_ref(), &desired) {
        return Ok(Action::await_change());
    }
    let api: Api<DynamicObject> = match obj.namespace() {
        Some(ns) => Api::namespaced_with(ctx.client.clone(), &ns, &ctx.resource),
        None => Api::all_with(ctx.client.clone(), &ctx.resource),
    };
    ctx.term.check()?;
    let patch = json!({
        "apiVersion": ctx.resource.api_version,
        "kind": ctx.resource.kind,
        "status": desired,
    });
    api.patch_status(
        &obj.name_any(),
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map_err(|source| Error::Write {
        object: describe(&obj),
        source,
    })?;
    match &verdict {
        Verdict::Accepted => tracing::info!(?generation, "policy accepted"),
        Verdict::Invalid(why) => {
            tracing::warn!(?generation, reason = %why, "policy invalid: the agents deny in its place")
        }
    }
    Ok(Action::await_change())
}

fn error_policy(_obj: Arc<DynamicObject>, e: &Error, _ctx: Arc<Ctx>) -> Action {
    tracing::warn!(error = %weir_error::Report(&e), "policy status not written; retried");
    Action::requeue(RETRY)
}
