//! End-to-end flows: real traffic in a two-node lab, seen by the real
//! clients of the Hubble ecosystem (the stock `hubble` CLI and `grpcurl`,
//! built by scripts/tools.sh) and by `weir observe`, against an agent and
//! against the relay; the relay losing and rejoining a hung node; per-pod
//! tracing switched on at run time; a real Prometheus server scraping an
//! agent. Needs root, the workspace built, and the tools (CI=true fails
//! without them).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;

mod support;
use support::{Lab, cluster_ip, demo_lab, privileged, show};
use weir_test_support::tool;

/// Probes until it connects (the services controller may still be
/// programming the new service).
fn probe_until_connected(lab: &Lab, pod: &str, target: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let out = lab.cmd(&["probe", pod, target, "--timeout", "1"]);
        let said = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if out.status.success() {
            return said;
        }
        assert!(Instant::now() < deadline, "{pod} -> {target}: {}", show(&out));
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn relay_socket(lab: &Lab) -> PathBuf {
    lab.dir.join("run/relay.sock")
}

fn agent_socket(lab: &Lab, node: &str) -> PathBuf {
    lab.dir.join("run").join(node).join("hubble.sock")
}

fn unix(p: &Path) -> String {
    format!("unix://{}", p.display())
}

/// Runs a client with a deadline (a hung server must fail the test, not
/// hang it).
fn run(program: &Path, args: &[&str]) -> Output {
    Command::new("timeout")
        .arg("30")
        .arg(program)
        .args(args)
        .output()
        .expect("running a client")
}

fn ok(program: &Path, args: &[&str]) -> String {
    let out = run(program, args);
    assert!(out.status.success(), "{} {args:?}: {}", program.display(), show(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// `hubble observe -o json` lines are `{"flow": {...}, ...}`.
fn hubble_flows(hubble: &Path, server: &str, extra: &[&str]) -> Vec<Value> {
    let mut args = vec!["observe", "--server", server, "-o", "json", "--last", "1000"];
    args.extend_from_slice(extra);
    json_lines(&ok(hubble, &args))
        .into_iter()
        .map(|v| v["flow"].clone())
        .collect()
}

fn pod_of(ep: &Value) -> String {
    format!(
        "{}/{}",
        ep["namespace"].as_str().unwrap_or(""),
        ep["pod_name"].as_str().unwrap_or("")
    )
}

#[test]
fn hubble_grpcurl_and_weir_observe_see_named_flows_on_agents_and_the_relay() {
    if !privileged() {
        return;
    }
    let (Some(hubble), Some(grpcurl)) = (tool("hubble"), tool("grpcurl")) else {
        return;
    };
    let weir = weir_test_support::bin("weir");
    let lab = demo_lab("fl", "172.31.249.0/24");
    let vip = cluster_ip(&lab, "svc-demo/web");
    let empty = cluster_ip(&lab, "svc-demo/empty");
    probe_until_connected(&lab, "svc-demo/client", &format!("{vip}:80/tcp"));
    // A pod on the other node, directly; the empty service (rejected).
    let client_node = lab.json(&["get", "pod", "svc-demo/client"])["spec"]["nodeName"]
        .as_str()
        .expect("client's node")
        .to_owned();
    let pods = lab.json(&["get", "pod", "-n", "svc-demo"]);
    let remote_web = pods["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|p| {
            p["spec"]["nodeName"].as_str() != Some(&client_node)
                && p["metadata"]["name"].as_str().unwrap_or("").starts_with("web-")
        })
        .and_then(|p| p["metadata"]["name"].as_str())
        .expect("a web pod on the other node")
        .to_owned();
    lab.ok(&["probe", "svc-demo/client", &format!("svc-demo/{remote_web}:80/tcp")]);
    let refused = lab.cmd(&["probe", "svc-demo/client", &format!("{empty}:80/tcp")]);
    assert!(!refused.status.success(), "the empty service refuses");

    let relay = unix(&relay_socket(&lab));
    // Give the readers a moment to drain the rings.
    std::thread::sleep(Duration::from_millis(500));
    let flows = hubble_flows(&hubble, &relay, &[]);
    assert!(!flows.is_empty(), "no flows through the relay");

    // The service connection: pod names on both ends, and the VIP in the
    // summary hubble prints.
    let via = format!("via svc-demo/web {vip}:80");
    let service_flow = flows
        .iter()
        .find(|f| {
            pod_of(&f["source"]) == "svc-demo/client"
                && pod_of(&f["destination"]).starts_with("svc-demo/web-")
                && f["Summary"].as_str().is_some_and(|s| s.contains(&via))
        })
        .unwrap_or_else(|| panic!("no client -> web flow {via:?} in {flows:#?}"));
    assert_eq!(service_flow["verdict"], "FORWARDED");
    assert_eq!(service_flow["destination_service"]["name"], "web");

    // The cross-node connection is seen by both nodes.
    let nodes: std::collections::BTreeSet<&str> = flows
        .iter()
        .filter(|f| {
            pod_of(&f["destination"]) == format!("svc-demo/{remote_web}")
                && !f["Summary"].as_str().unwrap_or("").contains("via")
        })
        .filter_map(|f| f["node_name"].as_str())
        .collect();
    if nodes.len() != 2 {
        let all = ok(&weir, &["observe", "--server", &relay, "--last", "1000"]);
        panic!("client -> {remote_web} on both nodes: {nodes:?}\nall flows:\n{all}");
    }

    // The rejected connection: DROPPED with Hubble's reason, from either
    // client (hubble and weir) asking for drops only.
    let drops = hubble_flows(&hubble, &relay, &["--verdict", "DROPPED"]);
    let drop = drops
        .iter()
        .find(|f| f["destination_service"]["name"] == "empty")
        .unwrap_or_else(|| panic!("no drop to the empty service: {drops:#?}"));
    assert_eq!(drop["drop_reason_desc"], "SERVICE_BACKEND_NOT_FOUND");
    assert_eq!(pod_of(&drop["source"]), "svc-demo/client");
    assert!(drops.iter().all(|f| f["verdict"] == "DROPPED"));

    let weir_drops = json_lines(&ok(
        &weir,
        &[
            "observe",
            "--server",
            &relay,
            "--verdict",
            "DROPPED",
            "-o",
            "json",
            "--last",
            "100",
        ],
    ));
    let d = weir_drops
        .iter()
        .find(|f| f["destination_service"]["name"] == "empty")
        .expect("weir observe shows the drop");
    assert_eq!(d["drop_reason"], "no_service_backend");
    assert!(
        d["drop_reason_text"]
            .as_str()
            .unwrap_or("")
            .contains("no usable backend")
    );

    // weir observe's own record of the service connection: dialled VIP and
    // backend pod in one line.
    let weir_flows = json_lines(&ok(
        &weir,
        &[
            "observe",
            "--server",
            &relay,
            "--from-pod",
            "svc-demo/client",
            "--to-pod",
            "svc-demo/web",
            "-o",
            "json",
            "--last",
            "100",
        ],
    ));
    let start = weir_flows
        .iter()
        .find(|f| f["event"] == "flow-start" && f["dialled"]["ip"] == vip.as_str())
        .unwrap_or_else(|| {
            let all = ok(&weir, &["observe", "--server", &relay, "--last", "1000"]);
            panic!(
                "no flow-start with the VIP {vip}: {weir_flows:#?}\nall flows:\n{all}\n{}",
                lab.logs()
            )
        });
    assert_eq!(start["dialled"]["port"], 80);
    assert!(pod_of(&start["destination"]).starts_with("svc-demo/web-"));
    assert_eq!(start["backend"]["ip"], start["IP"]["destination"]);
    assert!(
        weir_flows
            .iter()
            .all(|f| pod_of(&f["source"]) == "svc-demo/client" || pod_of(&f["destination"]) == "svc-demo/client")
    );

    // The compact line, and a closed pipe ends it quietly.
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "{} observe --server {relay} --last 50 | head -1",
            weir.display()
        ))
        .output()
        .expect("sh");
    assert!(out.status.success() && out.stderr.is_empty(), "{}", show(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1);

    // Status: an agent, the relay (both nodes connected).
    let agent = unix(&agent_socket(&lab, &client_node));
    for server in [&agent, &relay] {
        let status = ok(&hubble, &["status", "--server", server]);
        assert!(status.contains("Healthcheck") && status.contains("Ok"), "{status}");
    }
    assert!(ok(&hubble, &["status", "--server", &relay]).contains("Connected Nodes: 2/2"));
    assert!(ok(&weir, &["status", "--server", &relay]).contains("2 connected, 0 unavailable"));
    let nodes = ok(&hubble, &["list", "nodes", "--server", &relay]);
    assert!(nodes.contains("Connected") && nodes.lines().count() == 3, "{nodes}");

    // grpcurl: reflection lists the Observer; ServerStatus answers; a bad
    // filter is INVALID_ARGUMENT with its reason.
    // (grpcurl 1.9.3's -unix flag still dials TCP; its unix:// form works.)
    let sock = unix(&agent_socket(&lab, &client_node));
    let sock = sock.as_str();
    let services = ok(&grpcurl, &["-plaintext", sock, "list"]);
    assert!(services.contains("observer.Observer"), "{services}");
    let status: Value = serde_json::from_str(&ok(
        &grpcurl,
        &["-plaintext", "-unix", sock, "observer.Observer/ServerStatus"],
    ))
    .expect("json");
    assert!(
        status["seenFlows"]
            .as_str()
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(0)
            > 0,
        "{status}"
    );
    let bad = run(
        &grpcurl,
        &[
            "-plaintext",
            "-unix",
            "-d",
            r#"{"whitelist":[{"source_ip":["not-an-ip"]}]}"#,
            sock,
            "observer.Observer/GetFlows",
        ],
    );
    let said = String::from_utf8_lossy(&bad.stderr);
    assert!(
        !bad.status.success() && said.contains("InvalidArgument") && said.contains("source_ip"),
        "{}",
        show(&bad)
    );
    let bad = run(&hubble, &["observe", "--server", &relay, "--http-method", "GET"]);
    assert!(
        !bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("L7"),
        "{}",
        show(&bad)
    );
}

/// The agent's pid from the lab's state.
fn agent_pid(lab: &Lab, node: &str) -> i32 {
    let state: Value =
        serde_json::from_str(&std::fs::read_to_string(lab.dir.join("lab.json")).expect("lab.json")).expect("json");
    state["nodes"][node]["agent"]["pid"].as_i64().expect("agent pid") as i32
}

#[test]
fn the_relay_reports_a_hung_node_keeps_streaming_the_others_and_rejoins_it() {
    if !privileged() {
        return;
    }
    let weir = weir_test_support::bin("weir");
    let lab = demo_lab("fr", "172.31.249.0/24");
    let relay = unix(&relay_socket(&lab));
    let vip = cluster_ip(&lab, "svc-demo/web");
    probe_until_connected(&lab, "svc-demo/client", &format!("{vip}:80/tcp"));
    let client_node = lab.json(&["get", "pod", "svc-demo/client"])["spec"]["nodeName"]
        .as_str()
        .expect("node")
        .to_owned();
    let other = if client_node == "a" { "b" } else { "a" };

    // A follower through the relay, started before the trouble; what it
    // prints is read as it comes.
    let mut follow = Command::new(&weir)
        .args([
            "observe",
            "--server",
            &relay,
            "--follow",
            "--from-pod",
            "svc-demo/client",
            "-o",
            "json",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("weir observe --follow");
    let lines = |r: Box<dyn std::io::Read + Send>| {
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        std::thread::spawn(move || {
            use std::io::BufRead as _;
            for l in std::io::BufReader::new(r).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    return;
                }
            }
        });
        rx
    };
    let flows_rx = lines(Box::new(follow.stdout.take().expect("stdout")));
    let notes_rx = lines(Box::new(follow.stderr.take().expect("stderr")));
    struct KillOnDrop(std::process::Child);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _follow = KillOnDrop(follow);
    let wait_for = |rx: &std::sync::mpsc::Receiver<String>, what: &str, seen: &mut Vec<String>| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(l) = rx.recv_timeout(Duration::from_millis(200)) {
                let hit = l.contains(what);
                seen.push(l);
                if hit {
                    return;
                }
            }
        }
        panic!("never saw {what:?}; saw {seen:#?}");
    };
    std::thread::sleep(Duration::from_millis(500));

    // The other node's agent hangs (SIGSTOP): the relay's deadlines notice,
    // and the follower is told.
    let pid = nix::unistd::Pid::from_raw(agent_pid(&lab, other));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).expect("SIGSTOP");
    let resume = Resume(pid);
    let mut notes = Vec::new();
    wait_for(&notes_rx, &format!("node {other}: NODE_UNAVAILABLE"), &mut notes);
    let status = ok(&weir, &["status", "--server", &relay]);
    assert!(
        status.contains("1 connected, 1 unavailable") && status.contains(other),
        "{status}"
    );

    // The client's node still streams: a new connection shows up.
    while flows_rx.try_recv().is_ok() {}
    lab.ok(&[
        "probe",
        "svc-demo/client",
        "external:5353/udp",
        "--source-port",
        "40999",
    ]);
    let mut seen = Vec::new();
    wait_for(&flows_rx, "40999", &mut seen);
    assert!(
        seen.last()
            .is_some_and(|l| l.contains(&format!("\"node_name\":\"{client_node}\""))),
        "{seen:#?}"
    );

    // The node comes back: rejoined, and the follower is told.
    drop(resume);
    wait_for(&notes_rx, &format!("node {other}: NODE_CONNECTED"), &mut notes);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = String::from_utf8_lossy(&run(&weir, &["status", "--server", &relay]).stdout).into_owned();
        if s.contains("2 connected, 0 unavailable") {
            break;
        }
        assert!(Instant::now() < deadline, "relay never rejoined {other}: {s}");
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// SIGCONT on drop, so a failing test does not leave a stopped agent.
struct Resume(nix::unistd::Pid);
impl Drop for Resume {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(self.0, nix::sys::signal::Signal::SIGCONT);
    }
}

#[test]
fn tracing_a_pod_at_run_time_reports_every_packet() {
    if !privileged() {
        return;
    }
    let weir = weir_test_support::bin("weir");
    let lab = demo_lab("ft", "172.31.249.0/24");
    let relay = unix(&relay_socket(&lab));
    let external = "external:5353/udp";
    probe_until_connected(&lab, "svc-demo/client", external);
    let traces = || {
        json_lines(&ok(
            &weir,
            &[
                "observe", "--server", &relay, "--type", "packet", "--last", "1000", "-o", "json",
            ],
        ))
    };
    let before = traces();
    assert!(before.is_empty(), "nothing traced by default: {before:#?}");
    lab.ok(&["trace", "svc-demo/client"]);
    for _ in 0..3 {
        lab.ok(&["probe", "svc-demo/client", external, "--source-port", "40404"]);
    }
    std::thread::sleep(Duration::from_millis(300));
    let t = traces();
    let out: Vec<&Value> = t
        .iter()
        .filter(|f| f["l4"]["source_port"] == 40404 && f["event"] == "trace")
        .collect();
    assert!(out.len() >= 3, "every datagram out of the traced pod: {t:#?}");
    lab.ok(&["trace", "svc-demo/client", "--off"]);
    let traced = traces().len();
    lab.ok(&["probe", "svc-demo/client", external, "--source-port", "40404"]);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(traces().len(), traced, "off again: no new trace flows");
}

#[test]
fn prometheus_scrapes_an_agent_and_its_counters_count_real_traffic() {
    if !privileged() {
        return;
    }
    let (Some(prometheus), Some(promtool)) = (tool("prometheus"), tool("promtool")) else {
        return;
    };
    let lab = demo_lab("fp", "172.31.249.0/24");
    let vip = cluster_ip(&lab, "svc-demo/web");
    let empty = cluster_ip(&lab, "svc-demo/empty");
    let client_node = lab.json(&["get", "pod", "svc-demo/client"])["spec"]["nodeName"]
        .as_str()
        .expect("node")
        .to_owned();
    let ns = format!("{}-{client_node}", lab.name);
    // A real Prometheus in the client's node netns, scraping its agent on
    // loopback every second.
    let data = lab.work.join("prometheus");
    std::fs::create_dir_all(&data).expect("prometheus dir");
    let config = lab.file(
        "prometheus.yml",
        "global: {scrape_interval: 1s}\nscrape_configs:\n  - job_name: weir-agent\n    static_configs: [{targets: ['127.0.0.1:9962']}]\n",
    );
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let server_guard = Kill(
        Command::new("ip")
            .args(["netns", "exec", &ns])
            .arg(&prometheus)
            .arg(format!("--config.file={config}"))
            .arg(format!("--storage.tsdb.path={}", data.display()))
            .arg("--web.listen-address=127.0.0.1:9090")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(lab.work.join("prometheus.log")).expect("log"))
            .spawn()
            .expect("starting prometheus"),
    );

    probe_until_connected(&lab, "svc-demo/client", &format!("{vip}:80/tcp"));
    for _ in 0..5 {
        lab.ok(&["probe", "svc-demo/client", &format!("{vip}:80/tcp")]);
    }
    let _ = lab.cmd(&["probe", "svc-demo/client", &format!("{empty}:80/tcp")]);

    // The raw exposition passes promtool.
    let metrics = Command::new("ip")
        .args(["netns", "exec", &ns, "curl", "-sf", "http://127.0.0.1:9962/metrics"])
        .output()
        .expect("curl");
    assert!(metrics.status.success(), "{}", show(&metrics));
    let mut check = Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool");
    use std::io::Write as _;
    check
        .stdin
        .take()
        .expect("stdin")
        .write_all(&metrics.stdout)
        .expect("feeding promtool");
    let checked = check.wait_with_output().expect("promtool");
    assert!(checked.status.success(), "promtool check metrics: {}", show(&checked));

    // Queried back from Prometheus once it has scraped after the traffic.
    let query = |q: &str| -> f64 {
        let out = Command::new("ip")
            .args(["netns", "exec", &ns, "curl", "-sf", "-G", "--data-urlencode"])
            .arg(format!("query={q}"))
            .arg("http://127.0.0.1:9090/api/v1/query")
            .output()
            .expect("curl");
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        v["data"]["result"][0]["value"][1]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0.0)
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let want = [
        r#"sum(weir_pod_bytes_total{namespace="svc-demo",pod="client",direction="sent"})"#,
        r#"sum(weir_drop_count_total{reason="no_service_backend"})"#,
        r#"sum(hubble_flows_processed_total{verdict="FORWARDED"})"#,
        r#"sum(weir_workload_connections_total{source_workload="client",destination_workload="web"})"#,
        r#"sum(weir_tcp_handshake_seconds_count{destination_workload="web"})"#,
        // The pods' ADDs, timed by phase.
        r#"sum(weir_cni_add_phase_duration_seconds_count{phase="datapath"})"#,
        // Every controller of the supervisor runs.
        r#"min(weir_controller_up)"#,
        r#"count(weir_controller_up{controller=~"routing|ipcache|identities|policy|services|cluster-source"})"#,
    ];
    let mut last = Vec::new();
    while Instant::now() < deadline {
        last = want.iter().map(|q| query(q)).collect();
        if last.iter().all(|v| *v > 0.0) {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let log = std::fs::read_to_string(lab.work.join("prometheus.log")).unwrap_or_default();
    for (q, v) in want.iter().zip(&last) {
        assert!(*v > 0.0, "{q} = {v} in Prometheus\nprometheus log:\n{log}");
    }
    // At least the bytes of six connections' requests (the probe's line).
    assert!(last[0] >= 6.0 * 60.0, "client sent {} bytes", last[0]);
    assert_eq!(last[7], 6.0, "six controllers under the supervisor");
    let healthz = Command::new("ip")
        .args(["netns", "exec", &ns, "curl", "-s", "http://127.0.0.1:9962/healthz"])
        .output()
        .expect("curl");
    assert_eq!(String::from_utf8_lossy(&healthz.stdout), "ok\n");
    drop(server_guard);
}
