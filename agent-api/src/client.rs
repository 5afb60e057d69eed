use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::{API_VERSION, ApiError, Envelope, Reply, Request, Response};

/// Why a call to the agent failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket is missing or nobody accepts on it: the agent is not running.
    #[error("agent unreachable at {path}: {source}")]
    Unreachable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The connection broke or timed out mid-call.
    #[error("talking to agent at {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The agent answered something that is not a reply.
    #[error("malformed reply from agent: {0}")]
    Decode(#[from] serde_json::Error),
    /// The agent understood and refused.
    #[error("agent refused: {0}")]
    Api(#[from] ApiError),
}

/// A blocking client: one connection per call, bounded by a timeout, so a
/// wedged agent can never hang a container runtime.
#[derive(Debug, Clone)]
pub struct Client {
    path: PathBuf,
    timeout: Duration,
}

impl Client {
    pub fn new(path: impl AsRef<Path>, timeout: Duration) -> Self {
        Self {
            path: path.as_ref().to_owned(),
            timeout,
        }
    }

    pub fn socket_path(&self) -> &Path {
        &self.path
    }

    pub fn call(&self, request: Request) -> Result<Response, ClientError> {
        let stream = UnixStream::connect(&self.path).map_err(|source| ClientError::Unreachable {
            path: self.path.clone(),
            source,
        })?;
        let io = |source| ClientError::Io {
            path: self.path.clone(),
            source,
        };
        stream.set_read_timeout(Some(self.timeout)).map_err(io)?;
        stream.set_write_timeout(Some(self.timeout)).map_err(io)?;

        let mut line = serde_json::to_vec(&Envelope {
            api: API_VERSION.to_owned(),
            request,
        })?;
        line.push(b'\n');
        (&stream).write_all(&line).map_err(io)?;

        let mut reply = String::new();
        BufReader::new(&stream).read_line(&mut reply).map_err(io)?;
        if reply.is_empty() {
            return Err(io(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "agent closed the connection without a reply",
            )));
        }
        match serde_json::from_str::<Reply>(&reply)? {
            Reply::Ok(response) => Ok(response),
            Reply::Error(e) => Err(ClientError::Api(e)),
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
}
