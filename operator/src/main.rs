//! `weir-operator`: flags, logging, the client, signals; the rest is the
//! library's [`weir_operator::run`].
use std::io::IsTerminal;

use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};

/// What `sysexits.h` calls EX_USAGE: the flags are wrong.
const EXIT_USAGE: i32 = 64;

fn main() {
    let args = weir_operator::Args::parse();
    let config = match args.config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("weir-operator: {e}");
            std::process::exit(EXIT_USAGE);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&args.log).unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result: anyhow::Result<()> = runtime.block_on(async {
        // Before anything else: a SIGTERM from now on releases the Lease.
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let shutdown = async move {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM"),
                _ = int.recv() => tracing::info!("SIGINT"),
            }
        };
        let client = weir_k8s::client(args.kubeconfig.as_deref()).await?;
        weir_operator::run(client, config, shutdown).await?;
        Ok(())
    });
    if let Err(e) = result {
        tracing::error!("{e:#}");
        std::process::exit(1);
    }
}
