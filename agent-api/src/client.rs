use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::{API_VERSION, ApiError, Envelope, Reply, Request, Response};

/// Why a call to the agent failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket is missing or nobody accepts on it: the agent is not running.
    #[error("agent unreachable at {path}")]
    Unreachable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The connection broke or timed out mid-call.
    #[error("talking to agent at {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The agent answered something that is not a reply.
    #[error("malformed reply from agent")]
    Decode(#[from] serde_json::Error),
    /// The agent understood and refused.
    #[error("agent refused")]
    Api(#[from] ApiError),
}

/// Replies longer than this are not the agent's.
const MAX_REPLY: usize = 4 * 1024 * 1024;

/// A blocking client: one connection per call, every call bounded as a
/// whole (connect, write and every read share one deadline), so neither a
/// stopped agent with a full backlog nor one that answers a byte at a time
/// can hang a container runtime.
#[derive(Debug, Clone)]
pub struct Client {
    path: PathBuf,
    timeout: Duration,
    /// A deadline for every call of this client together (a CNI
    /// invocation: an ADD and its rollback share one).
    deadline: Option<Instant>,
}

impl Client {
    /// Each call gets `timeout` for everything it does.
    pub fn new(path: impl AsRef<Path>, timeout: Duration) -> Self {
        Self {
            path: path.as_ref().to_owned(),
            timeout,
            deadline: None,
        }
    }

    /// Every call ends by `deadline` at the latest (and each within
    /// `timeout`).
    pub fn until(path: impl AsRef<Path>, timeout: Duration, deadline: Instant) -> Self {
        Self {
            deadline: Some(deadline),
            ..Self::new(path, timeout)
        }
    }

    pub fn socket_path(&self) -> &Path {
        &self.path
    }

    pub fn call(&self, request: Request) -> Result<Response, ClientError> {
        let now = Instant::now();
        let deadline = self.deadline.map_or(now + self.timeout, |d| d.min(now + self.timeout));
        let io = |source| ClientError::Io {
            path: self.path.clone(),
            source,
        };
        let left = || {
            deadline
                .checked_duration_since(Instant::now())
                .filter(|d| !d.is_zero())
                .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::TimedOut, "deadline passed"))
        };
        let stream = self.connect(deadline)?;

        let mut line = serde_json::to_vec(&Envelope {
            api: API_VERSION.to_owned(),
            request,
        })?;
        line.push(b'\n');
        stream.set_write_timeout(Some(left().map_err(io)?)).map_err(io)?;
        (&stream).write_all(&line).map_err(io)?;

        // Read until the newline, the whole reply within the deadline: a
        // per-read timeout alone would let a byte-a-second agent go on
        // for ever.
        let mut reply = Vec::new();
        let mut chunk = [0u8; 4096];
        while !reply.contains(&b'\n') {
            stream.set_read_timeout(Some(left().map_err(io)?)).map_err(io)?;
            let n = match (&stream).read(&mut chunk) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io(e)),
            };
            if n == 0 {
                if reply.is_empty() {
                    return Err(io(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "agent closed the connection without a reply",
                    )));
                }
                break;
            }
            reply.extend_from_slice(&chunk[..n]);
            if reply.len() > MAX_REPLY {
                return Err(io(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "reply larger than 4 MiB",
                )));
            }
        }
        match serde_json::from_slice::<Reply>(&reply)? {
            Reply::Ok(response) => Ok(response),
            Reply::Error(e) => Err(ClientError::Api(e)),
        }
    }

    /// connect(2) without blocking: a stopped agent's full backlog makes a
    /// blocking connect wait for ever; non-blocking it says EAGAIN, and
    /// this retries until the deadline.
    fn connect(&self, deadline: Instant) -> Result<UnixStream, ClientError> {
        use nix::sys::socket::{AddressFamily, SockFlag, SockType, UnixAddr, connect, socket};
        let unreachable = |source: std::io::Error| ClientError::Unreachable {
            path: self.path.clone(),
            source,
        };
        let addr = UnixAddr::new(&self.path).map_err(|e| unreachable(e.into()))?;
        loop {
            let fd = socket(
                AddressFamily::Unix,
                SockType::Stream,
                SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
                None,
            )
            .map_err(|e| unreachable(e.into()))?;
            match connect(fd.as_raw_fd(), &addr) {
                Ok(()) => {
                    let stream = UnixStream::from(fd);
                    stream.set_nonblocking(false).map_err(unreachable)?;
                    return Ok(stream);
                }
                Err(nix::errno::Errno::EAGAIN) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(nix::errno::Errno::EAGAIN) => {
                    return Err(unreachable(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "the agent accepts no connections (backlog full) until the deadline",
                    )));
                }
                Err(e) => return Err(unreachable(e.into())),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::*;

    #[test]
    fn envelope_round_trips_with_flattened_op() {
        let env = Envelope {
            api: API_VERSION.into(),
            request: Request::EndpointDel(EndpointRef {
                container_id: "c1".into(),
                ifname: "eth0".into(),
            }),
        };
        let text = serde_json::to_string(&env).unwrap();
        assert_eq!(
            text,
            r#"{"api":"weir.agent/v1","op":"endpoint_del","container_id":"c1","ifname":"eth0"}"#
        );
        let back: Envelope = serde_json::from_str(&text).unwrap();
        assert_eq!(back.request, env.request);
    }

    #[test]
    fn error_reply_decodes_to_typed_code() {
        let reply: Reply =
            serde_json::from_str(r#"{"error":{"code":"ipam_exhausted","message":"10.0.0.0/30 is full"}}"#).unwrap();
        match reply {
            Reply::Error(e) => assert_eq!(e.code, ErrorCode::IpamExhausted),
            other => panic!("expected error, got {other:?}"),
        }
    }

    #[test]
    fn missing_socket_is_unreachable() {
        let c = Client::new("/nonexistent/weir/agent.sock", Duration::from_millis(100));
        assert!(matches!(c.call(Request::Status), Err(ClientError::Unreachable { .. })));
    }

    /// A socket path of its own under the temp dir, removed on drop.
    struct Sock(PathBuf);

    impl Sock {
        fn new(tag: &str) -> Self {
            let p = std::env::temp_dir().join(format!("weir-client-{tag}-{}.sock", std::process::id()));
            let _ = std::fs::remove_file(&p);
            Self(p)
        }
    }

    impl Drop for Sock {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    #[test]
    fn a_stopped_agent_with_a_full_backlog_cannot_hang_a_call() {
        let sock = Sock::new("backlog");
        let _listener = std::os::unix::net::UnixListener::bind(&sock.0).unwrap();
        // Nobody accepts: fill the backlog until a connect would block.
        let mut held = Vec::new();
        let client = Client::new(&sock.0, Duration::from_millis(300));
        loop {
            match client.connect(Instant::now()) {
                Ok(s) => held.push(s),
                Err(_) => break,
            }
            assert!(held.len() < 10_000, "the backlog never filled");
        }
        let start = Instant::now();
        let err = client.call(Request::Status).unwrap_err();
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "took {:?}: {err}",
            start.elapsed()
        );
        assert!(matches!(err, ClientError::Unreachable { .. }), "{err}");
    }

    #[test]
    fn an_agent_answering_a_byte_at_a_time_is_cut_off_at_the_deadline() {
        let sock = Sock::new("drip");
        let listener = std::os::unix::net::UnixListener::bind(&sock.0).unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf);
            for b in br#"{"ok":{"status":{}}}"#.iter().chain(b"\n") {
                if s.write_all(&[*b]).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        let start = Instant::now();
        let err = Client::new(&sock.0, Duration::from_millis(500))
            .call(Request::Status)
            .unwrap_err();
        assert!(
            start.elapsed() < Duration::from_millis(1500),
            "took {:?}: {err}",
            start.elapsed()
        );
        assert!(matches!(err, ClientError::Io { .. }), "{err}");
        server.join().unwrap();
    }

    #[test]
    fn calls_of_one_client_share_its_deadline() {
        let sock = Sock::new("shared");
        let _listener = std::os::unix::net::UnixListener::bind(&sock.0).unwrap();
        let client = Client::until(
            &sock.0,
            Duration::from_secs(10),
            Instant::now() + Duration::from_millis(200),
        );
        let start = Instant::now();
        assert!(client.call(Request::Status).is_err(), "nobody answers");
        assert!(client.call(Request::Status).is_err());
        assert!(
            start.elapsed() < Duration::from_millis(800),
            "two calls took {:?}",
            start.elapsed()
        );
    }
}
