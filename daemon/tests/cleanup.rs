//! `weir-agent cleanup` refuses to touch a node whose agent still runs:
//! cleaning under it would cut every pod off. (What it removes on a node
//! weir was uninstalled from: lab/tests/lab_install.rs, on real nodes.)
use std::os::unix::net::UnixListener;
use std::process::Command;

#[test]
fn cleanup_refuses_while_an_agent_answers_and_removes_nothing() {
    let dir = std::env::temp_dir().join(format!("weir-cleanup-refuses-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    for d in ["conf", "bin", "bpf/n1"] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    let kept = [
        dir.join("conf/05-weir.conflist"),
        dir.join("bin/weir-cni"),
        dir.join("bpf/n1/map"),
    ];
    for f in &kept {
        std::fs::write(f, "").unwrap();
    }
    let socket = dir.join("agent.sock");
    let _agent = UnixListener::bind(&socket).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_weir-agent"))
        .arg("cleanup")
        .arg("--node=n1")
        .arg(format!("--socket={}", socket.display()))
        .arg(format!("--bpffs-root={}", dir.join("bpf").display()))
        .arg(format!("--cni-conf-dir={}", dir.join("conf").display()))
        .arg(format!("--cni-bin-dir={}", dir.join("bin").display()))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("weir-agent still answers on") && err.contains("uninstall weir first"),
        "{err}"
    );
    for f in &kept {
        assert!(f.exists(), "{} removed", f.display());
    }
    let help = Command::new(env!("CARGO_BIN_EXE_weir-agent"))
        .args(["cleanup", "--help"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&help.stdout).contains("--stay"));
    std::fs::remove_dir_all(&dir).unwrap();
}
