//! The Observer API's certificates (`--hubble-certs`): weir's CA and the
//! certificates it signs, kept in Secrets of the operator's namespace and
//! renewed before they expire. The agents mount the server's, the relay
//! the client's (and, with TLS on its own port, the relay server's); they
//! re-read the files when the kubelet updates the volumes, so a renewal
//! needs no restart.
//!
//! Every `interval` the leader reads the four Secrets and writes what is
//! missing or due ([`plan`]): a leaf is due when a third of its life is
//! left, when it was signed by another CA (a new CA), or when its Secret is
//! not one this operator wrote. The CA lives ten times as long as the
//! leaves and is made again only when its Secret is gone or unusable;
//! every leaf follows it. Writes replace the object read (its
//! resourceVersion), so two leaders cannot both win.
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ObjectMeta, PostParams};
use time::OffsetDateTime;
use weir_k8s::kube;

use crate::leader::Term;

pub mod pki;

use pki::{Issued, Usage};

/// The CA: `ca.crt`, `ca.key`.
pub const CA_SECRET: &str = "weir-hubble-ca";
/// The agents' server certificate (`*.weir-agent.weir.dev`).
pub const SERVER_SECRET: &str = "weir-hubble-server-certs";
/// The relay's client certificate towards the agents.
pub const RELAY_CLIENT_SECRET: &str = "weir-hubble-relay-client-certs";
/// The relay's own port's server certificate.
pub const RELAY_SERVER_SECRET: &str = "weir-relay-server-certs";
/// The names of every agent: the relay asks for `<node>.weir-agent.weir.dev`
/// (weir-relay's `AGENT_SERVER_NAME`).
const AGENT_NAMES: &str = "*.weir-agent.weir.dev";
/// The name clients give for the relay (`hubble --tls-server-name`).
pub const RELAY_SERVER_NAME: &str = "relay.weir.dev";
/// When a certificate stops being valid, Unix seconds: the operator's own
/// record, so that it never parses a certificate.
const NOT_AFTER: &str = "weir.dev/not-after-unix";
const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "weir-operator");

/// How long the CA lives, in leaf lifetimes.
const CA_LIFETIMES: i32 = 10;

/// Why the controller stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Pki(#[from] pki::PkiError),
}

/// The certificates to keep, by Secret name.
fn leaves(namespace: &str) -> Vec<(&'static str, Usage)> {
    vec![
        (SERVER_SECRET, Usage::Server(vec![AGENT_NAMES.into()])),
        (RELAY_CLIENT_SECRET, Usage::Client("weir-relay".into())),
        (
            RELAY_SERVER_SECRET,
            Usage::Server(vec![
                RELAY_SERVER_NAME.into(),
                format!("weir-relay.{namespace}.svc"),
                format!("weir-relay.{namespace}.svc.cluster.local"),
            ]),
        ),
    ]
}

/// What is known of a stored leaf.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredLeaf {
    /// The CA certificate stored beside it.
    pub ca: Option<String>,
    pub not_after: Option<i64>,
    pub ours: bool,
}

/// Why a leaf is (re)issued, or `None`: it is kept.
pub fn due(stored: Option<&StoredLeaf>, ca_cert: &str, now: i64, validity: i64) -> Option<&'static str> {
    let Some(s) = stored else { return Some("missing") };
    if !s.ours {
        return Some("not written by weir-operator");
    }
    if s.ca.as_deref() != Some(ca_cert) {
        return Some("signed by another CA");
    }
    match s.not_after {
        None => Some("no expiry recorded"),
        Some(t) if (t - now) * 3 < validity => Some("a third of its life left"),
        Some(_) => None,
    }
}

fn text(secret: &Secret, key: &str) -> Option<String> {
    let bytes = secret.data.as_ref()?.get(key)?;
    String::from_utf8(bytes.0.clone()).ok()
}

fn not_after(secret: &Secret) -> Option<i64> {
    secret.metadata.annotations.as_ref()?.get(NOT_AFTER)?.parse().ok()
}

fn ours(secret: &Secret) -> bool {
    secret
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(MANAGED_BY.0))
        .is_some_and(|v| v == MANAGED_BY.1)
}

fn stored_leaf(secret: &Secret) -> StoredLeaf {
    StoredLeaf {
        ca: text(secret, "ca.crt"),
        not_after: not_after(secret),
        ours: ours(secret),
    }
}

/// A Secret of ours holding `data`, replacing `old` (its resourceVersion)
/// when there is one.
fn secret(
    name: &str,
    namespace: &str,
    kind: &str,
    data: &[(&str, &str)],
    not_after: i64,
    old: Option<&Secret>,
) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(namespace.into()),
            resource_version: old.and_then(|o| o.metadata.resource_version.clone()),
            labels: Some(BTreeMap::from([(MANAGED_BY.0.into(), MANAGED_BY.1.into())])),
            annotations: Some(BTreeMap::from([(NOT_AFTER.into(), not_after.to_string())])),
            ..Default::default()
        },
        type_: Some(kind.into()),
        data: Some(
            data.iter()
                .map(|(k, v)| ((*k).to_owned(), ByteString(v.as_bytes().to_vec())))
                .collect(),
        ),
        ..Default::default()
    }
}

/// Creates `new` or replaces `old` with it, if the term allows.
async fn write(api: &Api<Secret>, term: &Term, new: Secret, old: Option<&Secret>) -> Result<(), String> {
    term.check().map_err(|e| e.to_string())?;
    let name = new.metadata.name.clone().unwrap_or_default();
    let r = match old {
        None => api.create(&PostParams::default(), &new).await,
        Some(_) => api.replace(&name, &PostParams::default(), &new).await,
    };
    r.map(|_| ()).map_err(|e| e.to_string())
}

/// One pass: the CA, then every leaf. Returns how many Secrets were
/// written; a failure is retried at the next pass.
async fn reconcile(api: &Api<Secret>, namespace: &str, validity: Duration, term: &Term) -> Result<usize, String> {
    let get = |name: &'static str| async move { api.get_opt(name).await.map_err(|e| format!("reading {name}: {e}")) };
    let now = OffsetDateTime::now_utc();
    let leaf_life = time::Duration::try_from(validity).map_err(|e| e.to_string())?;
    let mut written = 0;
    let ca_secret = get(CA_SECRET).await?;
    let usable = ca_secret.as_ref().and_then(|s| {
        let (cert, key) = (text(s, "ca.crt")?, text(s, "ca.key")?);
        let alive = not_after(s).is_some_and(|t| t > now.unix_timestamp() + validity.as_secs() as i64);
        (ours(s) && alive).then_some((cert, key))
    });
    let (ca_cert, ca_key) = match usable {
        Some(pair) => pair,
        None => {
            let ca = pki::new_ca(now, leaf_life * CA_LIFETIMES).map_err(|e| weir_error::report(&e))?;
            let new = secret(
                CA_SECRET,
                namespace,
                "Opaque",
                &[("ca.crt", &ca.cert), ("ca.key", &ca.key)],
                ca.not_after,
                ca_secret.as_ref(),
            );
            write(api, term, new, ca_secret.as_ref()).await?;
            tracing::info!(secret = CA_SECRET, "Observer CA issued: every certificate follows");
            written += 1;
            (ca.cert, ca.key)
        }
    };
    let issuer = pki::ca_issuer(&ca_key).map_err(|e| weir_error::report(&e))?;
    for (name, usage) in leaves(namespace) {
        let old = get(name).await?;
        let Some(why) = due(
            old.as_ref().map(stored_leaf).as_ref(),
            &ca_cert,
            now.unix_timestamp(),
            validity.as_secs() as i64,
        ) else {
            continue;
        };
        let Issued { cert, key, not_after } =
            pki::leaf(&issuer, &usage, now, leaf_life).map_err(|e| weir_error::report(&e))?;
        let new = secret(
            name,
            namespace,
            "kubernetes.io/tls",
            &[("tls.crt", &cert), ("tls.key", &key), ("ca.crt", &ca_cert)],
            not_after,
            old.as_ref(),
        );
        write(api, term, new, old.as_ref()).await?;
        tracing::info!(secret = name, why, not_after, "certificate issued");
        written += 1;
    }
    Ok(written)
}

/// Keeps the certificates in `namespace` for as long as the term lasts
/// (the task is aborted when it ends).
pub async fn run(client: kube::Client, namespace: String, validity: Duration, term: Term) -> Result<Infallible, Error> {
    let api: Api<Secret> = Api::namespaced(client, &namespace);
    // Often enough that a leaf is renewed well inside its last third.
    let every = (validity / 10).clamp(Duration::from_secs(1), Duration::from_secs(60));
    loop {
        if let Err(e) = reconcile(&api, &namespace, validity, &term).await {
            tracing::warn!(error = %e, "Observer certificates not written; retried");
        }
        tokio::time::sleep(every).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(ca: &str, not_after: i64) -> StoredLeaf {
        StoredLeaf {
            ca: Some(ca.into()),
            not_after: Some(not_after),
            ours: true,
        }
    }

    #[test]
    fn a_leaf_is_renewed_with_a_third_of_its_life_left_or_a_new_ca() {
        let life = 300;
        assert_eq!(due(None, "ca", 0, life), Some("missing"));
        assert_eq!(due(Some(&stored("ca", 300)), "ca", 0, life), None);
        assert_eq!(due(Some(&stored("ca", 300)), "ca", 199, life), None);
        assert_eq!(
            due(Some(&stored("ca", 300)), "ca", 201, life),
            Some("a third of its life left")
        );
        assert_eq!(
            due(Some(&stored("old", 300)), "ca", 0, life),
            Some("signed by another CA")
        );
        let foreign = StoredLeaf {
            ours: false,
            ..stored("ca", 300)
        };
        assert_eq!(due(Some(&foreign), "ca", 0, life), Some("not written by weir-operator"));
    }
}
