//! `weir-relay`: serves the cluster's flows (every node's agent, merged)
//! over Hubble's Observer API, on a root-only Unix socket and, when given,
//! on TCP (Hubble Relay's port is 4245), in plaintext or TLS. Agents on
//! TCP are reached with mutual TLS unless --insecure-agents.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use weir_proto::client::Server;
use weir_proto::tls::{ClientFiles, ClientTls, ServerFiles, ServerTls};
use weir_relay::{AGENT_SERVER_NAME, AgentTls, Limits, Relay, parse_peer};

/// EX_USAGE: bad configuration, reported before any socket.
const EXIT_CONFIG: i32 = 64;

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

    /// With --discover or --policy-check: the API server from this
    /// kubeconfig (default: the pod's service account).
    #[arg(long, env = "WEIR_RELAY_KUBECONFIG")]
    kubeconfig: Option<PathBuf>,

    /// With --discover: the port of the agents' Observer API on their node.
    #[arg(long, env = "WEIR_RELAY_AGENT_PORT", default_value_t = 4244)]
    agent_port: u16,

    /// The relay's own Unix socket (root only).
    #[arg(long, env = "WEIR_RELAY_SOCKET", default_value = "/run/weir/relay.sock")]
    socket: PathBuf,

    /// Also serve on this TCP address (Hubble Relay's port is 4245);
    /// plaintext unless --tls-cert and --tls-key are given.
    #[arg(long, env = "WEIR_RELAY_LISTEN")]
    listen: Option<std::net::SocketAddr>,

    /// Serve the service map (a web page and its API) on this address;
    /// off unless given. Plain HTTP: keep it on loopback (the lab does) or
    /// reach it through `kubectl port-forward` (`weir ui`).
    #[arg(long, env = "WEIR_RELAY_UI_LISTEN")]
    ui_listen: Option<std::net::SocketAddr>,

    /// With --ui-listen: write the address it is bound to here, once
    /// serving (for port 0).
    #[arg(long, env = "WEIR_RELAY_UI_ADDRESS_FILE", requires = "ui_listen")]
    ui_address_file: Option<PathBuf>,

    /// With --ui-listen: offer "what would this policy change do?" on the
    /// map, reading the cluster's namespaces, pods, policies and
    /// identities from the API server at each check (read-only).
    #[arg(
        long,
        env = "WEIR_RELAY_POLICY_CHECK",
        requires = "ui_listen",
        conflicts_with = "policy_check_manifests"
    )]
    policy_check: bool,

    /// The same, with the cluster's objects from a directory of manifests
    /// (a standalone cluster; the lab's).
    #[arg(long, env = "WEIR_RELAY_POLICY_CHECK_MANIFESTS", requires = "ui_listen")]
    policy_check_manifests: Option<PathBuf>,

    /// --listen over TLS: the relay's certificate chain (PEM, its own
    /// first). Re-read when it changes, no restart.
    #[arg(long, env = "WEIR_RELAY_TLS_CERT")]
    tls_cert: Option<PathBuf>,

    /// The private key of --tls-cert (PEM).
    #[arg(long, env = "WEIR_RELAY_TLS_KEY")]
    tls_key: Option<PathBuf>,

    /// With --tls-cert: accept only clients presenting a certificate this
    /// CA (PEM) signed (mutual TLS).
    #[arg(long, env = "WEIR_RELAY_TLS_CLIENT_CA")]
    tls_client_ca: Option<PathBuf>,

    /// The relay's client certificate chain (PEM), presented to the
    /// agents over TCP (their --hubble-tls-client-ca signed it).
    #[arg(long, env = "WEIR_RELAY_TLS_CLIENT_CERT")]
    tls_client_cert: Option<PathBuf>,

    /// The private key of --tls-client-cert (PEM).
    #[arg(long, env = "WEIR_RELAY_TLS_CLIENT_KEY")]
    tls_client_key: Option<PathBuf>,

    /// The CA (PEM) that signed the agents' certificates.
    #[arg(long, env = "WEIR_RELAY_TLS_CA")]
    tls_ca: Option<PathBuf>,

    /// The name an agent's certificate must carry; {node} is the node's
    /// name with dots made dashes (a certificate for
    /// *.weir-agent.weir.dev serves every node).
    #[arg(long, env = "WEIR_RELAY_AGENT_TLS_SERVER_NAME", default_value = AGENT_SERVER_NAME)]
    agent_tls_server_name: String,

    /// Reach agents over TCP in plaintext, without authentication either
    /// way.
    #[arg(long, env = "WEIR_RELAY_INSECURE_AGENTS")]
    insecure_agents: bool,

    /// How often the TLS files are looked at for changes (500ms, 5s, 1m).
    #[arg(long, env = "WEIR_RELAY_TLS_RELOAD_INTERVAL", value_parser = parse_interval, default_value = "5s")]
    tls_reload_interval: Duration,

    #[arg(long, env = "WEIR_LOG", default_value = "info")]
    log: String,
}

fn parse_interval(s: &str) -> Result<Duration, String> {
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{s:?}: expected a number with ms, s or m"))?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" | "" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (ms, s or m)")),
    };
    if d < Duration::from_millis(100) {
        return Err(format!("{s:?}: at least 100ms"));
    }
    Ok(d)
}

impl Args {
    /// The TLS files of --listen, when given.
    fn server_tls(&self) -> Option<ServerFiles> {
        Some(ServerFiles {
            cert: self.tls_cert.clone()?,
            key: self.tls_key.clone()?,
            client_ca: self.tls_client_ca.clone(),
        })
    }

    /// The TLS files to the agents, when given.
    fn agent_tls(&self) -> Option<ClientFiles> {
        Some(ClientFiles {
            ca: vec![self.tls_ca.clone()?],
            identity: Some((self.tls_client_cert.clone()?, self.tls_client_key.clone()?)),
        })
    }

    /// Everything clap cannot check, at once; the TLS files are read.
    fn validate(&self, peers: &[(String, Server)]) -> Vec<String> {
        let mut errors = Vec::new();
        let paired =
            |a: (&str, &Option<PathBuf>), b: (&str, &Option<PathBuf>), errors: &mut Vec<String>| match (a.1, b.1) {
                (Some(_), None) => errors.push(format!("{} needs {}", a.0, b.0)),
                (None, Some(_)) => errors.push(format!("{} needs {}", b.0, a.0)),
                _ => {}
            };
        if self.kubeconfig.is_some() && !self.discover && !self.policy_check {
            errors.push("--kubeconfig is for --discover or --policy-check, neither of which is given".into());
        }
        // The relay's own port.
        paired(
            ("--tls-cert", &self.tls_cert),
            ("--tls-key", &self.tls_key),
            &mut errors,
        );
        if self.tls_client_ca.is_some() && self.tls_cert.is_none() {
            errors.push("--tls-client-ca needs --tls-cert and --tls-key (it makes --listen mutual TLS)".into());
        }
        if self.tls_cert.is_some() && self.listen.is_none() {
            errors.push("--tls-cert: TLS is for --listen, which is not given (the Unix socket has no TLS)".into());
        }
        // Missing files (a Secret not issued yet) are waited for.
        if let Some(files) = self.server_tls()
            && let Err(e) = ServerTls::check(&files)
            && !e.is_missing()
        {
            errors.push(format!("--tls-*: {}", weir_error::report(&e)));
        }
        // The agents.
        let client = [
            ("--tls-client-cert", &self.tls_client_cert),
            ("--tls-client-key", &self.tls_client_key),
            ("--tls-ca", &self.tls_ca),
        ];
        let given: Vec<&str> = client.iter().filter(|(_, v)| v.is_some()).map(|(f, _)| *f).collect();
        let missing: Vec<&str> = client.iter().filter(|(_, v)| v.is_none()).map(|(f, _)| *f).collect();
        if !given.is_empty() && !missing.is_empty() {
            errors.push(format!(
                "{} given without {}: agents serve mutual TLS, all three are needed",
                given.join(", "),
                missing.join(", ")
            ));
        }
        if !given.is_empty() && self.insecure_agents {
            errors.push("--insecure-agents with --tls-client-cert/--tls-client-key/--tls-ca: choose one".into());
        }
        let tcp_agents = self.discover || peers.iter().any(|(_, s)| matches!(s, Server::Tcp(_)));
        if tcp_agents && given.is_empty() && !self.insecure_agents {
            errors.push(
                "agents reached over TCP need mutual TLS: pass --tls-client-cert FILE --tls-client-key FILE \
                 --tls-ca FILE (PEM: the relay's client certificate and key, the CA of the agents' \
                 certificates), or --insecure-agents for plaintext"
                    .into(),
            );
        }
        if let Some(files) = self.agent_tls() {
            if let Err(e) = ClientTls::check(&files)
                && !e.is_missing()
            {
                errors.push(format!("--tls-client-*/--tls-ca: {}", weir_error::report(&e)));
            }
            let sample = self.agent_tls_server_name.replace("{node}", "node-1");
            if weir_proto::tls::server_name(&sample).is_err() {
                errors.push(format!(
                    "--agent-tls-server-name {:?}: not a DNS name (with {{node}} for the node's name)",
                    self.agent_tls_server_name
                ));
            }
        }
        errors
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(&args.log))
        .with_writer(std::io::stderr)
        .init();
    let peers: Result<Vec<_>, _> = args
        .peers
        .iter()
        .map(|p| parse_peer(p).map_err(|e| format!("--peer {p:?}: {e}")))
        .collect();
    let peers = match peers {
        Ok(p) => p,
        Err(e) => {
            eprintln!("weir-relay: invalid configuration: {e}");
            std::process::exit(EXIT_CONFIG);
        }
    };
    let errors = args.validate(&peers);
    if !errors.is_empty() {
        for e in errors {
            eprintln!("weir-relay: invalid configuration: {e}");
        }
        std::process::exit(EXIT_CONFIG);
    }
    let agent_tls = match args.agent_tls() {
        Some(files) => Some(AgentTls {
            config: ClientTls::watch(files, args.tls_reload_interval)?,
            server_name: args.agent_tls_server_name.clone(),
        }),
        None => None,
    };
    let server_tls = args
        .server_tls()
        .map(|files| ServerTls::watch(files, args.tls_reload_interval))
        .transpose()?;
    // As the agent binds its own: a stale socket of an earlier relay is
    // replaced, a live one or anything else never is.
    let (listener, own_socket) = weir_proto::socket::bind(&args.socket)?;
    let tcp = match args.listen {
        Some(addr) => Some(weir_proto::server::Tcp {
            listener: tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("listening on {addr}"))?,
            tls: server_tls,
        }),
        None => None,
    };
    let ui = match args.ui_listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("--ui-listen {addr}"))?,
        ),
        None => None,
    };
    let relay = Relay::with_agent_tls(peers, Limits::default(), agent_tls);
    relay.spawn_health();
    if let Some(listener) = ui {
        let addr = listener.local_addr()?;
        let policy = match (&args.policy_check_manifests, args.policy_check) {
            (Some(dir), _) => Some(weir_relay::whatif::PolicySource::Manifests(dir.clone())),
            (None, true) => Some(weir_relay::whatif::PolicySource::Cluster(
                weir_k8s::client(args.kubeconfig.as_deref()).await?,
            )),
            (None, false) => None,
        };
        let router = weir_relay::ui::router(relay.clone(), weir_relay::ui::UiLimits::default(), policy);
        tokio::spawn(async move {
            if let Err(e) = weir_relay::ui::serve(listener, router).await {
                tracing::error!(error = %weir_error::Report(&e), "service map server stopped");
            }
        });
        if let Some(path) = &args.ui_address_file {
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, format!("{addr}\n"))
                .and_then(|()| std::fs::rename(&tmp, path))
                .with_context(|| format!("writing {}", path.display()))?;
        }
        tracing::info!(url = %format!("http://{addr}/"), "service map");
    }
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
    let server = tokio::spawn(weir_proto::server::serve(listener, tcp, relay.into_server()));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
        _ = server => tracing::error!("relay server stopped"),
    }
    // Only if the path is still the socket this relay bound.
    own_socket.remove();
    Ok(())
}
