//! The agent's controllers under one supervisor: each runs as a task of
//! one `JoinSet`; one that panics or returns is reported (logged, counted
//! in `weir_controller_failures_total`, `weir_controller_up` 0, `/healthz`
//! failing with its name and why) and, if it can be made again, started
//! again after a backoff. Before this a controller that panicked ended
//! its task silently, and what it owned never changed again.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::{Id, JoinSet};

use crate::backoff::Backoff;
use crate::metrics::Metrics;

type Run = Pin<Box<dyn Future<Output = ()> + Send>>;

/// How a controller is started: again after every failure (`Restart`), or
/// once (its state cannot be made again in-process; a failure then fails
/// `/healthz` until the agent is restarted).
pub enum Start {
    Restart(Box<dyn FnMut() -> Run + Send>),
    Once(Option<Run>),
}

impl Start {
    pub fn restart<F, Fut>(mut make: F) -> Self
    where
        F: FnMut() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        Start::Restart(Box::new(move || Box::pin(make())))
    }

    pub fn once(run: impl Future<Output = ()> + Send + 'static) -> Self {
        Start::Once(Some(Box::pin(run)))
    }

    fn make(&mut self) -> Option<Run> {
        match self {
            Start::Restart(make) => Some(make()),
            Start::Once(run) => run.take(),
        }
    }
}

/// One controller's state, as `/healthz` and `weir status` tell it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Status {
    pub running: bool,
    /// Times it panicked or was cancelled.
    pub failures: u64,
    /// Why it last stopped.
    pub last_failure: Option<String>,
}

/// What every controller is doing, shared with the health endpoint.
#[derive(Debug, Default)]
pub struct Health {
    controllers: Mutex<BTreeMap<&'static str, Status>>,
}

impl Health {
    fn set(&self, name: &'static str, f: impl FnOnce(&mut Status)) {
        f(self
            .controllers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(name)
            .or_default());
    }

    pub fn status(&self) -> BTreeMap<&'static str, Status> {
        self.controllers.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Controllers not running, each with why: empty when all run.
    pub fn failing(&self) -> Vec<String> {
        self.status()
            .into_iter()
            .filter(|(_, s)| !s.running)
            .map(|(name, s)| {
                format!(
                    "{name}: {} (failed {} times)",
                    s.last_failure.as_deref().unwrap_or("stopped"),
                    s.failures
                )
            })
            .collect()
    }
}

pub struct Supervisor {
    tasks: JoinSet<()>,
    names: HashMap<Id, &'static str>,
    starts: HashMap<&'static str, Start>,
    backoffs: HashMap<&'static str, Backoff>,
    health: Arc<Health>,
    metrics: Option<Arc<Metrics>>,
}

impl Supervisor {
    pub fn new(health: Arc<Health>, metrics: Option<Arc<Metrics>>) -> Self {
        Self {
            tasks: JoinSet::new(),
            names: HashMap::new(),
            starts: HashMap::new(),
            backoffs: HashMap::new(),
            health,
            metrics,
        }
    }

    /// Starts `name` now.
    pub fn start(&mut self, name: &'static str, mut start: Start) {
        if let Some(run) = start.make() {
            self.spawn(name, run, Duration::ZERO);
        }
        self.starts.insert(name, start);
        self.backoffs.insert(name, Backoff::controller());
    }

    fn spawn(&mut self, name: &'static str, run: Run, after: Duration) {
        let health = self.health.clone();
        let metrics = self.metrics.clone();
        let handle = self.tasks.spawn(async move {
            if !after.is_zero() {
                tokio::time::sleep(after).await;
            }
            health.set(name, |s| s.running = true);
            if let Some(m) = &metrics {
                m.controller_up(name, true);
            }
            run.await;
        });
        self.names.insert(handle.id(), name);
    }

    /// Watches the controllers until every one has ended for good (a
    /// controller that returns has finished its work: the cluster source
    /// went away at shutdown, say).
    pub async fn run(mut self) {
        while let Some(joined) = self.tasks.join_next_with_id().await {
            let (id, why) = match joined {
                Ok((id, ())) => (id, None),
                Err(e) => {
                    let id = e.id();
                    let why = match e.try_into_panic() {
                        Ok(p) => format!(
                            "panicked: {}",
                            p.downcast_ref::<&str>()
                                .map(|s| s.to_string())
                                .or_else(|| p.downcast_ref::<String>().cloned())
                                .unwrap_or_else(|| "(no message)".into())
                        ),
                        Err(_) => "cancelled".into(),
                    };
                    (id, Some(why))
                }
            };
            let Some(name) = self.names.remove(&id) else { continue };
            let Some(why) = why else {
                tracing::info!(controller = name, "controller finished");
                self.health.set(name, |s| s.running = false);
                if let Some(m) = &self.metrics {
                    m.controller_up(name, false);
                }
                continue;
            };
            self.health.set(name, |s| {
                s.running = false;
                s.failures += 1;
                s.last_failure = Some(why.clone());
            });
            if let Some(m) = &self.metrics {
                m.controller_up(name, false);
                m.controller_failed(name);
            }
            let next = self.starts.get_mut(name).and_then(Start::make);
            match next {
                Some(run) => {
                    let delay = self
                        .backoffs
                        .get_mut(name)
                        .map_or(Duration::from_secs(1), Backoff::failed);
                    tracing::error!(controller = name, reason = %why, restart_in = ?delay, "controller failed; restarting it");
                    self.spawn(name, run, delay);
                }
                None => {
                    tracing::error!(controller = name, reason = %why, "controller failed and cannot be restarted in-process: /healthz fails until the agent restarts");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// Waits (real time: the backoff's first steps) until `done`.
    async fn until(what: &str, done: impl Fn() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while !done() {
            assert!(tokio::time::Instant::now() < deadline, "{what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn a_controller_that_panics_is_reported_and_restarted() {
        let health = Arc::new(Health::default());
        let mut sup = Supervisor::new(health.clone(), None);
        let runs = Arc::new(AtomicU32::new(0));
        let r = runs.clone();
        sup.start(
            "routing",
            Start::restart(move || {
                let n = r.fetch_add(1, Ordering::SeqCst);
                async move {
                    if n < 2 {
                        panic!("injected failure {n}");
                    }
                    std::future::pending::<()>().await;
                }
            }),
        );
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        sup.start(
            "once",
            Start::once(async move {
                let _ = (&mut stopped).await;
                panic!("the one-shot controller died");
            }),
        );
        tokio::spawn(sup.run());
        until("restarted twice", || runs.load(Ordering::SeqCst) == 3).await;
        until("running again", || health.status()["routing"].running).await;
        let s = &health.status()["routing"];
        assert!(s.running, "{s:?}");
        assert_eq!(s.failures, 2);
        assert_eq!(s.last_failure.as_deref(), Some("panicked: injected failure 1"));
        assert!(health.failing().is_empty(), "{:?}", health.failing());

        // A one-shot controller that dies stays failed, and says so.
        stop.send(()).expect("the controller waits");
        until("the one-shot failure seen", || !health.failing().is_empty()).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 3, "nothing else restarted");
        let failing = health.failing();
        assert_eq!(
            failing,
            ["once: panicked: the one-shot controller died (failed 1 times)"],
            "{failing:?}"
        );
    }
}
