//! How far the controllers have got with the cluster model: the revision
//! of the last snapshot each has applied, for the status API (the lab waits
//! on it before it takes a pod's network away).

use std::sync::Mutex;

#[derive(Debug, Default)]
pub struct SyncStatus {
    services: Mutex<Option<u64>>,
}

impl SyncStatus {
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
}

#[cfg(test)]
mod tests {
    use super::*;

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
