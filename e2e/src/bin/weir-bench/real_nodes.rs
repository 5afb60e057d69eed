//! `weir-bench --real-nodes`: weir installed on real nodes (the lab with
//! `kubelet: real`, `install: none`: the real kubelet and containerd in
//! each node's netns), as users install it (`kubectl apply -f
//! install/weir.yaml`).
//!
//! - Pod start: `kubectl apply` of a Deployment of 50 pods until all 50
//!   are Ready (image already on the nodes), `ROUNDS` rounds.
//! - CNI ADD as containerd calls it: from containerd's "begin cni setup"
//!   to its "cni result" for each sandbox (containerd at debug level), over
//!   every pod the rounds started.
//! - Where the agents' share of those ADDs went: their
//!   `weir_cni_add_phase_duration_seconds` histograms (queued, lock,
//!   datapath, policy), scraped from both nodes after the rounds.
//! - weir's image size, and each agent's RSS with 100 pods on the cluster.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::{ROUNDS, median, rss_kib};

struct Cluster {
    lab: PathBuf,
    bin: PathBuf,
    up: String,
}

impl Cluster {
    fn weir_lab(&self, args: &[&str]) -> String {
        let out = Command::new(self.bin.join("weir-lab"))
            .args(args)
            .env("WEIR_LAB_DIR", &self.lab)
            .env("WEIR_BIN_DIR", &self.bin)
            .env("WEIR_LAB_CONTAINERD_LOG", "debug")
            .output()
            .expect("running weir-lab");
        assert!(
            out.status.success(),
            "weir lab {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn kubectl(&self, args: &[&str]) -> String {
        let mut all = vec!["kubectl", "--"];
        all.extend(args);
        self.weir_lab(&all)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new(self.bin.join("weir-lab"))
            .arg("down")
            .env("WEIR_LAB_DIR", &self.lab)
            .output();
    }
}

fn deployment(replicas: u32) -> String {
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: many, namespace: bench}}\nspec:\n  replicas: {replicas}\n  selector: {{matchLabels: {{app: many}}}}\n  template:\n    metadata: {{labels: {{app: many}}}}\n    spec:\n      terminationGracePeriodSeconds: 0\n      containers:\n        - {{name: c, image: registry.k8s.io/e2e-test-images/agnhost:2.63.0, args: [pause]}}\n"
    )
}

fn ready_replicas(c: &Cluster) -> u64 {
    c.kubectl(&[
        "-n",
        "bench",
        "get",
        "deployment",
        "many",
        "-o",
        "jsonpath={.status.readyReplicas}",
    ])
    .trim()
    .parse()
    .unwrap_or(0)
}

fn pods_left(c: &Cluster) -> usize {
    c.kubectl(&["-n", "bench", "get", "pods", "-o", "name"]).lines().count()
}

/// Every CNI setup containerd logged: milliseconds from "begin cni setup"
/// to "cni result", per sandbox.
fn cni_setups(log: &str) -> Vec<f64> {
    let mut begun = std::collections::HashMap::new();
    let mut took = Vec::new();
    for line in log.lines() {
        let field = |name: &str| {
            let at = line.find(&format!("{name}="))? + name.len() + 1;
            let rest = &line[at..];
            let rest = rest.strip_prefix('"').unwrap_or(rest);
            Some(rest.split(['"', ' ']).next()?.to_owned())
        };
        let (Some(time), Some(id)) = (field("time"), field("podsandboxid")) else {
            continue;
        };
        let Ok(t) = time.parse::<k8s_openapi::jiff::Timestamp>() else {
            continue;
        };
        if line.contains("begin cni setup") {
            begun.insert(id, t);
        } else if line.contains("cni result")
            && let Some(start) = begun.remove(&id)
        {
            took.push(t.duration_since(start).as_secs_f64() * 1e3);
        }
    }
    took
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// The weir-agent processes of the lab's nodes: (node, pid).
fn agents() -> Vec<(String, u32)> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmd
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if args.first().is_some_and(|a| a == "/usr/local/bin/weir-agent") {
            let node = std::fs::read(e.path().join("environ"))
                .ok()
                .and_then(|env| {
                    env.split(|b| *b == 0)
                        .map(|v| String::from_utf8_lossy(v).into_owned())
                        .find_map(|v| v.strip_prefix("WEIR_NODE=").map(str::to_owned))
                })
                .unwrap_or_default();
            found.push((node, pid));
        }
    }
    found.sort();
    found
}

pub fn run() {
    let bin = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
        .expect("the binaries' dir");
    let work = std::env::temp_dir().join(format!("weir-bench-real-{}", std::process::id()));
    std::fs::create_dir_all(&work).expect("work dir");
    let topo = work.join("topo.yaml");
    std::fs::write(
        &topo,
        "name: wbreal\nclusterCIDR: 10.244.0.0/16\nnodeCIDR: 172.31.240.0/24\nrouting: native\ncontrolPlane: kubernetes\nkubelet: real\ninstall: none\nnodes:\n  - {name: wbreal-1, podCIDR: 10.244.1.0/24}\n  - {name: wbreal-2, podCIDR: 10.244.2.0/24}\n",
    )
    .expect("topology");
    let mut c = Cluster {
        lab: work.join("lab"),
        bin,
        up: String::new(),
    };
    let t0 = Instant::now();
    c.up = c.weir_lab(&["up", &topo.to_string_lossy()]);
    let up = t0.elapsed();
    let manifest = format!("{}/../install/weir.yaml", env!("CARGO_MANIFEST_DIR"));
    c.kubectl(&[
        "-n",
        "kube-system",
        "create",
        "configmap",
        "weir-kube-api",
        "--from-literal=KUBERNETES_SERVICE_HOST=172.31.240.11",
        "--from-literal=KUBERNETES_SERVICE_PORT=6443",
    ]);
    let t0 = Instant::now();
    c.kubectl(&["apply", "-f", &manifest]);
    c.kubectl(&["wait", "--for=condition=Ready", "node", "--all", "--timeout=180s"]);
    let installed = t0.elapsed();
    c.kubectl(&["create", "namespace", "bench"]);
    let file = work.join("many.yaml");

    // Warm: the image pulled on both nodes, the namespace's service account made.
    std::fs::write(&file, deployment(2)).expect("manifest");
    c.kubectl(&["apply", "-f", &file.to_string_lossy()]);
    wait(|| ready_replicas(&c) == 2, "2 warm pods");
    c.kubectl(&["-n", "bench", "delete", "deployment", "many", "--wait=true"]);
    wait(|| pods_left(&c) == 0, "warm pods gone");

    let mut start = Vec::new();
    std::fs::write(&file, deployment(50)).expect("manifest");
    for _ in 0..ROUNDS {
        let t0 = Instant::now();
        c.kubectl(&["apply", "-f", &file.to_string_lossy()]);
        wait(|| ready_replicas(&c) == 50, "50 pods Ready");
        start.push(t0.elapsed().as_secs_f64());
        c.kubectl(&["-n", "bench", "delete", "deployment", "many", "--wait=true"]);
        wait(|| pods_left(&c) == 0, "pods gone");
    }
    let mut adds = Vec::new();
    for node in ["wbreal-1", "wbreal-2"] {
        let log =
            std::fs::read_to_string(c.lab.join("logs").join(format!("containerd-{node}.log"))).unwrap_or_default();
        adds.extend(cni_setups(&log));
    }
    adds.sort_by(f64::total_cmp);
    let mut phases = Buckets::new();
    for node in ["wbreal-1", "wbreal-2"] {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &format!("wbreal-{node}"),
                "curl",
                "-sf",
                "http://127.0.0.1:9962/metrics",
            ])
            .output()
            .expect("curl");
        add_buckets(
            &mut phases,
            &String::from_utf8_lossy(&out.stdout),
            "weir_cni_add_phase_duration_seconds",
            "phase",
        );
    }

    std::fs::write(&file, deployment(100)).expect("manifest");
    c.kubectl(&["apply", "-f", &file.to_string_lossy()]);
    wait(|| ready_replicas(&c) == 100, "100 pods Ready");
    std::thread::sleep(Duration::from_secs(5));
    let rss: Vec<(String, u64)> = agents().into_iter().map(|(n, pid)| (n, rss_kib(pid))).collect();

    let image =
        c.up.lines()
            .find(|l| l.starts_with("weir image:"))
            .unwrap_or_default()
            .to_owned();
    println!("## weir installed on real nodes (kubelet v1.36.3, containerd v2.4.2), {ROUNDS} rounds\n");
    println!(
        "`weir lab up` (control plane, registry, two kubelets and containerd, NotReady): {:.1} s",
        up.as_secs_f64()
    );
    println!(
        "`kubectl apply -f install/weir.yaml` until both nodes Ready: {:.1} s",
        installed.as_secs_f64()
    );
    println!("{image}\n");
    println!("| measure | median | range |\n|---|---|---|");
    let (min, max) = start.iter().fold((f64::MAX, 0f64), |(a, b), s| (a.min(*s), b.max(*s)));
    println!(
        "| `kubectl apply` of 50 pods until all Ready | {:.1} s | {min:.1}-{max:.1} s |",
        median(&mut start)
    );
    if adds.is_empty() {
        println!("\nno CNI setups found in containerd's logs");
    } else {
        println!(
            "\nCNI ADD as containerd calls it ({} pods): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            adds.len(),
            percentile(&adds, 0.5),
            percentile(&adds, 0.99),
            adds[adds.len() - 1]
        );
    }
    println!("\n| the agents' share of an ADD, by phase (bucket bounds) | p50 | p99 | ADDs |\n|---|---|---|---|");
    for phase in ["queued", "lock", "datapath", "policy"] {
        let series = phases.get(phase).cloned().unwrap_or_default();
        let ((p50, n), (p99, _)) = (bucket_quantile(&series, 0.5), bucket_quantile(&series, 0.99));
        println!("| {phase} | {} | {} | {n} |", ms(p50), ms(p99));
    }
    println!("\n| agent | RSS with 100 pods on the cluster |\n|---|---|");
    for (node, kib) in rss {
        println!("| {node} | {} MiB |", kib / 1024);
    }
    // The lab down first: it lives in the work dir.
    drop(c);
    let _ = std::fs::remove_dir_all(&work);
}

/// Cumulative bucket counts by `le`, per label value of `label`, of the
/// histogram `name` in Prometheus text; several scrapes add up.
type Buckets = BTreeMap<String, Vec<(f64, f64)>>;

fn add_buckets(into: &mut Buckets, text: &str, name: &str, label: &str) {
    let prefix = format!("{name}_bucket{{");
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(&prefix) else {
            continue;
        };
        let Some((labels, value)) = rest.split_once("} ") else {
            continue;
        };
        let get = |k: &str| {
            labels
                .split(',')
                .find_map(|kv| kv.strip_prefix(&format!("{k}=\"")))
                .map(|v| v.trim_end_matches('"').to_owned())
        };
        let (Some(le), Some(key), Ok(n)) = (get("le"), get(label), value.trim().parse::<f64>()) else {
            continue;
        };
        let le = if le == "+Inf" {
            f64::INFINITY
        } else {
            le.parse().unwrap_or(f64::INFINITY)
        };
        let series = into.entry(key).or_default();
        match series.iter_mut().find(|(b, _)| *b == le) {
            Some((_, c)) => *c += n,
            None => series.push((le, n)),
        }
    }
    for series in into.values_mut() {
        series.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
}

/// The upper bound of the bucket holding quantile `q`, and the count.
fn bucket_quantile(series: &[(f64, f64)], q: f64) -> (f64, f64) {
    let total = series.last().map(|(_, c)| *c).unwrap_or(0.0);
    let le = series
        .iter()
        .find(|(_, c)| *c >= q * total)
        .map(|(le, _)| *le)
        .unwrap_or(f64::INFINITY);
    (le, total)
}

fn ms(seconds: f64) -> String {
    match seconds.is_finite() {
        true => format!("{:.1} ms", seconds * 1000.0),
        false => "beyond the last bucket".into(),
    }
}

fn wait(done: impl Fn() -> bool, what: &str) {
    let t0 = Instant::now();
    while !done() {
        assert!(t0.elapsed() < Duration::from_secs(300), "{what}: not within 300 s");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn histogram_quantiles_from_two_scrapes() {
        let scrape = "weir_cni_add_phase_duration_seconds_bucket{le=\"0.001\",phase=\"lock\"} 1\n\
                      weir_cni_add_phase_duration_seconds_bucket{le=\"0.002\",phase=\"lock\"} 9\n\
                      weir_cni_add_phase_duration_seconds_bucket{le=\"+Inf\",phase=\"lock\"} 10\n";
        let mut b = super::Buckets::new();
        super::add_buckets(&mut b, scrape, "weir_cni_add_phase_duration_seconds", "phase");
        super::add_buckets(&mut b, scrape, "weir_cni_add_phase_duration_seconds", "phase");
        assert_eq!(super::bucket_quantile(&b["lock"], 0.5), (0.002, 20.0));
        assert_eq!(super::bucket_quantile(&b["lock"], 0.99).0, f64::INFINITY);
    }

    #[test]
    fn reads_cni_setup_times_from_containerds_log() {
        let log = "time=\"2026-12-06T02:09:17.100000000Z\" level=debug msg=\"begin cni setup\" podsandboxid=abc\n\
                   time=\"2026-12-06T02:09:17.104500000Z\" level=debug msg=\"cni result: {}\" podsandboxid=abc\n";
        let took = super::cni_setups(log);
        assert_eq!(took.len(), 1);
        assert!((took[0] - 4.5).abs() < 0.01, "{took:?}");
    }
}
