//! What every privileged test of weir shares, in one place: the root check
//! that fails under `CI=true` instead of skipping ([`require_root`]),
//! network namespace guards that clean up on drop ([`netns`]), the
//! workspace's binaries ([`bin`]), and Ethernet/IPv4/L4 frames with valid
//! checksums for BPF_PROG_TEST_RUN ([`packet`]).

pub mod browser;
pub mod kube;
pub mod netns;
pub mod packet;

pub use netns::{NetNs, in_fresh_netns, in_netns, sh, unique};

use std::path::PathBuf;

/// Privileged tests need root. Under `CI=true` not being root is a failure,
/// never a silent pass; elsewhere the test prints why it skips.
pub fn require_root() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "CI=true but not root: privileged tests (network namespaces, eBPF) cannot run"
    );
    eprintln!("skipping: needs root (network namespaces, eBPF)");
    false
}

/// Where `cargo build --workspace` put the binaries (or `$WEIR_BIN_DIR`).
pub fn bin(name: &str) -> PathBuf {
    let dir = std::env::var_os("WEIR_BIN_DIR").map(PathBuf::from).unwrap_or_else(|| {
        let exe = std::env::current_exe().expect("current exe");
        // Tests live in target/<profile>/deps, binaries in target/<profile>.
        let dir = exe.parent().expect("exe has a directory");
        if dir.ends_with("deps") {
            dir.parent().expect("target/<profile>")
        } else {
            dir
        }
        .to_owned()
    });
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} not found: run `cargo build --workspace` first",
        path.display()
    );
    path
}

/// `scripts/tools.sh`'s cache (`$WEIR_TOOLS_DIR`, by default
/// `~/.cache/weir-tools`).
fn tools_cache() -> Option<PathBuf> {
    std::env::var_os("WEIR_TOOLS_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("weir-tools")))
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/weir-tools")))
}

/// A file `scripts/tools.sh` keeps in its cache (`policy-api/crd.yaml`,
/// upstream's ClusterNetworkPolicy CRD): `None` when missing (the caller
/// skips, saying so), except under `CI=true`, where it fails.
pub fn tools_file(rel: &str) -> Option<PathBuf> {
    let found = tools_cache().map(|c| c.join(rel)).filter(|p| p.exists());
    if found.is_none() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true but {rel} is missing from the tools cache: scripts/tools.sh writes it"
        );
        eprintln!("skipping: {rel} not in the tools cache (scripts/tools.sh writes it)");
    }
    found
}

/// A real client of the ecosystem (`hubble`, `grpcurl`) that
/// `scripts/tools.sh` built into its cache (`$WEIR_TOOLS_DIR/bin`, by
/// default `~/.cache/weir-tools/bin`), or a system tool on PATH
/// (`prometheus`, `promtool`). `None` (the test skips, saying so) when it is
/// missing, except under `CI=true`, where a missing tool fails the test.
pub fn tool(name: &str) -> Option<PathBuf> {
    let in_cache = tools_cache().map(|c| c.join("bin").join(name)).filter(|p| p.exists());
    let on_path = || {
        std::env::var_os("PATH")
            .into_iter()
            .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
            .map(|d| d.join(name))
            .find(|p| p.exists())
    };
    let found = in_cache.or_else(on_path);
    if found.is_none() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true but {name} is missing: scripts/deps.sh (scripts/tools.sh) installs it"
        );
        eprintln!("skipping: {name} not installed (scripts/deps.sh installs it)");
    }
    found
}
