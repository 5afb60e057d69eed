//! How big every datapath program is, printed on every test run so growth
//! shows in each change, and held to a budget well inside the verifier's
//! limits (512 bytes of stack, one million verified instructions), so that
//! the flows, policy and IPv6 work still fits.
//!
//! Per program: instructions in the object (8-byte slots, as the kernel
//! counts them), the deepest stack offset any instruction uses (what the
//! verifier reports as "stack depth"; every helper here is inlined, so one
//! frame), and the instructions the verifier walked when it loaded it.

use std::io::Write;
use std::path::PathBuf;

use object::{Object, ObjectSection, ObjectSymbol, SymbolKind};
use weir_datapath::{
    BPF_HOST, BPF_LXC, BPF_SOCK, BPF_XDP, Datapath, ProgramKind, SOCK_PROGRAMS, TailCall, XDP_PROGRAM,
};
use weir_test_support::require_root;

/// Budgets: far enough above today's sizes for ordinary growth, far enough
/// below the kernel's limits to leave room for what is still to come.
const MAX_INSNS: usize = 4096;
const MAX_STACK: u32 = 448;
const MAX_VERIFIED: u32 = 500_000;

#[derive(Debug)]
struct Size {
    object: &'static str,
    name: String,
    insns: usize,
    stack: u32,
}

/// The deepest r10-relative offset used by these instructions: loads and
/// stores through r10, and pointers made as `rX = r10; rX += -off` (keys
/// and buffers handed to helpers).
fn stack_depth(code: &[u8]) -> u32 {
    let mut deepest = 0i64;
    let mut frame_copy = [false; 11];
    for insn in code.chunks_exact(8) {
        let op = insn[0];
        let dst = (insn[1] & 0x0f) as usize;
        let src = (insn[1] >> 4) as usize;
        let off = i64::from(i16::from_le_bytes([insn[2], insn[3]]));
        let imm = i64::from(i32::from_le_bytes([insn[4], insn[5], insn[6], insn[7]]));
        let class = op & 0x07;
        match class {
            // LDX: src is the base.
            0x01 if src == 10 => deepest = deepest.max(-off),
            // ST and STX: dst is the base.
            0x02 | 0x03 if dst == 10 => deepest = deepest.max(-off),
            // ALU64
            0x07 if dst < 11 => {
                let alu = op & 0xf0;
                let from_reg = op & 0x08 != 0;
                if alu == 0xb0 {
                    // mov: dst becomes a copy of r10 (or of a copy), or not.
                    frame_copy[dst] = from_reg && src < 11 && (src == 10 || frame_copy[src]);
                } else if alu == 0x00 && !from_reg && frame_copy[dst] {
                    deepest = deepest.max(-imm);
                } else {
                    frame_copy[dst] = false;
                }
            }
            _ => {
                // Anything else writing dst (ALU32, loads) ends a copy.
                if matches!(class, 0x00 | 0x01 | 0x04) && dst < 11 {
                    frame_copy[dst] = false;
                }
                // A call clobbers r0-r5.
                if op == 0x85 {
                    frame_copy[..6].fill(false);
                }
            }
        }
    }
    u32::try_from(deepest.max(0)).unwrap_or(u32::MAX)
}

fn static_sizes(object: &'static str, bytes: &[u8]) -> Vec<Size> {
    let file = object::File::parse(bytes).expect("embedded object is ELF");
    let mut out = Vec::new();
    for sym in file.symbols() {
        if sym.kind() != SymbolKind::Text || sym.size() == 0 {
            continue;
        }
        let Some(section) = sym.section_index().and_then(|i| file.section_by_index(i).ok()) else {
            continue;
        };
        let name = section.name().unwrap_or_default();
        if !(name == "classifier" || name.starts_with("xdp") || name.starts_with("cgroup/")) {
            continue;
        }
        let data = section.data().expect("section data");
        let start = sym.address() as usize;
        let code = &data[start..start + sym.size() as usize];
        out.push(Size {
            object,
            name: sym.name().unwrap_or_default().to_owned(),
            insns: code.len() / 8,
            stack: stack_depth(code),
        });
    }
    out
}

#[test]
fn every_program_fits_its_budget_and_its_size_is_printed() {
    let mut sizes = static_sizes("bpf_lxc.o", BPF_LXC);
    sizes.extend(static_sizes("bpf_host.o", BPF_HOST));
    sizes.extend(static_sizes("bpf_xdp.o", BPF_XDP));
    sizes.extend(static_sizes("bpf_sock.o", BPF_SOCK));
    let expected: Vec<&str> = ProgramKind::ALL
        .iter()
        .map(|k| k.program_name())
        .chain(TailCall::ALL.iter().map(|c| c.program_name()))
        .chain([XDP_PROGRAM])
        .chain(SOCK_PROGRAMS)
        .collect();
    for name in &expected {
        assert!(
            sizes.iter().any(|s| s.name == *name),
            "{name} not found in the objects: {sizes:?}"
        );
    }

    // Verified instructions need the kernel (and root).
    let counted = if require_root() { load_and_count() } else { Vec::new() };
    let verified = |name: &str| counted.iter().find(|(n, _)| n == name).map(|(_, c)| *c);

    let mut table =
        String::from("\ndatapath program sizes (budget: insns <= 4096, stack <= 448 B, verified <= 500000)\n");
    table.push_str(&format!(
        "{:<12} {:<16} {:>6} {:>6} {:>9}\n",
        "object", "program", "insns", "stack", "verified"
    ));
    let mut over = Vec::new();
    for s in &sizes {
        let v = verified(&s.name);
        table.push_str(&format!(
            "{:<12} {:<16} {:>6} {:>6} {:>9}\n",
            s.object,
            s.name,
            s.insns,
            s.stack,
            v.map_or("-".to_string(), |v| v.to_string())
        ));
        if s.insns > MAX_INSNS || s.stack > MAX_STACK || v.is_some_and(|v| v > MAX_VERIFIED) {
            over.push(s.name.clone());
        }
    }
    // Straight to the terminal, past the test harness's capture, so every
    // `cargo test` run (and CI's log) shows the table.
    let _ = std::io::stdout().write_all(table.as_bytes());
    assert!(over.is_empty(), "over budget: {over:?}{table}");
}

/// Loads the datapath in a pin directory of its own and reads how many
/// instructions the verifier processed for each program.
fn load_and_count() -> Vec<(String, u32)> {
    let pin_dir = PathBuf::from(format!("/sys/fs/bpf/weir-test/sizes-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&pin_dir);
    weir_datapath::ensure_bpffs(std::path::Path::new("/sys/fs/bpf")).expect("bpffs");
    let dp = Datapath::load(&pin_dir).unwrap_or_else(|e| {
        let _ = std::fs::remove_dir_all(&pin_dir);
        panic!("loading datapath: {e:?}")
    });
    let mut out = Vec::new();
    for kind in ProgramKind::ALL {
        let info = dp.program(kind).info().expect("program info");
        out.push((
            kind.program_name().to_owned(),
            info.verified_instruction_count().unwrap_or(0),
        ));
    }
    for call in TailCall::ALL {
        let info = dp.tail_call_program(call).info().expect("program info");
        out.push((
            call.program_name().to_owned(),
            info.verified_instruction_count().unwrap_or(0),
        ));
    }
    let info = dp.xdp_program().info().expect("xdp program info");
    out.push((XDP_PROGRAM.to_owned(), info.verified_instruction_count().unwrap_or(0)));
    for name in SOCK_PROGRAMS {
        let info = dp.socket_program(name).info().expect("socket program info");
        out.push((name.to_owned(), info.verified_instruction_count().unwrap_or(0)));
    }
    drop(dp);
    let _ = std::fs::remove_dir_all(&pin_dir);
    out
}

#[test]
fn stack_depth_reads_stores_loads_and_frame_pointers() {
    // *(u64 *)(r10 - 16) = r1; r2 = *(u32 *)(r10 - 40); r3 = r10; r3 += -312
    let code: Vec<u8> = [
        [0x7b, 0x1a, 0xf0, 0xff, 0, 0, 0, 0],
        [0x61, 0xa2, 0xd8, 0xff, 0, 0, 0, 0],
        [0xbf, 0xa3, 0, 0, 0, 0, 0, 0],
        [0x07, 0x03, 0, 0, 0xc8, 0xfe, 0xff, 0xff],
    ]
    .concat();
    assert_eq!(stack_depth(&code[..16]), 40);
    assert_eq!(stack_depth(&code), 312);
}
