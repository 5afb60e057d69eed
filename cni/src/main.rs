//! `weir-cni`: weir's CNI plugin (spec 1.0.0 and 1.1.0).
//!
//! Stateless and short-lived: it reads the `CNI_*` environment and the
//! netconf on stdin, makes the pod's veth pair, asks the node agent for an
//! address, configures the pod side, and prints the spec's JSON on stdout.
//! Logs go to stderr (level from `WEIR_CNI_LOG`, default `warn`).

// Own small serde types instead of the `cni-plugin` crate: it only knows spec <= 1.0 (no STATUS/GC) and drags in thiserror 1 and semver 0.11.

mod commands;
mod config;
mod env;
mod error;
mod names;
mod netlink;
mod result;

use std::io::{IsTerminal, Read, Write};
use std::process::ExitCode;
use std::time::Duration;

use weir_agent_api::Client;

use crate::config::{LATEST_VERSION, NetConf};
use crate::env::{Attachment, Command};
use crate::error::{CniError, Code};

/// How long one agent call may take before we give up (code 11).
const AGENT_TIMEOUT: Duration = Duration::from_secs(10);

/// The whole invocation, every agent call and the rollback of a failed ADD
/// together, ends by then: a container runtime waits on us.
const DEADLINE: Duration = Duration::from_secs(20);

/// A netconf is a few hundred bytes; anything past this is not one (and
/// must not make the plugin read gigabytes).
const MAX_NETCONF: u64 = 1024 * 1024;

/// Reads the netconf, at most [`MAX_NETCONF`] bytes.
fn read_netconf(input: impl Read) -> Result<Vec<u8>, CniError> {
    let mut stdin = Vec::new();
    input
        .take(MAX_NETCONF + 1)
        .read_to_end(&mut stdin)
        .map_err(|e| CniError::new(Code::Io, "reading the netconf from stdin").with_details(e.to_string()))?;
    if stdin.len() as u64 > MAX_NETCONF {
        return Err(CniError::new(
            Code::Decode,
            format!(
                "the netconf on stdin is larger than {} KiB: not a netconf",
                MAX_NETCONF / 1024
            ),
        ));
    }
    Ok(stdin)
}

/// `weir-cni install DIR`: the DaemonSet's init container puts this very
/// binary into the node's CNI bin dir, atomically (a runtime never runs a
/// half-copied plugin). A runtime runs the plugin without arguments.
fn install(dir: &std::path::Path) -> std::io::Result<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let me = std::env::current_exe()?;
    let tmp = dir.join(".weir-cni.tmp");
    std::fs::copy(&me, &tmp)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))?;
    let target = dir.join("weir-cni");
    std::fs::rename(&tmp, &target)?;
    Ok(target)
}

fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    if let [cmd, dir] = args.as_slice()
        && cmd == "install"
    {
        return match install(std::path::Path::new(dir)) {
            Ok(path) => {
                eprintln!("weir-cni: installed {}", path.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("weir-cni: installing into {}: {e}", std::path::Path::new(dir).display());
                ExitCode::FAILURE
            }
        };
    }
    init_logging();
    let get = |key: &str| std::env::var(key).ok();
    let mut version = LATEST_VERSION.to_owned();
    match run(get, &mut version) {
        Ok(output) => {
            if let Some(json) = output {
                let mut stdout = std::io::stdout().lock();
                // If stdout is gone the runtime has given up on us; nothing better to do.
                let _ = writeln!(stdout, "{json}").and_then(|()| stdout.flush());
            }
            ExitCode::SUCCESS
        }
        Err(err) => {
            tracing::error!(code = err.code.number(), "{err}");
            println!("{}", err.to_json(&version));
            ExitCode::FAILURE
        }
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("WEIR_CNI_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
}

/// A validated invocation: everything checked before anything is touched.
#[derive(Debug)]
struct Invocation {
    command: Command,
    conf: NetConf,
    /// Set for ADD, DEL and CHECK.
    attachment: Option<Attachment>,
}

/// Parse and validate the environment and stdin. `version` is updated as soon
/// as the netconf names a version we speak, so errors answer in it.
fn prepare(
    command: Command,
    get: impl Fn(&str) -> Option<String>,
    stdin: &[u8],
    version: &mut String,
) -> Result<Invocation, CniError> {
    let doc = config::decode(stdin)?;
    let requested = config::negotiate_version(&doc)?;
    version.clone_from(&requested);
    if command.needs_1_1() && requested != "1.1.0" {
        return Err(CniError::new(
            Code::IncompatibleVersion,
            format!("{command:?} needs cniVersion 1.1.0, the netconf asks for {requested}"),
        ));
    }
    let conf = config::parse(doc, requested)?;
    let attachment = match command {
        Command::Add | Command::Del | Command::Check => Some(env::attachment(command, &get)?),
        Command::Version | Command::Status | Command::Gc => None,
    };
    Ok(Invocation {
        command,
        conf,
        attachment,
    })
}

fn run(get: impl Fn(&str) -> Option<String>, version: &mut String) -> Result<Option<String>, CniError> {
    let command = env::command(&get)?;
    if command == Command::Version {
        let mut stdin = Vec::new();
        // The runtime may send `{"cniVersion":..}`; drain it so its writer never
        // sees EPIPE, but never wait on a person's terminal.
        if !std::io::stdin().is_terminal() {
            let _ = std::io::stdin().read_to_end(&mut stdin);
        }
        return Ok(Some(result::version_json()));
    }
    let deadline = std::time::Instant::now() + DEADLINE;
    let stdin = read_netconf(std::io::stdin())?;
    let inv = prepare(command, &get, &stdin, version)?;
    let agent = Client::until(&inv.conf.agent_socket, AGENT_TIMEOUT, deadline);
    let node = netlink::Netlink;
    let pid = std::process::id();

    match (inv.command, inv.attachment) {
        (Command::Add, Some(att)) => {
            let _span = tracing::info_span!(
                "cni.add",
                container_id = %att.container_id,
                netns = %att.netns,
                ifname = %att.ifname,
                pod = %format_args!("{}/{}", att.pod.namespace, att.pod.name),
            )
            .entered();
            let result = commands::add(&node, &agent, &inv.conf, &att, pid)?;
            let json = serde_json::to_string(&result)
                .map_err(|e| CniError::new(Code::Io, "serializing the result").with_details(e.to_string()))?;
            Ok(Some(json))
        }
        (Command::Del, Some(att)) => {
            let _span =
                tracing::info_span!("cni.del", container_id = %att.container_id, ifname = %att.ifname).entered();
            commands::del(&node, &agent, &att).map(|()| None)
        }
        (Command::Check, Some(att)) => {
            let _span =
                tracing::info_span!("cni.check", container_id = %att.container_id, ifname = %att.ifname).entered();
            commands::check(&node, &agent, &inv.conf, &att).map(|()| None)
        }
        (Command::Status, _) => commands::status(&agent).map(|()| None),
        (Command::Gc, _) => commands::gc(&agent, &inv.conf).map(|()| None),
        (command, _) => unreachable!("prepare() validated {command:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const NETCONF: &str =
        r#"{"cniVersion":"1.1.0","name":"weir","type":"weir-cni","agentSocket":"/run/weir/agent.sock","mtu":1500}"#;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k| map.get(k).cloned()
    }

    fn add_env() -> impl Fn(&str) -> Option<String> {
        env(&[
            ("CNI_CONTAINERID", "c1"),
            ("CNI_NETNS", "/var/run/netns/p"),
            ("CNI_IFNAME", "eth0"),
        ])
    }

    #[test]
    fn prepares_a_runtime_add() {
        let mut v = String::new();
        let inv = prepare(Command::Add, add_env(), NETCONF.as_bytes(), &mut v).unwrap();
        assert_eq!(v, "1.1.0");
        assert_eq!(inv.conf.mtu, Some(1500));
        assert_eq!(inv.attachment.unwrap().ifname, "eth0");
    }

    #[test]
    fn errors_answer_in_the_requested_version() {
        let mut v = LATEST_VERSION.to_owned();
        let conf = r#"{"cniVersion":"1.0.0","name":"weir","type":"bridge"}"#;
        assert_eq!(
            prepare(Command::Add, add_env(), conf.as_bytes(), &mut v)
                .unwrap_err()
                .code
                .number(),
            7
        );
        assert_eq!(v, "1.0.0");

        let mut v = LATEST_VERSION.to_owned();
        let old = r#"{"cniVersion":"0.4.0","name":"weir","type":"weir-cni"}"#;
        assert_eq!(
            prepare(Command::Add, add_env(), old.as_bytes(), &mut v)
                .unwrap_err()
                .code
                .number(),
            1
        );
        assert_eq!(v, LATEST_VERSION);
    }

    #[test]
    fn status_and_gc_need_1_1() {
        let conf = r#"{"cniVersion":"1.0.0","name":"weir","type":"weir-cni"}"#;
        for cmd in [Command::Status, Command::Gc] {
            let mut v = String::new();
            assert_eq!(
                prepare(cmd, env(&[]), conf.as_bytes(), &mut v)
                    .unwrap_err()
                    .code
                    .number(),
                1
            );
        }
        let mut v = String::new();
        assert!(prepare(Command::Status, env(&[]), NETCONF.as_bytes(), &mut v).is_ok());
    }

    #[test]
    fn bad_stdin_is_code_6_and_bad_env_code_4() {
        let mut v = String::new();
        assert_eq!(
            prepare(Command::Add, add_env(), b"nope", &mut v)
                .unwrap_err()
                .code
                .number(),
            6
        );
        assert_eq!(
            prepare(Command::Add, env(&[]), NETCONF.as_bytes(), &mut v)
                .unwrap_err()
                .code
                .number(),
            4
        );
    }

    #[test]
    fn a_netconf_past_the_cap_is_a_decoding_error_not_a_read_of_everything() {
        let endless = std::io::repeat(b'y');
        let err = read_netconf(endless).unwrap_err();
        assert_eq!(err.code.number(), 6, "{err}");
        assert!(err.to_string().contains("larger than"), "{err}");
        assert_eq!(read_netconf(NETCONF.as_bytes()).unwrap(), NETCONF.as_bytes());
    }
}
