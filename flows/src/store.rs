//! The agent's recent flows: a bounded ring (the oldest flow goes when a
//! new one comes), and a broadcast of each new flow to the clients
//! following. A follower that falls behind loses flows (counted, and told
//! so in its stream); it never slows the reader or the other clients.
//!
//! A stored flow is its event and its names ([`FlowRecord`]); the Hubble
//! protobuf is built the first time a client reads it and kept: most flows
//! are never read, and building one costs more than everything else the
//! reader does for it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use tokio::sync::broadcast;
use weir_datapath::events::Event;
use weir_proto::encoded::EncodedResponse;
use weir_proto::flow::Flow;

use crate::enrich::{self, Named};

/// One flow as the store keeps it.
#[derive(Debug)]
pub struct FlowRecord {
    pub event: Event,
    pub named: Named,
    node: Arc<str>,
    built: OnceLock<Arc<Flow>>,
    /// Its GetFlows response, encoded on the first read.
    encoded: OnceLock<EncodedResponse>,
}

impl FlowRecord {
    pub fn new(event: Event, named: Named, node: Arc<str>) -> Self {
        Self {
            event,
            named,
            node,
            built: OnceLock::new(),
            encoded: OnceLock::new(),
        }
    }

    /// A record of a flow already built (tests, and sources other than
    /// the datapath).
    pub fn of_flow(flow: Flow) -> Self {
        let built = OnceLock::new();
        let _ = built.set(Arc::new(flow));
        let world = Arc::new(weir_proto::flow::Endpoint::default());
        let wall = built
            .get()
            .and_then(|f: &Arc<Flow>| f.time.as_ref().and_then(weir_proto::time::from_timestamp))
            .unwrap_or(std::time::UNIX_EPOCH);
        Self {
            event: Event::placeholder(),
            named: Named {
                src: world.clone(),
                dst: world,
                service: None,
                wall,
                policy: [None, None],
            },
            node: Arc::from(""),
            built,
            encoded: OnceLock::new(),
        }
    }

    /// The Hubble flow (built on first use).
    pub fn flow(&self) -> &Arc<Flow> {
        self.built
            .get_or_init(|| Arc::new(enrich::build(&self.event, &self.named, &self.node)))
    }

    /// Its GetFlows response as `node` serves it (one agent serves under
    /// one name, so the first is kept), encoded once.
    pub fn encoded(&self, node: &str) -> &EncodedResponse {
        self.encoded.get_or_init(|| EncodedResponse::flow(self.flow(), node))
    }

    /// When the datapath saw it, in nanoseconds since the epoch.
    pub fn time_nanos(&self) -> i128 {
        self.named
            .wall
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i128)
    }
}

pub struct FlowStore {
    ring: Mutex<VecDeque<Arc<FlowRecord>>>,
    tx: broadcast::Sender<Arc<FlowRecord>>,
    capacity: usize,
    seen: AtomicU64,
}

impl FlowStore {
    /// A store of at most `capacity` flows; followers may lag by as many.
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self {
            ring: Mutex::new(VecDeque::with_capacity(capacity)),
            tx: broadcast::channel(capacity).0,
            capacity,
            seen: AtomicU64::new(0),
        }
    }

    fn ring(&self) -> std::sync::MutexGuard<'_, VecDeque<Arc<FlowRecord>>> {
        self.ring.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a batch of flows in order (one lock for the batch).
    pub fn extend(&self, flows: impl IntoIterator<Item = FlowRecord>) {
        let mut ring = self.ring();
        let mut n = 0;
        for f in flows {
            let f = Arc::new(f);
            if ring.len() == self.capacity {
                ring.pop_front();
            }
            ring.push_back(f.clone());
            // No follower: nothing to do.
            let _ = self.tx.send(f);
            n += 1;
        }
        self.seen.fetch_add(n, Ordering::Relaxed);
    }

    /// The flows stored now, oldest first.
    pub fn snapshot(&self) -> Vec<Arc<FlowRecord>> {
        self.ring().iter().cloned().collect()
    }

    /// The flows stored now and a receiver of every later one, with no gap
    /// and no flow twice between them (both taken under the one lock).
    pub fn snapshot_and_follow(&self) -> (Vec<Arc<FlowRecord>>, broadcast::Receiver<Arc<FlowRecord>>) {
        let ring = self.ring();
        let rx = self.tx.subscribe();
        (ring.iter().cloned().collect(), rx)
    }

    /// A receiver of every flow added from now on.
    pub fn follow(&self) -> broadcast::Receiver<Arc<FlowRecord>> {
        self.tx.subscribe()
    }

    pub fn len(&self) -> usize {
        self.ring().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Every flow ever added.
    pub fn seen(&self) -> u64 {
        self.seen.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(n: &str) -> FlowRecord {
        FlowRecord::of_flow(Flow {
            node_name: n.into(),
            ..Default::default()
        })
    }

    #[test]
    fn keeps_the_newest_and_counts_all() {
        let s = FlowStore::new(3);
        s.extend(["a", "b", "c", "d"].map(flow));
        let names: Vec<_> = s.snapshot().iter().map(|f| f.flow().node_name.clone()).collect();
        assert_eq!(names, ["b", "c", "d"]);
        assert_eq!((s.len(), s.capacity(), s.seen()), (3, 3, 4));
    }

    #[test]
    fn a_follower_gets_what_comes_after_its_snapshot_and_a_slow_one_is_told_what_it_lost() {
        let s = FlowStore::new(2);
        s.extend([flow("a")]);
        let (snap, mut rx) = s.snapshot_and_follow();
        assert_eq!(snap.len(), 1);
        s.extend(["b", "c", "d", "e"].map(flow));
        assert!(matches!(rx.try_recv(), Err(broadcast::error::TryRecvError::Lagged(2))));
        assert_eq!(rx.try_recv().unwrap().flow().node_name, "d");
    }
}
