//! Making sure bpffs is mounted where pins go.

use std::path::Path;

use nix::fcntl::{Flock, FlockArg};
use nix::mount::{MsFlags, mount};
use nix::sys::statfs::{BPF_FS_MAGIC, statfs};

/// Why bpffs could not be made available.
#[derive(Debug, thiserror::Error)]
pub enum BpffsError {
    /// Mounting bpffs failed (not root, or no bpffs in the kernel).
    #[error("mounting bpffs at {path}")]
    Mount {
        path: String,
        #[source]
        source: nix::Error,
    },
    /// Creating or locking the mount point failed.
    #[error("preparing {path}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// A pin directory someone else could change: whoever may write a
    /// directory on bpffs may unpin the maps in it.
    #[error("{path} is owned by uid {uid} with mode {mode:o}: refusing to keep pins where others may remove them")]
    NotPrivate { path: String, uid: u32, mode: u32 },
}

/// Makes `dir` (on bpffs) a directory only this user may change: missing
/// components are created with mode 0700; an existing one below the mount
/// point that another user owns, or that others may write, is refused
/// (bpffs is world-writable with the sticky bit at its root on many
/// machines, so anyone could create the agent's directory first).
pub fn ensure_private_dir(dir: &Path) -> Result<(), BpffsError> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let io = |p: &Path| {
        let path = p.display().to_string();
        move |source| BpffsError::Io { path, source }
    };
    let me = nix::unistd::geteuid().as_raw();
    let mut at = std::path::PathBuf::new();
    for part in dir.components() {
        at.push(part);
        // Checked from the first component inside bpffs on: the mount
        // point itself (and what is above it) is the system's.
        if !at.parent().is_some_and(is_bpffs) {
            continue;
        }
        // Create it if missing; one that exists (or that another agent or
        // test made at the same moment: EEXIST) is checked instead.
        match std::fs::create_dir(&at) {
            Ok(()) => {
                std::fs::set_permissions(&at, std::fs::Permissions::from_mode(0o700)).map_err(io(&at))?;
                continue;
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io(&at)(e)),
        }
        let m = std::fs::symlink_metadata(&at).map_err(io(&at))?;
        let mode = m.permissions().mode() & 0o7777;
        if !m.is_dir() || m.uid() != me || mode & 0o022 != 0 {
            return Err(BpffsError::NotPrivate {
                path: at.display().to_string(),
                uid: m.uid(),
                mode,
            });
        }
    }
    // Not on bpffs at all: the pins will say so; the directory is there.
    std::fs::create_dir_all(dir).map_err(io(dir))
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
