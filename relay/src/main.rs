//! `weir-relay`: serves the cluster's flows (every node's agent, merged)
//! over Hubble's Observer API, on a root-only Unix socket and, when given,
//! on TCP (Hubble Relay's port is 4245).

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use weir_relay::{Limits, Relay, parse_peer};

#[derive(Debug, Parser)]
#[command(
    name = "weir-relay",
    version,
    about = "weir-relay: every node's flows over one Observer API"
)]
struct Args {
    /// A node's agent: NAME=unix:///path/hubble.sock or NAME=host:4244
    /// (repeat for every node).
    #[arg(
        long = "peer",
        env = "WEIR_RELAY_PEERS",
        value_delimiter = ',',
        required_unless_present = "discover",
        conflicts_with = "discover"
    )]
    peers: Vec<String>,

    /// Find the agents through Kubernetes instead: every Node's InternalIP
    /// at --agent-port, following nodes as they join and leave.
    #[arg(long, env = "WEIR_RELAY_DISCOVER")]
    discover: bool,

    /// With --discover: the API server from this kubeconfig (default: the
    /// pod's service account).
    #[arg(long, env = "WEIR_RELAY_KUBECONFIG", requires = "discover")]
    kubeconfig: Option<PathBuf>,

    /// With --discover: the port of the agents' Observer API on their node.
    #[arg(long, env = "WEIR_RELAY_AGENT_PORT", default_value_t = 4244)]
    agent_port: u16,

    /// The relay's own Unix socket (root only).
    #[arg(long, env = "WEIR_RELAY_SOCKET", default_value = "/run/weir/relay.sock")]
    socket: PathBuf,

    /// Also serve on this TCP address (Hubble Relay's port is 4245).
    #[arg(long, env = "WEIR_RELAY_LISTEN")]
    listen: Option<std::net::SocketAddr>,

    #[arg(long, env = "WEIR_LOG", default_value = "info")]
    log: String,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(&args.log))
        .with_writer(std::io::stderr)
        .init();
    let peers = args
        .peers
        .iter()
        .map(|p| parse_peer(p).map_err(|e| anyhow::anyhow!("--peer {p:?}: {e}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if let Some(dir) = args.socket.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    // A socket left by an earlier relay is ours to replace.
    let _ = std::fs::remove_file(&args.socket);
    let listener =
        tokio::net::UnixListener::bind(&args.socket).with_context(|| format!("binding {}", args.socket.display()))?;
    std::fs::set_permissions(&args.socket, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("restricting {}", args.socket.display()))?;
    let relay = Relay::new(peers, Limits::default());
    relay.spawn_health();
    if args.discover {
        let client = weir_k8s::client(args.kubeconfig.as_deref()).await?;
        tokio::spawn(weir_relay::discover::follow_nodes(
            relay.clone(),
            client,
            args.agent_port,
        ));
        tracing::info!(port = args.agent_port, "finding the agents from the Node objects");
    }
    tracing::info!(socket = %args.socket.display(), peers = args.peers.len(), "relay ready");
    let tcp = match args.listen {
        Some(addr) => Some(weir_proto::server::Tcp {
            listener: tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("listening on {addr}"))?,
            tls: None,
        }),
        None => None,
    };
    let server = tokio::spawn(weir_proto::server::serve(listener, tcp, relay.into_server()));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
        _ = server => tracing::error!("relay server stopped"),
    }
    let _ = std::fs::remove_file(&args.socket);
    Ok(())
}
