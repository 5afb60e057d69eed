//! Standalone mode: the cluster is a directory of Kubernetes YAML, as the
//! lab writes it. Polled, because a changed snapshot is cheap to rebuild
//! and polling needs no inotify plumbing across netns-bound processes.
//! Only the files a change touched are parsed again.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

use weir_agent_api::revision::{ManifestFile, manifest_files, revision};

use weir_model::{Object, parse_each};

use super::{ClusterSource, ClusterState};

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

/// Each file's objects as last parsed, by path, with the size and mtime
/// they were parsed at: a change re-parses only the files it touched.
#[derive(Default)]
pub struct Parsed {
    files: HashMap<PathBuf, (u64, SystemTime, Vec<Object>)>,
    /// Files parsed since this was made (a test counts them).
    pub parses: u64,
}

impl Parsed {
    /// The cluster the directory holds now; a bad file is logged and
    /// skipped, never fatal.
    pub fn load(&mut self, dir: &Path) -> (ClusterState, Fingerprint) {
        let files = manifest_files(dir);
        let mut state = ClusterState::default();
        state.revision = Some(revision(dir, &files));
        let mut seen = HashSet::with_capacity(files.len());
        for (path, size, mtime) in &files {
            seen.insert(path.clone());
            let fresh = self.files.get(path).is_some_and(|(s, m, _)| s == size && m == mtime);
            if !fresh {
                let objects = match std::fs::read_to_string(path) {
                    Ok(text) => {
                        let (objects, errors) = parse_each(&text);
                        for e in errors {
                            tracing::warn!(file = %path.display(), error = %weir_error::Report(&e), "skipping invalid manifest");
                        }
                        objects
                    }
                    Err(e) => {
                        tracing::warn!(file = %path.display(), error = %weir_error::Report(&e), "cannot read manifest");
                        Vec::new()
                    }
                };
                self.parses += 1;
                self.files.insert(path.clone(), (*size, *mtime, objects));
            }
            for o in &self.files[path].2 {
                state.insert(o.clone());
            }
        }
        self.files.retain(|p, _| seen.contains(p));
        (state, files)
    }
}

impl ClusterSource for StandaloneSource {
    async fn run(self, tx: watch::Sender<Arc<ClusterState>>) {
        let mut last: Option<Fingerprint> = None;
        // What changed between snapshots, compared once here for every
        // consumer.
        let log = Arc::new(weir_model::ChangeLog::default());
        let mut published: Option<Arc<ClusterState>> = None;
        let parsed = Arc::new(Mutex::new(Parsed::default()));
        loop {
            let dir = self.dir.clone();
            let current = manifest_files(&dir);
            if last.as_ref() != Some(&current) {
                let seen = std::time::Instant::now();
                let cache = parsed.clone();
                let loaded =
                    tokio::task::spawn_blocking(move || cache.lock().unwrap_or_else(|p| p.into_inner()).load(&dir))
                        .await;
                match loaded {
                    Ok((mut state, fingerprint)) => {
                        state.generation = published.as_ref().map_or(1, |p| p.generation + 1);
                        state.log = Some(log.clone());
                        if let Some(p) = &published {
                            let mut changes = weir_model::Changes::between(p, &state);
                            changes.first_seen = Some(seen);
                            log.record(state.generation, changes);
                        }
                        tracing::debug!(
                            pods = state.pods.len(),
                            services = state.services.len(),
                            "cluster state reloaded"
                        );
                        let state = Arc::new(state);
                        published = Some(state.clone());
                        tx.send_replace(state);
                        last = Some(fingerprint);
                    }
                    // Tried again at the next poll, from scratch.
                    Err(e) => {
                        tracing::error!(error = %weir_error::Report(&e), "reading the manifests failed");
                        *parsed.lock().unwrap_or_else(|p| p.into_inner()) = Parsed::default();
                    }
                }
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

    #[test]
    fn a_change_parses_only_the_files_it_touched() {
        let dir = std::env::temp_dir().join(format!("weir-standalone-parsed-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("pod/demo")).unwrap();
        let pod = |name: &str, app: &str| {
            format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: demo, labels: {{app: {app}}}}}\nspec: {{containers: []}}\n"
            )
        };
        for i in 0..10 {
            std::fs::write(dir.join(format!("pod/demo/p{i}.yaml")), pod(&format!("p{i}"), "x")).unwrap();
        }
        let mut parsed = Parsed::default();
        let (state, _) = parsed.load(&dir);
        assert_eq!((state.pods.len(), parsed.parses), (10, 10));
        // One file changes (its size with it), one goes.
        std::fs::write(dir.join("pod/demo/p3.yaml"), pod("p3", "changed")).unwrap();
        std::fs::remove_file(dir.join("pod/demo/p7.yaml")).unwrap();
        let (state, _) = parsed.load(&dir);
        assert_eq!(parsed.parses, 11, "only p3 parsed again");
        assert_eq!(state.pods.len(), 9);
        assert_eq!(state.pod_labels("demo", "p3").unwrap()["app"], "changed");
        assert!(state.pod_labels("demo", "p7").is_none());
        // The same as a full read.
        let (full, _) = Parsed::default().load(&dir);
        assert_eq!(full.pods, state.pods);
        assert_eq!(full.revision, state.revision);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
