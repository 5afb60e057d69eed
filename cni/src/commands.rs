//! ADD, DEL, CHECK, STATUS and GC: what to do, in which order, and how to
//! undo it. Kernel work goes through [`Node`], agent calls through [`Agent`],
//! so the ordering and rollback rules are unit-tested with fakes.

use weir_agent_api::{Client, ClientError, Endpoint, EndpointAdd, EndpointRef, ErrorCode, Request, Response};

use crate::config::NetConf;
use crate::env::Attachment;
use crate::error::{CniError, Code};
use crate::names::{host_ifname, parse_mac, temp_peer_ifname};
use crate::netlink::{Node, NodeError, PodAddressing, VethSpec};
use crate::result::{AddResult, Wired, add_result, prev_result_ipv4s};

/// The agent's local API, as the commands use it.
pub trait Agent {
    fn call(&self, request: Request) -> Result<Response, ClientError>;
}

impl Agent for Client {
    fn call(&self, request: Request) -> Result<Response, ClientError> {
        Client::call(self, request)
    }
}

fn kernel(what: &str, err: &NodeError) -> CniError {
    let code = match err {
        NodeError::NotANetns { .. } | NodeError::NodeNetns { .. } => Code::InvalidEnv,
        _ => Code::Io,
    };
    CniError::new(code, what.to_owned()).with_details(weir_error::report(err))
}

fn unexpected(what: &str, response: &Response) -> CniError {
    CniError::new(Code::Io, format!("{what}: unexpected reply from the weir agent"))
        .with_details(format!("{response:?}"))
}

fn endpoint_ref(att: &Attachment) -> EndpointRef {
    EndpointRef {
        container_id: att.container_id.clone(),
        ifname: att.ifname.clone(),
    }
}

fn container_unknown(netns: &str) -> CniError {
    CniError::new(Code::UnknownContainer, "container unknown or does not exist")
        .with_details(format!("network namespace {netns} does not exist"))
}

/// ADD: veth pair, agent registration, pod addressing; rolls back on failure.
pub fn add<N: Node, A: Agent>(
    node: &N,
    agent: &A,
    conf: &NetConf,
    att: &Attachment,
    pid: u32,
) -> Result<AddResult, CniError> {
    let netns = node
        .open_netns(&att.netns)
        .map_err(|e| kernel("opening the pod network namespace", &e))?
        .ok_or_else(|| container_unknown(&att.netns))?;
    let spec = VethSpec {
        host: host_ifname(&att.container_id, &att.ifname),
        temp_peer: temp_peer_ifname(pid, &att.container_id, &att.ifname),
        ifname: att.ifname.clone(),
        mtu: conf.mtu,
    };

    // A repeated ADD replaces what an earlier one left.
    node.delete_link(&spec.host)
        .map_err(|e| kernel("removing a stale host veth", &e))?;

    let mut agent_called = false;
    let outcome = wire(node, agent, &netns, att, &spec, &mut agent_called);
    match outcome {
        Ok(wired) => Ok(add_result(&conf.cni_version, &wired)),
        Err(err) => {
            if agent_called && let Err(e) = agent.call(Request::EndpointDel(endpoint_ref(att))) {
                tracing::warn!(error = %weir_error::Report(&e), "rollback: releasing the endpoint failed");
            }
            if let Err(e) = node.delete_link(&spec.host) {
                tracing::warn!(error = %weir_error::Report(&e), host_ifname = %spec.host, "rollback: deleting the veth failed");
            }
            Err(err)
        }
    }
}

fn wire<N: Node, A: Agent>(
    node: &N,
    agent: &A,
    netns: &N::Netns,
    att: &Attachment,
    spec: &VethSpec,
    agent_called: &mut bool,
) -> Result<Wired, CniError> {
    let macs = node
        .plumb_veth(netns, spec)
        .map_err(|e| kernel("creating the pod veth pair", &e))?;

    let request = Request::EndpointAdd(EndpointAdd {
        container_id: att.container_id.clone(),
        ifname: att.ifname.clone(),
        netns: att.netns.clone(),
        host_ifname: spec.host.clone(),
        pod_mac: macs.pod.clone(),
        pod: att.pod.clone(),
    });
    let reply = agent.call(request);
    // Connection refused means the agent never saw the request; anything else may have allocated.
    *agent_called = !matches!(reply, Err(ClientError::Unreachable { .. }));
    let ep = match reply {
        Ok(Response::Endpoint(ep)) => *ep,
        Ok(other) => return Err(unexpected("registering the endpoint", &other)),
        Err(e) => {
            return Err(CniError::from_agent(
                "registering the endpoint",
                &e,
                Code::TryAgainLater,
            ));
        }
    };
    let gateway_mac = parse_mac(&ep.host_mac).ok_or_else(|| {
        CniError::new(
            Code::Io,
            "registering the endpoint: the agent returned an invalid host MAC",
        )
        .with_details(ep.host_mac.clone())
    })?;
    let addressing = PodAddressing {
        ipv4: ep.ipv4,
        gateway: ep.gateway_v4,
        gateway_mac,
    };
    node.configure_pod(netns, &att.ifname, &addressing)
        .map_err(|e| kernel("configuring the pod interface", &e))?;

    Ok(Wired {
        host_ifname: spec.host.clone(),
        host_mac: macs.host,
        ifname: att.ifname.clone(),
        pod_mac: macs.pod,
        netns: att.netns.clone(),
        ipv4: ep.ipv4,
        gateway: ep.gateway_v4,
        mtu: spec.mtu,
    })
}

/// DEL: release the endpoint and delete the veth. Idempotent; keeps going
/// after an error and reports all of them.
pub fn del<N: Node, A: Agent>(node: &N, agent: &A, att: &Attachment) -> Result<(), CniError> {
    let mut errors: Vec<CniError> = Vec::new();
    match agent.call(Request::EndpointDel(endpoint_ref(att))) {
        Ok(_) => {}
        Err(ClientError::Api(e)) if e.code == ErrorCode::NotFound => {}
        // No agent (weir uninstalled, or between two agents): the pod's
        // interface still goes below, and an agent that starts later
        // releases the address of every endpoint whose interface vanished.
        // Failing would keep the pod terminating for as long as no agent
        // runs, which after an uninstall is for ever.
        Err(ClientError::Unreachable { path, source }) => {
            tracing::warn!(socket = %path.display(), error = %weir_error::Report(&source),
                "agent unreachable: the interface is deleted, the address is released when an agent starts");
        }
        Err(e) => errors.push(CniError::from_agent("releasing the endpoint", &e, Code::TryAgainLater)),
    }
    // Deleting the host end removes the pod end too, wherever it is.
    let host = host_ifname(&att.container_id, &att.ifname);
    if let Err(e) = node.delete_link(&host) {
        errors.push(kernel(&format!("deleting host veth {host}"), &e));
    }
    combine(errors)
}

/// The first error's code and message; every error in the details.
fn combine(mut errors: Vec<CniError>) -> Result<(), CniError> {
    match errors.len() {
        0 => Ok(()),
        1 => Err(errors.remove(0)),
        _ => {
            let details = errors
                .iter()
                .map(|e| format!("{}: {}", e.msg, e.details))
                .collect::<Vec<_>>()
                .join("; ");
            let first = errors.remove(0);
            Err(CniError::new(first.code, format!("{} (and {} more)", first.msg, errors.len())).with_details(details))
        }
    }
}

/// CHECK: the namespace, both veth ends and the agent's address are in place.
pub fn check<N: Node, A: Agent>(node: &N, agent: &A, conf: &NetConf, att: &Attachment) -> Result<(), CniError> {
    let netns = node
        .open_netns(&att.netns)
        .map_err(|e| kernel("opening the pod network namespace", &e))?
        .ok_or_else(|| container_unknown(&att.netns))?;
    let ep: Endpoint = match agent.call(Request::EndpointGet(endpoint_ref(att))) {
        Ok(Response::Endpoint(ep)) => *ep,
        Ok(other) => return Err(unexpected("looking up the endpoint", &other)),
        Err(e) => {
            return Err(CniError::from_agent("looking up the endpoint", &e, Code::TryAgainLater));
        }
    };
    let want = format!("{}/32", ep.ipv4);
    if let Some(prev) = &conf.prev_result {
        let listed = prev_result_ipv4s(prev);
        if !listed.is_empty() && !listed.contains(&want) {
            return Err(
                CniError::new(Code::Io, "prevResult does not match the agent's endpoint")
                    .with_details(format!("prevResult lists {listed:?}, the agent has {want}")),
            );
        }
    }
    let host = host_ifname(&att.container_id, &att.ifname);
    if !node
        .link_exists(&host)
        .map_err(|e| kernel("looking up the host veth", &e))?
    {
        return Err(CniError::new(Code::Io, format!("host veth {host} is missing")));
    }
    let addrs = node
        .pod_ipv4s(&netns, &att.ifname)
        .map_err(|e| kernel("reading the pod interface", &e))?
        .ok_or_else(|| {
            CniError::new(
                Code::Io,
                format!("interface {} is missing in {}", att.ifname, att.netns),
            )
        })?;
    if !addrs.iter().any(|(ip, prefix)| *ip == ep.ipv4 && *prefix == 32) {
        let have: Vec<String> = addrs.iter().map(|(ip, p)| format!("{ip}/{p}")).collect();
        return Err(
            CniError::new(Code::Io, format!("interface {} does not have {want}", att.ifname))
                .with_details(format!("addresses on {}: {have:?}", att.ifname)),
        );
    }
    Ok(())
}

/// STATUS: is the agent there and can it serve an ADD? With no address
/// left in the node's pod CIDR every ADD would fail, and the spec says
/// STATUS fails (50) when the plugin knows it cannot serve ADDs.
pub fn status<A: Agent>(agent: &A) -> Result<(), CniError> {
    match agent.call(Request::Status) {
        Ok(Response::Status(s)) if s.addresses_free == 0 => Err(CniError::new(
            Code::NotAvailable,
            format!("no address left in pod CIDR {} of node {}", s.pod_cidr, s.node),
        )
        .with_details(format!("{} endpoints hold every usable address", s.endpoints))),
        Ok(Response::Status(_)) => Ok(()),
        Ok(other) => {
            Err(CniError::new(Code::NotAvailable, "weir agent is not ready").with_details(format!("{other:?}")))
        }
        Err(e) => {
            let mut err = CniError::from_agent("status", &e, Code::NotAvailable);
            err.code = Code::NotAvailable;
            Err(err)
        }
    }
}

/// GC: release every endpoint not in the runtime's list of valid attachments.
pub fn gc<A: Agent>(agent: &A, conf: &NetConf) -> Result<(), CniError> {
    let Some(keep) = conf.valid_attachments.clone() else {
        return Err(
            CniError::new(Code::InvalidConfig, "GC without cni.dev/valid-attachments")
                .with_details("refusing to guess which attachments are valid"),
        );
    };
    match agent.call(Request::Gc { keep }) {
        Ok(Response::Collected { released }) => {
            if !released.is_empty() {
                tracing::info!(released = released.len(), "gc released endpoints");
            }
            Ok(())
        }
        Ok(other) => Err(unexpected("garbage collection", &other)),
        Err(e) => Err(CniError::from_agent("garbage collection", &e, Code::TryAgainLater)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::net::Ipv4Addr;
    use weir_agent_api::{AgentStatus, ApiError, PodRef};

    use crate::netlink::VethMacs;

    /// Records every operation; fails the ones it is told to.
    #[derive(Default)]
    struct FakeNode {
        log: RefCell<Vec<String>>,
        missing_netns: bool,
        fail_configure: bool,
        links: RefCell<Vec<String>>,
        pod_addrs: Option<Vec<(Ipv4Addr, u8)>>,
    }

    fn io_err() -> NodeError {
        NodeError::Setup(std::io::Error::other("boom"))
    }

    impl Node for FakeNode {
        type Netns = ();
        fn open_netns(&self, path: &str) -> Result<Option<()>, NodeError> {
            self.log.borrow_mut().push(format!("open {path}"));
            Ok((!self.missing_netns).then_some(()))
        }
        fn link_exists(&self, name: &str) -> Result<bool, NodeError> {
            Ok(self.links.borrow().iter().any(|l| l == name))
        }
        fn delete_link(&self, name: &str) -> Result<bool, NodeError> {
            self.log.borrow_mut().push(format!("delete {name}"));
            let mut links = self.links.borrow_mut();
            let before = links.len();
            links.retain(|l| l != name);
            Ok(links.len() != before)
        }
        fn plumb_veth(&self, _: &(), spec: &VethSpec) -> Result<VethMacs, NodeError> {
            self.log
                .borrow_mut()
                .push(format!("plumb {} {} {}", spec.host, spec.temp_peer, spec.ifname));
            self.links.borrow_mut().push(spec.host.clone());
            Ok(VethMacs {
                host: "02:00:00:00:00:01".into(),
                pod: "02:00:00:00:00:02".into(),
            })
        }
        fn configure_pod(&self, _: &(), ifname: &str, addr: &PodAddressing) -> Result<(), NodeError> {
            self.log
                .borrow_mut()
                .push(format!("configure {ifname} {} via {}", addr.ipv4, addr.gateway));
            if self.fail_configure { Err(io_err()) } else { Ok(()) }
        }
        fn pod_ipv4s(&self, _: &(), _: &str) -> Result<Option<Vec<(Ipv4Addr, u8)>>, NodeError> {
            Ok(self.pod_addrs.clone())
        }
    }

    type Reply = fn(&Request) -> Result<Response, ClientError>;

    struct FakeAgent {
        calls: RefCell<Vec<Request>>,
        reply: Reply,
    }

    impl FakeAgent {
        fn new(reply: Reply) -> Self {
            Self {
                calls: RefCell::new(Vec::new()),
                reply,
            }
        }
        fn ops(&self) -> Vec<&'static str> {
            self.calls
                .borrow()
                .iter()
                .map(|r| match r {
                    Request::EndpointAdd(_) => "add",
                    Request::EndpointDel(_) => "del",
                    Request::EndpointGet(_) => "get",
                    Request::EndpointList => "list",
                    Request::Gc { .. } => "gc",
                    Request::Status => "status",
                    Request::EndpointTrace { .. } => "trace",
                })
                .collect()
        }
    }

    impl Agent for FakeAgent {
        fn call(&self, request: Request) -> Result<Response, ClientError> {
            let out = (self.reply)(&request);
            self.calls.borrow_mut().push(request);
            out
        }
    }

    fn endpoint() -> Endpoint {
        Endpoint {
            id: 1,
            identity: 2,
            container_id: "c1".into(),
            ifname: "eth0".into(),
            netns: "/var/run/netns/p".into(),
            host_ifname: host_ifname("c1", "eth0"),
            host_ifindex: 9,
            host_mac: "02:00:00:00:00:01".into(),
            pod_mac: "02:00:00:00:00:02".into(),
            ipv4: Ipv4Addr::new(10, 244, 0, 9),
            pod_cidr_prefix: 24,
            gateway_v4: Ipv4Addr::new(169, 254, 1, 1),
            pod: PodRef::default(),
            labels: Default::default(),
            trace: false,
            counters: None,
        }
    }

    fn ok_agent(req: &Request) -> Result<Response, ClientError> {
        Ok(match req {
            Request::EndpointAdd(_) | Request::EndpointGet(_) => Response::Endpoint(Box::new(endpoint())),
            Request::EndpointDel(_) => Response::Deleted { released: true },
            Request::Gc { .. } => Response::Collected { released: vec![] },
            Request::Status => Response::Status(AgentStatus {
                node: "n".into(),
                pod_cidr: "10.244.0.0/24".into(),
                endpoints: 0,
                addresses_free: 1,
                drops: Default::default(),
                services_applied: None,
                policy_applied: None,
            }),
            Request::EndpointList | Request::EndpointTrace { .. } => Response::Endpoints { endpoints: vec![] },
        })
    }

    fn unreachable(_: &Request) -> Result<Response, ClientError> {
        Err(ClientError::Unreachable {
            path: "/run/weir/agent.sock".into(),
            source: std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
        })
    }

    fn timeout(_: &Request) -> Result<Response, ClientError> {
        Err(ClientError::Io {
            path: "/s".into(),
            source: std::io::Error::from(std::io::ErrorKind::WouldBlock),
        })
    }

    fn conf() -> NetConf {
        NetConf {
            cni_version: "1.1.0".into(),
            name: "weir".into(),
            agent_socket: "/run/weir/agent.sock".into(),
            mtu: Some(1400),
            prev_result: None,
            valid_attachments: None,
        }
    }

    fn att() -> Attachment {
        Attachment {
            container_id: "c1".into(),
            netns: "/var/run/netns/p".into(),
            ifname: "eth0".into(),
            pod: PodRef::default(),
        }
    }

    #[test]
    fn add_happy_path() {
        let node = FakeNode::default();
        let agent = FakeAgent::new(ok_agent);
        let r = add(&node, &agent, &conf(), &att(), 42).unwrap();
        assert_eq!(r.ips[0].address, "10.244.0.9/32");
        assert_eq!(r.interfaces[0].name, host_ifname("c1", "eth0"));
        assert_eq!(r.interfaces[1].sandbox.as_deref(), Some("/var/run/netns/p"));
        assert_eq!(agent.ops(), ["add"]);
        let log = node.log.borrow();
        assert!(log[1].starts_with("delete lxc"), "stale veth removed first: {log:?}");
        assert!(log[2].starts_with("plumb lxc"));
        assert!(log[2].contains(&temp_peer_ifname(42, "c1", "eth0")));
        assert_eq!(log[3], "configure eth0 10.244.0.9 via 169.254.1.1");
        assert_eq!(node.links.borrow().len(), 1);
    }

    #[test]
    fn add_missing_netns_is_code_3_and_touches_nothing() {
        let node = FakeNode {
            missing_netns: true,
            ..Default::default()
        };
        let agent = FakeAgent::new(ok_agent);
        assert_eq!(add(&node, &agent, &conf(), &att(), 1).unwrap_err().code.number(), 3);
        assert_eq!(node.log.borrow().len(), 1);
        assert!(agent.ops().is_empty());
    }

    #[test]
    fn add_with_unreachable_agent_rolls_back_veth_and_says_retry() {
        let node = FakeNode::default();
        let agent = FakeAgent::new(unreachable);
        assert_eq!(add(&node, &agent, &conf(), &att(), 1).unwrap_err().code.number(), 11);
        assert!(node.links.borrow().is_empty(), "veth left behind");
        // Connection refused: the agent saw nothing, so nothing to release.
        assert_eq!(agent.ops(), ["add"]);
    }

    #[test]
    fn add_with_timed_out_agent_releases_and_rolls_back() {
        let node = FakeNode::default();
        let agent = FakeAgent::new(timeout);
        assert_eq!(add(&node, &agent, &conf(), &att(), 1).unwrap_err().code.number(), 11);
        assert!(node.links.borrow().is_empty());
        assert_eq!(agent.ops(), ["add", "del"]);
    }

    #[test]
    fn add_agent_refusal_maps_code_and_rolls_back() {
        let node = FakeNode::default();
        let agent = FakeAgent::new(|r| match r {
            Request::EndpointAdd(_) => Err(ClientError::Api(ApiError::new(ErrorCode::IpamExhausted, "full"))),
            _ => Ok(Response::Deleted { released: false }),
        });
        assert_eq!(add(&node, &agent, &conf(), &att(), 1).unwrap_err().code.number(), 100);
        assert!(node.links.borrow().is_empty());
    }

    #[test]
    fn add_failure_after_agent_releases_endpoint() {
        let node = FakeNode {
            fail_configure: true,
            ..Default::default()
        };
        let agent = FakeAgent::new(ok_agent);
        assert_eq!(add(&node, &agent, &conf(), &att(), 1).unwrap_err().code.number(), 5);
        assert_eq!(agent.ops(), ["add", "del"]);
        assert!(node.links.borrow().is_empty());
    }

    #[test]
    fn del_is_idempotent() {
        let node = FakeNode::default();
        let agent = FakeAgent::new(|_| Err(ClientError::Api(ApiError::new(ErrorCode::NotFound, "gone"))));
        del(&node, &agent, &att()).unwrap();
        del(&node, &agent, &att()).unwrap();
        let ok = FakeAgent::new(ok_agent);
        del(
            &node,
            &ok,
            &Attachment {
                netns: String::new(),
                ..att()
            },
        )
        .unwrap();
    }

    #[test]
    fn del_with_unreachable_agent_deletes_the_veth_and_succeeds() {
        let node = FakeNode::default();
        node.links.borrow_mut().push(host_ifname("c1", "eth0"));
        let agent = FakeAgent::new(unreachable);
        del(&node, &agent, &att()).expect("no agent: DEL still succeeds");
        assert!(node.links.borrow().is_empty());
    }

    #[test]
    fn del_with_an_agent_that_breaks_off_says_retry() {
        let node = FakeNode::default();
        let agent = FakeAgent::new(|_| {
            Err(ClientError::Io {
                path: "/run/weir/agent.sock".into(),
                source: std::io::Error::from(std::io::ErrorKind::TimedOut),
            })
        });
        assert_eq!(del(&node, &agent, &att()).unwrap_err().code.number(), 11);
    }

    #[test]
    fn del_reports_other_agent_errors() {
        let node = FakeNode::default();
        let agent = FakeAgent::new(|_| Err(ClientError::Api(ApiError::new(ErrorCode::Datapath, "x"))));
        assert_eq!(del(&node, &agent, &att()).unwrap_err().code.number(), 102);
    }

    #[test]
    fn check_paths() {
        let host = host_ifname("c1", "eth0");
        let good = || FakeNode {
            links: RefCell::new(vec![host.clone()]),
            pod_addrs: Some(vec![(Ipv4Addr::new(10, 244, 0, 9), 32)]),
            ..Default::default()
        };
        check(&good(), &FakeAgent::new(ok_agent), &conf(), &att()).unwrap();

        let missing_ns = FakeNode {
            missing_netns: true,
            ..good()
        };
        assert_eq!(
            check(&missing_ns, &FakeAgent::new(ok_agent), &conf(), &att())
                .unwrap_err()
                .code
                .number(),
            3
        );

        let no_host = FakeNode {
            links: RefCell::new(vec![]),
            ..good()
        };
        assert_eq!(
            check(&no_host, &FakeAgent::new(ok_agent), &conf(), &att())
                .unwrap_err()
                .code
                .number(),
            5
        );

        let no_iface = FakeNode {
            pod_addrs: None,
            ..good()
        };
        assert_eq!(
            check(&no_iface, &FakeAgent::new(ok_agent), &conf(), &att())
                .unwrap_err()
                .code
                .number(),
            5
        );

        let wrong_ip = FakeNode {
            pod_addrs: Some(vec![(Ipv4Addr::new(10, 244, 0, 8), 32)]),
            ..good()
        };
        assert_eq!(
            check(&wrong_ip, &FakeAgent::new(ok_agent), &conf(), &att())
                .unwrap_err()
                .code
                .number(),
            5
        );

        let unknown = FakeAgent::new(|_| Err(ClientError::Api(ApiError::new(ErrorCode::NotFound, "?"))));
        assert_eq!(
            check(&good(), &unknown, &conf(), &att()).unwrap_err().code.number(),
            101
        );

        assert_eq!(
            check(&good(), &FakeAgent::new(unreachable), &conf(), &att())
                .unwrap_err()
                .code
                .number(),
            11
        );

        let mut c = conf();
        c.prev_result = Some(serde_json::json!({"ips":[{"address":"10.9.9.9/32"}]}));
        assert_eq!(
            check(&good(), &FakeAgent::new(ok_agent), &c, &att())
                .unwrap_err()
                .code
                .number(),
            5
        );
        c.prev_result = Some(serde_json::json!({"ips":[{"address":"10.244.0.9/32"}]}));
        check(&good(), &FakeAgent::new(ok_agent), &c, &att()).unwrap();
    }

    #[test]
    fn status_codes() {
        status(&FakeAgent::new(ok_agent)).unwrap();
        assert_eq!(status(&FakeAgent::new(unreachable)).unwrap_err().code.number(), 50);
        assert_eq!(status(&FakeAgent::new(timeout)).unwrap_err().code.number(), 50);
        let refusing = FakeAgent::new(|_| Err(ClientError::Api(ApiError::new(ErrorCode::Internal, "starting"))));
        assert_eq!(status(&refusing).unwrap_err().code.number(), 50);
        let full = FakeAgent::new(|r| match r {
            Request::Status => Ok(Response::Status(AgentStatus {
                node: "n1".into(),
                pod_cidr: "10.244.1.0/30".into(),
                endpoints: 2,
                addresses_free: 0,
                drops: Default::default(),
                services_applied: None,
                policy_applied: None,
            })),
            other => ok_agent(other),
        });
        let err = status(&full).unwrap_err();
        assert_eq!(err.code.number(), 50, "an exhausted pod CIDR cannot serve ADDs");
        assert!(err.to_string().contains("no address left"), "{err}");
    }

    #[test]
    fn gc_sends_keep_list() {
        let mut c = conf();
        assert_eq!(gc(&FakeAgent::new(ok_agent), &c).unwrap_err().code.number(), 7);
        c.valid_attachments = Some(vec![EndpointRef {
            container_id: "c1".into(),
            ifname: "eth0".into(),
        }]);
        let agent = FakeAgent::new(ok_agent);
        gc(&agent, &c).unwrap();
        assert_eq!(
            agent.calls.borrow()[0],
            Request::Gc {
                keep: vec![EndpointRef {
                    container_id: "c1".into(),
                    ifname: "eth0".into()
                }]
            }
        );
        assert_eq!(gc(&FakeAgent::new(unreachable), &c).unwrap_err().code.number(), 11);
    }
}
