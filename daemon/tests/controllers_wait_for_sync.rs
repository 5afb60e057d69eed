//! An agent restart changes nothing in the maps the cluster did not change:
//! the services controller, started (as on every agent start) with the
//! empty snapshot of a source that has not synced yet, leaves the services
//! a previous agent programmed alone until the source speaks. Needs root
//! (a real datapath), no namespaces.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use weir_agent::cluster::{ClusterState, parse_manifests};
use weir_agent::services::{self, NodeInfo};
use weir_agent::sync::SyncStatus;
use weir_datapath::lb::{Algorithm, Backend, Protocol, ServiceSpec};
use weir_test_support::require_root;

const SERVICE: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: demo}
spec: {clusterIP: 10.96.7.7, clusterIPs: [10.96.7.7], selector: {app: web}, ports: [{port: 80, targetPort: 8080}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: demo, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{port: 8080, protocol: TCP}]
endpoints: [{addresses: [10.244.1.3], conditions: {ready: true}}]
"#;

struct PinDir(std::path::PathBuf);

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn services_programmed(pins: &std::path::Path) -> usize {
    weir_datapath::lb::ServiceMaps::open(pins)
        .expect("opening the service maps")
        .services()
        .expect("reading services")
        .len()
}

#[tokio::test]
async fn services_are_left_alone_until_the_source_has_synced() {
    if !require_root() {
        return;
    }
    let pins = PinDir(std::path::PathBuf::from(format!(
        "/sys/fs/bpf/weir-test/sync-{}",
        std::process::id()
    )));
    weir_datapath::ensure_bpffs(std::path::Path::new("/sys/fs/bpf")).expect("bpffs");
    let mut dp = weir_datapath::Datapath::load(&pins.0).expect("loading the datapath");

    // What the previous agent left: the service, programmed.
    let spec = ServiceSpec {
        backends: vec![Backend {
            ip: "10.244.1.3".parse().unwrap(),
            port: 8080,
            terminating: false,
        }],
        ..Default::default()
    };
    weir_datapath::lb::ServiceMaps::open(&pins.0)
        .unwrap()
        .upsert_service("10.96.7.7".parse().unwrap(), 80, Protocol::Tcp, &spec)
        .unwrap();
    assert_eq!(services_programmed(&pins.0), 1);

    // The restarted agent: its source has not synced yet.
    let (tx, rx) = watch::channel(Arc::new(ClusterState::default()));
    let node = NodeInfo {
        name: "n1".into(),
        ip: None,
    };
    let sync = Arc::new(SyncStatus::default());
    let maps = dp.take_service_maps().expect("service maps");
    let controller = tokio::spawn(services::run(
        services::shared(maps),
        Algorithm::Random,
        node,
        rx,
        sync.clone(),
        None,
    ));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(services_programmed(&pins.0), 1, "an unsynced source removed nothing");
    assert_eq!(sync.services(), None);

    // The source syncs with the same service: still there, now applied.
    let mut state = ClusterState::default();
    assert!(parse_manifests(&mut state, SERVICE).is_empty());
    state.revision = Some(1);
    tx.send(Arc::new(state)).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while sync.services() != Some(1) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the synced state was never applied"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(services_programmed(&pins.0), 1);

    // And a synced snapshot without it does remove it.
    let mut empty = ClusterState::default();
    empty.revision = Some(2);
    tx.send(Arc::new(empty)).unwrap();
    while sync.services() != Some(2) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the second state was never applied"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(services_programmed(&pins.0), 0);
    controller.abort();
}
