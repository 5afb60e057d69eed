//! Connecting to an Observer API server the way Hubble's clients name one:
//! `unix:///path/to/hubble.sock`, or `host:port` / `http://host:port` over
//! TCP, in plaintext or TLS. Used by `weir observe`, `weir status` and the
//! relay.

use std::time::Duration;

use tonic::transport::{Channel, Endpoint, Uri};

use crate::tls::{ClientTls, TlsError};

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("server address {0:?}: expected unix:///path or host:port")]
    Address(String),
    /// TLS asked for a Unix socket (local, guarded by its file mode).
    #[error("{0}: TLS is for TCP servers; a Unix socket is reached without it")]
    TlsOverUnix(String),
    /// The name the server's certificate is checked against is not one.
    #[error(transparent)]
    ServerName(#[from] TlsError),
    #[error("connecting to {addr}")]
    Connect {
        addr: String,
        #[source]
        source: tonic::transport::Error,
    },
}

/// Where a server is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Server {
    Unix(std::path::PathBuf),
    Tcp(String),
}

impl Server {
    pub fn parse(s: &str) -> Result<Self, ConnectError> {
        if let Some(path) = s.strip_prefix("unix://") {
            if path.is_empty() {
                return Err(ConnectError::Address(s.to_owned()));
            }
            return Ok(Self::Unix(path.into()));
        }
        let hostport = s.strip_prefix("http://").unwrap_or(s);
        if hostport.is_empty() || hostport.contains('/') || !hostport.contains(':') {
            return Err(ConnectError::Address(s.to_owned()));
        }
        Ok(Self::Tcp(hostport.to_owned()))
    }
}

impl std::fmt::Display for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unix(p) => write!(f, "unix://{}", p.display()),
            Self::Tcp(h) => f.write_str(h),
        }
    }
}

/// TLS for a connection: the client configuration (followed as its files
/// change) and the name the server's certificate must carry.
#[derive(Debug, Clone)]
pub struct Tls {
    pub config: ClientTls,
    pub server_name: String,
}

/// A channel to `server`, connected within `timeout`; every call on it
/// also gives up after `timeout` unless the caller streams (GetFlows sets
/// no per-call deadline: a follow runs as long as the user wants).
pub async fn connect(server: &Server, timeout: Duration) -> Result<Channel, ConnectError> {
    connect_with(server, timeout, None).await
}

/// [`connect`], over TLS when `tls` is given (TCP servers only). The
/// channel's reconnections handshake with the configuration of their
/// moment, so a rotated client certificate applies without a new channel.
pub async fn connect_with(server: &Server, timeout: Duration, tls: Option<&Tls>) -> Result<Channel, ConnectError> {
    let addr = server.to_string();
    let err = |source| ConnectError::Connect {
        addr: addr.clone(),
        source,
    };
    match (server, tls) {
        (Server::Tcp(hostport), None) => {
            let ep =
                Endpoint::from_shared(format!("http://{hostport}")).map_err(|_| ConnectError::Address(addr.clone()))?;
            ep.connect_timeout(timeout).connect().await.map_err(err)
        }
        (Server::Tcp(hostport), Some(tls)) => {
            let name = crate::tls::server_name(&tls.server_name)?;
            // tonic's own TLS is fixed per endpoint: the connector does the
            // handshake instead. The URI's scheme stays http (it is only the
            // :scheme header; tonic refuses https without its own TLS).
            let ep = Endpoint::from_shared(format!("http://{hostport}"))
                .map_err(|_| ConnectError::Address(addr.clone()))?
                .connect_timeout(timeout);
            let (hostport, config) = (hostport.clone(), tls.config.clone());
            ep.connect_with_connector(tower::service_fn(move |_: Uri| {
                let (hostport, name, config) = (hostport.clone(), name.clone(), config.config());
                async move {
                    let config = config.ok_or_else(|| {
                        std::io::Error::new(
                            std::io::ErrorKind::NotFound,
                            "no TLS client certificate yet: its files are awaited",
                        )
                    })?;
                    let tcp = tokio::net::TcpStream::connect(hostport.as_str()).await?;
                    let _ = tcp.set_nodelay(true);
                    let stream = tokio_rustls::TlsConnector::from(config).connect(name, tcp).await?;
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
                }
            }))
            .await
            .map_err(err)
        }
        (Server::Unix(_), Some(_)) => Err(ConnectError::TlsOverUnix(addr)),
        (Server::Unix(path), None) => {
            let path = path.clone();
            // The URI is a placeholder: the connector dials the socket.
            let ep = Endpoint::from_static("http://localhost").connect_timeout(timeout);
            ep.connect_with_connector(tower::service_fn(move |_: Uri| {
                let path = path.clone();
                async move {
                    let stream = tokio::net::UnixStream::connect(path).await?;
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
                }
            }))
            .await
            .map_err(err)
        }
    }
}

/// A channel over one already open byte stream (a `kubectl port-forward`
/// stream, say), over TLS when `tls` is given. It cannot reconnect: one
/// stream, one connection.
pub async fn over_stream<S>(stream: S, tls: Option<&Tls>) -> Result<Channel, ConnectError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let addr = "a forwarded stream".to_owned();
    let slot = std::sync::Arc::new(std::sync::Mutex::new(Some(stream)));
    let tls = match tls {
        Some(t) => Some((crate::tls::server_name(&t.server_name)?, t.config.clone())),
        None => None,
    };
    let ep = Endpoint::from_static("http://forwarded");
    ep.connect_with_connector(tower::service_fn(move |_: Uri| {
        let (stream, tls) = (slot.lock().unwrap_or_else(|p| p.into_inner()).take(), tls.clone());
        async move {
            let stream = stream.ok_or_else(|| std::io::Error::other("the forwarded stream is used up"))?;
            let io: Box<dyn Io> = match tls {
                None => Box::new(stream),
                Some((name, config)) => {
                    let config = config
                        .config()
                        .ok_or_else(|| std::io::Error::other("no TLS configuration"))?;
                    Box::new(tokio_rustls::TlsConnector::from(config).connect(name, stream).await?)
                }
            };
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(io))
        }
    }))
    .await
    .map_err(|source| ConnectError::Connect { addr, source })
}

/// A byte stream, plain or TLS.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> Io for T {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hubbles_address_forms() {
        assert_eq!(
            Server::parse("unix:///run/x.sock").unwrap(),
            Server::Unix("/run/x.sock".into())
        );
        assert_eq!(
            Server::parse("localhost:4245").unwrap(),
            Server::Tcp("localhost:4245".into())
        );
        assert_eq!(
            Server::parse("http://10.0.0.1:4244").unwrap(),
            Server::Tcp("10.0.0.1:4244".into())
        );
        for bad in ["unix://", "", "nohost", "http://a:1/path"] {
            assert!(Server::parse(bad).is_err(), "{bad}");
        }
    }
}
