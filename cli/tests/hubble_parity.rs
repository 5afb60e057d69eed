//! `weir observe`'s filter flags mean what `hubble observe`'s mean: for each
//! command line below, both CLIs print the filters they would send
//! (`--print-raw-filters`, which connects to nothing) and the allow and
//! deny lists must be the same, filter for filter; a line one CLI refuses,
//! the other refuses too. (weir takes a little more: `--type packet`, and
//! verdicts in any case; and a little less: an `--allowlist` filter with a
//! key FlowFilter does not have is refused, where hubble drops the key and
//! so allows everything.) The stock `hubble` binary comes from
//! `scripts/tools.sh`'s cache (a missing one fails under `CI=true`).

use std::path::Path;
use std::process::Command;

use serde_json::Value;

/// What one CLI printed: (allowlist, denylist), or the error it gave.
fn raw_filters(bin: &Path, flags: &[&str]) -> Result<(Vec<Value>, Vec<Value>), String> {
    let out = Command::new(bin)
        .args(["observe", "--print-raw-filters"])
        .args(flags)
        .output()
        .expect("running the CLI");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Err(format!("{text}{}", String::from_utf8_lossy(&out.stderr)));
    }
    let (mut allow, mut deny) = (Vec::new(), Vec::new());
    let mut list = None;
    for line in text.lines() {
        match line.trim_end() {
            "{}" => {}
            "allowlist:" => list = Some(&mut allow),
            "denylist:" => list = Some(&mut deny),
            item => {
                let json = item
                    .trim_start()
                    .strip_prefix("- '")
                    .and_then(|s| s.strip_suffix('\''))
                    .unwrap_or_else(|| panic!("{}: unexpected line {item:?} in\n{text}", bin.display()));
                let value: Value = serde_json::from_str(&json.replace("''", "'")).expect("a JSON filter");
                list.as_mut().expect("a list heading first").push(value);
            }
        }
    }
    Ok((allow, deny))
}

/// Command lines users type, from hubble's own examples and tests.
const LINES: &[&[&str]] = &[
    &[],
    &["--pod", "shop/client"],
    &["--pod", "client"],
    &["--from-pod", "shop/client", "--to-pod", "shop/web", "--port", "80"],
    &["--pod", "shop/client", "--port", "80", "--not", "--verdict", "DROPPED"],
    &["-n", "shop"],
    &["-n", "shop", "--pod", "web"],
    &["-n", "shop", "-n", "db", "--service", "web", "--service", "api"],
    &["--namespace", "shop", "--port", "443"],
    &["--from-namespace", "shop", "--from-port", "443"],
    &["--to-namespace", "shop"],
    &["--from-namespace", "kube-system", "--to-pod", "shop/web"],
    &["-A", "--pod", "web"],
    &["--to-all-namespaces", "--port", "443"],
    &[
        "--ip",
        "10.0.0.1",
        "--ip",
        "10.0.0.0/24",
        "--verdict",
        "DROPPED",
        "--node-name",
        "node-*",
    ],
    &["--ip", "10.0.0.1", "--label", "app=web"],
    &[
        "--from-ip",
        "10.0.0.1",
        "--not",
        "--to-ip",
        "10.0.0.2",
        "--verdict",
        "DROPPED",
        "-t",
        "drop",
    ],
    &["--not", "--pod", "shop/x", "--not", "--protocol", "udp"],
    &["--from-label", "app=web,tier=front", "--to-label", "app=db"],
    &["-l", "app=web", "--protocol", "tcp", "--protocol", "udp"],
    &["--from-service", "shop/web", "--to-service", "shop/db"],
    &["--identity", "world"],
    &["--from-identity", "remote-node", "--to-identity", "12345"],
    &["--workload", "web", "--from-workload", "Deployment/"],
    &["--to-workload", "Deployment/web"],
    &[
        "--type",
        "trace:to-endpoint",
        "--type",
        "drop",
        "--type",
        "policy-verdict",
    ],
    &["--type", "trace:from-network", "--type", "4:3", "--type", "capture"],
    &["--verdict", "FORWARDED", "--verdict", "AUDIT"],
    &[
        "--tcp-flags",
        "syn,ack",
        "--tcp-flags",
        "fin",
        "--traffic-direction",
        "ingress",
        "-4",
    ],
    &[
        "--ip-version",
        "v6",
        "--traffic-direction",
        "EGRESS",
        "--snat-ip",
        "10.0.0.1",
    ],
    &[
        "-6",
        "-4",
        "--drop-reason-desc",
        "POLICY_DENIED",
        "--interface",
        "eth0",
        "--node-label",
        "a=b",
    ],
    &[
        "--uuid",
        "u1",
        "--trace-id",
        "t1",
        "--http-status",
        "200",
        "--http-method",
        "get",
        "--http-path",
        "/x",
    ],
    &["--fqdn", "x.example", "--from-cluster", "c1", "--to-cluster", "c2"],
    &["--from-fqdn", "x.example", "--to-pod", "shop/web"],
    &["--not", "--tcp-flags", "rst", "--cluster", "default"],
    &["--fqdn", "x.example", "--pod", "shop/web"],
    &["--tcp-flags", "syn,bogus"],
    // Refused by both.
    &["-n", "shop", "--ip", "10.0.0.1"],
    &["--port", "80", "--to-port", "81"],
    &["--to-namespace", "a", "--to-pod", "b/x"],
    &["--not", "--not", "--pod", "x"],
    &["--pod", "x", "--not"],
    &["--type", "parcel"],
    &["--identity", "nobody"],
    &["--verdict", "MAYBE"],
    &["--first", "5", "--last", "5"],
    // Raw filters: JSON FlowFilters, after the flags' own.
    &["--allowlist", r#"{"source_pod":["shop/"],"verdict":[2]}"#],
    &[
        "--pod",
        "shop/web",
        "--allowlist",
        r#"{"destination_port":["53"]} {"source_label":["k8s:app=x"]}"#,
    ],
    &[
        "--denylist",
        r#"{"tcp_flags":[{"SYN":true}],"destination_workload":[{"name":"web"}]}"#,
    ],
    &["--allowlist", r#"{"verdict":2}"#],
];

#[test]
fn the_same_flags_make_the_same_filters_as_hubble_observe() {
    let Some(hubble) = weir_test_support::tool("hubble") else {
        return;
    };
    let weir = Path::new(env!("CARGO_BIN_EXE_weir"));
    let mut differ = Vec::new();
    for line in LINES {
        let theirs = raw_filters(&hubble, line);
        let ours = raw_filters(weir, line);
        match (&theirs, &ours) {
            (Ok(t), Ok(o)) if t == o => {}
            (Err(_), Err(_)) => {}
            _ => differ.push(format!("{line:?}\n  hubble: {theirs:?}\n  weir:   {ours:?}")),
        }
    }
    assert!(
        differ.is_empty(),
        "{} of {} lines differ:\n{}",
        differ.len(),
        LINES.len(),
        differ.join("\n")
    );
}
