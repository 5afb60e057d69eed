//! A server's Unix socket, held alone: the agent's API and Observer
//! sockets and the relay's. Two servers on one socket path would take each
//! other's clients and unlink each other's socket, so:
//! - the path is only ever replaced when it is a stale socket of this
//!   user's (nobody answers on it), never a live one and never anything
//!   that is not a socket;
//! - a directory that exists is used as it is (only one created here is
//!   made 0700), and one others could swap the socket in (group- or
//!   world-writable without the sticky bit) is refused;
//! - the socket is 0600: only its owner (root) connects;
//! - on exit it is removed only if the path is still the socket bound.

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

/// Why a server cannot have its socket.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    /// A live server answers on the socket path.
    #[error("{0} is the socket of a running server: refusing to take it over")]
    InUse(PathBuf),
    /// The path holds something that is not a socket of ours.
    #[error("{path} exists and is {what}: refusing to replace it")]
    NotOurs { path: PathBuf, what: String },
    /// Others could replace the socket inside this directory.
    #[error("{0} is writable by others without the sticky bit: anyone could replace the socket there")]
    UnsafeDir(PathBuf),
    #[error("{path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SocketError + '_ {
    move |source| SocketError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Binds the socket, mode 0600, after [`prepare_socket_path`]. Returns the
/// listener and the record that lets the server remove its own socket, and
/// only its own, on exit.
pub fn bind(path: &Path) -> Result<(tokio::net::UnixListener, OwnSocket), SocketError> {
    prepare_socket_path(path)?;
    let listener = tokio::net::UnixListener::bind(path).map_err(io(path))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io(path))?;
    Ok((listener, OwnSocket::bound(path)?))
}

/// The socket this server bound, by inode and change time (an inode number
/// is reused at once on tmpfs), so it removes only its own.
pub struct OwnSocket {
    path: PathBuf,
    id: (u64, u64, i64, i64),
}

fn file_id(m: &std::fs::Metadata) -> (u64, u64, i64, i64) {
    (m.dev(), m.ino(), m.ctime(), m.ctime_nsec())
}

impl OwnSocket {
    /// Records the socket just bound at `path`.
    pub fn bound(path: &Path) -> Result<Self, SocketError> {
        let m = std::fs::symlink_metadata(path).map_err(io(path))?;
        Ok(Self {
            path: path.to_owned(),
            id: file_id(&m),
        })
    }

    /// Removes the socket if the path is still the one this server bound.
    pub fn remove(&self) {
        match std::fs::symlink_metadata(&self.path) {
            Ok(m) if file_id(&m) == self.id => {
                let _ = std::fs::remove_file(&self.path);
            }
            _ => tracing::info!(socket = %self.path.display(), "socket path is not ours any more: left alone"),
        }
    }
}

/// Makes `path` free for a new socket: creates its directory (0700) when
/// missing, checks an existing one, and removes only a stale socket of this
/// user's.
pub fn prepare_socket_path(path: &Path) -> Result<(), SocketError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if dir.exists() {
            let mode = std::fs::metadata(dir).map_err(io(dir))?.permissions().mode();
            if mode & 0o022 != 0 && mode & 0o1000 == 0 {
                return Err(SocketError::UnsafeDir(dir.to_owned()));
            }
        } else {
            std::fs::create_dir_all(dir).map_err(io(dir))?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io(dir))?;
        }
    }
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io(path)(e)),
    };
    if !meta.file_type().is_socket() {
        let what = if meta.is_dir() {
            "a directory"
        } else if meta.file_type().is_symlink() {
            "a symbolic link"
        } else {
            "not a socket"
        };
        return Err(SocketError::NotOurs {
            path: path.to_owned(),
            what: what.into(),
        });
    }
    if meta.uid() != effective_uid() {
        return Err(SocketError::NotOurs {
            path: path.to_owned(),
            what: format!("a socket of uid {}", meta.uid()),
        });
    }
    match UnixStream::connect(path) {
        Ok(_) => Err(SocketError::InUse(path.to_owned())),
        // Nobody listens: a socket an earlier server left behind.
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => std::fs::remove_file(path).map_err(io(path)),
        Err(e) => Err(io(path)(e)),
    }
}

/// This process's effective user: the owner of its /proc entry.
fn effective_uid() -> u32 {
    std::fs::metadata("/proc/self").map(|m| m.uid()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    struct Tmp(PathBuf);

    impl Tmp {
        fn new(tag: &str) -> Self {
            let p = std::env::temp_dir().join(format!("weir-sock-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).unwrap();
            Self(p)
        }
    }

    impl Drop for Tmp {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[tokio::test]
    async fn a_live_socket_is_never_taken_over_and_a_stale_one_is() {
        let tmp = Tmp::new("live");
        let path = tmp.0.join("agent.sock");
        let (live, _mine) = bind(&path).unwrap();
        let err = bind(&path).err().expect("a second server on the socket must fail");
        assert!(matches!(err, SocketError::InUse(_)), "{err}");
        assert!(UnixStream::connect(&path).is_ok(), "the first server still answers");
        drop(live); // the socket file stays behind, nobody listens
        bind(&path).expect("a stale socket is replaced");
    }

    #[test]
    fn what_is_not_a_socket_is_left_alone_and_a_shared_dir_keeps_its_mode() {
        let tmp = Tmp::new("file");
        // A sticky, world-writable directory like /tmp, with someone's file.
        let shared = tmp.0.join("shared");
        std::fs::create_dir(&shared).unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
        let path = shared.join("f");
        std::fs::write(&path, b"not yours").unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let err = rt.block_on(async { bind(&path).err() }).expect("must refuse");
        assert!(matches!(err, SocketError::NotOurs { .. }), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), b"not yours");
        let mode = std::fs::metadata(&shared).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o1777, "the directory's mode is untouched");

        // Writable by others without the sticky bit: refused.
        let open = tmp.0.join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(matches!(
            prepare_socket_path(&open.join("agent.sock")),
            Err(SocketError::UnsafeDir(_))
        ));

        // A missing directory is created, ours alone.
        let fresh = tmp.0.join("new").join("agent.sock");
        prepare_socket_path(&fresh).unwrap();
        let mode = std::fs::metadata(fresh.parent().unwrap()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
    }

    #[test]
    fn only_the_socket_this_agent_bound_is_removed_on_exit() {
        let tmp = Tmp::new("exit");
        let path = tmp.0.join("agent.sock");
        let first = UnixListener::bind(&path).unwrap();
        let mine = OwnSocket::bound(&path).unwrap();
        // Another agent replaced it meanwhile.
        drop(first);
        std::fs::remove_file(&path).unwrap();
        // Another agent's start takes longer than a clock tick; without the
        // pause the new file could share the inode and the coarse ctime.
        std::thread::sleep(std::time::Duration::from_millis(50));
        let _second = UnixListener::bind(&path).unwrap();
        mine.remove();
        assert!(path.exists(), "the other agent's socket stays");
        let theirs = OwnSocket::bound(&path).unwrap();
        theirs.remove();
        assert!(!path.exists());
    }
}
