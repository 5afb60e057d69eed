//! Leader election with a `coordination.k8s.io/v1` Lease, so that of the
//! operator's replicas exactly one runs the controllers: client-go's
//! algorithm (`tools/leaderelection`), small enough to read in one go.
//!
//! - **Acquire**: a replica reads the Lease; if nobody holds it, or the
//!   holder has not renewed for `leaseDurationSeconds` *as measured on the
//!   reader's own clock since it saw the last change* (so the replicas'
//!   clocks never need to agree), it writes itself as holder. Every write
//!   is conditional on the `resourceVersion` it read (optimistic
//!   concurrency): of two replicas racing, one gets 409 Conflict and stays
//!   standby.
//! - **Renew**: the leader rewrites `renewTime` every retry period, again
//!   conditionally. If no renewal has succeeded for the renew deadline, or
//!   the Lease names another holder, it has lost: the caller stops the
//!   controllers. The deadline is counted from when the last successful
//!   renewal was *sent*, and the others count the lease duration from when
//!   they *saw* it, later; the renew deadline being shorter than the lease
//!   duration, the leader has stopped before anyone may take over.
//! - **Release** (on SIGTERM, after the controllers stopped): the holder
//!   is cleared, so a standby replica takes over on its next try instead of
//!   waiting out the lease.
//!
//! Written here rather than taken from crates.io: of the crates for kube 5
//! and k8s-openapi 0.29, `kube-lease-manager` 0.13 keeps reporting
//! leadership while its renewals fail (its watch loop only backs off), so
//! a leader cut off from the API server would go on writing after its
//! lease expired; and it takes over expired leases with unconditional
//! patches. `kube-leader-election` needs kube 4.
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use tokio::time::{Instant, sleep, timeout, timeout_at};
use weir_k8s::kube;

/// Which Lease, who we are, and the timings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    /// `holderIdentity` when this replica holds the Lease.
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
}

/// A request on the Lease that failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API server refused it or could not be reached.
    #[error("Lease {lease}")]
    Api {
        lease: String,
        #[source]
        source: kube::Error,
    },
    /// The API server did not answer in time.
    #[error("Lease {lease}: no answer within {after:?}")]
    Timeout { lease: String, after: Duration },
}

/// Why a leader is one no more.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lost {
    /// The Lease names another holder.
    TakenBy(String),
    /// No renewal succeeded within the renew deadline.
    NotRenewed(Duration),
}

impl std::fmt::Display for Lost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Lost::TakenBy(h) => write!(f, "the Lease is held by {h}"),
            Lost::NotRenewed(d) => write!(f, "no renewal succeeded for {d:?}"),
        }
    }
}

/// This replica's right to write, as far as its own (monotonic) clock can
/// tell: until the renew deadline after the last successful renewal.
#[derive(Debug, Clone)]
pub struct Term(Arc<Mutex<Option<Instant>>>);

/// The term is over: no writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not leading: this replica's term ended (its Lease was not renewed in time)")]
pub struct NotLeading;

impl Term {
    /// No election: writes are always allowed.
    pub fn unlimited() -> Term {
        Term(Arc::new(Mutex::new(None)))
    }

    fn until(end: Instant) -> Term {
        Term(Arc::new(Mutex::new(Some(end))))
    }

    fn extend(&self, end: Instant) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(end);
    }

    fn end(&self) {
        self.extend(Instant::now());
    }

    /// Whether this replica may still write.
    pub fn check(&self) -> Result<(), NotLeading> {
        match *self.0.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(end) if Instant::now() >= end => Err(NotLeading),
            _ => Ok(()),
        }
    }
}

/// One try at the Lease.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Attempt {
    Holding,
    /// Someone else holds it (or won the race to write it).
    Standby(String),
}

/// What a replica last saw of the Lease, and when by its own clock.
struct Observed {
    resource_version: Option<String>,
    at: Instant,
}

/// One replica's side of the election.
pub struct Elector {
    api: Api<Lease>,
    config: LeaseConfig,
    observed: Option<Observed>,
}

impl Elector {
    pub fn new(client: kube::Client, config: LeaseConfig) -> Self {
        Elector {
            api: Api::namespaced(client, &config.namespace),
            config,
            observed: None,
        }
    }

    pub fn config(&self) -> &LeaseConfig {
        &self.config
    }

    fn lease(&self) -> String {
        format!("{}/{}", self.config.namespace, self.config.name)
    }

    fn api_error(&self, source: kube::Error) -> Error {
        Error::Api {
            lease: self.lease(),
            source,
        }
    }

    /// Tries every retry period until this replica holds the Lease;
    /// returns when the try that won was sent, from which the lease
    /// counts, and the term that starts.
    pub async fn acquire(&mut self) -> (Instant, Term) {
        // Each holder (`Ok`) and each cause of failure (`Err`) is said
        // once, not every try.
        let mut said: Option<Result<String, String>> = None;
        loop {
            let sent = Instant::now();
            let now = match timeout(self.config.renew_deadline, self.try_acquire_or_renew()).await {
                Ok(Ok(Attempt::Holding)) => return (sent, Term::until(sent + self.config.renew_deadline)),
                Ok(Ok(Attempt::Standby(holder))) => Ok(holder),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err("no answer from the API server".to_owned()),
            };
            if said.as_ref() != Some(&now) {
                match &now {
                    Ok(holder) => tracing::info!(lease = %self.lease(), %holder, "standing by: the Lease is held"),
                    Err(e) => tracing::warn!(lease = %self.lease(), error = %e, "cannot try the Lease; trying again"),
                }
                said = Some(now);
            }
            sleep(self.config.retry_period).await;
        }
    }

    /// Renews every retry period while this replica holds the Lease
    /// (acquired or last renewed when `renewed` was sent), extending
    /// `term`; returns once it may no longer act as the leader, the term
    /// ended.
    pub async fn hold(&mut self, renewed: Instant, term: &Term) -> Lost {
        let lost = self.renew(renewed, term).await;
        term.end();
        lost
    }

    async fn renew(&mut self, mut renewed: Instant, term: &Term) -> Lost {
        loop {
            sleep(self.config.retry_period).await;
            let deadline = renewed + self.config.renew_deadline;
            let sent = Instant::now();
            if sent >= deadline {
                return Lost::NotRenewed(self.config.renew_deadline);
            }
            match timeout_at(deadline, self.try_acquire_or_renew()).await {
                Ok(Ok(Attempt::Holding)) => {
                    renewed = sent;
                    term.extend(sent + self.config.renew_deadline);
                }
                Ok(Ok(Attempt::Standby(holder))) => return Lost::TakenBy(holder),
                Ok(Err(e)) => {
                    tracing::warn!(error = %weir_error::Report(&e), left = ?deadline - Instant::now(), "Lease not renewed; trying again until the renew deadline")
                }
                Err(_) => return Lost::NotRenewed(self.config.renew_deadline),
            }
        }
    }

    /// Gives the Lease up if this replica still holds it, so a standby
    /// replica takes over at once. Call only once the controllers stopped.
    /// Gives up within the renew deadline: a shutdown does not wait on an
    /// API server that does not answer (the Lease then expires).
    pub async fn release(&mut self) -> Result<(), Error> {
        match timeout(self.config.renew_deadline, self.clear()).await {
            Ok(r) => r,
            Err(_) => Err(Error::Timeout {
                lease: self.lease(),
                after: self.config.renew_deadline,
            }),
        }
    }

    async fn clear(&mut self) -> Result<(), Error> {
        let Some(mut lease) = self
            .api
            .get_opt(&self.config.name)
            .await
            .map_err(|e| self.api_error(e))?
        else {
            return Ok(());
        };
        let spec = lease.spec.get_or_insert_default();
        if spec.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        match self
            .api
            .replace(&self.config.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => {
                tracing::info!(lease = %self.lease(), "Lease released");
                Ok(())
            }
            // Someone wrote it meanwhile: it is not ours to release.
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
            Err(e) => Err(self.api_error(e)),
        }
    }

    fn lease_seconds(&self) -> i32 {
        i32::try_from(self.config.lease_duration.as_secs()).unwrap_or(i32::MAX)
    }

    /// Notes when the Lease was seen to change (any write changes its
    /// `resourceVersion`).
    fn observe(&mut self, lease: &Lease) {
        let rv = lease.metadata.resource_version.clone();
        if self.observed.as_ref().is_none_or(|o| o.resource_version != rv) {
            self.observed = Some(Observed {
                resource_version: rv,
                at: Instant::now(),
            });
        }
    }

    async fn try_acquire_or_renew(&mut self) -> Result<Attempt, Error> {
        let now = MicroTime(Timestamp::now());
        let me = self.config.identity.clone();
        let Some(current) = self
            .api
            .get_opt(&self.config.name)
            .await
            .map_err(|e| self.api_error(e))?
        else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.config.name.clone()),
                    namespace: Some(self.config.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(me),
                    lease_duration_seconds: Some(self.lease_seconds()),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(created) => {
                    self.observe(&created);
                    Ok(Attempt::Holding)
                }
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(Attempt::Standby("a replica that created it".into())),
                Err(e) => Err(self.api_error(e)),
            };
        };
        self.observe(&current);
        let seen = self.observed.as_ref().map_or_else(Instant::now, |o| o.at);
        let spec = current.spec.clone().unwrap_or_default();
        let next_spec = match decide(&spec, &me, seen, Instant::now(), self.lease_seconds(), now) {
            Decision::Standby(holder) => return Ok(Attempt::Standby(holder)),
            Decision::Write(s) => s,
        };
        let holder = spec.holder_identity.filter(|h| !h.is_empty() && *h != me);
        if let Some(h) = &holder {
            tracing::info!(lease = %self.lease(), holder = %h, "the holder has not renewed within its lease: taking over");
        }
        let mut next = current;
        next.spec = Some(next_spec);
        // `next` carries the resourceVersion read: a write by anyone since
        // makes this one fail with 409.
        match self.api.replace(&self.config.name, &PostParams::default(), &next).await {
            Ok(written) => {
                self.observe(&written);
                Ok(Attempt::Holding)
            }
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(Attempt::Standby(
                holder.unwrap_or_else(|| "a replica that wrote it first".into()),
            )),
            Err(e) => Err(self.api_error(e)),
        }
    }
}

/// What to do with the Lease as read.
#[derive(Debug, Clone, PartialEq)]
enum Decision {
    /// Another replica holds it, within its lease.
    Standby(String),
    /// Write this spec (renew ours, or take a free or expired one).
    Write(LeaseSpec),
}

/// The election's rule: the Lease's `spec` as read, first seen changed
/// at `seen` (this replica's clock), now `now`.
fn decide(spec: &LeaseSpec, me: &str, seen: Instant, now: Instant, lease_seconds: i32, time: MicroTime) -> Decision {
    let holder = spec.holder_identity.as_deref().filter(|h| !h.is_empty());
    let ours = holder == Some(me);
    if let Some(holder) = holder
        && !ours
    {
        // The holder's own promise (its lease duration), counted from when
        // this replica saw it renew.
        let promised = Duration::from_secs(spec.lease_duration_seconds.unwrap_or(0).max(0).unsigned_abs().into());
        if now < seen + promised {
            return Decision::Standby(holder.to_owned());
        }
    }
    let mut next = spec.clone();
    if !ours {
        next.holder_identity = Some(me.to_owned());
        next.acquire_time = Some(time.clone());
        next.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
    }
    next.renew_time = Some(time);
    next.lease_duration_seconds = Some(lease_seconds);
    Decision::Write(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_term_ends_at_its_deadline_or_when_ended() {
        let term = Term::until(Instant::now() + Duration::from_secs(60));
        assert_eq!(term.check(), Ok(()));
        let copy = term.clone();
        term.extend(Instant::now());
        assert_eq!(
            copy.check(),
            Err(NotLeading),
            "a paused leader wakes up past its deadline"
        );
        term.extend(Instant::now() + Duration::from_secs(60));
        term.end();
        assert_eq!(copy.check(), Err(NotLeading));
        assert_eq!(Term::unlimited().check(), Ok(()));
    }

    fn t(s: i64) -> MicroTime {
        MicroTime(Timestamp::from_second(s).unwrap())
    }

    fn held(by: &str, seconds: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(by.into()),
            lease_duration_seconds: Some(seconds),
            acquire_time: Some(t(10)),
            renew_time: Some(t(20)),
            lease_transitions: Some(3),
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn a_lease_held_by_another_is_left_alone_until_it_expires_on_our_clock() {
        let seen = Instant::now();
        let spec = held("op-a", 15);
        let at = |s: u64| seen + Duration::from_secs(s);
        assert_eq!(
            decide(&spec, "op-b", seen, at(14), 4, t(100)),
            Decision::Standby("op-a".into())
        );
        // The holder's own 15 s count, not ours (4 s).
        assert_eq!(
            decide(&spec, "op-b", seen, at(5), 4, t(100)),
            Decision::Standby("op-a".into())
        );
        let Decision::Write(next) = decide(&spec, "op-b", seen, at(15), 4, t(100)) else {
            panic!("expired: taken over")
        };
        assert_eq!(next.holder_identity.as_deref(), Some("op-b"));
        assert_eq!(
            (next.acquire_time, next.renew_time.clone()),
            (Some(t(100)), Some(t(100)))
        );
        assert_eq!(
            (next.lease_transitions, next.lease_duration_seconds),
            (Some(4), Some(4))
        );
    }

    #[test]
    fn the_holder_renews_and_a_released_lease_is_free_at_once() {
        let seen = Instant::now();
        let Decision::Write(next) = decide(&held("op-a", 15), "op-a", seen, seen, 15, t(100)) else {
            panic!("ours")
        };
        assert_eq!(next.acquire_time, Some(t(10)), "still the same term");
        assert_eq!((next.renew_time, next.lease_transitions), (Some(t(100)), Some(3)));
        // Released (holder cleared), or never held: no waiting.
        for holder in [None, Some(String::new())] {
            let spec = LeaseSpec {
                holder_identity: holder,
                ..held("x", 1)
            };
            let Decision::Write(next) = decide(&spec, "op-b", seen, seen, 15, t(100)) else {
                panic!("free")
            };
            assert_eq!(next.holder_identity.as_deref(), Some("op-b"));
            assert_eq!(next.lease_transitions, Some(4));
        }
    }
}
