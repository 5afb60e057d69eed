use clap::Parser;
use weir_agent::config::Config;

/// EX_USAGE: bad configuration, reported before touching the kernel.
const EXIT_CONFIG: i32 = 64;

fn main() {
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
