//! `weir policy check -f change.yaml`: what a policy change would do to the
//! traffic the cluster really had (`weir_whatif`), from the relay's
//! recorded flows and the cluster's objects (manifests or the API
//! server), printed as a table or JSON.

use std::path::PathBuf;
use std::time::SystemTime;

use anyhow::{Context, Result};
use weir_proto::observer::GetFlowsRequest;

use crate::observe::{ServerArg, window::WindowArgs};

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// The change: manifests as they would be applied (policies, and pods
    /// or namespaces whose labels change). Repeat for several files.
    #[arg(short = 'f', long = "filename", required = true)]
    pub files: Vec<PathBuf>,
    /// The cluster's objects as manifests (a standalone agent's, or the
    /// lab's: `weir lab policy check` passes them).
    #[arg(long, conflicts_with = "kubeconfig")]
    pub manifests: Option<PathBuf>,
    /// Read the cluster's namespaces, pods and policies from the API server
    /// of this kubeconfig (the default without --manifests: in-cluster).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    #[command(flatten)]
    pub server: ServerArg,
    /// Only connections since (a duration ago, or a time); default: every
    /// flow the relay holds.
    #[arg(long)]
    pub since: Option<String>,
    /// table or json (one object per group).
    #[arg(short = 'o', long, default_value = "table")]
    pub output: String,
}

pub async fn check(a: CheckArgs) -> Result<()> {
    let mut warnings = Vec::new();
    let before = match a.manifests.as_deref() {
        Some(dir) => weir_whatif::read_manifests(dir, &mut warnings)?,
        None => {
            let client = weir_k8s::client(a.kubeconfig.as_deref()).await?;
            weir_whatif::read_cluster(&client, &mut warnings).await?
        }
    };
    for w in &warnings {
        eprintln!("warning: {w}");
    }
    let mut after = before.clone();
    for f in &a.files {
        let text = std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
        after = weir_whatif::apply_change(&after, &text).map_err(|e| anyhow::anyhow!("{}: {e}", f.display()))?;
    }
    let w = WindowArgs {
        since: a.since.clone(),
        until: None,
        first: None,
        last: None,
        all: a.since.is_none(),
        follow: false,
    }
    .window(SystemTime::now())?;
    let req = GetFlowsRequest {
        number: w.number,
        since: w.since.map(weir_proto::time::to_timestamp),
        ..Default::default()
    };
    let flows = crate::observe::fetch_flows(&a.server, req).await?;
    let report = weir_whatif::check(&before, &after, &flows);
    for (policy, reason) in &report.refused {
        eprintln!(
            "the change is refused by the compiler: {policy}: {reason} (an invalid policy isolates what it selects)"
        );
    }
    if a.output == "json" {
        for g in &report.groups {
            println!("{}", serde_json::to_string(g)?);
        }
        return Ok(());
    }
    if report.groups.is_empty() {
        println!(
            "no recorded connection would change its verdict ({} judged, {} flows)",
            report.judged, report.flows
        );
        return Ok(());
    }
    println!(
        "{} of {} recorded connections would change their verdict, in {} groups:",
        report.changed(),
        report.judged,
        report.groups.len()
    );
    for g in &report.groups {
        println!(
            "  {} → {} {}: {} → {}, {} connection{}\n      now:   {} by {}\n      after: {} by {}",
            g.client,
            g.server,
            g.port,
            g.now,
            g.after,
            g.connections,
            if g.connections == 1 { "" } else { "s" },
            g.now,
            g.rule_now,
            g.after,
            g.rule_after
        );
    }
    Ok(())
}
