//! Where the socket-level service programs attach (`bpf_sock.c`): the
//! root of the node's cgroup v2 hierarchy, so that every socket of the
//! node (its own processes, the kubelet's probes, host-network pods) is
//! seen at connect time. Found from the mount table, or given (a
//! DaemonSet mounts the host's cgroup filesystem: a container's own
//! /sys/fs/cgroup is its cgroup namespace's, not the node's root).

use std::path::{Path, PathBuf};
use std::str::FromStr;

/// `--socket-lb`: `auto`, `off`, or the cgroup v2 directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SocketLb {
    /// The first cgroup2 mount of this mount namespace whose root is the
    /// hierarchy's; none: the node's sockets reach no service (logged).
    Auto,
    /// Not attached (and detached if an earlier agent attached it).
    Off,
    /// This directory (or its `unified` child on a hybrid v1/v2 host);
    /// fails the start if it is not a cgroup2 root.
    At(PathBuf),
}

impl FromStr for SocketLb {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "off" | "false" => Ok(Self::Off),
            p if p.starts_with('/') => Ok(Self::At(PathBuf::from(p))),
            other => Err(format!(
                "`auto`, `off` or an absolute cgroup v2 directory, not {other:?}"
            )),
        }
    }
}

/// The mount point of the cgroup v2 hierarchy's root in a mountinfo
/// table (proc(5)): a `cgroup2` mount whose root is `/` (a cgroup
/// namespace's mount has its own subtree as root).
pub fn cgroup2_root(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (mount, fs) = line.split_once(" - ")?;
        if fs.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        let fields: Vec<&str> = mount.split_whitespace().collect();
        if fields.get(3) != Some(&"/") {
            return None;
        }
        Some(PathBuf::from(unescape(fields.get(4)?)))
    })
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(field: &str) -> String {
    let mut out = String::new();
    let mut rest = field;
    while let Some(i) = rest.find('\\') {
        out.push_str(&rest[..i]);
        let code = rest.get(i + 1..i + 4).and_then(|o| u8::from_str_radix(o, 8).ok());
        match code {
            Some(c) => {
                out.push(char::from(c));
                rest = &rest[i + 4..];
            }
            None => {
                out.push('\\');
                rest = &rest[i + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// CGROUP2_SUPER_MAGIC (include/uapi/linux/magic.h).
const CGROUP2_MAGIC: i64 = 0x6367_7270;

fn is_cgroup2(dir: &Path) -> bool {
    nix::sys::statfs::statfs(dir).is_ok_and(|s| s.filesystem_type().0 == CGROUP2_MAGIC)
}

/// The cgroup v2 directory to attach to, or why there is none.
pub fn resolve(choice: &SocketLb) -> Result<Option<PathBuf>, String> {
    match choice {
        SocketLb::Off => Ok(None),
        SocketLb::Auto => Ok(std::fs::read_to_string("/proc/self/mountinfo")
            .ok()
            .and_then(|m| cgroup2_root(&m))),
        SocketLb::At(dir) => {
            if is_cgroup2(dir) {
                return Ok(Some(dir.clone()));
            }
            // A hybrid host mounts v1 at /sys/fs/cgroup and v2 under it.
            let unified = dir.join("unified");
            if is_cgroup2(&unified) {
                return Ok(Some(unified));
            }
            Err(format!(
                "{} is not a cgroup v2 mount (nor is {}): --socket-lb needs the node's cgroup2 root",
                dir.display(),
                unified.display()
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
25 30 0:23 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
33 25 0:28 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
34 33 0:29 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate
35 33 0:30 / /sys/fs/cgroup/cpu rw,nosuid shared:11 - cgroup cgroup rw,cpu
";

    #[test]
    fn the_hierarchy_root_is_found_on_a_hybrid_host() {
        assert_eq!(cgroup2_root(HYBRID), Some(PathBuf::from("/sys/fs/cgroup/unified")));
    }

    #[test]
    fn a_cgroup_namespace_mount_is_not_the_root() {
        let container = "1200 1190 0:29 /kubepods/pod1/abc /sys/fs/cgroup ro,nosuid - cgroup2 cgroup rw\n";
        assert_eq!(cgroup2_root(container), None);
        let escaped = "7 1 0:29 / /run/my\\040cgroup rw - cgroup2 cgroup2 rw\n";
        assert_eq!(cgroup2_root(escaped), Some(PathBuf::from("/run/my cgroup")));
    }

    #[test]
    fn the_flag_parses() {
        assert_eq!("auto".parse(), Ok(SocketLb::Auto));
        assert_eq!("off".parse(), Ok(SocketLb::Off));
        assert_eq!(
            "/run/weir/cgroupv2".parse(),
            Ok(SocketLb::At("/run/weir/cgroupv2".into()))
        );
        assert!("cgroup".parse::<SocketLb>().is_err());
    }
}
