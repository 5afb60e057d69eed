//! The network configuration on stdin: decoding, version negotiation and
//! validation. Pure: no I/O.

use serde::Deserialize;
use weir_agent_api::EndpointRef;

use crate::error::{CniError, Code};

/// Spec versions this plugin speaks, oldest first.
pub const SUPPORTED_VERSIONS: [&str; 2] = ["1.0.0", "1.1.0"];
/// The newest; used in VERSION output and in errors when the request named none we know.
pub const LATEST_VERSION: &str = "1.1.0";
/// The `type` a netconf must name to reach us.
pub const PLUGIN_TYPE: &str = "weir-cni";
pub const DEFAULT_AGENT_SOCKET: &str = "/run/weir/agent.sock";
/// IPv4's minimum MTU and the largest a veth takes.
pub const MTU_RANGE: std::ops::RangeInclusive<u32> = 68..=65535;

/// A validated network configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct NetConf {
    pub cni_version: String,
    pub name: String,
    pub agent_socket: String,
    pub mtu: Option<u32>,
    /// `prevResult` as sent (CHECK, DEL); checked loosely, see `result::prev_result_ipv4s`.
    pub prev_result: Option<serde_json::Value>,
    /// `cni.dev/valid-attachments` (GC only).
    pub valid_attachments: Option<Vec<EndpointRef>>,
}

/// The fields we read; anything else in the object is ignored, as the spec asks.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Wire {
    #[serde(default)]
    name: Option<String>,
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default)]
    agent_socket: Option<String>,
    #[serde(default)]
    mtu: Option<u32>,
    #[serde(default)]
    ipam: Option<serde_json::Value>,
    #[serde(default)]
    prev_result: Option<serde_json::Value>,
    #[serde(rename = "cni.dev/valid-attachments", default)]
    valid_attachments: Option<Vec<Attachment>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Attachment {
    #[serde(rename = "containerID")]
    container_id: String,
    ifname: String,
}

/// Read `cniVersion` from already-decoded stdin, and check we speak it. The
/// runtime wants the error in the version it asked for when it asked for one
/// we speak; otherwise we answer in [`LATEST_VERSION`].
pub fn negotiate_version(doc: &serde_json::Value) -> Result<String, CniError> {
    match doc.get("cniVersion") {
        // The reference skel treats a missing version as "0.1.0": incompatible.
        None | Some(serde_json::Value::Null) => {
            Err(CniError::new(Code::IncompatibleVersion, "netconf has no cniVersion")
                .with_details(format!("supported versions: {}", SUPPORTED_VERSIONS.join(", "))))
        }
        Some(serde_json::Value::String(v)) if SUPPORTED_VERSIONS.contains(&v.as_str()) => Ok(v.clone()),
        Some(other) => Err(
            CniError::new(Code::IncompatibleVersion, format!("unsupported cniVersion {other}"))
                .with_details(format!("supported versions: {}", SUPPORTED_VERSIONS.join(", "))),
        ),
    }
}

/// Decode stdin into JSON (code 6 on failure).
pub fn decode(stdin: &[u8]) -> Result<serde_json::Value, CniError> {
    let doc: serde_json::Value = serde_json::from_slice(stdin)
        .map_err(|e| CniError::new(Code::Decode, "netconf on stdin is not valid JSON").with_details(e.to_string()))?;
    if !doc.is_object() {
        return Err(CniError::new(Code::Decode, "netconf on stdin is not a JSON object"));
    }
    Ok(doc)
}

/// Validate a decoded netconf whose version [`negotiate_version`] accepted.
pub fn parse(doc: serde_json::Value, cni_version: String) -> Result<NetConf, CniError> {
    let invalid = |msg: String| CniError::new(Code::InvalidConfig, msg);
    let wire: Wire = serde_json::from_value(doc).map_err(|e| invalid(format!("invalid netconf: {e}")))?;

    let name = wire.name.unwrap_or_default();
    if name.is_empty() {
        return Err(invalid("netconf has no network name".into()));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
    {
        return Err(invalid(format!(
            "network name {name:?} may only hold letters, digits, '_', '.' and '-'"
        )));
    }
    match wire.kind.as_deref() {
        Some(PLUGIN_TYPE) => {}
        Some(other) => {
            return Err(invalid(format!(
                "netconf type is {other:?}, this plugin is {PLUGIN_TYPE:?}"
            )));
        }
        None => return Err(invalid("netconf has no type".into())),
    }
    let agent_socket = wire.agent_socket.unwrap_or_else(|| DEFAULT_AGENT_SOCKET.to_owned());
    if !agent_socket.starts_with('/') {
        return Err(invalid(format!(
            "agentSocket {agent_socket:?} must be an absolute path"
        )));
    }
    if let Some(mtu) = wire.mtu
        && !MTU_RANGE.contains(&mtu)
    {
        return Err(invalid(format!(
            "mtu {mtu} is outside {}..={}",
            MTU_RANGE.start(),
            MTU_RANGE.end()
        )));
    }
    if let Some(ipam) = wire.ipam.filter(|v| !v.is_null()) {
        return Err(
            CniError::new(Code::UnsupportedField, format!("unsupported field ipam: {ipam}"))
                .with_details("weir allocates pod addresses in its agent; remove the ipam section"),
        );
    }
    let valid_attachments = wire.valid_attachments.map(|list| {
        list.into_iter()
            .map(|a| EndpointRef {
                container_id: a.container_id,
                ifname: a.ifname,
            })
            .collect()
    });
    Ok(NetConf {
        cni_version,
        name,
        agent_socket,
        mtu: wire.mtu,
        prev_result: wire.prev_result.filter(|v| !v.is_null()),
        valid_attachments,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn load(doc: serde_json::Value) -> Result<NetConf, CniError> {
        let v = negotiate_version(&doc)?;
        parse(doc, v)
    }

    fn code(r: Result<NetConf, CniError>) -> u32 {
        r.expect_err("expected an error").code.number()
    }

    #[test]
    fn parses_the_documented_netconf() {
        let c =
            load(json!({"cniVersion":"1.1.0","name":"weir","type":"weir-cni","agentSocket":"/tmp/a.sock","mtu":1450}))
                .unwrap();
        assert_eq!(c.cni_version, "1.1.0");
        assert_eq!(c.name, "weir");
        assert_eq!(c.agent_socket, "/tmp/a.sock");
        assert_eq!(c.mtu, Some(1450));
    }

    #[test]
    fn defaults_and_unknown_fields() {
        let c =
            load(json!({"cniVersion":"1.0.0","name":"weir","type":"weir-cni","whatever":{"x":1},"runtimeConfig":{}}))
                .unwrap();
        assert_eq!(c.agent_socket, DEFAULT_AGENT_SOCKET);
        assert_eq!(c.mtu, None);
        assert!(c.prev_result.is_none());
        assert!(c.valid_attachments.is_none());
    }

    #[test]
    fn version_negotiation() {
        for v in SUPPORTED_VERSIONS {
            assert_eq!(negotiate_version(&json!({"cniVersion": v})).unwrap(), v);
        }
        for bad in [
            json!({"cniVersion":"0.4.0"}),
            json!({"cniVersion":"1.2.0"}),
            json!({}),
            json!({"cniVersion":1}),
        ] {
            assert_eq!(negotiate_version(&bad).unwrap_err().code.number(), 1, "{bad}");
        }
    }

    #[test]
    fn decode_errors_are_code_6() {
        assert_eq!(decode(b"{not json").unwrap_err().code.number(), 6);
        assert_eq!(decode(b"").unwrap_err().code.number(), 6);
        assert_eq!(decode(b"[1,2]").unwrap_err().code.number(), 6);
        assert!(decode(br#"{"cniVersion":"1.0.0"}"#).is_ok());
    }

    #[test]
    fn invalid_configs_are_code_7() {
        let base = || json!({"cniVersion":"1.1.0","name":"weir","type":"weir-cni"});
        let with = |k: &str, v: serde_json::Value| {
            let mut d = base();
            d[k] = v;
            d
        };
        let without = |k: &str| {
            let mut d = base();
            d.as_object_mut().unwrap().remove(k);
            d
        };
        assert_eq!(code(load(with("type", json!("bridge")))), 7);
        assert_eq!(code(load(without("type"))), 7);
        assert_eq!(code(load(without("name"))), 7);
        assert_eq!(code(load(with("name", json!("")))), 7);
        assert_eq!(code(load(with("name", json!("we ir")))), 7);
        assert_eq!(code(load(with("mtu", json!(10)))), 7);
        assert_eq!(code(load(with("mtu", json!(70000)))), 7);
        assert_eq!(code(load(with("mtu", json!(-1)))), 7);
        assert_eq!(code(load(with("mtu", json!("1500")))), 7);
        assert_eq!(code(load(with("agentSocket", json!("relative.sock")))), 7);
        assert_eq!(code(load(with("agentSocket", json!(5)))), 7);
        assert!(load(with("mtu", json!(68))).is_ok());
        assert!(load(with("mtu", json!(null))).is_ok());
    }

    #[test]
    fn ipam_is_unsupported_code_2() {
        let d = json!({"cniVersion":"1.1.0","name":"weir","type":"weir-cni","ipam":{"type":"host-local"}});
        assert_eq!(code(load(d)), 2);
    }

    #[test]
    fn gc_attachments_and_prev_result() {
        let d = json!({
            "cniVersion":"1.1.0","name":"weir","type":"weir-cni",
            "cni.dev/valid-attachments":[{"containerID":"c1","ifname":"eth0"},{"containerID":"c2","ifname":"net1"}],
            "prevResult":{"cniVersion":"1.1.0","ips":[{"address":"10.0.0.5/32"}]}
        });
        let c = load(d).unwrap();
        assert_eq!(
            c.valid_attachments.unwrap(),
            vec![
                EndpointRef {
                    container_id: "c1".into(),
                    ifname: "eth0".into()
                },
                EndpointRef {
                    container_id: "c2".into(),
                    ifname: "net1".into()
                }
            ]
        );
        assert!(c.prev_result.is_some());
    }
}

/// Property tests of the netconf parser (issue 20): stdin is outside input;
/// whatever a runtime (or anyone who can run the plugin) sends, the parser
/// answers with a netconf or a CNI error, never a panic.
#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;

    use super::*;

    fn check(stdin: &[u8]) {
        let Ok(doc) = decode(stdin) else { return };
        let Ok(version) = negotiate_version(&doc) else {
            return;
        };
        let _ = parse(doc, version);
    }

    /// A netconf with each field picked from valid, odd and wrong values.
    fn netconf() -> impl Strategy<Value = String> {
        let text = prop_oneof![
            Just("\"\"".to_string()),
            Just("null".to_string()),
            Just("7".to_string()),
            Just("[]".to_string()),
            Just("{}".to_string()),
            "\"[a-z0-9./_-]{0,12}\"".prop_map(|s| s),
            "\"[ -~]{0,16}\"".prop_map(|s| s.replace('\\', "")),
        ];
        (
            prop_oneof![
                Just("\"1.0.0\"".to_string()),
                Just("\"1.1.0\"".to_string()),
                text.clone()
            ],
            prop_oneof![Just("\"weir\"".to_string()), text.clone()],
            prop_oneof![Just("\"net\"".to_string()), text.clone()],
            prop::collection::vec(("[a-zA-Z]{1,10}", text), 0..4),
        )
            .prop_map(|(version, kind, name, extra)| {
                let mut fields = vec![
                    format!("\"cniVersion\": {version}"),
                    format!("\"type\": {kind}"),
                    format!("\"name\": {name}"),
                ];
                fields.extend(extra.into_iter().map(|(k, v)| format!("\"{k}\": {v}")));
                format!("{{{}}}", fields.join(", "))
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn any_bytes_get_a_netconf_or_an_error(stdin in prop::collection::vec(any::<u8>(), 0..512)) {
            check(&stdin);
        }

        #[test]
        fn any_netconf_shaped_object_gets_a_netconf_or_an_error(text in netconf()) {
            check(text.as_bytes());
        }
    }
}
