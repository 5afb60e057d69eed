//! The cluster as weir sees it, shared by the agent, the lab and (later) the
//! policy compiler: Kubernetes objects as k8s-openapi types parsed from YAML
//! or JSON ([`object`]), label selectors ([`selector`]), security identities
//! and their allocation ([`identity`]) and the snapshot the agent's
//! controllers read ([`state`]). Plain data and plain functions:
//! nothing here touches the kernel, the network or an async runtime.

pub mod changes;
pub mod frontends;
pub mod identity;
pub mod object;
pub mod objects;
pub mod policy;
pub mod selector;
pub mod state;

pub use changes::{ChangeLog, Changes, PodsByLabels};
pub use identity::{IdentityKey, WeirIdentity};
pub use object::{Kind, Object, ParseError, parse_documents, parse_each, to_yaml, valid_name};
pub use objects::{Objects, Persistent};
pub use selector::selector_matches;
pub use state::{ClusterState, ObjectKey, Unreadable, parse_manifests, service_external_ips};
