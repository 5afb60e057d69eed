//! `weir`: the command line users install. It stays small and loads no BPF:
//! `weir observe` and `weir status` talk to an agent or the relay over the
//! Observer API; `weir lab ...` runs the separate `weir-lab` binary (the
//! lab needs the datapath objects and root).

mod cluster;
mod observe;
mod policy;
mod ui;

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, ExitCode};

use anyhow::{Context, Result, bail};
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "weir", version, about = "weir: a Kubernetes CNI with an eBPF datapath")]
struct Cli {
    #[command(subcommand)]
    command: Command_,
}

#[derive(Debug, Subcommand)]
enum Command_ {
    /// Flows, as the datapath saw them, from an agent or the relay (Hubble's Observer API).
    Observe(Box<observe::ObserveArgs>),
    /// The Observer API's state: nodes connected, flows seen, lost events;
    /// with --kubeconfig, weir's health in a cluster (exit 1 when not ready).
    Status(StatusArgs),
    /// Network policy: `weir policy check -f change.yaml` lists the
    /// recorded connections a change would allow or deny.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// The service map of a cluster in the browser: forwards a local port
    /// to the relay's map (kubectl port-forward) and prints its URL.
    Ui(ui::UiArgs),
    /// A local cluster built from network namespaces (runs `weir-lab`; `weir lab --help` for its commands).
    #[command(disable_help_flag = true)]
    Lab {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
}

#[derive(Debug, Subcommand)]
enum PolicyCommand {
    /// Judge every connection the relay recorded under the policies as they
    /// are and as the change would leave them; list those whose verdict
    /// would change, by workload pair, with the deciding rule.
    Check(policy::CheckArgs),
}

#[derive(Debug, clap::Args)]
struct StatusArgs {
    #[command(flatten)]
    server: observe::ServerArg,
    /// Report on weir in the cluster of this kubeconfig instead: the agent
    /// DaemonSet, operator and relay, each node's agent and CNI, and what is
    /// not ready and why.
    #[arg(long, env = "WEIR_KUBECONFIG", conflicts_with = "server")]
    kubeconfig: Option<PathBuf>,
    /// The namespace weir is installed in (with --kubeconfig).
    #[arg(long, default_value = "kube-system", requires = "kubeconfig")]
    namespace: String,
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

/// `cli` with the matches clap made of it: `weir observe`'s filter flags
/// are order-sensitive (`--not` applies to the next one), which only the
/// matches record.
fn run(cli: Cli, matches: &ArgMatches) -> Result<()> {
    let runtime = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the runtime")
    };
    match cli.command {
        Command_::Observe(args) => {
            let flags = matches
                .subcommand_matches("observe")
                .map(observe::occurrences)
                .unwrap_or_default();
            runtime()?.block_on(observe::observe(*args, &flags))
        }
        Command_::Status(StatusArgs {
            kubeconfig: Some(kc),
            namespace,
            ..
        }) => {
            if !runtime()?.block_on(cluster::status(Some(&kc), &namespace))? {
                std::process::exit(1);
            }
            Ok(())
        }
        Command_::Status(args) => runtime()?.block_on(observe::status(args.server)),
        Command_::Ui(args) => ui::ui(args),
        Command_::Policy {
            command: PolicyCommand::Check(args),
        } => runtime()?.block_on(policy::check(args)),
        // `weir lab policy check`: the lab's manifests and relay.
        Command_::Lab { args } if args.first().is_some_and(|a| a == "policy") => {
            #[derive(Parser)]
            #[command(name = "weir lab policy")]
            struct LabPolicy {
                #[command(subcommand)]
                command: PolicyCommand,
            }
            let m = LabPolicy::command().get_matches_from(&args);
            let LabPolicy {
                command: PolicyCommand::Check(mut a),
            } = LabPolicy::from_arg_matches(&m).unwrap_or_else(|e| e.exit());
            let dir = std::env::var_os("WEIR_LAB_DIR").map_or_else(|| "/run/weir-lab".into(), PathBuf::from);
            if a.manifests.is_none() {
                let manifests = dir.join("manifests");
                if !manifests.is_dir() {
                    bail!(
                        "this lab keeps its objects in its API server; weir policy check reads manifests only for now"
                    );
                }
                a.manifests = Some(manifests);
            }
            if a.server.server.is_none() {
                a.server.server = Some(format!("unix://{}", dir.join("run/relay.sock").display()));
            }
            runtime()?.block_on(policy::check(a))
        }
        // `weir lab observe`: the lab's relay, without flags.
        Command_::Lab { args } if args.first().is_some_and(|a| a == "observe") => {
            #[derive(Parser)]
            #[command(name = "weir lab observe", about = "Flows of the lab, from its relay")]
            struct LabObserve {
                #[command(flatten)]
                args: observe::ObserveArgs,
            }
            let m = LabObserve::command().get_matches_from(&args);
            let mut parsed = LabObserve::from_arg_matches(&m).unwrap_or_else(|e| e.exit());
            if parsed.args.server.server.is_none() {
                let dir = std::env::var_os("WEIR_LAB_DIR").map_or_else(|| "/run/weir-lab".into(), PathBuf::from);
                parsed.args.server.server = Some(format!("unix://{}", dir.join("run/relay.sock").display()));
            }
            runtime()?.block_on(observe::observe(parsed.args, &observe::occurrences(&m)))
        }
        Command_::Lab { args } => {
            let bin = lab_binary()?;
            // exec only returns on failure.
            let err = Command::new(&bin).args(args).exec();
            Err(err).with_context(|| format!("running {}", bin.display()))
        }
    }
}

fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    match run(cli, &matches) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
