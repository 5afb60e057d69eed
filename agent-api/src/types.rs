use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

/// What the caller writes: the request plus the API version it speaks.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Envelope {
    pub api: String,
    #[serde(flatten)]
    pub request: Request,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Allocate an address for a pod interface and wire it into the datapath.
    /// Idempotent: the same container and interface get the same endpoint back.
    EndpointAdd(EndpointAdd),
    /// Release the address and unwire the interface. Unknown endpoints are fine.
    EndpointDel(EndpointRef),
    /// Fetch one endpoint (CNI CHECK).
    EndpointGet(EndpointRef),
    /// All endpoints of this node with their datapath counters.
    EndpointList,
    /// Release every endpoint not in `keep` (CNI GC).
    Gc { keep: Vec<EndpointRef> },
    /// Is the agent ready to wire pods (CNI STATUS)?
    Status,
    /// Switch per-packet tracing (every packet in and out becomes a flow)
    /// on or off for a pod's endpoints; replies with them.
    EndpointTrace { pod: PodRef, enabled: bool },
}

/// The pod an interface belongs to, as kubelet passes it in `CNI_ARGS`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
    #[serde(default)]
    pub uid: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EndpointAdd {
    pub container_id: String,
    pub ifname: String,
    /// Path of the pod's network namespace.
    pub netns: String,
    /// Host side of the veth pair, already created by the plugin.
    pub host_ifname: String,
    /// MAC address of the pod side of the veth pair.
    pub pod_mac: String,
    pub pod: PodRef,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct EndpointRef {
    pub container_id: String,
    pub ifname: String,
}

/// What the agent answers.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    Ok(Response),
    Error(ApiError),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Response {
    // Boxed: an endpoint is ten times larger than every other reply.
    Endpoint(Box<Endpoint>),
    Endpoints { endpoints: Vec<Endpoint> },
    Deleted { released: bool },
    Collected { released: Vec<EndpointRef> },
    Status(AgentStatus),
}

/// A pod interface wired into the datapath.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Endpoint {
    /// Datapath endpoint id (non-zero, unique on the node).
    pub id: u32,
    /// Numeric identity of the pod's namespace and labels.
    pub identity: u32,
    pub container_id: String,
    pub ifname: String,
    pub netns: String,
    pub host_ifname: String,
    pub host_ifindex: u32,
    pub host_mac: String,
    pub pod_mac: String,
    pub ipv4: Ipv4Addr,
    /// Prefix length of the node's pod CIDR (the address itself is a /32 on the pod).
    pub pod_cidr_prefix: u8,
    pub gateway_v4: Ipv4Addr,
    pub pod: PodRef,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Every packet is a flow event (debugging one pod); off by default.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub trace: bool,
    /// Packet and byte counters, filled by `endpoint_list`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counters: Option<EndpointCounters>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Traffic {
    pub packets: u64,
    pub bytes: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointCounters {
    /// Into the pod.
    pub ingress: Traffic,
    /// Out of the pod.
    pub egress: Traffic,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentStatus {
    pub node: String,
    pub pod_cidr: String,
    pub endpoints: usize,
    pub addresses_free: u64,
    /// Datapath drops by reason name.
    pub drops: BTreeMap<String, Traffic>,
    /// The revision of the cluster state the service datapath last applied
    /// (standalone mode: [`crate::revision::revision`] of the manifests it
    /// read). A writer of manifests waits for the revision it left.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub services_applied: Option<u64>,
    /// The same for the policy controller (its tables written).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_applied: Option<u64>,
}

/// A typed error: `code` is stable and machine-readable, `message` is for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request did not parse or named an unsupported API version.
    BadRequest,
    /// The node's pod CIDR has no free address.
    IpamExhausted,
    /// The named endpoint or interface does not exist.
    NotFound,
    /// Loading, attaching or writing to the datapath failed.
    Datapath,
    /// Anything else on the agent's side.
    Internal,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}
