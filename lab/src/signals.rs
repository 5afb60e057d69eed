//! Ctrl-C / SIGTERM during long operations: signals are blocked and collected
//! by a thread, and the operation polls the flag and unwinds cleanly.
//!
//! The blocked mask is inherited across fork and exec (measured: std does not
//! reset it), so children are started through [`spawn_in`], which re-executes
//! `weir lab spawn-in [--netns PATH] -- PROGRAM ARGS..`: it clears the mask,
//! enters the netns (setns: unlike `ip netns exec` it keeps the host's mount
//! namespace, so /sys/fs/bpf stays bpffs) and execs in place, keeping the pid.
//! No `unsafe` pre_exec needed.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::process::Command;

use nix::sys::signal::{SigSet, Signal};

#[derive(Debug, Clone)]
pub struct Interrupt(Arc<AtomicBool>);

/// Why the operation stopped early.
#[derive(Debug, thiserror::Error)]
#[error("interrupted by a signal")]
pub struct Interrupted;

impl Interrupt {
    /// Start catching SIGINT and SIGTERM. Call before spawning any other thread.
    pub fn catch() -> nix::Result<Self> {
        let set = caught();
        set.thread_block()?;
        let flag = Arc::new(AtomicBool::new(false));
        let f = flag.clone();
        std::thread::spawn(move || {
            while let Ok(sig) = set.wait() {
                eprintln!("caught {sig}: stopping and cleaning up");
                f.store(true, Ordering::SeqCst);
            }
        });
        Ok(Self(flag))
    }

    pub fn check(&self) -> Result<(), Interrupted> {
        if self.0.load(Ordering::SeqCst) {
            Err(Interrupted)
        } else {
            Ok(())
        }
    }
}

fn caught() -> SigSet {
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    set
}

/// A command running `program` (add its args) inside the netns at `netns_path`
/// (if any), with SIGINT and SIGTERM unblocked.
pub fn spawn_in(netns_path: Option<&std::path::Path>, program: impl Into<OsString>) -> std::io::Result<Command> {
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.arg("spawn-in");
    if let Some(p) = netns_path {
        cmd.arg("--netns").arg(p);
    }
    cmd.arg("--").arg(program.into());
    Ok(cmd)
}

/// The trampoline's body: unblock, enter the netns, exec (returns only on failure).
pub fn exec_in(netns_path: Option<&str>, argv: &[OsString]) -> std::io::Error {
    if let Err(e) = caught().thread_unblock() {
        return std::io::Error::from(e);
    }
    if let Some(p) = netns_path
        && let Err(e) = super::netns::enter(p)
    {
        return std::io::Error::other(e.to_string());
    }
    let Some((program, args)) = argv.split_first() else {
        return std::io::Error::new(std::io::ErrorKind::InvalidInput, "nothing to run");
    };
    Command::new(program).args(args).exec()
}
