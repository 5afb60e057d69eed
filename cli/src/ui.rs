//! `weir ui`: the service map of a cluster, in the browser. The relay
//! serves it on its pod's loopback (`relay.ui.enabled`), so this forwards
//! a local port to it with `kubectl port-forward`, as `cilium hubble ui`
//! does, and prints the URL; Ctrl-C ends it.

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};

#[derive(Debug, clap::Args)]
pub struct UiArgs {
    /// The cluster's kubeconfig (default: kubectl's).
    #[arg(long, env = "WEIR_KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// The namespace weir is installed in.
    #[arg(long, default_value = "kube-system")]
    namespace: String,
    /// The local port to serve the map on (0: any free one).
    #[arg(long, default_value_t = 12000)]
    port: u16,
    /// The relay's UI port inside its pod (the chart's relay.ui.port).
    #[arg(long, default_value_t = 8080)]
    ui_port: u16,
}

pub fn ui(a: UiArgs) -> Result<()> {
    let mut cmd = Command::new("kubectl");
    if let Some(kc) = &a.kubeconfig {
        cmd.arg("--kubeconfig").arg(kc);
    }
    cmd.args(["-n", &a.namespace, "port-forward", "deployment/weir-relay"])
        .arg(format!("{}:{}", a.port, a.ui_port))
        .args(["--address", "127.0.0.1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut child = cmd.spawn().context("running kubectl (weir ui forwards through it)")?;
    let stdout = child.stdout.take().context("kubectl's output")?;
    let mut lines = BufReader::new(stdout).lines();
    // "Forwarding from 127.0.0.1:12000 -> 8080"
    let local = loop {
        match lines.next() {
            Some(Ok(l)) => {
                if let Some(addr) = l.strip_prefix("Forwarding from ").and_then(|r| r.split(" -> ").next()) {
                    break addr.to_owned();
                }
            }
            _ => {
                let status = child.wait()?;
                bail!(
                    "kubectl port-forward ended ({status}) before forwarding: is weir installed in {}?",
                    a.namespace
                );
            }
        }
    };
    // A forward to a port nothing listens on fails only at the first
    // connection: ask the relay now, to say why rather than show a blank page.
    let answered = TcpStream::connect_timeout(&local.parse().context("kubectl's address")?, Duration::from_secs(5))
        .and_then(|mut s| {
            use std::io::{Read, Write};
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            s.write_all(b"GET /healthz HTTP/1.1\r\nHost: weir\r\nConnection: close\r\n\r\n")?;
            let mut got = String::new();
            s.read_to_string(&mut got)?;
            Ok(got.starts_with("HTTP/1.1 200"))
        })
        .unwrap_or(false);
    if !answered {
        let _ = child.kill();
        bail!(
            "the relay serves no service map: install with relay.ui.enabled=true \
             (helm upgrade ... --set relay.ui.enabled=true)"
        );
    }
    println!("service map: http://{local}/   (Ctrl-C to stop)");
    // Keep kubectl's output flowing until it ends.
    for _ in lines.by_ref() {}
    let status = child.wait()?;
    if !status.success() {
        bail!("kubectl port-forward ended: {status}");
    }
    Ok(())
}
