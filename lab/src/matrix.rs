//! `weir lab matrix`: who reaches whom. Every running pod probes every pod
//! (or, with `--via-service`, every pod's own Service, the Service in the
//! pod's namespace named after it) on every port given, all at once, and
//! the result is a table or JSON: the connectivity a set of policies makes,
//! the way network-policy conformance suites show it.
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::Serialize;
use weir_model::{Kind, Object};

use super::manifests::Store;
use super::serve::Proto;
use super::{Lab, Output, netns, probe, state::LabState};

/// One probe's result.
#[derive(Debug, Clone, Serialize)]
pub struct Cell {
    pub from: String,
    pub to: String,
    pub port: u16,
    pub proto: String,
    pub ok: bool,
    pub outcome: String,
}

struct Target {
    name: String,
    ip: IpAddr,
}

fn targets(lab: &Lab, state: &LabState, namespaces: &[String], via_service: bool) -> Result<Vec<Target>> {
    let wanted = |ns: &str| namespaces.is_empty() || namespaces.iter().any(|n| n == ns);
    let mut out = Vec::new();
    if !via_service {
        for p in state.pods.values().filter(|p| wanted(&p.namespace)) {
            if let Some(ip) = p.ip.as_deref().and_then(|i| i.parse().ok()) {
                out.push(Target {
                    name: format!("{}/{}", p.namespace, p.name),
                    ip,
                });
            }
        }
        return Ok(out);
    }
    // Every Service by namespace and name, from the API server or the store.
    let services: std::collections::BTreeMap<(String, String), k8s_openapi::api::core::v1::Service> = match &state.kube
    {
        Some(kube) => super::kube::list(kube, "services")?,
        None => Store::new(lab.dir.manifests())
            .list(Kind::Service, None)?
            .into_iter()
            .filter_map(|o| match o {
                Object::Service(s) => Some(s),
                _ => None,
            })
            .collect(),
    }
    .into_iter()
    .map(|s| {
        let key = (
            s.metadata.namespace.clone().unwrap_or_default(),
            s.metadata.name.clone().unwrap_or_default(),
        );
        (key, s)
    })
    .collect();
    for p in state.pods.values().filter(|p| wanted(&p.namespace) && p.ip.is_some()) {
        let svc = services.get(&(p.namespace.clone(), p.name.clone())).with_context(|| {
            format!(
                "--via-service: pod {}/{} has no Service of its name",
                p.namespace, p.name
            )
        })?;
        let ip = svc
            .spec
            .as_ref()
            .and_then(|s| s.cluster_ip.as_deref())
            .and_then(|i| i.parse().ok())
            .with_context(|| format!("Service {}/{} has no ClusterIP", p.namespace, p.name))?;
        out.push(Target {
            name: format!("{}/{}", p.namespace, p.name),
            ip,
        });
    }
    Ok(out)
}

/// Probes everything in parallel: one thread per probe (each enters its
/// source's netns), so a matrix takes about one timeout.
pub fn run(
    lab: &Lab,
    ports: &[(u16, Proto)],
    namespaces: &[String],
    via_service: bool,
    timeout: f64,
) -> Result<Vec<Cell>> {
    let state = lab.observed()?;
    if ports.is_empty() {
        bail!("give at least one --port PORT/PROTO");
    }
    let timeout = Duration::from_secs_f64(timeout);
    let targets = targets(lab, &state, namespaces, via_service)?;
    let wanted = |ns: &str| namespaces.is_empty() || namespaces.iter().any(|n| n == ns);
    let mut jobs = Vec::new();
    for src in state.pods.values().filter(|p| wanted(&p.namespace) && p.ip.is_some()) {
        let path = netns::path(&src.netns).to_string_lossy().into_owned();
        for t in &targets {
            for &(port, proto) in ports {
                let (path, ip) = (path.clone(), t.ip);
                let cell = Cell {
                    from: format!("{}/{}", src.namespace, src.name),
                    to: t.name.clone(),
                    port,
                    proto: proto.to_string(),
                    ok: false,
                    outcome: String::new(),
                };
                jobs.push((
                    cell,
                    std::thread::spawn(move || probe::port(&path, ip, port, proto, timeout, None, None)),
                ));
            }
        }
    }
    let mut out = Vec::new();
    for (mut cell, job) in jobs {
        let outcome = job
            .join()
            .unwrap_or_else(|_| probe::Outcome::Failed("probe thread panicked".into()));
        cell.ok = matches!(outcome, probe::Outcome::Connected(_));
        cell.outcome = outcome.to_string();
        out.push(cell);
    }
    Ok(out)
}

/// Prints the matrix: a row per source, a column per target, one mark per
/// port (`.` connected, `X` not).
pub fn print(cells: &[Cell], output: Output) -> Result<()> {
    match output {
        Output::Json => println!("{}", serde_json::to_string(cells)?),
        Output::Yaml => print!("{}", weir_model::to_yaml(&cells)),
        Output::Table => {
            let mut rows: BTreeMap<&str, BTreeMap<&str, String>> = BTreeMap::new();
            for c in cells {
                rows.entry(&c.from)
                    .or_default()
                    .entry(&c.to)
                    .or_default()
                    .push(if c.ok { '.' } else { 'X' });
            }
            let cols: Vec<&str> = {
                let mut v: Vec<&str> = cells.iter().map(|c| c.to.as_str()).collect();
                v.sort();
                v.dedup();
                v
            };
            let w = cells.iter().map(|c| c.from.len()).max().unwrap_or(4);
            let mut ports: Vec<String> = Vec::new();
            for c in cells {
                let p = format!("{}/{}", c.port, c.proto);
                if !ports.contains(&p) {
                    ports.push(p);
                }
            }
            let per = ports.len().max(1);
            println!("# each cell: {} (. connected, X blocked)", ports.join(" "));
            print!("{:w$}", "");
            for c in &cols {
                print!(" {:>width$}", c, width = per.max(c.len()));
            }
            println!();
            for (from, row) in &rows {
                print!("{from:w$}");
                for c in &cols {
                    print!(
                        " {:>width$}",
                        row.get(c).map_or("", |s| s.as_str()),
                        width = per.max(c.len())
                    );
                }
                println!();
            }
        }
    }
    Ok(())
}
