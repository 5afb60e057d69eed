//! NodePort in XDP vs the same NodePort through the TC path: a UDP flood
//! from the lab's external host to node a's NodePort, whose only backend is
//! on node b (DNAT + SNAT to node a, then forwarded), counted at the backend.
//! Bounded: four sender threads, a fixed time, 64-byte datagrams.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use weir_e2e::{NetNs, bin, in_netns, unique};

use crate::median;

const FLOOD_FOR: Duration = Duration::from_secs(3);
const ROUNDS: usize = 3;
const NODE_PORT: u16 = 30999;
const SINK_PORT: u16 = 5000;
const SENDERS: usize = 4;

struct Lab {
    dir: PathBuf,
    external: NetNs,
    backend: NetNs,
    node_a: Ipv4Addr,
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = std::process::Command::new(bin("weir"))
            .args(["lab", "down"])
            .env("WEIR_LAB_DIR", self.dir.join("lab"))
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn lab(dir: &std::path::Path, args: &[&str]) {
    let out = std::process::Command::new(bin("weir"))
        .arg("lab")
        .args(args)
        .env("WEIR_LAB_DIR", dir.join("lab"))
        .output()
        .expect("weir lab");
    assert!(
        out.status.success(),
        "weir lab {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Lab {
    fn up(xdp: bool) -> Self {
        let name = unique("wbn");
        let dir = std::env::temp_dir().join(format!("weir-bench-{name}"));
        std::fs::create_dir_all(&dir).expect("bench dir");
        let topo = dir.join("topo.yaml");
        std::fs::write(
            &topo,
            format!("name: {name}\nclusterCIDR: 10.248.0.0/16\nnodeCIDR: 172.31.253.0/24\nnodePortXDP: {xdp}\nnodes:\n  - {{name: a, podCIDR: 10.248.1.0/24}}\n  - {{name: b, podCIDR: 10.248.2.0/24}}\n"),
        )
        .expect("topology");
        let objects = dir.join("objects.yaml");
        std::fs::write(
            &objects,
            format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: sink, namespace: bench, labels: {{app: sink}}}}\nspec: {{nodeName: b, containers: [{{name: c, image: x}}]}}\n---\napiVersion: v1\nkind: Service\nmetadata: {{name: sink, namespace: bench}}\nspec: {{type: NodePort, selector: {{app: sink}}, ports: [{{port: {SINK_PORT}, targetPort: {SINK_PORT}, nodePort: {NODE_PORT}, protocol: UDP}}]}}\n"),
        )
        .expect("objects");
        // Build the guard before anything can fail, so the lab always goes down.
        let mut me = Self {
            external: NetNs::placeholder(),
            backend: NetNs::placeholder(),
            node_a: "172.31.253.11".parse().expect("ip"),
            dir,
        };
        lab(&me.dir, &["up", topo.to_str().expect("utf-8")]);
        lab(&me.dir, &["apply", objects.to_str().expect("utf-8")]);
        me.external = NetNs::existing(&format!("{name}-external"));
        me.backend = NetNs::existing(&format!("{name}-bench-sink"));
        me
    }

    /// Datagrams per second arriving at the backend during one flood.
    fn flood(&self) -> (f64, f64) {
        let done = Arc::new(AtomicBool::new(false));
        let sink = in_netns(self.backend.path(), || {
            UdpSocket::bind(("0.0.0.0", SINK_PORT)).expect("bind sink")
        });
        sink.set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        let stop = done.clone();
        let counter = std::thread::spawn(move || {
            let (mut n, mut buf) = (0u64, [0u8; 256]);
            loop {
                match sink.recv(&mut buf) {
                    Ok(_) => n += 1,
                    Err(_) if stop.load(Ordering::Relaxed) => return n,
                    Err(_) => {}
                }
            }
        });
        let target = SocketAddr::from((self.node_a, NODE_PORT));
        // Several senders (distinct source ports, so distinct flows) to offer
        // more than one socket can: the datapath, not the sender, must be the
        // bottleneck for the comparison to mean anything.
        let senders: Vec<_> = (0..SENDERS)
            .map(|_| {
                let path = self.external.path();
                std::thread::spawn(move || {
                    in_netns(path, move || {
                        let s = UdpSocket::bind("0.0.0.0:0").expect("bind sender");
                        s.connect(target).expect("connect");
                        let payload = [0x77u8; 64];
                        let (start, mut n) = (Instant::now(), 0u64);
                        while start.elapsed() < FLOOD_FOR {
                            // ECONNREFUSED from an ICMP error or ENOBUFS: keep going.
                            if s.send(&payload).is_ok() {
                                n += 1;
                            }
                        }
                        n
                    })
                })
            })
            .collect();
        let sent: u64 = senders.into_iter().map(|h| h.join().expect("sender")).sum();
        done.store(true, Ordering::Relaxed);
        let received = counter.join().expect("sink");
        let secs = FLOOD_FOR.as_secs_f64();
        (received as f64 / secs, sent as f64 / secs)
    }
}

pub fn run() {
    println!(
        "## NodePort: XDP vs TC (UDP flood from the external host to node a's NodePort, backend on node b; {} rounds of {} s, medians)\n",
        ROUNDS,
        FLOOD_FOR.as_secs()
    );
    println!("| path | received at backend | sent | delivered |\n|---|---|---|---|");
    let mut results = Vec::new();
    for xdp in [true, false] {
        let lab = Lab::up(xdp);
        // First datagrams race the agents' programming; warm up once.
        let _ = lab.flood();
        let (mut rx, mut tx) = (Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            let (r, t) = lab.flood();
            rx.push(r);
            tx.push(t);
        }
        let (rx, tx) = (median(&mut rx), median(&mut tx));
        println!(
            "| {} | {:.0} pps | {:.0} pps | {:.0}% |",
            if xdp {
                "XDP (native, XDP_TX)"
            } else {
                "TC (from_netdev, redirect_neigh)"
            },
            rx,
            tx,
            rx / tx * 100.0
        );
        results.push(rx);
    }
    println!("\nXDP / TC at the backend: {:.2}x", results[0] / results[1]);
}
