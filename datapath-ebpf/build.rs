//! Compiles the C datapath with clang-19 into OUT_DIR; `src/lib.rs` embeds
//! the objects. Every source and header is listed for rerun-if-changed.

use std::path::{Path, PathBuf};
use std::process::Command;

/// One object per attach point.
const PROGRAMS: &[&str] = &["bpf_lxc", "bpf_host", "bpf_xdp", "bpf_xdp_pass"];

fn main() -> anyhow_free::Result {
    let bpf_dir = Path::new("bpf");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let clang = std::env::var("WEIR_CLANG").unwrap_or_else(|_| "clang-19".into());
    println!("cargo:rerun-if-env-changed=WEIR_CLANG");

    for entry in std::fs::read_dir(bpf_dir.join("lib"))? {
        println!("cargo:rerun-if-changed={}", entry?.path().display());
    }
    for name in PROGRAMS {
        let src = bpf_dir.join(format!("{name}.c"));
        let obj = out.join(format!("{name}.o"));
        println!("cargo:rerun-if-changed={}", src.display());
        let status = Command::new(&clang)
            .args(["-O2", "-g", "-target", "bpf", "-Wall", "-Werror"])
            // Debian keeps asm/types.h under the multiarch include directory.
            .arg("-I/usr/include/x86_64-linux-gnu")
            .arg("-c")
            .arg(&src)
            .arg("-o")
            .arg(&obj)
            .status()
            .map_err(|e| format!("running {clang} (install clang-19: see README): {e}"))?;
        if !status.success() {
            return Err(format!("{clang} failed to compile {}", src.display()).into());
        }
    }
    Ok(())
}

/// Build scripts only need a boxed error; no dependency for that.
mod anyhow_free {
    pub type Result = std::result::Result<(), Box<dyn std::error::Error>>;
}
