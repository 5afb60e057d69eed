//! weir-operator: the cluster-wide controllers that need one writer, run
//! by the one replica that holds the Lease ([`leader`]):
//! - [`identities`]: `WeirIdentity` objects for the pods' label sets;
//! - [`pod_cidrs`]: a pod CIDR for every Node without one
//!   (`--cluster-cidr`);
//! - [`policy_status`]: whether the agents accept each weir policy;
//! - [`hubble_certs`]: the Observer API's CA and certificates, renewed
//!   (`--hubble-certs`).
//!
//! Every controller keeps its state in memory only and rebuilds it from
//! the API server when it starts, so a new leader, or the same one after
//! it lost and won the Lease again, starts from what the cluster says.
use std::convert::Infallible;
use std::future::Future;

use tokio::task::JoinHandle;
use tracing::Instrument;
use weir_k8s::kube;

pub mod config;
pub mod hubble_certs;
pub mod identities;
pub mod leader;
pub mod pod_cidrs;
pub mod policy_status;
pub mod service_frontends;

pub use config::{Args, Config};

/// Why the operator stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("identity allocator")]
    Identities(#[from] identities::Error),
    #[error("pod CIDR allocator")]
    PodCidrs(#[from] pod_cidrs::Error),
    #[error("policy status")]
    PolicyStatus(#[from] policy_status::Error),
    #[error("Observer certificates")]
    HubbleCerts(#[from] hubble_certs::Error),
    #[error("Service frontends")]
    ServiceFrontends(#[from] service_frontends::Error),
    /// A controller task panicked.
    #[error("a controller panicked")]
    Panicked(#[source] tokio::task::JoinError),
}

/// Every controller, as one future: dropping it (aborting its task) stops
/// them all. Returns only when one fails.
async fn controllers(client: kube::Client, config: Config, identity: String, term: leader::Term) -> Error {
    let reporter = kube::runtime::events::Reporter {
        controller: "weir-operator".into(),
        instance: Some(identity),
    };
    let cidrs = async {
        match config.pod_cidrs {
            Some(pool) => {
                let reporter = reporter.clone();
                pod_cidrs::run(client.clone(), pool, reporter, term.clone())
                    .instrument(tracing::info_span!("pod_cidrs"))
                    .await
            }
            None => std::future::pending().await,
        }
    };
    let certs = async {
        match config.hubble_certs {
            Some(c) => {
                hubble_certs::run(client.clone(), c.namespace, c.validity, term.clone())
                    .instrument(tracing::info_span!("hubble_certs"))
                    .await
            }
            None => std::future::pending().await,
        }
    };
    let r: Result<Infallible, Error> = tokio::select! {
        r = identities::run(client.clone(), term.clone()).instrument(tracing::info_span!("identities")) => r.map_err(Error::from),
        r = cidrs => r.map_err(Error::from),
        r = certs => r.map_err(Error::from),
        r = policy_status::run(client.clone(), term.clone()).instrument(tracing::info_span!("policy_status")) => r.map_err(Error::from),
        r = service_frontends::run(client.clone(), reporter.clone(), term.clone()).instrument(tracing::info_span!("service_frontends")) => r.map_err(Error::from),
    };
    match r {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

/// Stops the controllers' task and waits until it is gone.
async fn stop(task: JoinHandle<Error>) {
    task.abort();
    let _ = task.await;
}

/// Runs the operator until `shutdown` completes (SIGTERM): with leader
/// election, stands by until it holds the Lease, runs the controllers
/// while it does, stops them when it loses the Lease (and stands by
/// again), and on shutdown stops them and then releases the Lease.
pub async fn run(client: kube::Client, config: Config, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
    tokio::pin!(shutdown);
    let Some(lease) = config.leader.clone() else {
        tracing::info!("leader election off: controllers start");
        let identity = format!("pid-{}", std::process::id());
        let mut task = tokio::spawn(controllers(client, config, identity, leader::Term::unlimited()));
        return tokio::select! {
            r = &mut task => Err(r.unwrap_or_else(Error::Panicked)),
            () = &mut shutdown => {
                stop(task).await;
                Ok(())
            }
        };
    };
    let identity = lease.identity.clone();
    let mut elector = leader::Elector::new(client.clone(), lease);
    loop {
        let (since, term) = tokio::select! {
            won = elector.acquire() => won,
            () = &mut shutdown => return Ok(()),
        };
        tracing::info!(%identity, lease = %format!("{}/{}", elector.config().namespace, elector.config().name), "leading: controllers start");
        let span = tracing::info_span!("leading", %identity);
        let mut task =
            tokio::spawn(controllers(client.clone(), config.clone(), identity.clone(), term.clone()).instrument(span));
        tokio::select! {
            lost = elector.hold(since, &term) => {
                let t0 = tokio::time::Instant::now();
                stop(task).await;
                tracing::warn!(why = %lost, stopped_in = ?t0.elapsed(), "lost the Lease: controllers stopped; standing by");
            }
            () = &mut shutdown => {
                stop(task).await;
                tracing::info!("shutting down: controllers stopped");
                if let Err(e) = elector.release().await {
                    tracing::warn!(error = %weir_error::Report(&e), "Lease not released: another replica takes over once it expires");
                }
                return Ok(());
            }
            r = &mut task => {
                let e = r.unwrap_or_else(Error::Panicked);
                tracing::error!(error = %weir_error::Report(&e), "a controller failed: releasing the Lease");
                if let Err(e) = elector.release().await {
                    tracing::warn!(error = %weir_error::Report(&e), "Lease not released");
                }
                return Err(e);
            }
        }
    }
}
