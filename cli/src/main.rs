//! `weir`: the command line. For now: `weir lab`, a local cluster made of
//! network namespaces, the project's demo and end-to-end test harness.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod lab;

#[derive(Debug, Parser)]
#[command(name = "weir", version, about = "weir: a Kubernetes CNI with an eBPF datapath")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// A local cluster built from network namespaces.
    Lab(lab::LabArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Lab(args) => lab::run(args),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
