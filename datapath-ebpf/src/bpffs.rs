//! Making sure bpffs is mounted where pins go.

use std::path::Path;

use nix::fcntl::{Flock, FlockArg};
use nix::mount::{MsFlags, mount};
use nix::sys::statfs::{BPF_FS_MAGIC, statfs};

/// Why bpffs could not be made available.
#[derive(Debug, thiserror::Error)]
pub enum BpffsError {
    /// Mounting bpffs failed (not root, or no bpffs in the kernel).
    #[error("mounting bpffs at {path}: {source}")]
    Mount {
        path: String,
        #[source]
        source: nix::Error,
    },
    /// Creating or locking the mount point failed.
    #[error("preparing {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Mounts bpffs at `mount_point` (normally `/sys/fs/bpf`) unless it already
/// is one. Several agents start at once in the lab: a lock file keeps them
/// from stacking mounts on top of each other's pins.
pub fn ensure_bpffs(mount_point: &Path) -> Result<(), BpffsError> {
    if is_bpffs(mount_point) {
        return Ok(());
    }
    let lock_path = "/run/weir-bpffs.lock";
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(lock_path)
        .map_err(|source| BpffsError::Io {
            path: lock_path.into(),
            source,
        })?;
    let _lock = Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, e)| BpffsError::Io {
        path: lock_path.into(),
        source: e.into(),
    })?;
    if is_bpffs(mount_point) {
        return Ok(());
    }
    std::fs::create_dir_all(mount_point).map_err(|source| BpffsError::Io {
        path: mount_point.display().to_string(),
        source,
    })?;
    mount(Some("bpffs"), mount_point, Some("bpf"), MsFlags::empty(), None::<&str>).map_err(|source| BpffsError::Mount {
        path: mount_point.display().to_string(),
        source,
    })
}

fn is_bpffs(path: &Path) -> bool {
    statfs(path)
        .map(|s| s.filesystem_type() == BPF_FS_MAGIC)
        .unwrap_or(false)
}
