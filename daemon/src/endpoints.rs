//! Endpoint lifecycle: address allocation, identity, datapath wiring and
//! persistence, in an order that never leaves a half-made endpoint behind.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use ipnet::Ipv4Net;
use weir_agent_api::{
    AgentStatus, ApiError, Endpoint, EndpointAdd, EndpointRef, ErrorCode, POD_GATEWAY_V4, PodRef, Response,
};
use weir_datapath::abi::EpInfo;
use weir_model::IdentityKey;

use crate::cluster::ClusterState;
use crate::dataplane::{Dataplane, Interface};
use crate::ipam;
use crate::store::{self, State, Store};
use weir_error::report;

pub struct Endpoints<D: Dataplane> {
    node: String,
    cidr: Ipv4Net,
    dataplane: D,
    store: Store,
    state: State,
    /// Bumped whenever the set of endpoints changes: the policy controller
    /// follows it (a new endpoint needs its tables before its ADD answers).
    changed: tokio::sync::watch::Sender<u64>,
}

fn err(code: ErrorCode, message: impl Into<String>) -> ApiError {
    ApiError::new(code, message)
}

fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let parts: Vec<u8> = s
        .split(':')
        .map(|p| u8::from_str_radix(p, 16))
        .collect::<Result<_, _>>()
        .ok()?;
    parts.try_into().ok()
}

pub fn format_mac(m: [u8; 6]) -> String {
    m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// A pod's identity: the cluster-wide number of its label set
/// (weir_model::identity), or INIT until the allocator's has reached us.
fn identity_of(cluster: &ClusterState, namespace: &str, labels: &BTreeMap<String, String>) -> u32 {
    cluster
        .identity_of(&IdentityKey::of(namespace, labels))
        .unwrap_or(weir_model::identity::INIT)
}

impl<D: Dataplane> Endpoints<D> {
    /// Loads persisted state and re-adopts surviving endpoints: programs on
    /// their interfaces are swapped in place, never detached, so established
    /// pod traffic keeps flowing across an agent restart.
    pub fn open(node: String, cidr: Ipv4Net, dataplane: D, store: Store) -> Result<Self, store::StoreError> {
        if !store.exists() {
            let wired = dataplane.attached_interfaces();
            if !wired.is_empty() {
                return Err(store::StoreError::Lost {
                    path: store.path().to_owned(),
                    count: wired.len(),
                    examples: wired.iter().take(3).cloned().collect::<Vec<_>>().join(", "),
                });
            }
        }
        let state = store.load()?;
        state.check(cidr).map_err(|reason| store::StoreError::Invalid {
            path: store.path().to_owned(),
            reason,
        })?;
        let mut me = Self {
            node,
            cidr,
            dataplane,
            store,
            state,
            changed: tokio::sync::watch::channel(1).0,
        };
        me.reconcile();
        Ok(me)
    }

    fn reconcile(&mut self) {
        let mut gone = Vec::new();
        for (key, ep) in &mut self.state.endpoints {
            match self.dataplane.interface(&ep.host_ifname) {
                Some(Interface {
                    ifindex, mac: host_mac, ..
                }) => {
                    ep.host_ifindex = ifindex;
                    ep.host_mac = format_mac(host_mac);
                    let info = ep_info(ep, host_mac);
                    if let Err(e) = self.dataplane.wire(&ep.host_ifname, ep.ipv4, info, false) {
                        tracing::error!(endpoint = %key, error = %weir_error::Report(&e), "re-adopting endpoint failed");
                    }
                }
                None => gone.push(key.clone()),
            }
        }
        for key in gone {
            let ep = self.state.endpoints.remove(&key).expect("collected above");
            tracing::info!(endpoint = %key, ip = %ep.ipv4, "interface vanished while the agent was down; releasing");
            let _ = self.dataplane.unwire(&ep.host_ifname, ep.ipv4, ep.id);
        }
        // Pins of interfaces no endpoint owns any more.
        let known: BTreeSet<&str> = self.state.endpoints.values().map(|e| e.host_ifname.as_str()).collect();
        for iface in self.dataplane.attached_interfaces() {
            if !known.contains(iface.as_str()) {
                let _ = self.dataplane.unwire(&iface, std::net::Ipv4Addr::UNSPECIFIED, 0);
            }
        }
        if let Err(e) = self.store.save(&self.state) {
            tracing::error!(error = %weir_error::Report(&e), "saving state after reconcile");
        }
    }

    pub fn dataplane_mut(&mut self) -> &mut D {
        &mut self.dataplane
    }

    /// Follows changes of the endpoint set (a generation number).
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }

    pub fn generation(&self) -> u64 {
        *self.changed.borrow()
    }

    /// The endpoints as the policy compiler takes them.
    pub fn policy_endpoints(&self) -> Vec<weir_model::policy::LocalEndpoint> {
        self.state
            .endpoints
            .values()
            .map(|e| weir_model::policy::LocalEndpoint {
                endpoint_id: e.id,
                pod: weir_model::state::ObjectKey::new(e.pod.namespace.clone(), e.pod.name.clone()),
            })
            .collect()
    }

    pub fn add(&mut self, req: EndpointAdd, cluster: &ClusterState) -> Result<Response, ApiError> {
        for (field, value) in [
            ("container_id", &req.container_id),
            ("ifname", &req.ifname),
            ("host_ifname", &req.host_ifname),
        ] {
            if value.is_empty() {
                return Err(err(ErrorCode::BadRequest, format!("{field} must not be empty")));
            }
        }
        let pod_mac = parse_mac(&req.pod_mac).ok_or_else(|| {
            err(
                ErrorCode::BadRequest,
                format!("pod_mac {:?} is not a MAC address", req.pod_mac),
            )
        })?;
        let iface = self.dataplane.interface(&req.host_ifname).ok_or_else(|| {
            err(
                ErrorCode::NotFound,
                format!("interface {} does not exist on this node", req.host_ifname),
            )
        })?;
        let (ifindex, host_mac) = (iface.ifindex, iface.mac);
        // Pod programs on the node's loopback or uplink would blackhole the
        // node: only a pod's host veth (its peer in another netns) is one.
        if !iface.pod_veth {
            return Err(err(
                ErrorCode::BadRequest,
                format!(
                    "interface {} is not a pod's veth (a veth whose peer is in another network namespace)",
                    req.host_ifname
                ),
            ));
        }

        let key = store::key(&EndpointRef {
            container_id: req.container_id.clone(),
            ifname: req.ifname.clone(),
        });
        let labels = cluster
            .pod_labels(&req.pod.namespace, &req.pod.name)
            .unwrap_or_default();
        let identity = identity_of(cluster, &req.pod.namespace, &labels);

        // A repeated ADD keeps its address and id; everything else is refreshed.
        let (ipv4, id, fresh_ip) = match self.state.endpoints.get(&key) {
            Some(old) => (old.ipv4, old.id, false),
            None => {
                let used: BTreeSet<_> = self.state.endpoints.values().map(|e| e.ipv4).collect();
                let ip = ipam::next_free(self.cidr, &used, self.state.last_allocated)
                    .map_err(|e| err(ErrorCode::IpamExhausted, e.to_string()))?;
                (ip, self.state.allocate_endpoint_id(), true)
            }
        };
        let ep = Endpoint {
            id,
            identity,
            container_id: req.container_id,
            ifname: req.ifname,
            netns: req.netns,
            host_ifname: req.host_ifname,
            host_ifindex: ifindex,
            host_mac: format_mac(host_mac),
            pod_mac: format_mac(pod_mac),
            ipv4,
            pod_cidr_prefix: self.cidr.prefix_len(),
            gateway_v4: POD_GATEWAY_V4,
            pod: req.pod,
            labels,
            // A repeated ADD keeps a trace switched on.
            trace: self.state.endpoints.get(&key).is_some_and(|old| old.trace),
            counters: None,
        };

        let previous = self.state.endpoints.insert(key.clone(), ep.clone());
        let previous_last = self.state.last_allocated;
        if fresh_ip {
            self.state.last_allocated = Some(ipv4);
        }
        if let Err(e) = self.store.save(&self.state) {
            self.restore(&key, previous, previous_last);
            return Err(err(
                ErrorCode::Internal,
                format!("persisting allocation: {}", report(&e)),
            ));
        }
        if let Err(e) = self.dataplane.wire(&ep.host_ifname, ipv4, ep_info(&ep, host_mac), true) {
            let _ = self.dataplane.unwire(&ep.host_ifname, ipv4, id);
            self.restore(&key, previous, previous_last);
            let _ = self.store.save(&self.state);
            return Err(err(ErrorCode::Datapath, report(&e)));
        }
        tracing::info!(endpoint = %key, pod = %format!("{}/{}", ep.pod.namespace, ep.pod.name), ip = %ipv4, id, "endpoint added");
        self.changed.send_modify(|g| *g += 1);
        Ok(Response::Endpoint(Box::new(ep)))
    }

    fn restore(&mut self, key: &str, previous: Option<Endpoint>, last: Option<std::net::Ipv4Addr>) {
        match previous {
            Some(p) => self.state.endpoints.insert(key.to_owned(), p),
            None => self.state.endpoints.remove(key),
        };
        self.state.last_allocated = last;
    }

    /// Follows the cluster: an endpoint whose pod's labels or label set's
    /// identity changed (a relabel, or the identity allocated after the ADD)
    /// gets them, in its record and in the datapath. Returns how many
    /// changed; one that fails to update keeps its old record and is tried
    /// again on the next change.
    pub fn refresh_identities(&mut self, cluster: &ClusterState) -> usize {
        let mut changed = 0;
        for (key, ep) in &mut self.state.endpoints {
            let Some(labels) = cluster.pod_labels(&ep.pod.namespace, &ep.pod.name) else {
                continue;
            };
            let identity = identity_of(cluster, &ep.pod.namespace, &labels);
            if identity == ep.identity && labels == ep.labels {
                continue;
            }
            let mut next = ep.clone();
            next.identity = identity;
            next.labels = labels;
            let host_mac = parse_mac(&ep.host_mac).unwrap_or_default();
            match self.dataplane.update(ep.ipv4, ep_info(&next, host_mac)) {
                Ok(()) => {
                    if identity != ep.identity {
                        tracing::info!(endpoint = %key, from = ep.identity, to = identity, "endpoint identity changed");
                    } else {
                        tracing::debug!(endpoint = %key, identity, "endpoint labels changed, same identity");
                    }
                    *ep = next;
                    changed += 1;
                }
                Err(e) => tracing::warn!(endpoint = %key, error = %report(&e), "updating endpoint identity"),
            }
        }
        if changed > 0
            && let Err(e) = self.store.save(&self.state)
        {
            tracing::error!(error = %weir_error::Report(&e), "saving state after identity changes");
        }
        changed
    }

    /// Turns per-packet tracing on or off for the endpoints of `pod`, in
    /// their records and in the datapath (the programs read the flag per
    /// packet: no reload).
    pub fn set_trace(&mut self, pod: &PodRef, enabled: bool) -> Result<Response, ApiError> {
        let mut touched = Vec::new();
        for ep in self
            .state
            .endpoints
            .values_mut()
            .filter(|e| e.pod.namespace == pod.namespace && e.pod.name == pod.name)
        {
            let mut next = ep.clone();
            next.trace = enabled;
            let host_mac = parse_mac(&ep.host_mac).unwrap_or_default();
            self.dataplane
                .update(ep.ipv4, ep_info(&next, host_mac))
                .map_err(|e| err(ErrorCode::Datapath, report(&e)))?;
            *ep = next;
            touched.push(ep.clone());
        }
        if touched.is_empty() {
            return Err(err(
                ErrorCode::NotFound,
                format!("no endpoint of pod {}/{} on this node", pod.namespace, pod.name),
            ));
        }
        if let Err(e) = self.store.save(&self.state) {
            tracing::error!(error = %weir_error::Report(&e), "saving state after a trace switch");
        }
        tracing::info!(pod = %format!("{}/{}", pod.namespace, pod.name), enabled, "endpoint tracing switched");
        Ok(Response::Endpoints { endpoints: touched })
    }

    pub fn delete(&mut self, r: &EndpointRef) -> Result<Response, ApiError> {
        let key = store::key(r);
        let Some(ep) = self.state.endpoints.remove(&key) else {
            return Ok(Response::Deleted { released: false });
        };
        // Unwire before forgetting: a failed save must not leave a wired pod
        // whose address could be handed out again.
        let unwired = self.dataplane.unwire(&ep.host_ifname, ep.ipv4, ep.id);
        if let Err(e) = self.store.save(&self.state) {
            self.state.endpoints.insert(key, ep);
            return Err(err(ErrorCode::Internal, format!("persisting release: {}", report(&e))));
        }
        if let Err(e) = unwired {
            tracing::warn!(endpoint = %key, error = %report(&e), "unwiring endpoint");
        }
        tracing::info!(endpoint = %key, ip = %ep.ipv4, "endpoint released");
        self.changed.send_modify(|g| *g += 1);
        Ok(Response::Deleted { released: true })
    }

    pub fn get(&mut self, r: &EndpointRef) -> Result<Response, ApiError> {
        let key = store::key(r);
        let mut ep = self
            .state
            .endpoints
            .get(&key)
            .cloned()
            .ok_or_else(|| err(ErrorCode::NotFound, format!("no endpoint {key}")))?;
        ep.counters = self.dataplane.counters(ep.id).ok();
        Ok(Response::Endpoint(Box::new(ep)))
    }

    pub fn list(&mut self) -> Result<Response, ApiError> {
        let mut endpoints: Vec<Endpoint> = self.state.endpoints.values().cloned().collect();
        for ep in &mut endpoints {
            ep.counters = Some(
                self.dataplane
                    .counters(ep.id)
                    .map_err(|e| err(ErrorCode::Datapath, report(&e)))?,
            );
        }
        Ok(Response::Endpoints { endpoints })
    }

    pub fn gc(&mut self, keep: &[EndpointRef]) -> Result<Response, ApiError> {
        let keep: BTreeSet<String> = keep.iter().map(store::key).collect();
        let stale: Vec<EndpointRef> = self
            .state
            .endpoints
            .values()
            .filter(|e| !keep.contains(&format!("{}/{}", e.container_id, e.ifname)))
            .map(|e| EndpointRef {
                container_id: e.container_id.clone(),
                ifname: e.ifname.clone(),
            })
            .collect();
        let mut released = Vec::new();
        for r in stale {
            if let Ok(Response::Deleted { released: true }) = self.delete(&r) {
                released.push(r);
            }
        }
        Ok(Response::Collected { released })
    }

    pub fn status(&self) -> Result<Response, ApiError> {
        let drops = self
            .dataplane
            .drops()
            .map_err(|e| err(ErrorCode::Datapath, report(&e)))?
            .into_iter()
            .collect();
        Ok(Response::Status(AgentStatus {
            node: self.node.clone(),
            pod_cidr: self.cidr.to_string(),
            endpoints: self.state.endpoints.len(),
            addresses_free: ipam::usable(self.cidr) - self.state.endpoints.len() as u64,
            drops,
            services_applied: None,
            policy_applied: None,
        }))
    }
}

fn ep_info(ep: &Endpoint, host_mac: [u8; 6]) -> EpInfo {
    EpInfo {
        ifindex: ep.host_ifindex,
        endpoint_id: ep.id,
        identity: ep.identity,
        pod_mac: parse_mac(&ep.pod_mac).unwrap_or_default(),
        host_mac,
        flags: if ep.trace { weir_datapath::abi::EP_F_TRACE } else { 0 },
    }
}

/// Shared handle used by the API server.
pub type Shared<D> = Arc<std::sync::Mutex<Endpoints<D>>>;

/// Keeps local endpoints' labels and identities in step with the cluster
/// model ([`Endpoints::refresh_identities`]): when pods or identities
/// change.
struct IdentityFollower<D: Dataplane> {
    endpoints: Shared<D>,
}

impl<D: Dataplane + 'static> crate::reconcile::Reconciler for IdentityFollower<D> {
    fn name(&self) -> &'static str {
        "identities"
    }

    async fn reconcile(&mut self, pass: crate::reconcile::Pass) -> crate::reconcile::Action {
        let relevant = pass
            .changes
            .as_ref()
            .is_none_or(|c| c.touches(weir_model::Kind::Pod) || c.touches(weir_model::Kind::WeirIdentity));
        if relevant {
            let eps = self.endpoints.clone();
            crate::reconcile::blocking(move || {
                eps.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .refresh_identities(&pass.state)
            })
            .await;
        }
        crate::reconcile::Action::Done
    }
}

/// Runs the identity follower until the model's sender goes.
pub async fn follow_identities<D: Dataplane + 'static>(
    endpoints: Shared<D>,
    rx: tokio::sync::watch::Receiver<Arc<ClusterState>>,
) {
    crate::reconcile::run(IdentityFollower { endpoints }, rx, Default::default()).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::DataplaneError;
    use std::net::Ipv4Addr;
    use weir_agent_api::{EndpointCounters, PodRef, Traffic};

    #[derive(Default)]
    struct Fake {
        ifaces: BTreeMap<String, u32>,
        wired: BTreeMap<String, Ipv4Addr>,
        /// What `update` last wrote per address.
        identities: BTreeMap<Ipv4Addr, u32>,
        /// Interfaces that are not a pod's veth.
        not_veth: BTreeSet<u32>,
        fail_wire: bool,
    }

    impl Dataplane for Fake {
        fn interface(&self, name: &str) -> Option<Interface> {
            self.ifaces.get(name).map(|i| Interface {
                ifindex: *i,
                mac: [2, 0, 0, 0, 0, *i as u8],
                pod_veth: !self.not_veth.contains(i),
            })
        }
        fn wire(&mut self, iface: &str, ip: Ipv4Addr, _: EpInfo, _: bool) -> Result<(), DataplaneError> {
            if self.fail_wire {
                return Err(weir_datapath::DatapathError::Options("verifier said no".into()).into());
            }
            self.wired.insert(iface.into(), ip);
            Ok(())
        }
        fn update(&mut self, ip: Ipv4Addr, info: EpInfo) -> Result<(), DataplaneError> {
            self.identities.insert(ip, info.identity);
            Ok(())
        }

        fn unwire(&mut self, iface: &str, _: Ipv4Addr, _: u32) -> Result<(), DataplaneError> {
            self.wired.remove(iface);
            Ok(())
        }
        fn counters(&mut self, _: u32) -> Result<EndpointCounters, DataplaneError> {
            Ok(EndpointCounters::default())
        }
        fn drops(&self) -> Result<Vec<(String, Traffic)>, DataplaneError> {
            Ok(vec![])
        }
        fn attached_interfaces(&self) -> Vec<String> {
            self.wired.keys().cloned().collect()
        }
    }

    struct Dir(std::path::PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn setup(test: &str, cidr: &str, ifaces: &[&str]) -> (Endpoints<Fake>, Dir) {
        let dir = Dir(std::env::temp_dir().join(format!("weir-ep-{test}-{}", std::process::id())));
        let _ = std::fs::remove_dir_all(&dir.0);
        let mut fake = Fake::default();
        for (i, name) in ifaces.iter().enumerate() {
            fake.ifaces.insert((*name).into(), 10 + i as u32);
        }
        let eps = Endpoints::open("n1".into(), cidr.parse().unwrap(), fake, Store::new(&dir.0)).unwrap();
        (eps, dir)
    }

    fn add_req(cid: &str, host: &str) -> EndpointAdd {
        EndpointAdd {
            container_id: cid.into(),
            ifname: "eth0".into(),
            netns: "/var/run/netns/x".into(),
            host_ifname: host.into(),
            pod_mac: "02:00:00:00:00:aa".into(),
            pod: PodRef {
                namespace: "demo".into(),
                name: cid.into(),
                uid: String::new(),
            },
        }
    }

    fn ip_of(r: Response) -> Ipv4Addr {
        match r {
            Response::Endpoint(e) => e.ipv4,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn add_is_idempotent_and_addresses_are_unique() {
        let (mut eps, _d) = setup("idem", "10.0.0.0/29", &["lxa", "lxb"]);
        let c = ClusterState::default();
        let a = ip_of(eps.add(add_req("a", "lxa"), &c).unwrap());
        assert_eq!(
            ip_of(eps.add(add_req("a", "lxa"), &c).unwrap()),
            a,
            "same container, same address"
        );
        let b = ip_of(eps.add(add_req("b", "lxb"), &c).unwrap());
        assert_ne!(a, b);
        assert_eq!(eps.dataplane.wired.len(), 2);
    }

    #[test]
    fn exhaustion_is_a_typed_error_and_delete_returns_the_address() {
        let (mut eps, _d) = setup("exhaust", "10.0.0.0/30", &["l1", "l2", "l3"]);
        let c = ClusterState::default();
        eps.add(add_req("a", "l1"), &c).unwrap();
        eps.add(add_req("b", "l2"), &c).unwrap();
        let e = eps.add(add_req("c", "l3"), &c).unwrap_err();
        assert_eq!(e.code, ErrorCode::IpamExhausted);
        assert!(!eps.dataplane.wired.contains_key("l3"), "nothing wired on failure");
        let r = EndpointRef {
            container_id: "a".into(),
            ifname: "eth0".into(),
        };
        assert!(matches!(eps.delete(&r).unwrap(), Response::Deleted { released: true }));
        assert!(
            matches!(eps.delete(&r).unwrap(), Response::Deleted { released: false }),
            "DEL twice is fine"
        );
        eps.add(add_req("c", "l3"), &c).unwrap();
    }

    #[test]
    fn allocations_survive_restart_and_vanished_interfaces_are_released() {
        let (mut eps, d) = setup("restart", "10.0.0.0/29", &["l1", "l2"]);
        let c = ClusterState::default();
        let a = ip_of(eps.add(add_req("a", "l1"), &c).unwrap());
        eps.add(add_req("b", "l2"), &c).unwrap();
        // Restart: l2's pod went away while the agent was down.
        let mut fake = Fake::default();
        fake.ifaces.insert("l1".into(), 10);
        let mut eps = Endpoints::open("n1".into(), "10.0.0.0/29".parse().unwrap(), fake, Store::new(&d.0)).unwrap();
        assert_eq!(eps.state.endpoints.len(), 1);
        assert_eq!(eps.dataplane.wired.get("l1"), Some(&a), "re-adopted");
        let r = EndpointRef {
            container_id: "a".into(),
            ifname: "eth0".into(),
        };
        match eps.get(&r).unwrap() {
            Response::Endpoint(e) => assert_eq!(e.ipv4, a),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn datapath_failure_rolls_back_the_allocation() {
        let (mut eps, _d) = setup("rollback", "10.0.0.0/30", &["l1"]);
        eps.dataplane.fail_wire = true;
        let e = eps.add(add_req("a", "l1"), &ClusterState::default()).unwrap_err();
        assert_eq!(e.code, ErrorCode::Datapath);
        assert!(eps.state.endpoints.is_empty());
        assert_eq!(eps.state.last_allocated, None);
    }

    #[test]
    fn bad_requests_and_missing_interfaces_are_typed() {
        let (mut eps, _d) = setup("bad", "10.0.0.0/29", &["l1"]);
        let c = ClusterState::default();
        let mut r = add_req("a", "l1");
        r.pod_mac = "zz".into();
        assert_eq!(eps.add(r, &c).unwrap_err().code, ErrorCode::BadRequest);
        assert_eq!(eps.add(add_req("a", "nope"), &c).unwrap_err().code, ErrorCode::NotFound);
        assert_eq!(eps.add(add_req("", "l1"), &c).unwrap_err().code, ErrorCode::BadRequest);
    }

    #[test]
    fn a_lost_or_impossible_state_file_stops_the_agent_instead_of_reusing_addresses() {
        let (mut eps, d) = setup("lost", "10.0.0.0/29", &["l1", "l2"]);
        let c = ClusterState::default();
        eps.add(add_req("a", "l1"), &c).unwrap();
        let wired = std::mem::take(&mut eps.dataplane_mut().wired);
        let ifaces = eps.dataplane_mut().ifaces.clone();
        let fake = || Fake {
            ifaces: ifaces.clone(),
            wired: wired.clone(),
            ..Fake::default()
        };

        // The state file is removed while pod a is still wired.
        std::fs::remove_file(d.0.join("state.json")).unwrap();
        let err = Endpoints::open("n1".into(), "10.0.0.0/29".parse().unwrap(), fake(), Store::new(&d.0))
            .err()
            .expect("must refuse to start");
        assert!(matches!(err, store::StoreError::Lost { count: 1, .. }), "{err}");

        // A state whose addresses are outside a changed --pod-cidr.
        eps.store.save(&eps.state).unwrap();
        let err = Endpoints::open("n1".into(), "10.9.0.0/29".parse().unwrap(), fake(), Store::new(&d.0))
            .err()
            .expect("must refuse a changed pod CIDR");
        assert!(err.to_string().contains("outside the pod CIDR"), "{err}");

        // An address held twice.
        let mut twice = eps.state.clone();
        let mut dup = twice.endpoints.values().next().unwrap().clone();
        dup.id += 1;
        twice.endpoints.insert("b/eth0".into(), dup);
        eps.store.save(&twice).unwrap();
        let err = Endpoints::open("n1".into(), "10.0.0.0/29".parse().unwrap(), fake(), Store::new(&d.0))
            .err()
            .expect("must refuse a duplicate");
        assert!(err.to_string().contains("held by both"), "{err}");
    }

    #[test]
    fn only_a_pods_veth_is_accepted() {
        let (mut eps, _d) = setup("veth", "10.0.0.0/29", &["lo", "l1"]);
        eps.dataplane_mut().not_veth.insert(10); // "lo", the first interface
        let c = ClusterState::default();
        let e = eps.add(add_req("a", "lo"), &c).unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest, "{e:?}");
        assert!(eps.dataplane_mut().wired.is_empty(), "nothing attached to lo");
        assert!(eps.state.endpoints.is_empty(), "no address held");
        eps.add(add_req("a", "l1"), &c).unwrap();
    }

    #[test]
    fn gc_releases_everything_not_kept() {
        let (mut eps, _d) = setup("gc", "10.0.0.0/29", &["l1", "l2"]);
        let c = ClusterState::default();
        eps.add(add_req("a", "l1"), &c).unwrap();
        eps.add(add_req("b", "l2"), &c).unwrap();
        let keep = [EndpointRef {
            container_id: "a".into(),
            ifname: "eth0".into(),
        }];
        match eps.gc(&keep).unwrap() {
            Response::Collected { released } => assert_eq!(released.len(), 1),
            other => panic!("{other:?}"),
        }
        assert_eq!(eps.state.endpoints.len(), 1);
    }

    #[test]
    fn identity_follows_namespace_and_labels() {
        let (mut eps, _d) = setup("ident", "10.0.0.0/28", &["l1", "l2", "l3"]);
        let mut c = ClusterState::default();
        crate::cluster::parse_manifests(
            &mut c,
            "kind: Pod\napiVersion: v1\nmetadata: {name: a, namespace: demo, labels: {app: web}}\nspec: {containers: []}\n---\nkind: Pod\napiVersion: v1\nmetadata: {name: b, namespace: demo, labels: {app: web}}\nspec: {containers: []}\n---\nkind: WeirIdentity\napiVersion: weir.dev/v1alpha1\nmetadata: {name: \"300\"}\nspec: {namespace: demo, labels: {app: web}}\n",
        );
        let id = |r: Response| match r {
            Response::Endpoint(e) => (e.identity, e.labels),
            other => panic!("{other:?}"),
        };
        let (ia, la) = id(eps.add(add_req("a", "l1"), &c).unwrap());
        let (ib, _) = id(eps.add(add_req("b", "l2"), &c).unwrap());
        let (ic, _) = id(eps.add(add_req("c", "l3"), &c).unwrap());
        assert_eq!(ia, ib, "same labels, same identity");
        assert_ne!(ia, ic);
        assert_eq!(la["app"], "web");
        assert_eq!(ia, 300, "the cluster's number for the label set");
    }

    #[test]
    fn identities_follow_the_cluster_after_the_add() {
        let (mut eps, _d) = setup("identfollow", "10.0.0.0/28", &["l1"]);
        let pod = "kind: Pod\napiVersion: v1\nmetadata: {name: a, namespace: demo, labels: {app: web}}\nspec: {containers: []}\n";
        let mut c = ClusterState::default();
        crate::cluster::parse_manifests(&mut c, pod);
        let ip = match eps.add(add_req("a", "l1"), &c).unwrap() {
            Response::Endpoint(e) => {
                assert_eq!(e.identity, weir_model::identity::INIT, "not allocated yet");
                e.ipv4
            }
            other => panic!("{other:?}"),
        };
        assert_eq!(eps.refresh_identities(&c), 0, "nothing changed");

        // The allocator's identity arrives.
        crate::cluster::parse_manifests(
            &mut c,
            "kind: WeirIdentity\napiVersion: weir.dev/v1alpha1\nmetadata: {name: \"700\"}\nspec: {namespace: demo, labels: {app: web}}\n",
        );
        assert_eq!(eps.refresh_identities(&c), 1);
        assert_eq!(eps.dataplane_mut().identities[&ip], 700, "written to the datapath");

        // The pod is relabelled: its new label set has no number yet.
        crate::cluster::parse_manifests(&mut c, &pod.replace("app: web", "app: api"));
        assert_eq!(eps.refresh_identities(&c), 1);
        assert_eq!(eps.dataplane_mut().identities[&ip], weir_model::identity::INIT);
        assert_eq!(eps.state.endpoints.values().next().unwrap().labels["app"], "api");
    }
}
