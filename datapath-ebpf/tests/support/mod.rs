//! What the BPF_PROG_TEST_RUN test files share: a datapath loaded in a pin
//! directory of its own (removed on drop, so tests run in parallel and
//! leave nothing behind), endpoints placed behind an interface, programs
//! run on a frame, drops counted by reason. Each test file (its own crate)
//! uses part of it.
#![allow(
    dead_code,
    reason = "each test file (its own crate) uses a different part of the harness"
)]

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

use aya::programs::{TestRun, TestRunOptions};
use weir_datapath::abi::EpInfo;
use weir_datapath::drop::DropReason;
use weir_datapath::{Datapath, LoadOptions, ProgramKind};

/// BPF_PROG_TEST_RUN without a context runs on the loopback device: an
/// endpoint on lo is the sender of from_pod's test frames.
pub const LO_IFINDEX: u32 = 1;
/// Some interface that is not lo.
pub const OTHER_IFINDEX: u32 = 4242;

pub const TC_ACT_OK: u32 = 0;
pub const TC_ACT_SHOT: u32 = 2;
pub const TC_ACT_REDIRECT: u32 = 7;
pub const TC_ACT_UNSPEC: u32 = u32::MAX; // -1: not ours
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;

/// A loaded datapath in `/sys/fs/bpf/weir-test/<name>-<pid>`.
pub struct Loaded {
    pub dp: Datapath,
    pub pin_dir: PathBuf,
}

impl Loaded {
    pub fn new(name: &str, options: &LoadOptions) -> Self {
        let pin_dir = PathBuf::from(format!("/sys/fs/bpf/weir-test/{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&pin_dir);
        weir_datapath::ensure_bpffs(std::path::Path::new("/sys/fs/bpf")).expect("bpffs");
        // A load that fails (the verifier refused a program) must not leave
        // the pins it made so far behind.
        let dp = Datapath::load_with(&pin_dir, options).unwrap_or_else(|e| {
            let _ = std::fs::remove_dir_all(&pin_dir);
            panic!("loading datapath: {e:?}")
        });
        Self { dp, pin_dir }
    }

    /// (Re)programs a pod behind an interface, MACs made from its id: tests
    /// move a pod onto lo to send its packets through from_pod.
    pub fn place(&mut self, ip: Ipv4Addr, ifindex: u32, endpoint_id: u32) {
        let mac = [0x02, endpoint_id as u8, 0, 0, 0, 1];
        let info = EpInfo {
            ifindex,
            endpoint_id,
            identity: 100,
            pod_mac: mac,
            host_mac: mac,
            flags: 0,
        };
        self.dp.upsert_endpoint(IpAddr::V4(ip), info).unwrap();
    }

    /// Runs a TC program; the verdict and the frame as it left.
    pub fn tc(&self, kind: ProgramKind, packet: &[u8]) -> (u32, Vec<u8>) {
        let mut out = vec![0u8; packet.len() + 256];
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(packet);
        opts.data_out = Some(&mut out);
        let res = self.dp.program(kind).test_run(opts).expect("BPF_PROG_TEST_RUN (tc)");
        out.truncate(res.data_size_out as usize);
        (res.return_value, out)
    }

    /// Runs the uplink's XDP program.
    pub fn xdp(&self, packet: &[u8]) -> (u32, Vec<u8>) {
        let mut out = vec![0u8; packet.len() + 256];
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(packet);
        opts.data_out = Some(&mut out);
        let res = self.dp.xdp_program().test_run(opts).expect("BPF_PROG_TEST_RUN (xdp)");
        out.truncate(res.data_size_out as usize);
        (res.return_value, out)
    }

    /// Packets dropped under `reason` so far.
    pub fn drops(&self, reason: DropReason) -> u64 {
        self.dp
            .drops()
            .unwrap()
            .into_iter()
            .find(|(r, _)| *r == reason)
            .map_or(0, |(_, t)| t.packets)
    }
}

/// A test file's `Fixture` with a `t: Loaded` field reads as a `Loaded`
/// (`fx.dp`, `fx.tc(..)`, `fx.drops(..)`).
#[allow(unused_macros, reason = "not every test file has a fixture of its own")]
macro_rules! derefs_to_loaded {
    ($fixture:ty) => {
        impl std::ops::Deref for $fixture {
            type Target = support::Loaded;
            fn deref(&self) -> &support::Loaded {
                &self.t
            }
        }

        impl std::ops::DerefMut for $fixture {
            fn deref_mut(&mut self) -> &mut support::Loaded {
                &mut self.t
            }
        }
    };
}
#[allow(unused_imports, reason = "not every test file has a fixture of its own")]
pub(crate) use derefs_to_loaded;

impl Drop for Loaded {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.pin_dir);
        // Only succeeds once the last parallel test is gone.
        let _ = std::fs::remove_dir(self.pin_dir.parent().expect("pin dir has a parent"));
    }
}
