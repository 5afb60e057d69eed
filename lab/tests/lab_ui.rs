//! The service map in a real browser: the two-node demo lab with its
//! policy, real traffic, and headless Chromium (Debian's, driven over
//! WebDriver) on the page the relay serves. The map shows the demo's
//! workloads and edges, the intruder's denied edge names the policy,
//! clicking it shows the drop in the flow table, and the copied
//! `weir observe` command selects the same drop; a policy change pasted
//! into the map's check is judged as `weir policy check` judges it. Needs root, the
//! workspace built, and chromium + chromium-driver (CI=true fails
//! without them).

use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};

mod support;
use support::{cluster_ip, demo_lab, privileged, show};
use weir_test_support::browser::Browser;

const WAIT: Duration = Duration::from_secs(20);

/// The page's text of an element, if it is there.
fn text_of(b: &Browser, css: &str) -> Option<String> {
    b.eval(
        "const e = document.querySelector(arguments[0]); return e ? e.textContent : null;",
        json!([css]),
    )
    .as_str()
    .map(str::to_owned)
}

#[test]
fn the_service_map_shows_the_demo_and_the_denied_edge_names_its_policy() {
    if !privileged() {
        return;
    }
    let Some(browser) = Browser::start(1600, 1000) else {
        return;
    };
    let lab = demo_lab("ui", "172.31.245.0/24");
    lab.ok(&["apply", &format!("{}/demo/policy.yaml", env!("CARGO_MANIFEST_DIR"))]);
    let vip = cluster_ip(&lab, "svc-demo/web");
    let target = format!("{vip}:80/tcp");
    // The client reaches web until the policy is in place everywhere; the
    // intruder is refused.
    let deadline = std::time::Instant::now() + WAIT;
    while !lab
        .cmd(&["probe", "svc-demo/client", &target, "--timeout", "1"])
        .status
        .success()
    {
        assert!(std::time::Instant::now() < deadline, "the client never reached web");
    }
    for _ in 0..3 {
        lab.ok(&["probe", "svc-demo/client", &target, "--timeout", "1"]);
        let out = lab.cmd(&["probe", "svc-demo/intruder", &target, "--timeout", "1"]);
        assert!(!out.status.success(), "the intruder reached web: {}", show(&out));
    }

    let status = lab.json(&["status"]);
    let url = status["access"]["serviceMap"]
        .as_str()
        .unwrap_or_else(|| panic!("no service map in lab status: {status}"))
        .to_owned();
    assert!(url.starts_with("http://127.0.0.1:"), "the map is on loopback: {url}");
    browser.goto(&url);

    // The workloads: web (a Deployment), the client and the intruder (pods
    // named by their app label), and the edges between them.
    for node in ["svc-demo/web", "svc-demo/client", "svc-demo/intruder"] {
        browser.wait(&format!("node {node} on the map"), WAIT, |b| {
            b.find(&format!(r#"g.node[data-id="{node}"]"#))
        });
    }
    // The client's calls: answered connections, with the handshake's
    // latency on the edge (rates fade after 10 s; the totals stay).
    let ok_edge = r#"g.edge.ok[data-id="svc-demo/client>svc-demo/web"]"#;
    let title = browser.wait("the client's answered connections to web", WAIT, |b| {
        text_of(b, &format!("{ok_edge} title")).filter(|t| !t.contains(" 0 answered") && t.contains("answered"))
    });
    let label = text_of(&browser, &format!("{ok_edge} text")).unwrap_or_default();
    assert!(
        label.contains("p50") && label.contains("ms"),
        "handshake latency on the edge: {label} ({title})"
    );
    let denied = r#"g.edge.denied[data-id="svc-demo/intruder>svc-demo/web"]"#;
    let said = browser.wait("the intruder's denied edge", WAIT, |b| {
        text_of(b, &format!("{denied} text"))
    });
    assert!(
        said.contains("denied by") && said.contains("web-from-client") && said.contains("policy_denied"),
        "the denied edge names the policy and the reason: {said}"
    );
    assert!(
        browser
            .find(r#"g.edge.ok[data-id="svc-demo/intruder>svc-demo/web"]"#)
            .is_none(),
        "nothing of the intruder's was forwarded"
    );

    // Click the denied edge (its label: a real pointer click on the page):
    // the flow table shows the drop, live.
    // The map redraws when traffic changes it: find and click again if
    // the element was replaced in between.
    browser.wait("a click on the denied edge", WAIT, |b| {
        b.find(&format!("{denied} text")).and_then(|e| e.click().ok())
    });
    let row_text = browser.wait("the drop in the flow table", WAIT, |b| {
        b.find(r#"#flows tr.flow[data-verdict="DROPPED"][data-source="svc-demo/intruder"]"#)
            .and_then(|r| r.text().ok())
    });
    assert!(row_text.contains("policy_denied"), "the row says why: {row_text}");
    let command = text_of(&browser, "#command").expect("the command");
    assert!(
        command.starts_with("weir observe --from-namespace svc-demo --from-label app=intruder"),
        "{command}"
    );
    let flags: Vec<(String, String)> = serde_json::from_str(
        browser
            .eval("return document.getElementById('command').dataset.flags;", json!([]))
            .as_str()
            .expect("the command's flags"),
    )
    .expect("flags as JSON");

    // The same flags through `weir observe` against the relay: the same drop.
    let relay = format!("unix://{}", lab.dir.join("run/relay.sock").display());
    let mut cmd = Command::new(weir_test_support::bin("weir"));
    cmd.args(["observe", "--server", &relay, "-o", "json", "--last", "100"]);
    for (f, v) in &flags {
        cmd.arg(format!("--{f}")).arg(v);
    }
    let out = cmd.output().expect("running weir observe");
    assert!(out.status.success(), "{}", show(&out));
    let flows: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert!(!flows.is_empty(), "weir observe {flags:?} found nothing");
    for f in &flows {
        let f = f.get("flow").unwrap_or(f);
        assert_eq!(f["verdict"], "DROPPED", "{f}");
        assert_eq!(f["source"]["pod_name"], "intruder", "{f}");
    }

    // The same traffic aggregated by `weir observe --aggregate-by`: the
    // pairs the map draws, counted as it counts them.
    let out = Command::new(weir_test_support::bin("weir"))
        .args(["observe", "--server", &relay, "-o", "json"])
        .args(["--aggregate-by", "source-workload,destination-workload,verdict"])
        .output()
        .expect("running weir observe --aggregate-by");
    assert!(out.status.success(), "{}", show(&out));
    let groups: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON group"))
        .collect();
    let group = |from: &str, to: &str, verdict: &str| {
        groups
            .iter()
            .find(|g| g["source-workload"] == from && g["destination-workload"] == to && g["verdict"] == verdict)
            .unwrap_or_else(|| panic!("no group {from} -> {to} {verdict} in {groups:?}"))
    };
    let denied = group("svc-demo/intruder", "svc-demo/web", "DROPPED");
    assert!(denied["dropped"].as_u64() >= Some(3), "{denied}");
    let served = group("svc-demo/client", "svc-demo/web", "FORWARDED");
    assert!(served["answered"].as_u64() >= Some(3), "{served}");
    assert!(served["reply_bytes"].as_u64() > Some(0), "{served}");

    // `-o jsonpb`: the same flows print as the stock hubble CLI prints
    // them (weir's own details, which hubble does not know, aside). A
    // fixed end keeps both reads to the same flows.
    let until = weir_proto::time::protojson(&weir_proto::time::to_timestamp(
        std::time::SystemTime::now() - Duration::from_secs(1),
    ));
    let read = |program: std::path::PathBuf| -> Vec<String> {
        let out = Command::new(program)
            .args([
                "observe", "--server", &relay, "-o", "jsonpb", "--all", "--until", &until,
            ])
            .output()
            .expect("observe -o jsonpb");
        assert!(out.status.success(), "{}", show(&out));
        let mut lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| {
                let mut v: Value = serde_json::from_str(l).expect("jsonpb");
                if let Some(f) = v["flow"].as_object_mut() {
                    f.remove("weir");
                }
                v.to_string()
            })
            .collect();
        lines.sort();
        lines
    };
    let hubble = weir_test_support::tool("hubble").expect("hubble is built by scripts/tools.sh");
    let (ours, theirs) = (read(weir_test_support::bin("weir")), read(hubble.clone()));
    assert!(ours.len() >= 10, "{ours:?}");
    assert_eq!(ours, theirs, "weir observe -o jsonpb prints what hubble prints");

    // The stock hubble CLI's field mask, applied by the agents: only the
    // fields asked for come back.
    let out = Command::new(hubble)
        .args(["observe", "--server", &relay, "-o", "jsonpb", "--last", "5"])
        .args(["--field-mask", "time,verdict,source.pod_name"])
        .output()
        .expect("hubble observe");
    assert!(out.status.success(), "{}", show(&out));
    let masked: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("jsonpb"))
        .collect();
    assert!(!masked.is_empty());
    for m in &masked {
        let flow = m["flow"].as_object().expect("a flow");
        let keys: Vec<&str> = flow.keys().map(String::as_str).collect();
        assert!(keys.iter().all(|k| ["time", "verdict", "source"].contains(k)), "{m}");
        let source: Vec<&str> = flow
            .get("source")
            .and_then(Value::as_object)
            .map_or(Vec::new(), |o| o.keys().map(String::as_str).collect());
        assert!(source.iter().all(|k| *k == "pod_name"), "{m}");
    }

    let png = browser.screenshot();
    assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
    let shot = std::env::var_os("WEIR_SCREENSHOT").map_or_else(
        || std::env::temp_dir().join(format!("weir-service-map-{}.png", std::process::id())),
        std::path::PathBuf::from,
    );
    std::fs::write(&shot, &png).expect("writing the screenshot");
    eprintln!("screenshot: {}", shot.display());
}

/// `weir lab ARGS` through the `weir` CLI, which serves `lab policy`
/// itself (the lab's manifests and relay) and hands the rest to weir-lab.
fn weir_lab(lab: &support::Lab, args: &[&str]) -> std::process::Output {
    Command::new(weir_test_support::bin("weir"))
        .arg("lab")
        .args(args)
        .env("WEIR_LAB_DIR", &lab.dir)
        .output()
        .expect("running weir lab")
}

fn ok(out: std::process::Output) -> String {
    assert!(out.status.success(), "{}", show(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

const CUT_CLIENT_OFF: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: web-from-client
  namespace: svc-demo
spec:
  podSelector:
    matchLabels:
      app: web
  ingress:
    - from:
        - podSelector:
            matchLabels:
              app: client
      ports:
        - port: dns
          protocol: UDP
"#;

/// `weir lab policy check`: a change that would cut the client off from
/// web's port 80 (keeping DNS) is reported from the recorded flows before
/// it is applied; applied, it drops exactly the connections it named, and
/// the rest keeps working. A malformed change is refused with its reason.
#[test]
fn policy_check_reports_what_a_change_would_cut_and_applying_it_cuts_exactly_that() {
    if !privileged() {
        return;
    }
    let lab = demo_lab("pc", "172.31.243.0/24");
    lab.ok(&["apply", &format!("{}/demo/policy.yaml", env!("CARGO_MANIFEST_DIR"))]);
    let vip = cluster_ip(&lab, "svc-demo/web");
    let (http, dns) = (format!("{vip}:80/tcp"), format!("{vip}:53/udp"));
    let deadline = std::time::Instant::now() + WAIT;
    while !lab
        .cmd(&["probe", "svc-demo/client", &http, "--timeout", "1"])
        .status
        .success()
    {
        assert!(std::time::Instant::now() < deadline, "the client never reached web");
    }
    for _ in 0..3 {
        lab.ok(&["probe", "svc-demo/client", &http, "--timeout", "1"]);
        lab.ok(&["probe", "svc-demo/client", &dns, "--timeout", "1"]);
        assert!(
            !lab.cmd(&["probe", "svc-demo/intruder", &http, "--timeout", "1"])
                .status
                .success()
        );
    }
    let change = lab.file("cut.yaml", CUT_CLIENT_OFF);
    let predicted: Vec<Value> = ok(weir_lab(&lab, &["policy", "check", "-f", &change, "-o", "json"]))
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON group"))
        .collect();
    assert_eq!(predicted.len(), 1, "one pair changes: {predicted:?}");
    let g = &predicted[0];
    assert_eq!(
        (&g["client"], &g["server"], &g["port"], &g["now"], &g["after"]),
        (
            &json!("svc-demo/client"),
            &json!("svc-demo/web"),
            &json!("80/TCP"),
            &json!("allowed"),
            &json!("denied")
        ),
        "{g}"
    );
    assert!(g["connections"].as_u64() >= Some(3), "{g}");
    assert_eq!(
        g["rule_after"], "NetworkPolicy svc-demo/web-from-client default deny (ingress isolated)",
        "{g}"
    );
    let table = ok(weir_lab(&lab, &["policy", "check", "-f", &change]));
    assert!(
        table.contains("svc-demo/client → svc-demo/web 80/TCP: allowed → denied"),
        "{table}"
    );

    // The same check on the service map: pasted, judged by the relay,
    // listed, and the client's edge to web marked as one it would cut.
    if let Some(browser) = Browser::start(1400, 900) {
        let status = lab.json(&["status"]);
        let url = status["access"]["serviceMap"]
            .as_str()
            .expect("the map's URL")
            .to_owned();
        browser.goto(&url);
        browser.wait("the map", WAIT, |b| b.find(r#"g.node[data-id="svc-demo/web"]"#));
        browser
            .find("#open-check")
            .expect("the policy check button")
            .click()
            .expect("click");
        browser.eval(
            "document.getElementById('change').value = arguments[0];",
            json!([CUT_CLIENT_OFF]),
        );
        browser.find("#run-check").expect("check").click().expect("click");
        let said = browser.wait("the check's result", WAIT, |b| {
            text_of(b, "#check-result").filter(|t| t.contains("svc-demo/client → svc-demo/web 80/TCP"))
        });
        assert!(said.contains("allowed → denied"), "{said}");
        assert!(
            said.contains("NetworkPolicy svc-demo/web-from-client default deny"),
            "{said}"
        );
        assert!(
            !said.contains("intruder"),
            "only the client's connections change: {said}"
        );
        browser.wait("the edge it would cut, marked", WAIT, |b| {
            b.find(r#"g.edge.would-deny[data-id="svc-demo/client>svc-demo/web"]"#)
        });
        // A malformed change is refused with its reason.
        browser.eval(
            "document.getElementById('change').value = arguments[0];",
            json!([
                "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: x}\nspec: {podSelector: 7}\n"
            ]),
        );
        browser.find("#run-check").expect("check").click().expect("click");
        browser.wait("the refusal", WAIT, |b| {
            text_of(b, "#check-status").filter(|t| t.starts_with("not checked: the change:"))
        });
    }

    // Nothing was applied by the check: the client still reaches web.
    lab.ok(&["probe", "svc-demo/client", &http, "--timeout", "1"]);
    let bad = lab.file(
        "bad.yaml",
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: x}\nspec: {podSelector: 7}\n",
    );
    let out = weir_lab(&lab, &["policy", "check", "-f", &bad]);
    assert!(!out.status.success(), "a malformed change is refused: {}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("bad.yaml"),
        "{}",
        show(&out)
    );

    // Applied: exactly the predicted pair is dropped, DNS still answers.
    // The window below reaches a second before the change (whole seconds):
    // the intruder's last refused SYN must be older than that.
    std::thread::sleep(Duration::from_secs(2));
    let applied_at = std::time::SystemTime::now();
    lab.ok(&["apply", &change]);
    let deadline = std::time::Instant::now() + WAIT;
    while lab
        .cmd(&["probe", "svc-demo/client", &http, "--timeout", "1"])
        .status
        .success()
    {
        assert!(std::time::Instant::now() < deadline, "the change never took effect");
    }
    lab.ok(&["probe", "svc-demo/client", &dns, "--timeout", "1"]);
    let since = format!("{}s", applied_at.elapsed().expect("time goes forward").as_secs() + 1);
    let relay = format!("unix://{}", lab.dir.join("run/relay.sock").display());
    let out = Command::new(weir_test_support::bin("weir"))
        .args([
            "observe",
            "--server",
            &relay,
            "-o",
            "json",
            "--since",
            &since,
            "--verdict",
            "DROPPED",
        ])
        .args(["--aggregate-by", "source-workload,destination-workload,port"])
        .output()
        .expect("weir observe");
    assert!(out.status.success(), "{}", show(&out));
    let dropped: Vec<(String, String, String)> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("a JSON group"))
        .map(|v| {
            let s = |k: &str| v[k].as_str().unwrap_or_default().to_owned();
            (s("source-workload"), s("destination-workload"), s("port"))
        })
        .collect();
    assert_eq!(
        dropped,
        [(
            "svc-demo/client".to_owned(),
            "svc-demo/web".to_owned(),
            "80/TCP".to_owned()
        )],
        "the drops since the change are the predicted ones"
    );
}
