//! One runner for the controllers that follow the cluster model, in
//! kube-runtime's shape: a controller supplies `reconcile` (the model to
//! the kernel) and says what comes next; the runner owns the rest, which
//! each loop used to write its own way:
//!
//! - nothing before the source has synced once (an empty first snapshot
//!   would remove what a previous agent programmed);
//! - each pass gets what changed since the last pass that succeeded
//!   ([`Changes`]), so one pod's change costs what it touches;
//! - a full pass (no changes given: recompute everything) first, after a
//!   failure, on an extra trigger, and every `resync` period, which also
//!   repairs anything that drifted;
//! - backoff after a failure (the error policy: log, retry later, fully);
//! - a panic in a pass ends the controller, so its supervisor reports it
//!   and starts it again ([`crate::supervise`]).
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use weir_model::{Changes, ClusterState};

use crate::backoff::Backoff;

/// How often every controller recomputes everything from the model.
pub const RESYNC: Duration = Duration::from_secs(300);

/// One pass's input.
pub struct Pass {
    pub state: Arc<ClusterState>,
    /// What changed since the last successful pass; `None`: everything may
    /// have (first pass, resync, after a failure, an extra trigger).
    pub changes: Option<Changes>,
}

impl Pass {
    /// Whether this pass must recompute everything.
    pub fn full(&self) -> bool {
        self.changes.is_none()
    }
}

/// What the runner does after a pass.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    /// In step with the model until it changes.
    Done,
    /// In step, but run again after this long even if nothing changes.
    RequeueAfter(Duration),
    /// Failed for a reason a retry can fix: again, fully, after backoff.
    Retry(String),
}

/// A controller of the cluster model.
pub trait Reconciler: Send + 'static {
    /// Its name in logs (the supervisor's name for it).
    fn name(&self) -> &'static str;

    /// Brings what the controller owns in step with `pass.state`.
    fn reconcile(&mut self, pass: Pass) -> impl Future<Output = Action> + Send;
}

/// Runs `blocking` work (map syscalls, whole-model computations) on a
/// blocking thread. A panic there is raised again here, so it ends the
/// controller and its supervisor sees it.
pub async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(f).await {
        Ok(v) => v,
        Err(e) => match e.try_into_panic() {
            Ok(p) => std::panic::resume_unwind(p),
            // Only at runtime shutdown: the controller ends with it.
            Err(_) => std::future::pending().await,
        },
    }
}

/// Options of one controller's runner.
pub struct Options {
    /// A full pass this often.
    pub resync: Duration,
    /// Another input: a full pass whenever it changes (the local
    /// endpoints, for the policy controller).
    pub extra: Option<watch::Receiver<u64>>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            resync: RESYNC,
            extra: None,
        }
    }
}

/// Runs `r` until the model's sender goes.
pub async fn run<R: Reconciler>(mut r: R, mut rx: watch::Receiver<Arc<ClusterState>>, opts: Options) {
    let Options { resync, mut extra } = opts;
    let mut backoff = Backoff::controller();
    // The snapshot of the last successful pass; `None`: the next is full.
    let mut last: Option<Arc<ClusterState>> = None;
    let mut next_resync = Instant::now() + resync;
    let mut wake: Option<Instant> = None;
    let mut extra_fired = false;
    let mut model_open = true;
    loop {
        let state = rx.borrow_and_update().clone();
        if let Some(e) = extra.as_mut() {
            e.borrow_and_update();
        }
        let due = wake.is_some_and(|w| Instant::now() >= w);
        if state.revision.is_some() {
            if Instant::now() >= next_resync || extra_fired {
                last = None;
            }
            let changes = last.as_ref().map(|l| Changes::since(l, &state));
            let idle = changes.as_ref().is_some_and(Changes::is_empty) && !due;
            if !idle {
                if last.is_none() {
                    next_resync = Instant::now() + resync;
                }
                wake = match r
                    .reconcile(Pass {
                        state: state.clone(),
                        changes,
                    })
                    .await
                {
                    Action::Done => {
                        backoff.succeeded();
                        last = Some(state);
                        None
                    }
                    Action::RequeueAfter(after) => {
                        backoff.succeeded();
                        last = Some(state);
                        Some(Instant::now() + after)
                    }
                    Action::Retry(why) => {
                        let after = backoff.failed();
                        tracing::info!(controller = r.name(), reason = %why, retry_in = ?after, "requeued");
                        last = None;
                        Some(Instant::now() + after)
                    }
                };
            }
        }
        extra_fired = false;
        let until = wake.map_or(next_resync, |w| w.min(next_resync));
        tokio::select! {
            changed = rx.changed(), if model_open => {
                if changed.is_err() {
                    // No source (or it ended): what is programmed stays.
                    model_open = false;
                    if extra.is_none() {
                        return;
                    }
                }
            }
            changed = async { extra.as_mut().expect("guarded").changed().await }, if extra.is_some() => {
                if changed.is_err() {
                    extra = None;
                } else {
                    extra_fired = true;
                }
            }
            () = tokio::time::sleep_until(until) => {}
        }
        if !model_open && extra.is_none() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Records each pass: full or how many objects changed.
    struct Recorder {
        passes: Arc<Mutex<Vec<Option<usize>>>>,
        fail_next: Arc<Mutex<u32>>,
    }

    impl Reconciler for Recorder {
        fn name(&self) -> &'static str {
            "recorder"
        }
        async fn reconcile(&mut self, pass: Pass) -> Action {
            self.passes
                .lock()
                .unwrap()
                .push(pass.changes.as_ref().map(Changes::len));
            let mut f = self.fail_next.lock().unwrap();
            if *f > 0 {
                *f -= 1;
                return Action::Retry("injected".into());
            }
            Action::Done
        }
    }

    fn state(revision: Option<u64>, pods: &[&str]) -> Arc<ClusterState> {
        let mut s = ClusterState::default();
        s.revision = revision;
        for p in pods {
            s.insert(
                weir_model::Object::from_value(
                    weir_model::Kind::Pod,
                    serde_json::json!({"metadata": {"name": p, "namespace": "d"}}),
                )
                .unwrap(),
            );
        }
        Arc::new(s)
    }

    async fn until(what: &str, done: impl Fn() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(tokio::time::Instant::now() < deadline, "{what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn passes_are_full_first_then_incremental_and_full_again_after_a_failure() {
        let (tx, rx) = watch::channel(state(None, &[]));
        let passes = Arc::new(Mutex::new(Vec::new()));
        let fail_next = Arc::new(Mutex::new(0));
        let r = Recorder {
            passes: passes.clone(),
            fail_next: fail_next.clone(),
        };
        let (etx, erx) = watch::channel(0u64);
        let task = tokio::spawn(run(
            r,
            rx,
            Options {
                extra: Some(erx),
                ..Default::default()
            },
        ));
        let seen = |n: usize| {
            let p = passes.clone();
            move || p.lock().unwrap().len() >= n
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(passes.lock().unwrap().is_empty(), "nothing before the first sync");
        tx.send_replace(state(Some(1), &["a", "b"]));
        until("first pass", seen(1)).await;
        tx.send_replace(state(Some(2), &["a", "b", "c"]));
        until("second pass", seen(2)).await;
        // A failed pass: retried after backoff, fully.
        *fail_next.lock().unwrap() = 1;
        tx.send_replace(state(Some(3), &["a"]));
        until("the retry", seen(4)).await;
        etx.send_replace(1);
        until("the extra trigger", seen(5)).await;
        assert_eq!(
            *passes.lock().unwrap(),
            [None, Some(1), Some(2), None, None],
            "full; c added (a and b are new copies, equal: no change); b and c gone, failed; the retry full; full on the trigger"
        );
        drop(tx);
        drop(etx);
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("ends with its inputs")
            .unwrap();
    }

    struct Panics;

    impl Reconciler for Panics {
        fn name(&self) -> &'static str {
            "panics"
        }
        async fn reconcile(&mut self, _: Pass) -> Action {
            blocking(|| panic!("a map write panicked")).await
        }
    }

    #[tokio::test]
    async fn a_panic_in_blocking_work_ends_the_controller_for_its_supervisor() {
        let (_tx, rx) = watch::channel(state(Some(1), &["a"]));
        let ended = tokio::spawn(run(Panics, rx, Options::default())).await;
        let panic = ended.expect_err("the task panicked").into_panic();
        assert_eq!(panic.downcast_ref::<&str>(), Some(&"a map write panicked"));
    }
}
