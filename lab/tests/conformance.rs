//! Kubernetes' own e2e suite judges weir in CI: `scripts/conformance.sh
//! --suite ci` (a fresh lab of two real nodes, weir installed with
//! `kubectl apply -f install/weir.yaml`, then the upstream `e2e.test` with
//! a focus on a few `[sig-network] ... [Conformance]` tests, each a
//! different part of the datapath). The full runs, with every test's
//! outcome, are in docs/conformance.md.
use std::process::Command;

fn repo() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn upstream_sig_network_conformance_subset_passes_on_weir() {
    if !weir_test_support::require_root() {
        return;
    }
    weir_test_support::tool("e2e.test").expect("e2e.test is built by scripts/tools.sh");
    let report = std::env::temp_dir().join(format!("weir-conformance-ci-{}", std::process::id()));
    let out = Command::new("bash")
        .arg(repo().join("scripts/conformance.sh"))
        .args(["--suite", "ci", "--no-build", "--report"])
        .arg(&report)
        .current_dir(repo())
        .output()
        .expect("scripts/conformance.sh");
    let results = std::fs::read_to_string(report.join("results.md")).unwrap_or_default();
    let log = std::fs::read_to_string(report.join("e2e.log")).unwrap_or_default();
    let tail: String = log
        .lines()
        .rev()
        .take(80)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        out.status.success(),
        "{}\n{}\n{results}\n--- e2e.log (end):\n{tail}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let head = results.lines().next().unwrap_or_default().to_owned();
    assert!(head.contains(" 0 failed"), "{results}");
    // Every focused test ran and passed: none skipped, none missing.
    let passed: usize = head
        .split("`: ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(passed >= 8, "{results}");
    assert!(head.contains(" 0 skipped"), "{results}");
    let _ = std::fs::remove_dir_all(&report);
}
