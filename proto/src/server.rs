//! Serving the Observer API the way Hubble's clients expect it: the
//! Observer service itself, the gRPC health service (`hubble status` asks
//! it about `hubble.server.Observer`) and reflection (grpcurl), on a Unix
//! socket and, when configured, on TCP. The agent and the relay both serve
//! through here.

use crate::observer::observer_server::{Observer, ObserverServer};

/// Serves the Observer API (with gRPC health and reflection) on the Unix
/// socket, and on `tcp` when given, until the task is dropped.
pub async fn serve<T: Observer>(
    unix: tokio::net::UnixListener,
    tcp: Option<std::net::SocketAddr>,
    observer: ObserverServer<T>,
) {
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
            tracing::error!(error = %e, "observer: reflection descriptors do not load; no Observer API");
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
        Some(addr) => {
            tracing::info!(%addr, "observer: also serving on TCP");
            tokio::try_join!(on_unix, router().serve(addr)).map(|_| ())
        }
        None => on_unix.await,
    };
    if let Err(e) = result {
        tracing::error!(error = %e, "observer: server stopped");
    }
}
