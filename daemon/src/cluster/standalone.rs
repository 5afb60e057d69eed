//! Standalone mode: the cluster is a directory of Kubernetes YAML, as the
//! lab writes it. Polled, because a changed snapshot is cheap to rebuild
//! and polling needs no inotify plumbing across netns-bound processes.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use weir_agent_api::revision::{ManifestFile, manifest_files, revision};

use super::{ClusterSource, ClusterState, parse_manifests};

pub struct StandaloneSource {
    dir: PathBuf,
    interval: Duration,
}

impl StandaloneSource {
    pub fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            interval: Duration::from_millis(500),
        }
    }
}

/// What decides whether to re-read: every file's path, size and mtime.
type Fingerprint = Vec<ManifestFile>;

/// Reads every manifest; a bad file is logged and skipped, never fatal.
pub fn load_dir(dir: &Path) -> (ClusterState, Fingerprint) {
    let files = manifest_files(dir);
    let mut state = ClusterState::default();
    state.revision = Some(revision(dir, &files));
    for (path, _, _) in &files {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                for e in parse_manifests(&mut state, &text) {
                    tracing::warn!(file = %path.display(), error = %e, "skipping invalid manifest");
                }
            }
            Err(e) => tracing::warn!(file = %path.display(), error = %e, "cannot read manifest"),
        }
    }
    (state, files)
}

impl ClusterSource for StandaloneSource {
    async fn run(self, tx: watch::Sender<Arc<ClusterState>>) {
        let mut last: Option<Fingerprint> = None;
        loop {
            let dir = self.dir.clone();
            let current = manifest_files(&dir);
            if last.as_ref() != Some(&current) {
                let (state, fingerprint) = tokio::task::spawn_blocking(move || load_dir(&dir))
                    .await
                    .expect("manifest loader panicked");
                tracing::debug!(
                    pods = state.pods.len(),
                    services = state.services.len(),
                    "cluster state reloaded"
                );
                tx.send_replace(Arc::new(state));
                last = Some(fingerprint);
            }
            tokio::time::sleep(self.interval).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn publishes_changes_in_the_directory() {
        let dir = std::env::temp_dir().join(format!("weir-standalone-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("pod/demo")).unwrap();
        let (tx, mut rx) = watch::channel(Arc::new(ClusterState::default()));
        let task = tokio::spawn(
            StandaloneSource {
                dir: dir.clone(),
                interval: Duration::from_millis(20),
            }
            .run(tx),
        );

        std::fs::write(
            dir.join("pod/demo/a.yaml"),
            "apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: demo, labels: {app: x}}\nspec: {containers: []}\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("pod/demo/.b.yaml.tmp"),
            "kind: Pod\nmetadata: {name: half-written",
        )
        .unwrap();
        let state = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                rx.changed().await.unwrap();
                let s = rx.borrow_and_update().clone();
                if !s.pods.is_empty() {
                    return s;
                }
            }
        })
        .await
        .expect("pod seen within 5 s");
        assert_eq!(state.pods.len(), 1, "dotfile ignored");
        assert_eq!(state.pod_labels("demo", "a").unwrap()["app"], "x");
        task.abort();
        std::fs::remove_dir_all(dir).unwrap();
    }
}
