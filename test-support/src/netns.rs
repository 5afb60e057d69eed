//! Network namespaces for tests: a guard that deletes its netns on drop,
//! and ways to run code or commands inside one.

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// Runs `f` on a thread that has entered the netns at `path`; sockets made
/// there stay bound to that namespace wherever they are used later.
pub fn in_netns<T: Send + 'static>(path: String, f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
        nix::sched::setns(std::os::fd::AsFd::as_fd(&file), nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
    .join()
    .expect("netns thread")
}

/// A short name unique to this process and call, for netns, links and pins.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}{}x{}",
        std::process::id() % 100_000,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

pub fn sh(cmd: &str, args: &[&str]) -> std::process::Output {
    Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {cmd}: {e}"))
}

fn ip(args: &[&str]) -> std::process::Output {
    sh("ip", args)
}

/// A network namespace under /var/run/netns, deleted on drop.
pub struct NetNs {
    pub name: String,
    /// Created by us, so deleted on drop; false for a netns someone else owns.
    owned: bool,
}

impl NetNs {
    pub fn new(name: &str) -> Self {
        let out = ip(&["netns", "add", name]);
        assert!(
            out.status.success(),
            "ip netns add {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let ns = Self {
            name: name.to_owned(),
            owned: true,
        };
        ns.exec_ok("ip", &["link", "set", "lo", "up"]);
        ns
    }

    /// A handle that names no netns yet (filled in once one exists); never deleted.
    pub fn placeholder() -> Self {
        Self {
            name: String::new(),
            owned: false,
        }
    }

    /// A handle on a netns made by someone else (e.g. the lab); not deleted on drop.
    pub fn existing(name: &str) -> Self {
        assert!(
            Path::new("/var/run/netns").join(name).exists(),
            "netns {name} does not exist"
        );
        Self {
            name: name.to_owned(),
            owned: false,
        }
    }

    pub fn path(&self) -> String {
        format!("/var/run/netns/{}", self.name)
    }

    /// A command in this netns. `nsenter --net` rather than `ip netns exec`:
    /// the latter also unshares the mount namespace and remounts /sys, which
    /// would hide /sys/fs/bpf and strand the agent's pins in a private mount.
    pub fn command(&self, cmd: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.path())).arg("--").arg(cmd);
        c
    }

    pub fn exec(&self, cmd: &str, args: &[&str]) -> std::process::Output {
        self.command(cmd).args(args).output().expect("ip netns exec")
    }

    pub fn exec_ok(&self, cmd: &str, args: &[&str]) -> String {
        let out = self.exec(cmd, args);
        assert!(
            out.status.success(),
            "{cmd} {args:?} in {}: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// One ICMP echo with a one-second wait.
    pub fn ping(&self, to: Ipv4Addr) -> bool {
        self.exec("ping", &["-c", "1", "-W", "1", &to.to_string()])
            .status
            .success()
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // Deleting the netns also deletes the pod end of its veth, which
        // takes the host end with it.
        if self.owned {
            let _ = ip(&["netns", "delete", &self.name]);
        }
    }
}

/// Runs `f` on a thread in a fresh, anonymous network namespace (gone with
/// the thread): the sockets a test opens there are never the host's. A
/// panic in `f` is the caller's panic.
pub fn in_fresh_netns(f: impl FnOnce() + Send + 'static) {
    let joined = std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
        f();
    })
    .join();
    if let Err(panic) = joined {
        std::panic::resume_unwind(panic);
    }
}
