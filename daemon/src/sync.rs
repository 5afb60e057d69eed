//! How far the controllers have got with the cluster model: the revision
//! of the last snapshot each has applied, for the status API (the lab waits
//! on it before it takes a pod's network away).

use std::sync::Mutex;

#[derive(Debug)]
pub struct SyncStatus {
    services: Mutex<Option<u64>>,
    ipcache: Mutex<Option<u64>>,
    /// The local API (pod ADDs) is served.
    serving: std::sync::atomic::AtomicBool,
    policy: Mutex<Option<u64>>,
    /// The endpoint generation the policy tables were last written for:
    /// an endpoint ADD waits for its own before it answers, so a new pod
    /// never runs without the policy that selects it.
    policy_generation: tokio::sync::watch::Sender<u64>,
}

impl Default for SyncStatus {
    fn default() -> Self {
        Self {
            services: Mutex::new(None),
            ipcache: Mutex::new(None),
            serving: std::sync::atomic::AtomicBool::new(false),
            policy: Mutex::new(None),
            policy_generation: tokio::sync::watch::channel(0).0,
        }
    }
}

impl SyncStatus {
    /// The policy controller has written the tables for `revision` of the
    /// model and `generation` of the local endpoints.
    pub fn policy_applied(&self, revision: Option<u64>, generation: u64) {
        if revision.is_some() {
            *self.policy.lock().unwrap_or_else(|p| p.into_inner()) = revision;
        }
        self.policy_generation.send_if_modified(|g| {
            let newer = generation > *g;
            if newer {
                *g = generation;
            }
            newer
        });
    }

    /// The ipcache controller has written the addresses of `revision`.
    pub fn ipcache_applied(&self, revision: Option<u64>) {
        if revision.is_some() {
            *self.ipcache.lock().unwrap_or_else(|p| p.into_inner()) = revision;
        }
    }

    pub fn ipcache(&self) -> Option<u64> {
        *self.ipcache.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn policy(&self) -> Option<u64> {
        *self.policy.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits (at most `limit`) until the policy tables are written for
    /// endpoint generation `generation`; false on timeout.
    pub async fn wait_policy(&self, generation: u64, limit: std::time::Duration) -> bool {
        let mut rx = self.policy_generation.subscribe();
        tokio::time::timeout(limit, rx.wait_for(|g| *g >= generation))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// The services controller has applied the snapshot of `revision`
    /// (`None`: a snapshot from no synced source, which says nothing).
    pub fn services_applied(&self, revision: Option<u64>) {
        if revision.is_some() {
            *self.services.lock().unwrap_or_else(|p| p.into_inner()) = revision;
        }
    }

    pub fn services(&self) -> Option<u64> {
        *self.services.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The local API now answers pod ADDs.
    pub fn set_serving(&self) {
        self.serving.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Ready (`/readyz`) once the local API serves and the services,
    /// ipcache and policy controllers have each applied a snapshot of a
    /// synced cluster model; otherwise what is still pending.
    pub fn readiness(&self) -> Result<(), Vec<&'static str>> {
        let mut pending = Vec::new();
        if !self.serving.load(std::sync::atomic::Ordering::Relaxed) {
            pending.push("local API not serving");
        }
        for (what, applied) in [
            ("services not applied", self.services()),
            ("ipcache not applied", self.ipcache()),
            ("policy not applied", self.policy()),
        ] {
            if applied.is_none() {
                pending.push(what);
            }
        }
        if pending.is_empty() { Ok(()) } else { Err(pending) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_once_serving_and_every_controller_applied() {
        let s = SyncStatus::default();
        assert_eq!(s.readiness().unwrap_err().len(), 4);
        s.set_serving();
        s.services_applied(Some(1));
        s.ipcache_applied(Some(1));
        assert_eq!(s.readiness(), Err(vec!["policy not applied"]));
        s.policy_applied(Some(1), 0);
        assert_eq!(s.readiness(), Ok(()));
    }

    #[test]
    fn reports_the_last_applied_revision() {
        let s = SyncStatus::default();
        assert_eq!(s.services(), None);
        s.services_applied(None);
        assert_eq!(s.services(), None, "an unsynced snapshot says nothing");
        s.services_applied(Some(7));
        s.services_applied(None);
        assert_eq!(s.services(), Some(7));
    }
}
