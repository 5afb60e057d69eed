//! Serving the Observer API the way Hubble's clients expect it: the
//! Observer service itself, the gRPC health service (`hubble status` asks
//! it about `hubble.server.Observer`) and reflection (grpcurl), on a Unix
//! socket and, when configured, on TCP, in plaintext or TLS. The agent and
//! the relay both serve through here.
//!
//! TLS is done here rather than by tonic's `ServerTlsConfig`, which is
//! fixed when the server starts: each connection is handshaken with the
//! configuration [`ServerTls`] holds at that moment, so certificates that
//! change on disk apply to the next connection without a restart.

use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;

use crate::tls::ServerTls;

/// How long a client has to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The TCP side of a server: a bound listener, and TLS when given.
#[derive(Debug)]
pub struct Tcp {
    pub listener: TcpListener,
    pub tls: Option<ServerTls>,
}

/// Serves the Observer API (with gRPC health and reflection) on the Unix
/// socket, and on `tcp` when given, until the task is dropped.
pub async fn serve<S>(unix: tokio::net::UnixListener, tcp: Option<Tcp>, observer: S)
where
    // An Observer server: the generated one, or the agent's, which streams
    // flows encoded once (crate::encoded).
    S: tonic::codegen::Service<
            tonic::codegen::http::Request<tonic::body::Body>,
            Response = tonic::codegen::http::Response<tonic::body::Body>,
            Error = std::convert::Infallible,
        > + tonic::server::NamedService
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    use tonic::transport::Server;
    let (reporter, health) = tonic_health::server::health_reporter();
    for name in ["", crate::OBSERVER_SERVICE, crate::OBSERVER_HEALTH_NAME] {
        reporter
            .set_service_status(name, tonic_health::ServingStatus::Serving)
            .await;
    }
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let (v1, v1alpha) = match (reflection().build_v1(), reflection().build_v1alpha()) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => {
            tracing::error!(error = %weir_error::Report(&e), "observer: reflection descriptors do not load; no Observer API");
            return;
        }
    };
    let router = || {
        Server::builder()
            .add_service(health.clone())
            .add_service(v1.clone())
            .add_service(v1alpha.clone())
            .add_service(observer.clone())
    };
    let on_unix = router().serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(unix));
    let result = match tcp {
        Some(Tcp { listener, tls: None }) => {
            tracing::info!(addr = ?listener.local_addr().ok(), "observer: also serving on TCP, plaintext");
            let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
            tokio::try_join!(on_unix, router().serve_with_incoming(incoming)).map(|_| ())
        }
        Some(Tcp {
            listener,
            tls: Some(tls),
        }) => {
            tracing::info!(addr = ?listener.local_addr().ok(), mutual = tls.is_mutual(), "observer: also serving on TCP, TLS");
            let (tx, rx) = mpsc::channel(16);
            let on_tls = router().serve_with_incoming(tokio_stream::wrappers::ReceiverStream::new(rx));
            tokio::select! {
                r = async { tokio::try_join!(on_unix, on_tls).map(|_| ()) } => r,
                () = accept_tls(listener, tls, tx) => Ok(()),
            }
        }
        None => on_unix.await,
    };
    if let Err(e) = result {
        tracing::error!(error = %weir_error::Report(&e), "observer: server stopped");
    }
}

/// Accepts TCP connections and hands each to the server once its TLS
/// handshake (with the configuration of that moment) succeeds. Handshakes
/// run side by side, so a slow client holds up no other; they end with
/// this future. Returns when the server stops taking connections.
async fn accept_tls(
    listener: TcpListener,
    tls: ServerTls,
    tx: mpsc::Sender<Result<TlsStream<TcpStream>, std::io::Error>>,
) {
    let mut handshakes = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            Some(_) = handshakes.join_next(), if !handshakes.is_empty() => continue,
            () = tx.closed() => return,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of descriptors and the like: wait rather than spin.
                tracing::warn!(error = %weir_error::Report(&e), "observer: accepting a TCP connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let Some(config) = tls.config() else {
            // Closed at once: the client sees the refusal, not a hang.
            tracing::warn!(%peer, "observer: no certificate yet (its files are awaited); connection refused");
            continue;
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let tx = tx.clone();
        handshakes.spawn(async move {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp).into_fallible()).await {
                Ok(Ok(stream)) => {
                    let _ = tx.send(Ok(stream)).await;
                }
                // Closed before a word of TLS: a TCP probe or a scanner.
                Ok(Err((e, _))) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                    tracing::debug!(%peer, error = %weir_error::Report(&e), "observer: connection closed before the TLS handshake")
                }
                Ok(Err((e, tcp))) => {
                    tracing::warn!(%peer, error = %weir_error::Report(&e), "observer: TLS handshake failed; connection refused");
                    close_after_alert(tcp).await;
                }
                Err(_) => tracing::warn!(%peer, "observer: TLS handshake not done in time; connection closed"),
            }
        });
    }
}

/// Closes a refused connection so that the client reads the alert rustls
/// sent (certificate required, unknown CA). With TLS 1.3 the client sends
/// its first request right behind its half of the handshake; closing with
/// those bytes unread makes the kernel send a reset, and a reset throws
/// away the alert waiting in the client's buffer: it would only see
/// "connection reset" or "broken pipe". So: FIN, then read until the
/// client closes (briefly).
async fn close_after_alert(mut tcp: TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = tcp.shutdown().await;
    let mut sink = [0u8; 4096];
    let drain = async { while matches!(tcp.read(&mut sink).await, Ok(n) if n > 0) {} };
    let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::sync::Arc;

    use super::*;
    use crate::client::{Server, Tls, connect_with};
    use crate::observer::ServerStatusRequest;
    use crate::observer::observer_client::ObserverClient;
    use crate::testing::FixedObserver;
    use crate::testing::pki::{Ca, write};
    use crate::tls::{ClientFiles, ClientTls, ServerFiles};

    const NAME: &str = "node-1.weir-agent.weir.dev";

    struct Fixture {
        dir: PathBuf,
        ca: Ca,
        addr: String,
        observer: FixedObserver,
        _server: tokio::task::JoinHandle<()>,
    }

    impl Drop for Fixture {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    /// An agent-like server: the Observer API on a Unix socket and on
    /// 127.0.0.1 with TLS (mutual when `mutual`).
    async fn serving(test: &str, mutual: bool, reload: Duration) -> Fixture {
        let dir = std::env::temp_dir().join(format!("weir-proto-server-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let ca = Ca::new("weir agents CA");
        let (cert, key) = ca.server(&[NAME]).write(&dir, "server");
        let files = ServerFiles {
            cert,
            key,
            client_ca: mutual.then(|| ca.write(&dir, "ca.crt")),
        };
        let tls = ServerTls::watch(files, reload).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let unix = tokio::net::UnixListener::bind(dir.join("hubble.sock")).unwrap();
        let observer = FixedObserver::new("node-1", 3);
        let server = tokio::spawn(serve(
            unix,
            Some(Tcp {
                listener,
                tls: Some(tls),
            }),
            observer.clone().into_server(),
        ));
        Fixture {
            dir,
            ca,
            addr,
            observer,
            _server: server,
        }
    }

    /// A TLS client of `trust`'s CA file, presenting `identity` when given.
    fn client(f: &Fixture, trust: &Ca, identity: Option<&Ca>, name: &str) -> Tls {
        let dir = f
            .dir
            .join(format!("client-{}", f.observer.client_certs.lock().unwrap().len()));
        let _ = std::fs::create_dir_all(&dir);
        let ca = trust.write(&dir, "trust.crt");
        let identity = identity.map(|ca| ca.client("weir-relay").write(&dir, "client"));
        Tls {
            config: ClientTls::load(ClientFiles { ca: vec![ca], identity }).unwrap(),
            server_name: name.to_owned(),
        }
    }

    async fn status(f: &Fixture, tls: Option<&Tls>) -> Result<u64, String> {
        let server = Server::parse(&f.addr).unwrap();
        let ch = connect_with(&server, Duration::from_secs(3), tls)
            .await
            .map_err(|e| weir_error::report(&e))?;
        let mut c = ObserverClient::new(ch);
        c.server_status(ServerStatusRequest {})
            .await
            .map(|r| r.into_inner().num_flows)
            .map_err(|s| weir_error::report(&s))
    }

    #[tokio::test]
    async fn mutual_tls_accepts_clients_of_the_ca_only() {
        let f = serving("mtls", true, Duration::from_secs(60)).await;
        let good = client(&f, &f.ca, Some(&f.ca), NAME);
        assert_eq!(status(&f, Some(&good)).await, Ok(3));
        assert_eq!(
            f.observer.client_certs.lock().unwrap().len(),
            1,
            "the server saw the client's certificate"
        );

        let no_cert = client(&f, &f.ca, None, NAME);
        let e = status(&f, Some(&no_cert)).await.unwrap_err();
        assert!(
            e.to_lowercase().contains("certificaterequired"),
            "no client certificate: {e}"
        );

        let other = Ca::new("someone else's CA");
        let foreign = client(&f, &f.ca, Some(&other), NAME);
        let e = status(&f, Some(&foreign)).await.unwrap_err();
        assert!(
            e.to_lowercase().contains("unknownca") || e.to_lowercase().contains("badcertificate"),
            "a certificate of another CA: {e}"
        );

        let e = status(&f, None).await.unwrap_err();
        assert!(!e.is_empty(), "plaintext to a TLS port");

        // The client checks the server too: its name, and its CA.
        let e = status(&f, Some(&client(&f, &f.ca, Some(&f.ca), "node-2.elsewhere.dev")))
            .await
            .unwrap_err();
        assert!(e.contains("not valid for name"), "{e}");
        let e = status(&f, Some(&client(&f, &other, Some(&f.ca), NAME)))
            .await
            .unwrap_err();
        assert!(e.to_lowercase().contains("unknownissuer"), "{e}");
        assert_eq!(
            f.observer.client_certs.lock().unwrap().len(),
            1,
            "no refused client reached the service"
        );
    }

    /// The certificate the server presents to a new connection.
    async fn presented(addr: &str, trust: &Ca) -> Vec<u8> {
        use tokio_rustls::rustls::pki_types::pem::PemObject;
        let mut roots = tokio_rustls::rustls::RootCertStore::empty();
        roots
            .add(tokio_rustls::rustls::pki_types::CertificateDer::from_pem_slice(trust.pem.as_bytes()).unwrap())
            .unwrap();
        let config = tokio_rustls::rustls::ClientConfig::builder_with_provider(Arc::new(
            tokio_rustls::rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let tcp = TcpStream::connect(addr).await.unwrap();
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(crate::tls::server_name(NAME).unwrap(), tcp)
            .await
            .unwrap();
        tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
    }

    #[tokio::test]
    async fn a_rotated_certificate_is_presented_to_the_next_connection() {
        let f = serving("rotate", false, Duration::from_millis(50)).await;
        let before = presented(&f.addr, &f.ca).await;
        let anyone = client(&f, &f.ca, None, NAME);
        let server = Server::parse(&f.addr).unwrap();
        let open = connect_with(&server, Duration::from_secs(3), Some(&anyone))
            .await
            .unwrap();

        let next = f.ca.server(&[NAME]);
        // The key first: the pair does not match until the certificate
        // follows; the server keeps the old one meanwhile.
        write(&f.dir, "server.key", &next.key);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(presented(&f.addr, &f.ca).await, before, "half a rotation is not taken");
        write(&f.dir, "server.crt", &next.cert);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while presented(&f.addr, &f.ca).await != next.der {
            assert!(std::time::Instant::now() < deadline, "the new certificate never served");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // The connection opened before keeps working.
        let mut c = ObserverClient::new(open);
        assert_eq!(
            c.server_status(ServerStatusRequest {})
                .await
                .unwrap()
                .into_inner()
                .num_flows,
            3
        );
    }
}
