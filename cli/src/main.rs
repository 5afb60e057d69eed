//! `weir`: the command line users install. It stays small and loads no BPF:
//! `weir lab ...` runs the separate `weir-lab` binary (the lab needs the
//! datapath objects and root); `observe` and `status` come here later.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, ExitCode};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "weir", version, about = "weir: a Kubernetes CNI with an eBPF datapath")]
struct Cli {
    #[command(subcommand)]
    command: Command_,
}

#[derive(Debug, Subcommand)]
enum Command_ {
    /// A local cluster built from network namespaces (runs `weir-lab`; `weir lab --help` for its commands).
    #[command(disable_help_flag = true)]
    Lab {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
}

/// `weir-lab` next to this binary (how releases and `cargo build` lay them
/// out), else the first one on PATH.
fn lab_binary() -> Result<PathBuf> {
    const NAME: &str = "weir-lab";
    let exe = std::env::current_exe().context("locating the weir binary")?;
    if let Some(beside) = exe.parent().map(|d| d.join(NAME)).filter(|p| p.is_file()) {
        return Ok(beside);
    }
    if let Some(found) = std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join(NAME))
        .find(|p| p.is_file())
    {
        return Ok(found);
    }
    bail!(
        "`weir lab` needs the {NAME} binary, found neither next to {} nor on PATH (cargo build -p weir-lab)",
        exe.display()
    )
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command_::Lab { args } => {
            let bin = lab_binary()?;
            // exec only returns on failure.
            let err = Command::new(&bin).args(args).exec();
            Err(err).with_context(|| format!("running {}", bin.display()))
        }
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
