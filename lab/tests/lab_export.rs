//! Flow export in a two-node lab: an agent writes the client's flows to a
//! file (filtered, field-masked, as `hubble observe -o jsonpb` lines the
//! stock hubble reads back with `--input-file`) and sends them as OTLP
//! logs to a real OpenTelemetry Collector (built by scripts/tools.sh) in
//! its node's netns; a changed configuration takes effect without a
//! restart, a refused one changes nothing, and a collector that goes away
//! costs counted flows. Needs root, the workspace built and the tools
//! (CI=true fails without them).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

mod support;
use support::{Lab, cluster_ip, demo_lab, privileged, show};
use weir_test_support::tool;

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn probe_until_connected(lab: &Lab, pod: &str, target: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let out = lab.cmd(&["probe", pod, target, "--timeout", "1"]);
        if out.status.success() {
            return;
        }
        assert!(Instant::now() < deadline, "{pod} -> {target}: {}", show(&out));
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn json_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{}: not JSON ({e}): {l}", path.display())))
        .collect()
}

/// Waits until `what` holds of the file's lines; returns them.
fn wait_lines(path: &Path, why: &str, what: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let lines = json_lines(path);
        if what(&lines) {
            return lines;
        }
        assert!(
            Instant::now() < deadline,
            "{why}: {} lines in {}: {lines:#?}",
            lines.len(),
            path.display()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The agent's metric `series` (a full series name with labels), read
/// from its /metrics in the node's netns.
fn metric(netns: &str, series: &str) -> f64 {
    let out = Command::new("ip")
        .args(["netns", "exec", netns, "curl", "-sf", "http://127.0.0.1:9962/metrics"])
        .output()
        .expect("curl");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}

fn wait_metric(netns: &str, series: &str, what: impl Fn(f64) -> bool) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let v = metric(netns, series);
        if what(v) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{series} = {v}\nagents:\n{}",
            agent_logs(netns)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The agent logs of the lab whose node netns is `netns`.
fn agent_logs(netns: &str) -> String {
    let lab_name = netns.rsplit_once('-').map_or(netns, |(l, _)| l);
    let id = lab_name.trim_start_matches("wt");
    let dir = std::env::temp_dir().join(format!("weir-lab-test-{id}/lab/logs"));
    let mut out = String::new();
    for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("agent-") {
            let text = std::fs::read_to_string(e.path()).unwrap_or_default();
            let tail: Vec<&str> = text.lines().filter(|l| l.contains("export")).rev().take(30).collect();
            out.push_str(&format!(
                "--- {name}:\n{}\n",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            ));
        }
    }
    out
}

/// Every log record the collector wrote, with its resource's attributes.
fn collector_records(out: &Path) -> Vec<(Value, Value)> {
    let mut records = Vec::new();
    for line in json_lines(out) {
        for rl in line["resourceLogs"].as_array().into_iter().flatten() {
            for sl in rl["scopeLogs"].as_array().into_iter().flatten() {
                for r in sl["logRecords"].as_array().into_iter().flatten() {
                    records.push((rl["resource"].clone(), r.clone()));
                }
            }
        }
    }
    records
}

fn attr<'a>(kvs: &'a Value, key: &str) -> Option<&'a Value> {
    kvs["attributes"]
        .as_array()?
        .iter()
        .find(|kv| kv["key"] == key)
        .map(|kv| &kv["value"])
}

fn agent_pid(lab: &Lab, node: &str) -> u64 {
    let status = lab.json(&["status"]);
    status["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|n| n["name"] == node)
        .and_then(|n| n["agentPid"].as_u64())
        .unwrap_or_else(|| panic!("no agent pid for {node}: {status}"))
}

#[test]
fn flows_go_to_a_file_and_a_real_collector_and_the_configuration_reloads_without_a_restart() {
    if !privileged() {
        return;
    }
    let (Some(otelcol), Some(hubble)) = (tool("otelcol"), tool("hubble")) else {
        return;
    };
    let lab = demo_lab("fx", "172.31.244.0/24");
    let vip = cluster_ip(&lab, "svc-demo/web");
    let empty = cluster_ip(&lab, "svc-demo/empty");
    let node = lab.json(&["get", "pod", "svc-demo/client"])["spec"]["nodeName"]
        .as_str()
        .expect("node")
        .to_owned();
    let netns = format!("{}-{node}", lab.name);
    let config_path = lab.json(&["status"])["access"]["flowExport"][&node]
        .as_str()
        .expect("weir lab status names the node's flow export file")
        .to_owned();
    let pid = agent_pid(&lab, &node);

    // A real collector on the node's loopback, writing what it receives.
    let out_dir = lab.work.join("otel");
    std::fs::create_dir_all(&out_dir).expect("otel dir");
    let received = out_dir.join("logs.jsonl");
    let collector_config = lab.file(
        "otelcol.yaml",
        &format!(
            "receivers: {{otlp: {{protocols: {{grpc: {{endpoint: 127.0.0.1:4317}}}}}}}}\n\
             exporters: {{file: {{path: {}, flush_interval: 50ms}}}}\n\
             service: {{pipelines: {{logs: {{receivers: [otlp], exporters: [file]}}}}, telemetry: {{metrics: {{level: none}}}}}}\n",
            received.display()
        ),
    );
    let collector = Kill(
        Command::new("ip")
            .args(["netns", "exec", &netns])
            .arg(&otelcol)
            .arg(format!("--config=file:{collector_config}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(lab.work.join("otelcol.log")).expect("log"))
            .spawn()
            .expect("starting the collector"),
    );

    // The client's flows to a file, masked; all of them to the collector.
    let file = lab.work.join("export/client.log");
    let groups = lab.work.join("export/groups.log");
    let config = |file_filter: &str| {
        format!(
            "flowLogs:\n\
             - name: client\n  filePath: {}\n  includeFilters: [{{source_pod: [svc-demo/client]{file_filter}}}]\n  \
               fieldMask: [time, verdict, drop_reason_desc, source.namespace, source.pod_name, destination.pod_name, IP, l4]\n\
             - name: otel\n  otlp: {{endpoint: 'http://127.0.0.1:4317'}}\n  includeFilters: [{{source_pod: [svc-demo/client]}}]\n\
             - name: groups\n  filePath: {}\n  includeFilters: [{{source_pod: [svc-demo/client]}}]\n  \
               aggregateBy: [source-workload, destination-workload, verdict]\n  aggregateInterval: 1s\n",
            file.display(),
            groups.display()
        )
    };
    std::fs::write(&config_path, config("")).expect("writing the export config");
    wait_metric(&netns, "weir_flow_exporters", |v| v == 3.0);

    probe_until_connected(&lab, "svc-demo/client", &format!("{vip}:53/udp"));
    // One DNS exchange with web from the client's source port `port`.
    let dns_from = |port: u16| {
        lab.ok(&[
            "probe",
            "svc-demo/client",
            &format!("{vip}:53/udp"),
            "--source-port",
            &port.to_string(),
        ]);
    };
    for port in [41001, 41002, 41003] {
        dns_from(port);
    }
    let port_of = |f: &Value| f["flow"]["l4"]["UDP"]["source_port"].as_u64();
    let lines = wait_lines(&file, "the client's three connections in the file", |l| {
        [41001, 41002, 41003]
            .iter()
            .all(|p| l.iter().any(|f| port_of(f) == Some(*p)))
    });
    for f in &lines {
        assert_eq!(
            f["flow"]["source"]["pod_name"], "client",
            "only the client's flows: {f}"
        );
        // Masked: only what the mask names (and the response's own fields).
        let keys: Vec<&str> = f["flow"]
            .as_object()
            .expect("flow")
            .keys()
            .map(String::as_str)
            .collect();
        for k in &keys {
            assert!(
                [
                    "time",
                    "verdict",
                    "drop_reason_desc",
                    "source",
                    "destination",
                    "IP",
                    "l4"
                ]
                .contains(k),
                "{k} is not in the mask: {f}"
            );
        }
        assert!(
            f["flow"]["source"].get("labels").is_none(),
            "source.labels masked out: {f}"
        );
        assert_eq!(f["node_name"], node.as_str());
    }
    // The stock hubble reads the file as its own export.
    let read = Command::new(&hubble)
        .args(["observe", "--input-file"])
        .arg(&file)
        .args(["-o", "json"])
        .output()
        .expect("hubble");
    assert!(read.status.success(), "{}", show(&read));
    let read = String::from_utf8_lossy(&read.stdout);
    assert_eq!(
        read.lines().count(),
        json_lines(&file).len(),
        "hubble read every line:\n{read}"
    );
    assert!(read.contains("41002"), "{read}");

    // The collector got the same connections as log records.
    let deadline = Instant::now() + Duration::from_secs(20);
    let records = loop {
        let r = collector_records(&received);
        let ports: Vec<i64> = r
            .iter()
            .filter_map(|(_, rec)| attr(rec, "source.port")?["intValue"].as_str()?.parse().ok())
            .collect();
        if [41001, 41002, 41003].iter().all(|p| ports.contains(p)) {
            break r;
        }
        assert!(
            Instant::now() < deadline,
            "collector records: {r:#?}\ncollector log: {}",
            std::fs::read_to_string(lab.work.join("otelcol.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    for (resource, rec) in &records {
        assert_eq!(
            attr(resource, "k8s.node.name").map(|v| &v["stringValue"]),
            Some(&Value::from(node.as_str()))
        );
        assert_eq!(
            attr(rec, "source.pod").map(|v| &v["stringValue"]),
            Some(&Value::from("client"))
        );
        assert_eq!(rec["eventName"], "weir.flow");
        assert!(
            rec["body"]["kvlistValue"]["values"].is_array(),
            "structured body: {rec}"
        );
    }
    let web = records.iter().find(|(_, r)| attr(r, "destination.workload").is_some());
    assert!(web.is_some(), "a record names the destination workload: {records:#?}");

    // Aggregated: the client's connections to web as one group per
    // second, with weir observe --aggregate-by's counts.
    let folded = wait_lines(&groups, "the client's group", |l| {
        l.iter()
            .any(|g| g["destination-workload"] == "svc-demo/web" && g["connections"].as_u64() >= Some(1))
    });
    for g in &folded {
        assert_eq!(g["source-workload"], "svc-demo/client", "{g}");
        assert_eq!(g["node_name"], node.as_str(), "{g}");
        assert!(g["window_start"].is_string() && g["flows"].as_u64() >= Some(1), "{g}");
    }

    // Reload: the file now takes only the client's drops. No restart.
    let applied = r#"weir_flow_export_config_reloads_total{result="success"}"#;
    let reloads = metric(&netns, applied);
    std::fs::write(&config_path, config(", verdict: [DROPPED]")).expect("config");
    wait_metric(&netns, applied, |v| v > reloads);
    let before = json_lines(&file).len();
    dns_from(41004);
    let _ = lab.cmd(&[
        "probe",
        "svc-demo/client",
        &format!("{empty}:53/udp"),
        "--source-port",
        "41005",
        "--timeout",
        "1",
    ]);
    let lines = wait_lines(&file, "the drop after the reload", |l| {
        l[before..].iter().any(|f| port_of(f) == Some(41005))
    });
    for f in &lines[before..] {
        assert_eq!(f["flow"]["verdict"], "DROPPED", "only drops after the reload: {f}");
    }
    assert!(
        !lines.iter().any(|f| port_of(f) == Some(41004)),
        "a forwarded flow after the reload"
    );
    assert_eq!(agent_pid(&lab, &node), pid, "the agent was not restarted");

    // A broken configuration is refused and changes nothing.
    std::fs::write(&config_path, "flowLogs: [{name: Bad}]").expect("config");
    wait_metric(&netns, "weir_flow_export_config_last_reload_successful", |v| v == 0.0);
    let before = json_lines(&file).len();
    let _ = lab.cmd(&[
        "probe",
        "svc-demo/client",
        &format!("{empty}:53/udp"),
        "--source-port",
        "41006",
        "--timeout",
        "1",
    ]);
    wait_lines(&file, "exporters kept running", |l| {
        l[before..].iter().any(|f| port_of(f) == Some(41006))
    });
    assert_eq!(metric(&netns, "weir_flow_exporters"), 3.0);

    // The collector goes away: what the agent could not send is counted.
    drop(collector);
    let failed = r#"weir_flow_export_dropped_total{exporter="otel",reason="export_failed"}"#;
    let dropped = metric(&netns, failed);
    for port in [41007, 41008] {
        dns_from(port);
    }
    wait_metric(&netns, failed, |v| v > dropped);
    assert!(metric(&netns, r#"weir_flow_export_flows_total{exporter="otel"}"#) >= 3.0);
}
