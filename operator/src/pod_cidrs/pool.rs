//! Which pod CIDR a node gets, as arithmetic: the pool (`--cluster-cidr`
//! cut into `/--node-cidr-mask-size` blocks) and the CIDRs the cluster's
//! Nodes already have, in; the free blocks, lowest first, out. No state:
//! what is taken is always read from the Nodes, so the answer is the same
//! after a restart or a leader handover, and a deleted Node's block is
//! free again once it is gone.
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

/// The blocks node CIDRs are cut from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pool {
    cluster: Ipv4Net,
    mask: u8,
}

/// A pool that cannot be.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    /// The cluster CIDR is not a network address (`10.244.1.0/16`).
    #[error("--cluster-cidr {given} has host bits set: the network is {network}")]
    HostBits { given: Ipv4Net, network: Ipv4Net },
    /// Node blocks cannot be larger than the pool, nor smaller than /32.
    #[error("--node-cidr-mask-size {mask} must be from the cluster CIDR's prefix length ({prefix}) to 32")]
    Mask { mask: u8, prefix: u8 },
}

impl Pool {
    pub fn new(cluster: Ipv4Net, mask: u8) -> Result<Pool, PoolError> {
        if cluster.trunc() != cluster {
            return Err(PoolError::HostBits {
                given: cluster,
                network: cluster.trunc(),
            });
        }
        if mask < cluster.prefix_len() || mask > 32 {
            return Err(PoolError::Mask {
                mask,
                prefix: cluster.prefix_len(),
            });
        }
        Ok(Pool { cluster, mask })
    }

    pub fn cluster(&self) -> Ipv4Net {
        self.cluster
    }

    pub fn mask(&self) -> u8 {
        self.mask
    }

    /// How many node blocks it holds.
    pub fn size(&self) -> u64 {
        1 << (self.mask - self.cluster.prefix_len())
    }

    /// The free blocks, lowest first: every block of the pool that
    /// overlaps none of `taken` (taken CIDRs may have any size and lie
    /// inside the pool, outside it or across its edge).
    pub fn free<'a>(&self, taken: impl IntoIterator<Item = &'a Ipv4Net>) -> Free {
        let mut ranges: Vec<(u64, u64)> = taken.into_iter().map(|n| range(n.trunc())).collect();
        ranges.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
        for (start, end) in ranges {
            match merged.last_mut() {
                Some(last) if start <= last.1 + 1 => last.1 = last.1.max(end),
                _ => merged.push((start, end)),
            }
        }
        let (first, last) = range(self.cluster);
        Free {
            taken: merged,
            next_taken: 0,
            cursor: first,
            last,
            step: 1 << (32 - self.mask),
            mask: self.mask,
        }
    }

    /// Each of `nodes`, in the order given, with the next free block, or
    /// `None` once the pool is exhausted (that node waits for a block to be
    /// freed).
    pub fn assign<'a, N>(
        &self,
        taken: impl IntoIterator<Item = &'a Ipv4Net>,
        nodes: impl IntoIterator<Item = N>,
    ) -> Vec<(N, Option<Ipv4Net>)> {
        let mut free = self.free(taken);
        nodes.into_iter().map(|n| (n, free.next())).collect()
    }
}

/// First and last address, widened so arithmetic past 255.255.255.255
/// cannot wrap.
fn range(net: Ipv4Net) -> (u64, u64) {
    (
        u64::from(u32::from(net.network())),
        u64::from(u32::from(net.broadcast())),
    )
}

/// The free blocks of a pool ([`Pool::free`]).
#[derive(Debug, Clone)]
pub struct Free {
    /// Taken ranges, sorted, merged, disjoint.
    taken: Vec<(u64, u64)>,
    /// The first taken range that may still reach the cursor.
    next_taken: usize,
    cursor: u64,
    last: u64,
    step: u64,
    mask: u8,
}

impl Iterator for Free {
    type Item = Ipv4Net;

    fn next(&mut self) -> Option<Ipv4Net> {
        while self.cursor + self.step - 1 <= self.last {
            let (start, end) = (self.cursor, self.cursor + self.step - 1);
            while self.taken.get(self.next_taken).is_some_and(|t| t.1 < start) {
                self.next_taken += 1;
            }
            match self.taken.get(self.next_taken) {
                // Overlapped: jump to the first block past the taken range
                // (blocks are aligned to their size within the pool).
                Some(&(taken_start, taken_end)) if taken_start <= end => {
                    self.cursor = (taken_end + 1).div_ceil(self.step) * self.step;
                }
                _ => {
                    self.cursor += self.step;
                    let block =
                        Ipv4Net::new(Ipv4Addr::from(start as u32), self.mask).expect("mask checked by Pool::new");
                    return Some(block);
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    fn nets(s: &[&str]) -> Vec<Ipv4Net> {
        s.iter().map(|n| net(n)).collect()
    }

    #[test]
    fn the_lowest_free_blocks_go_first_and_taken_ones_are_skipped() {
        let pool = Pool::new(net("10.244.0.0/16"), 24).unwrap();
        assert_eq!(pool.size(), 256);
        let taken = nets(&["10.244.0.0/24", "10.244.2.0/24"]);
        let got: Vec<Ipv4Net> = pool.free(&taken).take(3).collect();
        assert_eq!(got, nets(&["10.244.1.0/24", "10.244.3.0/24", "10.244.4.0/24"]));
        let assigned = pool.assign(&taken, ["a", "b"]);
        assert_eq!(
            assigned,
            vec![("a", Some(net("10.244.1.0/24"))), ("b", Some(net("10.244.3.0/24")))]
        );
    }

    #[test]
    fn a_freed_block_is_handed_out_again() {
        let pool = Pool::new(net("10.0.0.0/22"), 24).unwrap();
        let all: Vec<Ipv4Net> = pool.free(&[]).collect();
        assert_eq!(all.len(), 4);
        // The node with 10.0.1.0/24 was deleted: its block is what is free.
        let taken = nets(&["10.0.0.0/24", "10.0.2.0/24", "10.0.3.0/24"]);
        assert_eq!(pool.assign(&taken, ["new"]), vec![("new", Some(net("10.0.1.0/24")))]);
    }

    #[test]
    fn taken_cidrs_of_any_size_and_place_count() {
        let pool = Pool::new(net("10.244.0.0/16"), 24).unwrap();
        let taken = nets(&[
            "10.244.0.128/25", // inside the first block: the block is taken
            "10.244.1.0/23",   // wider than a block: 1.0/24 is not free (misaligned net, truncated)
            "10.244.4.0/22",   // four blocks
            "10.243.0.0/16",   // outside the pool: no matter
            "10.244.9.0/24",
            "10.244.8.0/24", // unsorted, adjacent: merged
        ]);
        let got: Vec<Ipv4Net> = pool.free(&taken).take(3).collect();
        assert_eq!(got, nets(&["10.244.2.0/24", "10.244.3.0/24", "10.244.10.0/24"]));
        // Across the pool's edge, and the whole pool.
        let edge = Pool::new(net("10.244.0.0/23"), 24).unwrap();
        assert_eq!(edge.free(&nets(&["10.0.0.0/8"])).count(), 0);
        assert_eq!(
            edge.free(&nets(&["10.244.1.0/24", "10.245.0.0/16"]))
                .collect::<Vec<_>>(),
            nets(&["10.244.0.0/24"])
        );
    }

    #[test]
    fn an_exhausted_pool_leaves_the_rest_waiting() {
        let pool = Pool::new(net("192.168.0.0/23"), 24).unwrap();
        let assigned = pool.assign(&nets(&["192.168.1.0/24"]), ["a", "b", "c"]);
        assert_eq!(
            assigned,
            vec![("a", Some(net("192.168.0.0/24"))), ("b", None), ("c", None)]
        );
        // The top of the address space does not wrap.
        let top = Pool::new(net("255.255.255.0/24"), 25).unwrap();
        assert_eq!(
            top.free(&[]).collect::<Vec<_>>(),
            nets(&["255.255.255.0/25", "255.255.255.128/25"])
        );
        let single = Pool::new(net("10.1.2.3/32"), 32).unwrap();
        assert_eq!(single.free(&[]).count(), 1);
    }

    #[test]
    fn a_large_pool_with_many_nodes_is_quick() {
        // /8 in /24s: 65,536 blocks, 60,000 of them taken in random-ish order.
        let pool = Pool::new(net("10.0.0.0/8"), 24).unwrap();
        let taken: Vec<Ipv4Net> = (0..60_000u32)
            .map(|i| (i * 7919) % 65_536)
            .map(|b| Ipv4Net::new(Ipv4Addr::from(0x0a00_0000 + (b << 8)), 24).unwrap())
            .collect();
        let t0 = std::time::Instant::now();
        assert_eq!(pool.free(&taken).count(), 5_536);
        assert!(t0.elapsed() < std::time::Duration::from_secs(1), "{:?}", t0.elapsed());
    }

    #[test]
    fn a_pool_that_cannot_be_is_refused() {
        assert_eq!(
            Pool::new(net("10.244.1.0/16"), 24),
            Err(PoolError::HostBits {
                given: net("10.244.1.0/16"),
                network: net("10.244.0.0/16")
            })
        );
        assert_eq!(
            Pool::new(net("10.244.0.0/16"), 8),
            Err(PoolError::Mask { mask: 8, prefix: 16 })
        );
        assert!(Pool::new(net("10.244.0.0/16"), 33).is_err());
    }
}
