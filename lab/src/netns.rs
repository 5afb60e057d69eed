//! Network namespaces (`ip netns` semantics) and running things inside them.
//! The one door through which the lab changes namespaces.

use std::fs::File;
use std::path::PathBuf;
use std::process::{Command, Output};

use nix::sched::{CloneFlags, setns};

/// Where `ip netns add` keeps its bind mounts.
pub const NETNS_DIR: &str = "/var/run/netns";

/// Why a netns operation failed.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// `ip` could not be run at all.
    #[error("running `ip {args}`")]
    Spawn {
        args: String,
        #[source]
        source: std::io::Error,
    },
    /// `ip` ran and failed.
    #[error("`ip {args}` failed: {stderr}")]
    Ip { args: String, stderr: String },
    /// Opening or entering a netns failed.
    #[error("entering netns {path}: {reason}")]
    Enter { path: String, reason: String },
}

/// The lab's netns by name; an absolute path (a runtime's netns) as it is.
pub fn path(name: &str) -> PathBuf {
    // `join` of an absolute path is that path.
    PathBuf::from(NETNS_DIR).join(name)
}

pub fn exists(name: &str) -> bool {
    path(name).exists()
}

pub(super) fn ip(args: &[&str]) -> Result<Output, NetnsError> {
    let joined = args.join(" ");
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|source| NetnsError::Spawn {
            args: joined.clone(),
            source,
        })?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(NetnsError::Ip {
            args: joined,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

/// Create a netns with `lo` up. Fails if it already exists.
pub fn create(name: &str) -> Result<(), NetnsError> {
    ip(&["netns", "add", name])?;
    ip(&["-n", name, "link", "set", "lo", "up"])?;
    Ok(())
}

/// Delete a netns; a missing one is success.
pub fn delete(name: &str) -> Result<(), NetnsError> {
    if !exists(name) {
        return Ok(());
    }
    match ip(&["netns", "delete", name]) {
        Err(_) if !exists(name) => Ok(()),
        other => other.map(|_| ()),
    }
}

/// A command that runs `program args..` inside the named netns (`ip netns exec`,
/// which execs in place, so the child's pid is the program's pid).
/// A netns given as an absolute path (a runtime's, not the lab's) is
/// entered with `nsenter`, which also execs in place.
pub fn command(name: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
    if name.starts_with('/') {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={name}")).arg("--").arg(program);
        return cmd;
    }
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", name]).arg(program);
    cmd
}

/// Move the *calling thread* into the netns at `path`. Call it only on a
/// thread that is dedicated to that netns (or in a process that lives there).
pub fn enter(path: &str) -> Result<(), NetnsError> {
    let enter_err = |reason: String| NetnsError::Enter {
        path: path.to_owned(),
        reason,
    };
    let file = File::open(path).map_err(|e| enter_err(e.to_string()))?;
    setns(&file, CloneFlags::CLONE_NEWNET).map_err(|e| enter_err(e.to_string()))
}

/// Run `f` on a fresh thread inside the netns at `path`; the caller's
/// namespace never changes.
pub fn run_in<T: Send + 'static>(path: &str, f: impl FnOnce() -> T + Send + 'static) -> Result<T, NetnsError> {
    let p = path.to_owned();
    std::thread::spawn(move || -> Result<T, NetnsError> {
        enter(&p)?;
        Ok(f())
    })
    .join()
    .unwrap_or_else(|_| {
        Err(NetnsError::Enter {
            path: path.to_owned(),
            reason: "thread panicked".into(),
        })
    })
}

/// A netns name for a pod: `<lab>-<ns>-<name>`, shortened with a hash when long.
pub fn pod_netns_name(lab: &str, namespace: &str, name: &str) -> String {
    const MAX: usize = 64;
    let full = format!("{lab}-{namespace}-{name}");
    if full.len() <= MAX {
        return full;
    }
    let hash = fnv1a(full.as_bytes());
    let keep = MAX - 9;
    let mut cut = keep;
    while !full.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}-{hash:08x}", &full[..cut])
}

fn fnv1a(bytes: &[u8]) -> u32 {
    bytes
        .iter()
        .fold(0x811c9dc5u32, |h, b| (h ^ u32::from(*b)).wrapping_mul(0x0100_0193))
}

/// The lab segment's MTU: a data-centre fabric's jumbo frames, so VXLAN's 50
/// bytes of encapsulation fit under pods' 1500-byte MTU.
const FABRIC_MTU: &str = "9000";

/// Plugs `netns` into the lab segment: a veth whose far end (`port`) is a
/// port of the fabric's bridge, and whose near end is `eth0` with `addr`.
///
/// The fabric side gets GRO, which gives it the NAPI queue that frames a
/// node's XDP sends back with XDP_TX land in (without it veth drops them).
/// With `full_checksums`, `eth0` sends complete checksums (tx checksumming
/// off), as packets from a real network arrive: the external host's
/// requests are what node XDP forwards with XDP_TX, and a partial
/// (offloaded) checksum would leave with that frame and be dropped by the
/// receiver. Nodes keep their offloads (TSO): replies they send towards
/// NodePort clients go through TC, where the skb remembers the checksum.
pub fn attach_to_fabric(
    fabric: &str,
    port: &str,
    netns: &str,
    addr: &str,
    full_checksums: bool,
) -> Result<(), NetnsError> {
    ip(&[
        "-n", fabric, "link", "add", port, "mtu", FABRIC_MTU, "type", "veth", "peer", "name", "eth0", "mtu",
        FABRIC_MTU, "netns", netns,
    ])?;
    ip(&["-n", fabric, "link", "set", port, "master", "br0", "up"])?;
    ip(&["-n", netns, "addr", "add", addr, "dev", "eth0"])?;
    ip(&["-n", netns, "link", "set", "eth0", "up"])?;
    ethtool(fabric, &["-K", port, "gro", "on"])?;
    if full_checksums {
        ethtool(netns, &["-K", "eth0", "tx", "off"])?;
    }
    Ok(())
}

/// Puts an XDP_PASS program (`obj`, weir_datapath::BPF_XDP_PASS) on a
/// switch port: frames a node's XDP sends back with XDP_TX land in this
/// port's XDP ring, and veth only delivers them when it has a program.
pub fn xdp_pass_on(fabric: &str, port: &str, obj: &std::path::Path) -> Result<(), NetnsError> {
    let obj = obj.to_string_lossy();
    ip(&[
        "-n",
        fabric,
        "link",
        "set",
        "dev",
        port,
        "xdpdrv",
        "obj",
        &obj,
        "sec",
        "xdp.frags",
    ])
    .map(|_| ())
}

/// `ethtool ARGS` inside a netns. A missing ethtool is a warning, not an
/// error: only XDP forwarding in the lab needs the settings.
fn ethtool(netns: &str, args: &[&str]) -> Result<(), NetnsError> {
    let joined = format!("netns exec {netns} ethtool {}", args.join(" "));
    match command(netns, "ethtool").args(args).output() {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => {
            let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
            if stderr.contains("No such file") || stderr.contains("not found") {
                eprintln!(
                    "warning: ethtool not installed (scripts/deps.sh installs it): XDP_TX on the lab fabric may drop"
                );
                Ok(())
            } else {
                Err(NetnsError::Ip { args: joined, stderr })
            }
        }
        Err(source) => Err(NetnsError::Spawn { args: joined, source }),
    }
}

/// The lab's switch: a bridge in its own netns, so nothing touches the host.
pub fn create_fabric(fabric: &str) -> Result<(), NetnsError> {
    create(fabric)?;
    ip(&["-n", fabric, "link", "add", "br0", "mtu", FABRIC_MTU, "type", "bridge"])?;
    ip(&["-n", fabric, "link", "set", "br0", "up"])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_netns_names_are_short_and_distinct() {
        assert_eq!(pod_netns_name("demo", "default", "web-0"), "demo-default-web-0");
        let long_a = pod_netns_name("demo", "default", &"a".repeat(80));
        let long_b = pod_netns_name("demo", "default", &format!("{}b", "a".repeat(79)));
        assert!(long_a.len() <= 64 && long_a.starts_with("demo-default-aaa"), "{long_a}");
        assert_ne!(long_a, long_b);
    }
}
