//! The `CNI_*` environment: which command, for which container, and the
//! `CNI_ARGS` key/value list kubelet passes. Pure: the caller hands in a
//! lookup function, so tests never touch the process environment.

use weir_agent_api::PodRef;

use crate::error::{CniError, Code};

/// `CNI_COMMAND`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
    Status,
    Gc,
}

impl Command {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "VERSION" => Command::Version,
            "STATUS" => Command::Status,
            "GC" => Command::Gc,
            _ => return None,
        })
    }

    /// STATUS and GC first appeared in spec 1.1.0.
    pub fn needs_1_1(self) -> bool {
        matches!(self, Command::Status | Command::Gc)
    }
}

/// The environment of an ADD, DEL or CHECK, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    pub container_id: String,
    /// `CNI_NETNS`; may be empty on DEL (the namespace is already gone).
    pub netns: String,
    pub ifname: String,
    pub pod: PodRef,
}

/// Read `CNI_COMMAND`.
pub fn command(get: impl Fn(&str) -> Option<String>) -> Result<Command, CniError> {
    let raw = get("CNI_COMMAND").filter(|s| !s.is_empty()).ok_or_else(|| {
        CniError::new(Code::InvalidEnv, "CNI_COMMAND is not set")
            .with_details("expected one of ADD, DEL, CHECK, VERSION, STATUS, GC")
    })?;
    Command::parse(&raw).ok_or_else(|| {
        CniError::new(Code::InvalidEnv, format!("unknown CNI_COMMAND {raw:?}"))
            .with_details("expected one of ADD, DEL, CHECK, VERSION, STATUS, GC")
    })
}

/// Read and validate the variables ADD, DEL and CHECK need.
pub fn attachment(cmd: Command, get: impl Fn(&str) -> Option<String>) -> Result<Attachment, CniError> {
    let required = |key: &str| {
        get(key)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| CniError::new(Code::InvalidEnv, format!("{key} is not set")))
    };
    let container_id = required("CNI_CONTAINERID")?;
    validate_container_id(&container_id)?;
    let ifname = required("CNI_IFNAME")?;
    validate_ifname(&ifname)?;
    let netns = if cmd == Command::Del {
        get("CNI_NETNS").unwrap_or_default()
    } else {
        required("CNI_NETNS")?
    };
    if !netns.is_empty() && !netns.starts_with('/') {
        return Err(CniError::new(
            Code::InvalidEnv,
            format!("CNI_NETNS {netns:?} is not an absolute path"),
        ));
    }
    let pod = pod_ref(&get("CNI_ARGS").unwrap_or_default())?;
    Ok(Attachment {
        container_id,
        netns,
        ifname,
        pod,
    })
}

/// The spec: "at least one character, alphanumeric plus underscore, dot and hyphen".
pub fn validate_container_id(id: &str) -> Result<(), CniError> {
    if id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
    {
        Ok(())
    } else {
        Err(CniError::new(
            Code::InvalidEnv,
            format!("CNI_CONTAINERID {id:?} has characters other than [A-Za-z0-9_.-]"),
        ))
    }
}

/// What the kernel accepts as an interface name (`dev_valid_name`), which is
/// also what the spec requires of `CNI_IFNAME`.
pub fn validate_ifname(name: &str) -> Result<(), CniError> {
    let bad = |why: &str| Err(CniError::new(Code::InvalidEnv, format!("CNI_IFNAME {name:?} {why}")));
    if name.is_empty() {
        return bad("is empty");
    }
    if name.len() > 15 {
        return bad("is longer than 15 bytes");
    }
    if name == "." || name == ".." {
        return bad("is not a valid interface name");
    }
    if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
    {
        return bad("contains '/', ':' or whitespace");
    }
    Ok(())
}

/// Parse `CNI_ARGS` (`K=V;K=V`) into the pod it names. Unknown keys are an
/// error (code 2) unless `IgnoreUnknown` is true, as in the reference skel.
pub fn pod_ref(cni_args: &str) -> Result<PodRef, CniError> {
    let mut pod = PodRef::default();
    let mut ignore_unknown = false;
    let mut unknown = Vec::new();
    for pair in cni_args.split(';').filter(|p| !p.is_empty()) {
        let Some((key, value)) = pair.split_once('=') else {
            return Err(CniError::new(
                Code::InvalidEnv,
                format!("CNI_ARGS entry {pair:?} is not KEY=VALUE"),
            ));
        };
        match key {
            "IgnoreUnknown" => {
                ignore_unknown = match value.to_ascii_lowercase().as_str() {
                    "1" | "true" => true,
                    "0" | "false" | "" => false,
                    _ => {
                        return Err(CniError::new(
                            Code::InvalidEnv,
                            format!("CNI_ARGS IgnoreUnknown={value:?} is not a boolean"),
                        ));
                    }
                }
            }
            "K8S_POD_NAMESPACE" => pod.namespace = value.to_owned(),
            "K8S_POD_NAME" => pod.name = value.to_owned(),
            "K8S_POD_UID" => pod.uid = value.to_owned(),
            "K8S_POD_INFRA_CONTAINER_ID" => {}
            _ => unknown.push(pair.to_owned()),
        }
    }
    if !ignore_unknown && let Some(first) = unknown.first() {
        return Err(
            CniError::new(Code::UnsupportedField, format!("unsupported CNI_ARGS field {first}"))
                .with_details("set IgnoreUnknown=1 to ignore arguments weir does not use"),
        );
    }
    Ok(pod)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k| map.get(k).cloned()
    }

    const KUBELET_ARGS: &str =
        "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_UID=1234";

    #[test]
    fn commands() {
        assert_eq!(command(env(&[("CNI_COMMAND", "ADD")])).unwrap(), Command::Add);
        assert_eq!(command(env(&[("CNI_COMMAND", "GC")])).unwrap(), Command::Gc);
        assert_eq!(command(env(&[])).unwrap_err().code.number(), 4);
        assert_eq!(command(env(&[("CNI_COMMAND", "add")])).unwrap_err().code.number(), 4);
        assert!(Command::Status.needs_1_1() && Command::Gc.needs_1_1() && !Command::Add.needs_1_1());
    }

    #[test]
    fn kubelet_args() {
        let pod = pod_ref(KUBELET_ARGS).unwrap();
        assert_eq!(
            pod,
            PodRef {
                namespace: "default".into(),
                name: "web-0".into(),
                uid: "1234".into()
            }
        );
        assert_eq!(pod_ref("").unwrap(), PodRef::default());
        assert_eq!(pod_ref("K8S_POD_NAME=a=b").unwrap().name, "a=b");
    }

    #[test]
    fn bad_args() {
        assert_eq!(pod_ref("garbage").unwrap_err().code.number(), 4);
        assert_eq!(pod_ref("IgnoreUnknown=maybe").unwrap_err().code.number(), 4);
        let e = pod_ref("FOO=bar;K8S_POD_NAME=x").unwrap_err();
        assert_eq!(e.code.number(), 2);
        assert!(e.msg.contains("FOO=bar"));
        assert!(pod_ref("IgnoreUnknown=true;FOO=bar").is_ok());
    }

    #[test]
    fn add_env() {
        let a = attachment(
            Command::Add,
            env(&[
                ("CNI_CONTAINERID", "abc123"),
                ("CNI_NETNS", "/var/run/netns/foo"),
                ("CNI_IFNAME", "eth0"),
                ("CNI_ARGS", KUBELET_ARGS),
            ]),
        )
        .unwrap();
        assert_eq!(a.container_id, "abc123");
        assert_eq!(a.netns, "/var/run/netns/foo");
        assert_eq!(a.ifname, "eth0");
        assert_eq!(a.pod.name, "web-0");
    }

    #[test]
    fn missing_or_bad_env_is_code_4() {
        let full = [
            ("CNI_CONTAINERID", "abc"),
            ("CNI_NETNS", "/var/run/netns/x"),
            ("CNI_IFNAME", "eth0"),
        ];
        for skip in 0..full.len() {
            let partial: Vec<_> = full
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != skip)
                .map(|(_, p)| *p)
                .collect();
            assert_eq!(
                attachment(Command::Add, env(&partial)).unwrap_err().code.number(),
                4,
                "without {skip}"
            );
            assert_eq!(attachment(Command::Check, env(&partial)).unwrap_err().code.number(), 4);
        }
        // DEL tolerates a missing netns (already torn down).
        let no_netns = [("CNI_CONTAINERID", "abc"), ("CNI_IFNAME", "eth0")];
        assert_eq!(attachment(Command::Del, env(&no_netns)).unwrap().netns, "");
        let bad = |k: &str, v: &str| {
            let mut e: Vec<_> = full.iter().filter(|(key, _)| *key != k).copied().collect();
            e.push((k, v));
            attachment(Command::Add, env(&e)).unwrap_err().code.number()
        };
        assert_eq!(bad("CNI_IFNAME", "a-very-long-ifname"), 4);
        assert_eq!(bad("CNI_IFNAME", "eth/0"), 4);
        assert_eq!(bad("CNI_IFNAME", "eth 0"), 4);
        assert_eq!(bad("CNI_IFNAME", ".."), 4);
        assert_eq!(bad("CNI_CONTAINERID", "abc/def"), 4);
        assert_eq!(bad("CNI_NETNS", "relative/ns"), 4);
    }
}
