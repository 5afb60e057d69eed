//! Compiles the C datapath with clang-19 into OUT_DIR (`src/lib.rs` embeds
//! the objects) and generates the Rust side of the kernel ABI from
//! `bpf/lib/abi.h` with bindgen (`src/abi.rs` includes it; the constants come from `weir-abi`), so the C header
//! is the one source of truth. Every source and header is listed for
//! rerun-if-changed.

use std::path::{Path, PathBuf};
use std::process::Command;

/// One object per attach point.
const PROGRAMS: &[&str] = &["bpf_lxc", "bpf_host", "bpf_xdp", "bpf_xdp_pass", "bpf_sock"];

/// Debian keeps asm/types.h under the multiarch include directory.
const MULTIARCH_INCLUDE: &str = "-I/usr/include/x86_64-linux-gnu";

fn main() -> anyhow_free::Result {
    let bpf_dir = Path::new("bpf");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let clang = std::env::var("WEIR_CLANG").unwrap_or_else(|_| "clang-19".into());
    println!("cargo:rerun-if-env-changed=WEIR_CLANG");
    let strip = std::env::var("WEIR_LLVM_STRIP").unwrap_or_else(|_| "llvm-strip-19".into());
    println!("cargo:rerun-if-env-changed=WEIR_LLVM_STRIP");

    for entry in std::fs::read_dir(bpf_dir.join("lib"))? {
        println!("cargo:rerun-if-changed={}", entry?.path().display());
    }
    for name in PROGRAMS {
        let src = bpf_dir.join(format!("{name}.c"));
        let obj = out.join(format!("{name}.o"));
        println!("cargo:rerun-if-changed={}", src.display());
        // -mcpu=v3: atomic exchange (conntrack hands a closed connection's
        // charge back exactly once, conntrack.h), 32-bit jumps; kernel 5.12+.
        let status = Command::new(&clang)
            .args(["-O2", "-g", "-target", "bpf", "-mcpu=v3", "-Wall", "-Werror"])
            .arg(MULTIARCH_INCLUDE)
            .arg("-c")
            .arg(&src)
            .arg("-o")
            .arg(&obj)
            .status()
            .map_err(|e| format!("running {clang} (install clang-19: see README): {e}"))?;
        if !status.success() {
            return Err(format!("{clang} failed to compile {}", src.display()).into());
        }
        // DWARF is for debuggers; aya needs only BTF (and .BTF.ext for the
        // verifier's line info), which `-g` stripping keeps. The objects
        // are embedded in every binary that loads them and parsed at load:
        // a third of their size, and of the agent's memory for them.
        let status = Command::new(&strip)
            .arg("-g")
            .arg(&obj)
            .status()
            .map_err(|e| format!("running {strip} (install llvm-19: see README): {e}"))?;
        if !status.success() {
            return Err(format!("{strip} failed on {}", obj.display()).into());
        }
    }
    generate_abi(&bpf_dir.join("lib").join("abi.h"), &out.join("abi_gen.rs"))
}

/// The Rust twins of every `weir_*` struct and enum in abi.h (its `WEIR_*`
/// constants are `weir-abi`'s, generated there), laid out for the BPF target (bindgen's own layout
/// assertions then fail the build if x86_64 would lay a struct out
/// differently).
fn generate_abi(header: &Path, out: &Path) -> anyhow_free::Result {
    let bindings = bindgen::Builder::default()
        .header(header.to_string_lossy())
        .clang_args(["-target", "bpf", MULTIARCH_INCLUDE])
        .allowlist_type("weir_.*")
        .rustified_enum("weir_drop_reason")
        .rustified_enum("weir_event_kind")
        .use_core()
        .derive_default(true)
        .derive_eq(true)
        .derive_hash(true)
        .derive_ord(true)
        .layout_tests(false)
        .generate_comments(false)
        .generate()
        .map_err(|e| {
            format!(
                "bindgen on {}: {e} (needs libclang: apt install libclang1-19)",
                header.display()
            )
        })?;
    bindings.write_to_file(out)?;
    Ok(())
}

/// Build scripts only need a boxed error; no dependency for that.
mod anyhow_free {
    pub type Result = std::result::Result<(), Box<dyn std::error::Error>>;
}
