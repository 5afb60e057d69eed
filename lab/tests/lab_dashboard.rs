//! The Grafana dashboard shipped in `install/grafana/` against a real
//! Prometheus (Debian's) scraping both agents of a two-node lab that runs
//! the chart's default Hubble metrics, with the demo's services and
//! policy and real traffic: every panel's PromQL returns data. Needs
//! root and Prometheus (scripts/deps.sh installs it; CI=true fails
//! without it).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

mod support;
use support::{Lab, cluster_ip, privileged};
use weir_test_support::tool;

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn repo(path: &str) -> String {
    format!("{}/../{path}", env!("CARGO_MANIFEST_DIR"))
}

/// The chart's default `hubble.metrics.enabled`, as the agents' flag.
fn chart_metrics() -> String {
    let values: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(repo("install/helm/weir/values.yaml")).expect("values"))
            .expect("values.yaml");
    values["hubble"]["metrics"]["enabled"]
        .as_sequence()
        .expect("hubble.metrics.enabled")
        .iter()
        .map(|v| v.as_str().expect("a metric").to_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn every_dashboard_panel_returns_data_from_a_real_prometheus() {
    if !privileged() {
        return;
    }
    let Some(prometheus) = tool("prometheus") else {
        return;
    };
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(repo("install/grafana/weir-dashboard.json")).expect("dashboard"))
            .expect("the dashboard is JSON");
    let panels: Vec<(String, String)> = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|p| {
            let title = p["title"].as_str().expect("title").to_owned();
            assert_eq!(
                p["datasource"]["uid"], "${datasource}",
                "{title}: the dashboard's datasource variable"
            );
            p["targets"]
                .as_array()
                .expect("targets")
                .iter()
                .map(move |t| (title.clone(), t["expr"].as_str().expect("expr").to_owned()))
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(panels.len() >= 12, "{panels:?}");

    // Two nodes whose agents run the chart's metrics and serve them on
    // their node address (the lab's own segment), for one Prometheus on
    // the lab's external host.
    let lab = Lab::new("gd");
    let topo = lab.file(
        "topo.yaml",
        &format!(
            "name: {}\nclusterCIDR: 10.244.0.0/16\nnodeCIDR: 172.31.242.0/24\nrouting: native\n\
             nodes:\n  - {{name: a, podCIDR: 10.244.1.0/24}}\n  - {{name: b, podCIDR: 10.244.2.0/24}}\n\
             agentArgs: [--metrics-listen=0.0.0.0:9962, {:?}]\n",
            lab.name,
            format!("--hubble-metrics={}", chart_metrics())
        ),
    );
    lab.ok(&["up", &topo]);
    lab.ok(&["apply", &format!("{}/demo/services.yaml", env!("CARGO_MANIFEST_DIR"))]);
    lab.ok(&["apply", &format!("{}/demo/policy.yaml", env!("CARGO_MANIFEST_DIR"))]);

    let external = format!("{}-external", lab.name);
    let data = lab.work.join("prometheus");
    std::fs::create_dir_all(&data).expect("prometheus dir");
    let config = lab.file(
        "prometheus.yml",
        "global: {scrape_interval: 1s}\nscrape_configs:\n  - job_name: weir-agent\n    \
         static_configs: [{targets: ['172.31.242.11:9962', '172.31.242.12:9962']}]\n",
    );
    let _prometheus = Kill(
        Command::new("ip")
            .args(["netns", "exec", &external])
            .arg(&prometheus)
            .arg(format!("--config.file={config}"))
            .arg(format!("--storage.tsdb.path={}", data.display()))
            .arg("--web.listen-address=127.0.0.1:9090")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(lab.work.join("prometheus.log")).expect("log"))
            .spawn()
            .expect("starting prometheus"),
    );

    // Traffic every panel is about: the client to web (allowed, through
    // the Service), the intruder to web (denied by policy), the client to
    // the outside and to a Service with no backend (dropped).
    let vip = cluster_ip(&lab, "svc-demo/web");
    let empty = cluster_ip(&lab, "svc-demo/empty");
    let traffic = || {
        for _ in 0..3 {
            let _ = lab.cmd(&["probe", "svc-demo/client", &format!("{vip}:80/tcp"), "--timeout", "1"]);
        }
        let _ = lab.cmd(&["probe", "svc-demo/intruder", &format!("{vip}:80/tcp"), "--timeout", "1"]);
        let _ = lab.cmd(&["probe", "svc-demo/client", "external:5353/udp", "--timeout", "1"]);
        let _ = lab.cmd(&["probe", "svc-demo/client", &format!("{empty}:80/tcp"), "--timeout", "1"]);
    };

    let query = |q: &str| -> Value {
        let out = Command::new("ip")
            .args(["netns", "exec", &external, "curl", "-s", "-G", "--data-urlencode"])
            .arg(format!("query={q}"))
            .arg("http://127.0.0.1:9090/api/v1/query")
            .output()
            .expect("curl");
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
    };
    // Both agents scraped.
    let deadline = Instant::now() + Duration::from_secs(30);
    while query("sum(up)")["data"]["result"][0]["value"][1] != "2" {
        assert!(
            Instant::now() < deadline,
            "Prometheus never scraped both agents: {}\n{}",
            query("up"),
            std::fs::read_to_string(lab.work.join("prometheus.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    // Grafana's $__rate_interval is at least four scrape intervals.
    let exprs: Vec<(String, String)> = panels
        .iter()
        .map(|(t, e)| (t.clone(), e.replace("$__rate_interval", "1m")))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut empty_panels;
    loop {
        traffic();
        empty_panels = Vec::new();
        for (title, expr) in &exprs {
            let v = query(expr);
            assert_eq!(v["status"], "success", "{title}: {expr}: {v}");
            if v["data"]["result"].as_array().is_none_or(|r| r.is_empty()) {
                empty_panels.push(format!("{title}: {expr}"));
            }
        }
        if empty_panels.is_empty() || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    assert!(
        empty_panels.is_empty(),
        "panels without data:\n{}\nagent logs:\n{}",
        empty_panels.join("\n"),
        lab.logs()
    );

    // The context the chart configures names the namespaces of both ends.
    let drops = query(r#"sum by (source, destination) (hubble_drop_total{reason="POLICY_DENIED"})"#);
    let result = &drops["data"]["result"];
    assert!(
        result
            .as_array()
            .into_iter()
            .flatten()
            .any(|r| r["metric"]["source"] == "svc-demo" && r["metric"]["destination"] == "svc-demo"),
        "{drops}"
    );
}
