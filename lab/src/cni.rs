//! Invoking the real `weir-cni` binary the way a container runtime does.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde::Deserialize;

use super::netns;

/// Why a CNI invocation failed.
#[derive(Debug, thiserror::Error)]
pub enum CniError {
    /// The plugin could not be started or fed.
    #[error("running {plugin}")]
    Spawn {
        plugin: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The plugin answered with a spec error.
    #[error("CNI {command} failed: code {code}: {msg}{}", details.as_deref().map(|d| format!(" ({d})")).unwrap_or_default())]
    Plugin {
        command: &'static str,
        code: u32,
        msg: String,
        details: Option<String>,
    },
    /// The plugin failed without a parsable answer.
    #[error("CNI {command} exited with {status}: stdout {stdout:?}, stderr {stderr:?}")]
    Garbled {
        command: &'static str,
        status: String,
        stdout: String,
        stderr: String,
    },
}

/// What a runtime knows about the sandbox it asks the plugin to wire.
#[derive(Debug, Clone)]
pub struct Invocation {
    pub plugin: PathBuf,
    /// Netns the plugin runs in (the node's).
    pub node_netns: String,
    pub container_id: String,
    pub pod_netns_path: String,
    pub pod_namespace: String,
    pub pod_name: String,
    pub pod_uid: String,
    pub agent_socket: PathBuf,
}

#[derive(Debug, Deserialize)]
struct IpConfig {
    address: String,
}

#[derive(Debug, Deserialize)]
struct Success {
    #[serde(default)]
    ips: Vec<IpConfig>,
}

#[derive(Debug, Deserialize)]
struct SpecError {
    code: u32,
    msg: String,
    #[serde(default)]
    details: Option<String>,
}

/// The netconf a runtime feeds on stdin.
pub fn netconf(agent_socket: &Path) -> String {
    serde_json::json!({
        "cniVersion": "1.1.0",
        "name": "weir",
        "type": "weir-cni",
        "agentSocket": agent_socket,
    })
    .to_string()
}

/// The `CNI_ARGS` kubelet passes.
pub fn cni_args(inv: &Invocation) -> String {
    format!(
        "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={};K8S_POD_UID={}",
        inv.pod_namespace, inv.pod_name, inv.container_id, inv.pod_uid
    )
}

fn invoke(inv: &Invocation, command: &'static str) -> Result<Vec<u8>, CniError> {
    let spawn_err = |source| CniError::Spawn {
        plugin: inv.plugin.clone(),
        source,
    };
    let bin_dir = inv.plugin.parent().unwrap_or(Path::new("/"));
    // Like a runtime: the node's netns, the host's mount namespace.
    let mut child = super::signals::spawn_in(Some(&netns::path(&inv.node_netns)), &inv.plugin)
        .map_err(spawn_err)?
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", &inv.container_id)
        .env("CNI_NETNS", &inv.pod_netns_path)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", bin_dir)
        .env("CNI_ARGS", cni_args(inv))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_err)?;
    if let Some(mut stdin) = child.stdin.take() {
        // A plugin that exits early closes its stdin: its answer says why.
        let _ = stdin.write_all(netconf(&inv.agent_socket).as_bytes());
    }
    let out = child.wait_with_output().map_err(spawn_err)?;
    if out.status.success() {
        return Ok(out.stdout);
    }
    if let Ok(e) = serde_json::from_slice::<SpecError>(&out.stdout) {
        return Err(CniError::Plugin {
            command,
            code: e.code,
            msg: e.msg,
            details: e.details,
        });
    }
    Err(CniError::Garbled {
        command,
        status: out.status.to_string(),
        stdout: String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
    })
}

/// CNI ADD: returns the pod's address (without prefix length).
pub fn add(inv: &Invocation) -> Result<String, CniError> {
    let stdout = invoke(inv, "ADD")?;
    parse_add_result(&stdout).ok_or_else(|| CniError::Garbled {
        command: "ADD",
        status: "exit 0".into(),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: "result has no ips[0].address".into(),
    })
}

/// CNI DEL.
pub fn del(inv: &Invocation) -> Result<(), CniError> {
    invoke(inv, "DEL").map(|_| ())
}

/// `ips[0].address` of a success result, without its prefix length.
pub fn parse_add_result(stdout: &[u8]) -> Option<String> {
    let r: Success = serde_json::from_slice(stdout).ok()?;
    let addr = &r.ips.first()?.address;
    Some(addr.split('/').next().unwrap_or(addr).to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_spec_result() {
        let r = br#"{"cniVersion":"1.1.0","interfaces":[{"name":"eth0","sandbox":"/var/run/netns/x"}],"ips":[{"address":"10.244.1.5/32","gateway":"169.254.1.1","interface":0}]}"#;
        assert_eq!(parse_add_result(r).as_deref(), Some("10.244.1.5"));
        assert_eq!(parse_add_result(br#"{"cniVersion":"1.1.0","ips":[]}"#), None);
        assert_eq!(parse_add_result(b"garbage"), None);
    }

    #[test]
    fn builds_kubelet_args_and_netconf() {
        let inv = Invocation {
            plugin: "/bin/weir-cni".into(),
            node_netns: "lab-n1".into(),
            container_id: "abc".into(),
            pod_netns_path: "/var/run/netns/lab-default-p".into(),
            pod_namespace: "default".into(),
            pod_name: "p".into(),
            pod_uid: "u-1".into(),
            agent_socket: "/run/x/agent.sock".into(),
        };
        assert_eq!(
            cni_args(&inv),
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=p;K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_UID=u-1"
        );
        let conf: serde_json::Value = serde_json::from_str(&netconf(&inv.agent_socket)).unwrap();
        assert_eq!(conf["agentSocket"], "/run/x/agent.sock");
        assert_eq!(conf["cniVersion"], "1.1.0");
        assert_eq!(conf["type"], "weir-cni");
    }
}
