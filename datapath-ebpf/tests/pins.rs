//! Upgrading over maps an older agent pinned: one whose layout or size no
//! longer matches the objects is replaced (and reported), one that still
//! matches is reused with its contents. The "old" maps come from
//! `tests/bpf/old_layout.c`, compiled here with clang-19.

use std::path::{Path, PathBuf};
use std::process::Command;

use aya::maps::{Array, MapInfo, PerCpuArray};
use weir_datapath::Datapath;
use weir_datapath::abi::Traffic;
use weir_test_support::require_root;

/// Compiles the old-layout object into a temporary file.
fn old_layout_object(dir: &Path) -> Vec<u8> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/bpf/old_layout.c");
    let obj = dir.join("old_layout.o");
    let clang = std::env::var("WEIR_CLANG").unwrap_or_else(|_| "clang-19".into());
    let status = Command::new(&clang)
        .args([
            "-O2",
            "-g",
            "-target",
            "bpf",
            "-Wall",
            "-I/usr/include/x86_64-linux-gnu",
            "-c",
        ])
        .arg(&src)
        .arg("-o")
        .arg(&obj)
        .status()
        .unwrap_or_else(|e| panic!("running {clang}: {e}"));
    assert!(status.success(), "{clang} failed on {}", src.display());
    std::fs::read(&obj).expect("reading the old-layout object")
}

struct PinDir(PathBuf);

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn pins_of_an_older_layout_are_replaced_and_matching_ones_kept() {
    if !require_root() {
        return;
    }
    let pin_dir = PinDir(PathBuf::from(format!(
        "/sys/fs/bpf/weir-test/pins-{}",
        std::process::id()
    )));
    let _ = std::fs::remove_dir_all(&pin_dir.0);
    std::fs::create_dir_all(&pin_dir.0).expect("pin dir");
    let tmp = std::env::temp_dir().join(format!("weir-pins-test-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).expect("tmp dir");
    let old = old_layout_object(&tmp);
    let _ = std::fs::remove_dir_all(&tmp);

    // The older agent: pins its maps and counts a drop.
    {
        let mut ebpf = aya::EbpfLoader::new()
            .default_map_pin_directory(&pin_dir.0)
            .load(&old)
            .expect("loading the old-layout maps");
        let mut drops: PerCpuArray<_, Traffic> =
            PerCpuArray::try_from(ebpf.map_mut("weir_drops").expect("weir_drops")).expect("per-CPU array");
        let nr_cpus = aya::util::nr_cpus().expect("cpus");
        let mut values = vec![Traffic::default(); nr_cpus];
        values[0] = Traffic { packets: 7, bytes: 700 };
        drops
            .set(6, aya::maps::PerCpuValues::try_from(values).unwrap(), 0)
            .expect("writing a drop count");
    }
    assert_eq!(MapInfo::from_pin(pin_dir.0.join("weir_ct4")).unwrap().value_size(), 32);
    // A map the datapath does not have any more (masquerade's own table,
    // merged into conntrack), and a pin that is none of weir's.
    for name in ["weir_snat4", "other_tool"] {
        Array::<_, u32>::create(4, 0)
            .expect("creating a map")
            .pin(pin_dir.0.join(name))
            .expect("pinning it");
    }

    let dp = Datapath::load(&pin_dir.0).unwrap_or_else(|e| panic!("loading over old pins: {e:?}"));
    let mut replaced: Vec<&str> = dp.replaced_pins().iter().map(|r| r.map.as_str()).collect();
    replaced.sort();
    assert_eq!(replaced, ["weir_ct4", "weir_endpoints"], "{:?}", dp.replaced_pins());
    assert_eq!(dp.retired_pins(), ["weir_snat4"]);
    assert!(!pin_dir.0.join("weir_snat4").exists(), "retired pin removed");
    assert!(pin_dir.0.join("other_tool").exists(), "not weir's: left alone");
    let ct = MapInfo::from_pin(pin_dir.0.join("weir_ct4")).unwrap();
    assert_eq!(ct.value_size() as usize, size_of::<weir_datapath::lb::CtEntry>());
    let eps = MapInfo::from_pin(pin_dir.0.join("weir_endpoints")).unwrap();
    assert_eq!(eps.max_entries(), weir_datapath::abi::MAX_ENDPOINTS);
    // The compatible map kept its contents.
    let ttl = dp
        .drops()
        .unwrap()
        .into_iter()
        .find(|(r, _)| *r == weir_datapath::drop::DropReason::TtlExceeded);
    assert_eq!(ttl.map(|(_, t)| t.packets), Some(7), "weir_drops was reused");
    drop(dp);

    // Loading again over its own pins replaces nothing.
    let dp = Datapath::load(&pin_dir.0).unwrap();
    assert!(dp.replaced_pins().is_empty(), "{:?}", dp.replaced_pins());
    assert!(dp.retired_pins().is_empty(), "{:?}", dp.retired_pins());
}

#[test]
fn a_pin_directory_others_could_change_is_refused_and_a_new_one_is_private() {
    use std::os::unix::fs::PermissionsExt;
    if !require_root() {
        return;
    }
    weir_datapath::ensure_bpffs(Path::new("/sys/fs/bpf")).expect("bpffs");
    let root = PinDir(PathBuf::from(format!(
        "/sys/fs/bpf/weir-test/private-{}",
        std::process::id()
    )));
    let _ = std::fs::remove_dir_all(&root.0);

    // Made first by another user (uid 1001), as a world-writable bpffs allows.
    let theirs = root.0.join("theirs");
    std::fs::create_dir_all(&theirs).unwrap();
    nix::unistd::chown(&theirs, Some(nix::unistd::Uid::from_raw(1001)), None).unwrap();
    let err = Datapath::load(&theirs)
        .err()
        .expect("another user's directory must be refused");
    assert!(err.to_string().contains("uid 1001"), "{err}");

    // Ours, but writable by others.
    let open = root.0.join("open");
    std::fs::create_dir_all(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    assert!(
        Datapath::load(&open).is_err(),
        "a group/world-writable directory must be refused"
    );

    // A new one is created for this user alone.
    let fresh = root.0.join("fresh").join("node");
    let dp = Datapath::load(&fresh).expect("loading into a new directory");
    for dir in [fresh.parent().unwrap(), &fresh, &fresh.join("links")] {
        let mode = std::fs::metadata(dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "{}", dir.display());
    }
    drop(dp);
}
