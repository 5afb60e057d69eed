//! `weir lab ...` is the `weir-lab` binary behind the user's `weir`: the
//! arguments (flags included) reach it unchanged, and so does its exit code.

use std::path::Path;
use std::process::Command;

fn weir() -> &'static str {
    env!("CARGO_BIN_EXE_weir")
}

fn lab_built() -> bool {
    let beside = Path::new(weir()).with_file_name("weir-lab");
    assert!(
        beside.is_file(),
        "{} missing: build the workspace first (cargo build --workspace)",
        beside.display()
    );
    true
}

#[test]
fn weir_lab_passes_arguments_and_exit_code_through() {
    assert!(lab_built());
    let help = Command::new(weir()).args(["lab", "--help"]).output().unwrap();
    assert!(help.status.success(), "{help:?}");
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(text.contains("weir lab") && text.contains("probe"), "{text}");

    let bad = Command::new(weir())
        .args(["lab", "probe", "--timeout", "0.1", "no-such/pod", "not-a-target"])
        .env("WEIR_LAB_DIR", std::env::temp_dir().join("weir-dispatch-test-no-lab"))
        .output()
        .unwrap();
    assert!(
        !bad.status.success(),
        "a failing lab command fails through weir: {bad:?}"
    );
}
