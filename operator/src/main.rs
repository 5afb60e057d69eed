use clap::Parser;

/// weir operator: allocates security identities (WeirIdentity objects)
/// for the label sets of the cluster's pods.
#[derive(Debug, Parser)]
#[command(name = "weir-operator", version)]
struct Args {
    /// The API server, from this kubeconfig; without it, the pod's service
    /// account (in-cluster config).
    #[arg(long, env = "WEIR_KUBECONFIG")]
    kubeconfig: Option<std::path::PathBuf>,
    /// Log filter (tracing-subscriber EnvFilter syntax).
    #[arg(long, env = "WEIR_LOG", default_value = "info")]
    log: String,
}

fn main() {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&args.log).unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result: anyhow::Result<()> = runtime.block_on(async {
        let client = weir_k8s::client(args.kubeconfig.as_deref()).await?;
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = weir_operator::identities::run(client) => r,
            _ = term.recv() => Ok(()),
            _ = tokio::signal::ctrl_c() => Ok(()),
        }
    });
    if let Err(e) = result {
        tracing::error!("{e:#}");
        std::process::exit(1);
    }
}
