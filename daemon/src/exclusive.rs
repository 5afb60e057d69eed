//! What one agent holds alone: its state directory, and its sockets
//! ([`weir_proto::socket`], shared with the relay).
//!
//! Two agents on one state directory would each allocate from their own
//! copy of the state and hand out the same address, so the state directory
//! is locked (`flock` on `<state-dir>/lock`, held for the process's life;
//! the kernel releases it however the process ends) and a second agent
//! refuses to start.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

/// Why the agent cannot have what it must hold alone.
#[derive(Debug, thiserror::Error)]
pub enum ExclusiveError {
    /// Another agent holds the state directory.
    #[error("state directory {dir} is in use by another weir-agent ({holder}): refusing to start")]
    StateInUse { dir: PathBuf, holder: String },
    #[error("{path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ExclusiveError + '_ {
    move |source| ExclusiveError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The held lock on a state directory; released when dropped (or when the
/// process ends, however it ends).
pub struct StateLock {
    _lock: Flock<File>,
}

impl StateLock {
    /// Creates the directory if needed (0700) and locks it.
    pub fn acquire(dir: &Path) -> Result<Self, ExclusiveError> {
        if !dir.exists() {
            std::fs::create_dir_all(dir).map_err(io(dir))?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io(dir))?;
        }
        let path = dir.join("lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io(&path))?;
        let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => lock,
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
                let holder = std::fs::read_to_string(&path)
                    .ok()
                    .map(|s| s.trim().to_owned())
                    .filter(|s| !s.is_empty())
                    .map_or_else(|| "pid unknown".to_string(), |pid| format!("pid {pid}"));
                return Err(ExclusiveError::StateInUse {
                    dir: dir.to_owned(),
                    holder,
                });
            }
            Err((_, e)) => return Err(io(&path)(e.into())),
        };
        // Who holds it, for the next one's message.
        lock.set_len(0).map_err(io(&path))?;
        writeln!(lock, "{}", std::process::id()).map_err(io(&path))?;
        Ok(Self { _lock: lock })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_agent_on_one_state_directory_is_refused() {
        let tmp = std::env::temp_dir().join(format!("weir-excl-state-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        let dir = tmp.join("state");
        let first = StateLock::acquire(&dir).unwrap();
        let err = StateLock::acquire(&dir).err().expect("the second lock must fail");
        let msg = err.to_string();
        assert!(
            msg.contains("in use") && msg.contains(&std::process::id().to_string()),
            "{msg}"
        );
        drop(first);
        StateLock::acquire(&dir).expect("free again once the first is gone");
        let _ = std::fs::remove_dir_all(&tmp);
    }
}
