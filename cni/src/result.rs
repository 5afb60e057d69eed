//! Success results (spec 1.x "Success" and VERSION output). Pure.

use std::net::Ipv4Addr;

use serde::Serialize;

use crate::config::{LATEST_VERSION, SUPPORTED_VERSIONS};

/// VERSION's answer.
pub fn version_json() -> String {
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Version<'a> {
        cni_version: &'a str,
        supported_versions: &'a [&'a str],
    }
    serde_json::to_string(&Version {
        cni_version: LATEST_VERSION,
        supported_versions: &SUPPORTED_VERSIONS,
    })
    .expect("plain strings serialize")
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AddResult {
    pub cni_version: String,
    pub interfaces: Vec<Interface>,
    pub ips: Vec<IpConfig>,
    pub routes: Vec<Route>,
    pub dns: Dns,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Interface {
    pub name: String,
    pub mac: String,
    /// Spec 1.1 only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// Set for interfaces inside the container: its netns path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IpConfig {
    pub address: String,
    pub gateway: String,
    /// Index into `interfaces`.
    pub interface: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Route {
    pub dst: String,
    pub gw: String,
}

/// weir sets no DNS: kubelet writes resolv.conf itself.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Dns {}

/// Everything an ADD learned, in the shape [`add_result`] needs.
#[derive(Debug, Clone, PartialEq)]
pub struct Wired {
    pub host_ifname: String,
    pub host_mac: String,
    pub ifname: String,
    pub pod_mac: String,
    pub netns: String,
    pub ipv4: Ipv4Addr,
    pub gateway: Ipv4Addr,
    pub mtu: Option<u32>,
}

pub fn add_result(cni_version: &str, w: &Wired) -> AddResult {
    let mtu = if cni_version == "1.0.0" { None } else { w.mtu };
    AddResult {
        cni_version: cni_version.to_owned(),
        interfaces: vec![
            Interface {
                name: w.host_ifname.clone(),
                mac: w.host_mac.clone(),
                mtu,
                sandbox: None,
            },
            Interface {
                name: w.ifname.clone(),
                mac: w.pod_mac.clone(),
                mtu,
                sandbox: Some(w.netns.clone()),
            },
        ],
        ips: vec![IpConfig {
            address: format!("{}/32", w.ipv4),
            gateway: w.gateway.to_string(),
            interface: 1,
        }],
        routes: vec![Route {
            dst: "0.0.0.0/0".into(),
            gw: w.gateway.to_string(),
        }],
        dns: Dns {},
    }
}

/// The IPv4 addresses (with prefix) a `prevResult` lists, for CHECK. Missing
/// or odd shapes give an empty list: CHECK then relies on the agent alone.
pub fn prev_result_ipv4s(prev: &serde_json::Value) -> Vec<String> {
    prev.get("ips")
        .and_then(|v| v.as_array())
        .into_iter()
        .flatten()
        .filter_map(|ip| ip.get("address")?.as_str())
        .filter(|a| a.split('/').next().is_some_and(|h| h.parse::<Ipv4Addr>().is_ok()))
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn wired() -> Wired {
        Wired {
            host_ifname: "lxc0123456789a".into(),
            host_mac: "02:00:00:00:00:01".into(),
            ifname: "eth0".into(),
            pod_mac: "02:00:00:00:00:02".into(),
            netns: "/var/run/netns/p".into(),
            ipv4: Ipv4Addr::new(10, 244, 1, 7),
            gateway: Ipv4Addr::new(169, 254, 1, 1),
            mtu: Some(1450),
        }
    }

    #[test]
    fn version_output() {
        assert_eq!(
            version_json(),
            r#"{"cniVersion":"1.1.0","supportedVersions":["1.0.0","1.1.0"]}"#
        );
    }

    #[test]
    fn add_result_shape_1_0() {
        let v = serde_json::to_value(add_result("1.0.0", &wired())).unwrap();
        assert_eq!(
            v,
            json!({
                "cniVersion":"1.0.0",
                "interfaces":[
                    {"name":"lxc0123456789a","mac":"02:00:00:00:00:01"},
                    {"name":"eth0","mac":"02:00:00:00:00:02","sandbox":"/var/run/netns/p"}
                ],
                "ips":[{"address":"10.244.1.7/32","gateway":"169.254.1.1","interface":1}],
                "routes":[{"dst":"0.0.0.0/0","gw":"169.254.1.1"}],
                "dns":{}
            })
        );
    }

    #[test]
    fn add_result_1_1_reports_mtu_when_set() {
        let v = serde_json::to_value(add_result("1.1.0", &wired())).unwrap();
        assert_eq!(v["cniVersion"], "1.1.0");
        assert_eq!(v["interfaces"][0]["mtu"], 1450);
        assert_eq!(v["interfaces"][1]["mtu"], 1450);
        let mut w = wired();
        w.mtu = None;
        let v = serde_json::to_value(add_result("1.1.0", &w)).unwrap();
        assert!(v["interfaces"][1].get("mtu").is_none());
    }

    #[test]
    fn prev_result_addresses() {
        let prev = json!({"ips":[{"address":"10.0.0.5/32","interface":1},{"address":"fd00::1/128"},{"x":1}]});
        assert_eq!(prev_result_ipv4s(&prev), vec!["10.0.0.5/32".to_string()]);
        assert!(prev_result_ipv4s(&json!({})).is_empty());
        assert!(prev_result_ipv4s(&json!({"ips":"nope"})).is_empty());
    }
}
