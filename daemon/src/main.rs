use clap::Parser;
use weir_agent::config::Config;

/// EX_USAGE: bad configuration, reported before touching the kernel.
const EXIT_CONFIG: i32 = 64;

/// `weir-agent cleanup [FLAGS]`: the node's leftovers after an uninstall
/// (`weir_agent::cleanup`), then exit (or stay, with --stay).
fn cleanup(args: Vec<std::ffi::OsString>) -> ! {
    use clap::Parser as _;
    let args = weir_agent::cleanup::CleanupArgs::parse_from(args);
    tracing_subscriber::fmt().with_writer(std::io::stderr).init();
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("weir-agent cleanup: {e}");
            std::process::exit(1);
        }
    };
    rt.block_on(async {
        match weir_agent::cleanup::run(&args).await {
            Ok(removed) => tracing::info!(node = %args.node, files = ?removed.files, pins = removed.pins,
                links = ?removed.links, routes = removed.routes, "cleanup: weir removed from this node"),
            Err(e) => {
                tracing::error!(error = %weir_error::Report(&e), "cleanup failed");
                std::process::exit(1);
            }
        }
        // As PID 1 of a container, a signal without a handler is ignored:
        // both are handled.
        if args.stay {
            use tokio::signal::unix::{SignalKind, signal};
            match signal(SignalKind::terminate()) {
                Ok(mut term) => tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                },
                Err(e) => tracing::error!("cleanup: no SIGTERM handler: {e}"),
            }
        }
    });
    std::process::exit(0)
}

fn main() {
    let mut argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if argv.get(1).is_some_and(|a| a == "cleanup") {
        argv.remove(1);
        cleanup(argv);
    }
    let config = match Config::try_parse() {
        Ok(c) => c,
        Err(e) if !e.use_stderr() => e.exit(),
        Err(e) => {
            let _ = e.print();
            std::process::exit(EXIT_CONFIG);
        }
    };
    if let Err(errors) = config.validate() {
        for e in errors {
            eprintln!("weir-agent: invalid configuration: {e}");
        }
        std::process::exit(EXIT_CONFIG);
    }
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&config.log).unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();

    // The blocking work (map and netlink syscalls of the API and the
    // controllers) is short; more threads for it would only cost memory:
    // each one that starts keeps a stack and a malloc arena resident.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(2)
        .enable_all()
        .build();
    let result = runtime
        .map_err(anyhow::Error::from)
        .and_then(|rt| rt.block_on(weir_agent::run(config)));
    if let Err(e) = result {
        tracing::error!("{e:#}");
        std::process::exit(1);
    }
}
