//! `weir-lab`, also run as `weir lab`: a local cluster of network
//! namespaces, the project's demo and end-to-end test bed.

use std::process::ExitCode;

use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    name = "weir-lab",
    bin_name = "weir lab",
    version,
    about = "A local cluster built from network namespaces, with real weir agents and the real CNI"
)]
struct Cli {
    #[command(flatten)]
    args: weir_lab::LabArgs,
}

fn main() -> ExitCode {
    match weir_lab::run(Cli::parse().args) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
