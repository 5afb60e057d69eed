//! What flows say about connections, counted once: a connection is seen by
//! up to two nodes (the client's and the server's), each reporting its own
//! counters (cumulative, per direction) on its own events, so a
//! connection's bytes are the largest either node reported, its start and
//! its first answer count once, and its handshake latency is taken once.
//! The service map (the relay) and `weir observe --aggregate-by` both fold
//! flows through this.

use std::collections::HashMap;

use crate::flow::{Flow, Verdict, layer4::Protocol};

/// How long an ended connection is remembered (seconds): the other node's
/// end is still to come, and must not count as a new connection.
const ENDED_KEPT_SECS: i64 = 30;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    client: (u32, u16),
    server: (u32, u16),
    proto: u8,
}

#[derive(Debug, Default)]
struct State {
    bytes: u64,
    reply_bytes: u64,
    handshake: bool,
    answered: bool,
    ended: bool,
    last: i64,
}

/// What one flow adds to its connection's account.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Fresh {
    /// The connection's first packet, forwarded where it was seen.
    pub opened: bool,
    /// The server's first answer.
    pub answered: bool,
    /// New bytes client to server, and server to client.
    pub bytes: u64,
    pub reply_bytes: u64,
    /// SYN to SYN-ACK, the first time a node reports it.
    pub handshake_ns: Option<u64>,
}

/// The connections flows have named, bounded.
#[derive(Debug)]
pub struct Connections {
    by_key: HashMap<Key, State>,
    max: usize,
    /// Connections let go because the bound was reached.
    pub evicted: u64,
}

impl Connections {
    pub fn new(max: usize) -> Self {
        Self {
            by_key: HashMap::new(),
            max: max.max(2),
            evicted: 0,
        }
    }

    /// Connections tracked now.
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    /// Folds one flow into its connection; `None` for a flow of no
    /// connection (no addresses or ports).
    pub fn observe(&mut self, f: &Flow) -> Option<Fresh> {
        let reply = f.is_reply == Some(true);
        let key = key(f, reply)?;
        let d = f.weir.clone().unwrap_or_default();
        let sec = f.time.as_ref().map_or(0, |t| t.seconds);
        let dropped = f.verdict == Verdict::Dropped as i32;
        let known = self.by_key.contains_key(&key);
        if !known && self.by_key.len() >= self.max {
            self.evict_older_half();
        }
        let c = self.by_key.entry(key).or_default();
        c.last = sec;
        let mut out = Fresh {
            opened: !known && !reply && d.event == "flow-start" && !dropped,
            ..Default::default()
        };
        if reply && !c.answered && !dropped {
            c.answered = true;
            out.answered = true;
        }
        let (bytes, reply_bytes) = match reply {
            false => (d.bytes, d.reply_bytes),
            true => (d.reply_bytes, d.bytes),
        };
        if bytes > c.bytes {
            out.bytes = bytes - c.bytes;
            c.bytes = bytes;
        }
        if reply_bytes > c.reply_bytes {
            out.reply_bytes = reply_bytes - c.reply_bytes;
            c.reply_bytes = reply_bytes;
        }
        if d.handshake_ns > 0 && !c.handshake {
            c.handshake = true;
            out.handshake_ns = Some(d.handshake_ns);
        }
        c.ended |= d.event == "end";
        Some(out)
    }

    fn evict_older_half(&mut self) {
        let mut ages: Vec<i64> = self.by_key.values().map(|c| c.last).collect();
        let mid = ages.len() / 2;
        let cutoff = *ages.select_nth_unstable(mid).1;
        let before = self.by_key.len();
        self.by_key.retain(|_, c| c.last > cutoff);
        self.evicted += (before - self.by_key.len()) as u64;
    }

    /// Forgets connections idle longer than `idle_secs` as of `now`
    /// (seconds since the epoch), ended ones sooner.
    pub fn expire(&mut self, now: i64, idle_secs: i64) {
        self.by_key
            .retain(|_, c| now - c.last <= if c.ended { ENDED_KEPT_SECS } else { idle_secs });
    }
}

/// A connection as both nodes name it: client and server address and
/// port, whatever the flow's direction.
fn key(f: &Flow, reply: bool) -> Option<Key> {
    let ip = f.ip.as_ref()?;
    let src: std::net::Ipv4Addr = ip.source.parse().ok()?;
    let dst: std::net::Ipv4Addr = ip.destination.parse().ok()?;
    let (proto, sp, dp) = match f.l4.as_ref()?.protocol.as_ref()? {
        Protocol::Tcp(t) => (6, t.source_port, t.destination_port),
        Protocol::Udp(u) => (17, u.source_port, u.destination_port),
        Protocol::Sctp(s) => (132, s.source_port, s.destination_port),
        Protocol::IcmPv4(_) => (1, 0, 0),
        _ => return None,
    };
    let a = (u32::from(src), sp as u16);
    let b = (u32::from(dst), dp as u16);
    let (client, server) = if reply { (b, a) } else { (a, b) };
    Some(Key { client, server, proto })
}
