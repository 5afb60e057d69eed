/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* The one connection table, for all pod traffic: plain pod connections,
 * service connections (lb.h, nodeport.h) and masqueraded ones (snat.h)
 * alike. Flow state and policy verdicts (later issues) live in the same
 * entries.
 *
 * One entry per direction, keyed by the 5-tuple exactly as that direction's
 * packets carry it on the wire, so a single lookup on the packet's own tuple
 * tells "is this a tracked connection", "which way is it going" and "what
 * does it become":
 *
 *   plain    A:ap -> B:bp          xlate  A:ap -> B:bp  (itself)
 *            B:bp -> A:ap          xlate  B:bp -> A:ap  REVERSE
 *   service  client:cport -> VIP:vport      xlate  client':cport -> backend:bport
 *            backend:bport -> client':cport xlate  VIP:vport -> client:cport  REVERSE
 *   masq     pod:pp -> remote:rp   xlate  node:np -> remote:rp  MASQ
 *            remote:rp -> node:np  xlate  remote:rp -> pod:pp   MASQ|REVERSE
 *
 * (client' is the client, or the hairpin address when a pod reached itself.)
 * Swapping source and destination of the xlate tuple gives the key of the
 * partner entry, which is how the agent's GC and the FIN/RST handling find
 * the other direction. Two entries per connection rather than one looked up
 * twice (tuple, then reversed tuple): every packet costs one lookup, which
 * matters most in XDP, and a NATed reply's key (node:np) could not be
 * derived from its packet anyway.
 *
 * Who creates what: from_pod the connections a local pod opens (plain or
 * service), the hooks that deliver into a local pod those that reach it
 * from elsewhere (plain), the uplink NodePort connections (nodeport.h) and
 * to_netdev masqueraded ones (snat.h). All through ct_create (one entry
 * pair) and, where a port must be claimed, ct_claim_port.
 *
 * The map is a plain, preallocated HASH and deliberately not LRU: evicting a
 * live entry would silently move a connection to another backend (or leave
 * its replies untranslated). Instead each local endpoint holds at most a
 * share of the table, and the node (connections from outside through
 * NodePorts) a share of its own, so nothing outside the node can fill the
 * table. The node's full share and a full NAT port range first shed
 * connections that may go (ct_may_evict: expired, closed, or from outside
 * and never confirmed); then, and on a full table, new translated
 * connections are refused, counted under their reason, until the agent's
 * GC makes room; a plain connection goes on untracked (nothing depends on
 * its entry yet).
 *
 * The key, the entry and their flags are ABI (abi.h). */
#ifndef WEIR_CONNTRACK_H
#define WEIR_CONNTRACK_H

#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include "common.h"
#include "abi.h"
#include "ipv4.h"
#include "flow.h"
#include "policy.h"

/* Every timeout in one place. Entries are refreshed to now + timeout on each
 * packet; an entry past its deadline is only removed by the agent's GC, and
 * only when its partner has expired too (a connection lives while either
 * direction is active). */
#define WEIR_CT_TIMEOUT_TCP_SYN (60ULL * WEIR_NSEC_PER_SEC)
#define WEIR_CT_TIMEOUT_TCP_ESTABLISHED (6ULL * 3600 * WEIR_NSEC_PER_SEC)
#define WEIR_CT_TIMEOUT_TCP_CLOSING (10ULL * WEIR_NSEC_PER_SEC)
#define WEIR_CT_TIMEOUT_UDP (60ULL * WEIR_NSEC_PER_SEC)
#define WEIR_CT_TIMEOUT_OTHER (30ULL * WEIR_NSEC_PER_SEC)

/* TCP flag bits, byte 13 of the TCP header. */
#define WEIR_TCP_FIN 0x01
#define WEIR_TCP_SYN 0x02
#define WEIR_TCP_RST 0x04
#define WEIR_TCP_ACK 0x10

#define ICMP_ECHOREPLY 0
#define ICMP_ECHO 8

/* Random port claims before giving up: with a quarter of a range taken for
 * one remote endpoint, eight tries all fail with probability 1.5e-5. */
#define WEIR_CT_CLAIM_TRIES 8

#ifndef EEXIST
#define EEXIST 17
#endif
#ifndef E2BIG
#define E2BIG 7 /* a full hash map */
#endif

/* The flags that make an entry a translated one: from_pod follows those. */
#define WEIR_CT_F_XLATE (WEIR_CT_F_HAIRPIN | WEIR_CT_F_NODEPORT | WEIR_CT_F_SNAT)

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, WEIR_CT_MAX_ENTRIES);
	__type(key, struct weir_ct_key);
	__type(value, struct weir_ct_entry);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} weir_ct4 SEC(".maps");

/* Per endpoint: what the datapath charged and released (abi.h). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, WEIR_MAX_ENDPOINTS);
	__type(key, __u32);
	__type(value, struct weir_ep_ct_count);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} weir_ep_ct SEC(".maps");

/* Per endpoint: what the agent's GC and flushes released. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, WEIR_MAX_ENDPOINTS);
	__type(key, __u32);
	__type(value, __u64);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} weir_ep_ct_released SEC(".maps");

/* Room for one entry being made (ct_create_plain), off the stack. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct weir_ct_entry);
} weir_ct_scratch SEC(".maps");

/* The share of one endpoint, and the node's (the loader may narrow them:
 * tests do). */
volatile const __u32 weir_ct_endpoint_max = WEIR_CT_ENDPOINT_MAX_DEFAULT;
volatile const __u32 weir_ct_node_max = WEIR_CT_NODE_MAX_DEFAULT;

/* The forward keys of the node's connections (WEIR_CT_OWNER_NODE), in the
 * order they came, in a ring of one slot per connection its share holds:
 * the slot the head reaches next holds the oldest record, the one
 * ct_node_room looks at first when the share is full. A record may be
 * stale (the connection ended, or its key was reused): ct_evict checks
 * what the table holds before anything goes. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, WEIR_CT_NODE_RING);
	__type(key, __u32);
	__type(value, struct weir_ct_key);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} weir_ct_node_ring SEC(".maps");

/* The keys of connections as they close (either direction's), in a ring:
 * when the table is full, the oldest of them go (ct_reclaim_closed), so a
 * pod that opens and closes connections fast (an ingress controller) does
 * not fill the table for everyone while its closed ones wait for the GC. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, WEIR_CT_CLOSED_RING);
	__type(key, __u32);
	__type(value, struct weir_ct_key);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} weir_ct_closed_ring SEC(".maps");

/* The rings' counters (WEIR_CT_RING_*): how many slots each ever took,
 * and for the closed ring how many records were ever read (its tail: it
 * is read oldest first, while the node ring is full whenever it is read). */
#define WEIR_CT_RING_NODE 0
#define WEIR_CT_RING_CLOSED 1
#define WEIR_CT_RING_CLOSED_TAIL 2
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 3);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} weir_ct_ring_heads SEC(".maps");

/* Datagram -> its ports, from the first fragment (abi.h). LRU: a lost
 * record only costs that datagram its later fragments, dropped and
 * counted as WEIR_DROP_FRAG_NOT_FOUND; a full table must not stop
 * recording new datagrams. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, WEIR_FRAG_MAX_ENTRIES);
	__type(key, struct weir_frag_key);
	__type(value, struct weir_frag_ports);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} weir_frag4 SEC(".maps");

static __always_inline __u64 ct_timeout(__u8 proto, __u8 state)
{
	if (proto == IPPROTO_TCP) {
		if (state == WEIR_CT_ESTABLISHED)
			return WEIR_CT_TIMEOUT_TCP_ESTABLISHED;
		if (state == WEIR_CT_CLOSING)
			return WEIR_CT_TIMEOUT_TCP_CLOSING;
		return WEIR_CT_TIMEOUT_TCP_SYN;
	}
	if (proto == IPPROTO_UDP)
		return WEIR_CT_TIMEOUT_UDP;
	return WEIR_CT_TIMEOUT_OTHER;
}

/* The state a TCP packet with these flags moves an entry to. CLOSING is
 * sticky until a fresh SYN (port reuse) starts over; a SYN+ACK or a bare SYN
 * keeps the short handshake timeout; anything else with ACK means the
 * handshake completed (a client only ACKs after seeing the SYN+ACK). */
static __always_inline __u8 ct_next_state(__u8 cur, __u8 tcp_flags)
{
	if (tcp_flags & (WEIR_TCP_FIN | WEIR_TCP_RST))
		return WEIR_CT_CLOSING;
	if (tcp_flags & WEIR_TCP_SYN)
		return cur == WEIR_CT_ESTABLISHED ? cur : WEIR_CT_SYN_SENT;
	if (cur == WEIR_CT_CLOSING)
		return cur;
	if (tcp_flags & WEIR_TCP_ACK)
		return WEIR_CT_ESTABLISHED;
	return cur;
}

/* The key of the other direction's entry. */
static __always_inline void ct_partner_key(const struct weir_ct_entry *e, __u8 proto, struct weir_ct_key *out)
{
	out->saddr = e->xlate_daddr;
	out->daddr = e->xlate_saddr;
	out->sport = e->xlate_dport;
	out->dport = e->xlate_sport;
	out->proto = proto;
}

/* The key of the partner of an entry nothing translates. */
static __always_inline void ct_partner_key_of(const struct weir_ct_key *key, struct weir_ct_key *out)
{
	out->saddr = key->daddr;
	out->daddr = key->saddr;
	out->sport = key->dport;
	out->dport = key->sport;
	out->proto = key->proto;
}

/* The tuple a packet following this entry becomes. */
static __always_inline void ct_xlate_tuple(const struct weir_ct_entry *e, __u8 proto, struct weir_ct_key *out)
{
	out->saddr = e->xlate_saddr;
	out->daddr = e->xlate_daddr;
	out->sport = e->xlate_sport;
	out->dport = e->xlate_dport;
	out->proto = proto;
}

/* A fresh SYN on a closed or expired (not yet collected) forward entry is
 * port reuse: a new connection, which deserves a fresh decision (a live
 * backend, a fresh node port) rather than the old one. */
static __always_inline int ct_is_reuse(const struct weir_ct_entry *e, __u8 proto, __u8 tcp_flags, __u64 now)
{
	return !(e->flags & WEIR_CT_F_REVERSE) && proto == IPPROTO_TCP &&
	       (tcp_flags & (WEIR_TCP_SYN | WEIR_TCP_ACK)) == WEIR_TCP_SYN &&
	       (e->state == WEIR_CT_CLOSING || e->expires_ns < now);
}

/* The WEIR_CT_SEEN_* bits a TCP packet's flags stand for. */
static __always_inline __u8 ct_seen_bits(__u8 tcp_flags)
{
	__u8 bits = 0;

	if (tcp_flags & WEIR_TCP_SYN)
		bits |= (tcp_flags & WEIR_TCP_ACK) ? WEIR_CT_SEEN_SYNACK : WEIR_CT_SEEN_SYN;
	if (tcp_flags & WEIR_TCP_FIN)
		bits |= WEIR_CT_SEEN_FIN;
	if (tcp_flags & WEIR_TCP_RST)
		bits |= WEIR_CT_SEEN_RST;
	return bits;
}

/* A connection's event (flow.h): `what` packs the kind, the packet's TCP
 * flags (<< 8) and the WEIR_CT_SEEN_* bits it set first (<< 16). The other
 * direction's counters come with an update and the end. Not inlined: the
 * conntrack reports from several places in one program, and the event's
 * code (and stack) once is cheaper than at every one of them; written
 * straight into the ring buffer to keep that stack small, since it adds
 * to the deepest caller's. */
static __noinline void ct_report(struct __ctx_buff *ctx, const struct weir_ct_key *key,
				 const struct weir_ct_entry *e, __u32 what, __u64 now)
{
	__u8 kind = what & 0xff, fresh = (what >> 16) & 0xff;
	struct weir_ct_entry *p;
	struct weir_event *ev;

	ev = flow_begin(ctx, kind);
	if (!ev)
		return;
	if (kind == WEIR_EV_FLOW_END || kind == WEIR_EV_FLOW_UPDATE) {
		/* The partner's counters. Its key is built in the record's
		 * tuple (no stack for it), which flow_ct_fill then overwrites. */
		ct_partner_key(e, key->proto, &ev->tuple);
		p = bpf_map_lookup_elem(&weir_ct4, &ev->tuple);
		if (p) {
			ev->rev_packets = p->packets;
			ev->rev_bytes = p->bytes;
		}
	}
	flow_ct_fill(ev, key, e, (what >> 8) & 0xff);
	/* The answer to the SYN: both entries share created_ns. */
	if ((fresh & WEIR_CT_SEEN_SYNACK) && (e->flags & WEIR_CT_F_REVERSE))
		ev->handshake_ns = now - e->created_ns;
	bpf_ringbuf_submit(ev, 0);
}

/* May `owner` be charged `n` more entries? Owner 0 is no one (an entry
 * of a closed connection, or one nothing charges), unbounded; the node
 * (WEIR_CT_OWNER_NODE) has a share of its own. */
static __always_inline int ct_charge_ok(__u32 owner, __u32 n)
{
	__u32 max = owner == WEIR_CT_OWNER_NODE ? weir_ct_node_max : weir_ct_endpoint_max;
	struct weir_ep_ct_count *c;
	__u64 *released, charged;

	if (!owner)
		return 1;
	c = bpf_map_lookup_elem(&weir_ep_ct, &owner);
	if (!c)
		return 1;
	released = bpf_map_lookup_elem(&weir_ep_ct_released, &owner);
	charged = c->created - c->dp_released - (released ? *released : 0);
	/* Unsigned wrap (counters replaced on an upgrade): nothing charged. */
	if (charged > WEIR_CT_MAX_ENTRIES)
		charged = 0;
	return charged + n <= max;
}

/* `owner` now holds `n` more entries (n may be negative: entries the
 * datapath removed itself). */
static __always_inline void ct_charge(__u32 owner, __s64 n)
{
	struct weir_ep_ct_count zero = {}, *c;

	if (!owner || !n)
		return;
	c = bpf_map_lookup_elem(&weir_ep_ct, &owner);
	if (!c) {
		bpf_map_update_elem(&weir_ep_ct, &owner, &zero, BPF_NOEXIST);
		c = bpf_map_lookup_elem(&weir_ep_ct, &owner);
		if (!c)
			return;
	}
	if (n > 0)
		__sync_fetch_and_add(&c->created, (__u64)n);
	else
		__sync_fetch_and_add(&c->dp_released, (__u64)-n);
}

/* A closed connection stops counting against its endpoint's share: its
 * entries stay CLOSING for WEIR_CT_TIMEOUT_TCP_CLOSING (late retransmits
 * still find them) and the GC collects them later, but a pod that opens
 * and closes connections fast is held to what it has open, not to what it
 * closed in the last GC interval. The exchange hands the charge back once
 * however many CPUs see the connection close; an entry whose owner is 0
 * is charged to no one (the GC and the replacing paths read it so). */
static __always_inline void ct_release_closed(struct weir_ct_entry *e)
{
	ct_charge(__sync_lock_test_and_set(&e->owner, 0), -1);
}

/* The endpoint the entry under `key` is charged to; 0 for none or no entry. */
static __always_inline __u32 ct_owner_at(const struct weir_ct_key *key)
{
	struct weir_ct_entry *e = bpf_map_lookup_elem(&weir_ct4, key);

	return e ? e->owner : 0;
}

/* An entry charged to `owner` took the place of one charged to `was`
 * (0: a new entry, or one a closed connection left, charged to no one). */
static __always_inline void ct_recharge(__u32 was, __u32 owner)
{
	if (was == owner)
		return;
	ct_charge(was, -1);
	ct_charge(owner, 1);
}

/* May a connection go before anyone is refused? `e` is one of its
 * entries and `p` its partner (NULL when gone). Yes when both directions
 * are past their deadline (only the GC has not come yet), when it closed
 * (TCP; late retransmits lose their entry, nothing else), and, for a
 * connection from outside (NodePort), when it was never confirmed: a TCP
 * handshake the client never completed (a spoofed SYN's), or a datagram
 * its client never followed up (one packet). A live connection never goes:
 * evicting it would move it to another backend. */
static __always_inline int ct_may_evict(const struct weir_ct_entry *e, const struct weir_ct_entry *p, __u8 proto,
					__u64 now)
{
	const struct weir_ct_entry *fwd;

	if (e->expires_ns < now && (!p || p->expires_ns < now))
		return 1;
	if (proto == IPPROTO_TCP && (e->state == WEIR_CT_CLOSING || (p && p->state == WEIR_CT_CLOSING)))
		return 1;
	if (!(e->flags & WEIR_CT_F_NODEPORT))
		return 0;
	if (e->flags & WEIR_CT_F_REVERSE) {
		if (!p)
			return 0;
		fwd = p;
	} else {
		fwd = e;
	}
	if (proto == IPPROTO_TCP)
		return fwd->state != WEIR_CT_ESTABLISHED;
	return fwd->packets <= 1;
}

/* Removes the connection with an entry at `key` (either direction) if
 * ct_may_evict lets it go, handing its charge back; with `dry` only says
 * whether it would. 1 when it goes (or would). Not inlined: called from
 * the port claim's loop and the ring's. */
static __noinline int ct_evict(const struct weir_ct_key *key, __u64 now, int dry)
{
	struct weir_ct_key pkey = {}, back = {};
	struct weir_ct_entry *e, *p;

	e = bpf_map_lookup_elem(&weir_ct4, key);
	if (!e)
		return 0;
	ct_partner_key(e, key->proto, &pkey);
	p = bpf_map_lookup_elem(&weir_ct4, &pkey);
	if (p) {
		/* Only the partner if it still points back (the GC may have
		 * taken the old one and a new connection its key). */
		ct_partner_key(p, key->proto, &back);
		if (back.saddr != key->saddr || back.daddr != key->daddr || back.sport != key->sport ||
		    back.dport != key->dport)
			p = NULL;
	}
	if (!ct_may_evict(e, p, key->proto, now))
		return 0;
	if (dry)
		return 1;
	/* The exchange: a FIN on another CPU may release them too. */
	ct_charge(__sync_lock_test_and_set(&e->owner, 0), -1);
	bpf_map_delete_elem(&weir_ct4, key);
	if (p) {
		ct_charge(__sync_lock_test_and_set(&p->owner, 0), -1);
		bpf_map_delete_elem(&weir_ct4, &pkey);
	}
	return 1;
}

/* Evictions tried before a new connection of the node is refused. */
#define WEIR_CT_EVICT_TRIES 4

/* The index of a ring's next slot (its oldest record) among `slots`. */
static __always_inline int ct_ring_next(__u32 ring, __u32 slots, __u32 *idx)
{
	__u64 *head = bpf_map_lookup_elem(&weir_ct_ring_heads, &ring);

	if (!head || !slots)
		return -1;
	*idx = __sync_fetch_and_add(head, 1) % slots;
	return 0;
}

/* Takes the node ring's next slot: the oldest record. */
static __always_inline struct weir_ct_key *ct_node_ring_next(void)
{
	__u32 slots = weir_ct_node_max / 2, idx;

	if (slots > WEIR_CT_NODE_RING)
		slots = WEIR_CT_NODE_RING;
	if (!slots)
		slots = 1;
	if (ct_ring_next(WEIR_CT_RING_NODE, slots, &idx))
		return NULL;
	return bpf_map_lookup_elem(&weir_ct_node_ring, &idx);
}

/* Records a connection that just closed, by one of its keys. */
static __always_inline void ct_closed_record(const struct weir_ct_key *key)
{
	struct weir_ct_key *slot;
	__u32 idx;

	if (ct_ring_next(WEIR_CT_RING_CLOSED, WEIR_CT_CLOSED_RING, &idx))
		return;
	slot = bpf_map_lookup_elem(&weir_ct_closed_ring, &idx);
	if (slot)
		*slot = *key;
}

/* A full table sheds the oldest recorded closed connection that is still
 * there and still closed (a record may be stale: the GC took it, or its
 * tuple was reused). Records are read from the tail; one the head has
 * lapped was overwritten by a newer one, so the tail skips to the oldest
 * left. Racing CPUs may read one record twice or skip one: either is
 * harmless. 1 when one went. Not inlined: three rare paths call it. */
static __noinline int ct_reclaim_closed(__u64 now)
{
	__u32 head_at = WEIR_CT_RING_CLOSED, tail_at = WEIR_CT_RING_CLOSED_TAIL, idx;
	struct weir_ct_key *slot, old;
	__u64 *head, *tail, h;
	int i;

	head = bpf_map_lookup_elem(&weir_ct_ring_heads, &head_at);
	tail = bpf_map_lookup_elem(&weir_ct_ring_heads, &tail_at);
	if (!head || !tail)
		return 0;
	for (i = 0; i < WEIR_CT_EVICT_TRIES; i++) {
		h = *head;
		if (*tail >= h)
			return 0; /* nothing recorded that was not read */
		if (h - *tail > WEIR_CT_CLOSED_RING)
			*tail = h - WEIR_CT_CLOSED_RING;
		idx = __sync_fetch_and_add(tail, 1) % WEIR_CT_CLOSED_RING;
		slot = bpf_map_lookup_elem(&weir_ct_closed_ring, &idx);
		if (!slot)
			return 0;
		old = *slot;
		slot->proto = 0;
		if (old.proto && ct_evict(&old, now, 0))
			return 1;
	}
	return 0;
}

/* Room in the node's share for a new connection under `key` needing `n`
 * entries, recorded in the ring. When the share is full, the oldest
 * records are looked at: a connection ct_may_evict lets go (a handshake a
 * SYN flood never completed, first of all) makes the room; an established
 * one keeps its place. So a flood from outside competes with itself, and
 * a genuine client, whose handshake completes in a round trip, gets in.
 * 1 when there is room. */
static __always_inline int ct_node_room(const struct weir_ct_key *key, __u32 n, __u64 now)
{
	struct weir_ct_key *slot, old;
	int i;

	for (i = 0; i < WEIR_CT_EVICT_TRIES; i++) {
		slot = ct_node_ring_next();
		if (!slot)
			return ct_charge_ok(WEIR_CT_OWNER_NODE, n);
		old = *slot;
		*slot = *key;
		if (ct_charge_ok(WEIR_CT_OWNER_NODE, n))
			return 1;
		if (old.proto)
			ct_evict(&old, now, 0);
		if (ct_charge_ok(WEIR_CT_OWNER_NODE, n))
			return 1;
	}
	return 0;
}

/* Counts a packet and pushes the deadline out. FIN or RST closes the whole
 * connection: without that the quiet side of a reset connection would keep
 * its entry for the established timeout. Racing CPUs may both write
 * state/expires/seen: either value is a valid outcome (at worst an event
 * is reported twice), so no lock.
 *
 * The flow events of a live connection come from here: the first packet
 * of the answering direction, the first SYN, SYN-ACK, FIN or RST of each
 * direction (FIN and RST end the flow, with the counters of both
 * directions), and otherwise one update every weir_flow_report_ns. */
static __always_inline void ct_refresh(struct __ctx_buff *ctx, const struct weir_ct_key *key,
				       struct weir_ct_entry *e, __u8 tcp_flags, __u64 now)
{
	__u8 proto = key->proto;
	__u8 state = e->state;
	__u32 kind = 0;
	__u8 fresh = 0;
	int first;

	if (proto == IPPROTO_TCP)
		state = ct_next_state(state, tcp_flags);
	if (state != e->state) {
		if (state == WEIR_CT_CLOSING)
			ct_closed_record(key);
		e->state = state;
	}
	if (state == WEIR_CT_CLOSING && e->owner)
		ct_release_closed(e);
	e->expires_ns = now + ct_timeout(proto, state);
	first = e->packets == 0;
	__sync_fetch_and_add(&e->packets, 1);
	__sync_fetch_and_add(&e->bytes, ctx_len(ctx));

	if (proto == IPPROTO_TCP && (tcp_flags & (WEIR_TCP_FIN | WEIR_TCP_RST))) {
		struct weir_ct_key pkey = {};
		struct weir_ct_entry *p;

		ct_partner_key(e, proto, &pkey);
		p = bpf_map_lookup_elem(&weir_ct4, &pkey);
		if (p && p->state != WEIR_CT_CLOSING) {
			p->state = WEIR_CT_CLOSING;
			p->expires_ns = now + WEIR_CT_TIMEOUT_TCP_CLOSING;
		}
		if (p && p->owner)
			ct_release_closed(p);
	}

	if (!weir_flow_events)
		return;
	if (proto == IPPROTO_TCP)
		fresh = ct_seen_bits(tcp_flags) & ~e->seen;
	if (fresh) {
		e->seen |= fresh;
		kind = (fresh & (WEIR_CT_SEEN_FIN | WEIR_CT_SEEN_RST)) ? WEIR_EV_FLOW_END : WEIR_EV_TCP;
	} else if (first) {
		kind = WEIR_EV_FLOW_START;
	} else if (now - e->report_ns >= weir_flow_report_ns) {
		kind = WEIR_EV_FLOW_UPDATE;
	}
	if (kind) {
		e->report_ns = now;
		ct_report(ctx, key, e, kind | ((__u32)tcp_flags << 8) | ((__u32)fresh << 16), now);
	}
}

/* A new forward entry for a packet with this tuple and these flags,
 * translated to `to`; *rev gets its partner (translated back to the tuple)
 * and *rkey its key. */
static __always_inline void ct_new_pair(const struct weir_ct_key *key, const struct weir_ct_key *to, __u8 tcp_flags,
					__u32 len, __u64 now, __u32 service_id, __u8 flags, struct weir_ct_entry *fwd,
					struct weir_ct_key *rkey, struct weir_ct_entry *rev)
{
	fwd->xlate_saddr = to->saddr;
	fwd->xlate_daddr = to->daddr;
	fwd->xlate_sport = to->sport;
	fwd->xlate_dport = to->dport;
	fwd->service_id = service_id;
	fwd->flags = flags;
	fwd->state = key->proto == IPPROTO_TCP ? ct_next_state(WEIR_CT_NEW, tcp_flags) : WEIR_CT_NEW;
	fwd->expires_ns = now + ct_timeout(key->proto, fwd->state);
	fwd->packets = 1;
	fwd->bytes = len;
	fwd->created_ns = fwd->report_ns = now;
	fwd->seen = key->proto == IPPROTO_TCP ? ct_seen_bits(tcp_flags) : 0;

	ct_partner_key(fwd, key->proto, rkey);
	rev->xlate_saddr = key->daddr;
	rev->xlate_daddr = key->saddr;
	rev->xlate_sport = key->dport;
	rev->xlate_dport = key->sport;
	rev->service_id = service_id;
	rev->flags = flags | WEIR_CT_F_REVERSE;
	rev->state = fwd->state;
	rev->expires_ns = fwd->expires_ns;
	rev->created_ns = rev->report_ns = now;
}

/* Does a socket of the node already own this reply tuple, i.e. would the
 * stack take a packet rkey as its own? (TC and XDP both have the helpers.) */
static __always_inline int ct_node_socket(void *ctx, const struct weir_ct_key *rkey)
{
	struct bpf_sock_tuple t = {};
	struct bpf_sock *sk;

	t.ipv4.saddr = rkey->saddr;
	t.ipv4.daddr = rkey->daddr;
	t.ipv4.sport = rkey->sport;
	t.ipv4.dport = rkey->dport;
	if (rkey->proto == IPPROTO_TCP)
		sk = bpf_skc_lookup_tcp(ctx, &t, sizeof(t.ipv4), BPF_F_CURRENT_NETNS, 0);
	else if (rkey->proto == IPPROTO_UDP)
		sk = bpf_sk_lookup_udp(ctx, &t, sizeof(t.ipv4), BPF_F_CURRENT_NETNS, 0);
	else
		return 0; /* ping sockets' identifiers are not looked up */
	if (!sk)
		return 0;
	bpf_sk_release(sk);
	return 1;
}

/* Claims a port for a NATed connection, the one loop that does: *rkey (the
 * reply's key, every field set but the port `port` points into) gets a
 * random port of [min, min + span) that no entry holds yet, and `rev` is
 * inserted under it; that insertion with BPF_NOEXIST is the reservation,
 * so two connections are never handed the same reply tuple. With
 * `skip_sockets` a port a node socket holds towards the same remote (or
 * listens on) is skipped too. 0, or -WEIR_DROP_*: `no_port` when every try
 * was taken, `full` when the table is full. */
static __always_inline int ct_claim_port(void *ctx, struct weir_ct_key *rkey, __be16 *port,
					 const struct weir_ct_entry *rev, __u32 min, __u32 span, int skip_sockets,
					 __u32 no_port, __u32 full)
{
	__u64 now = bpf_ktime_get_ns(), oldest = ~0ULL;
	struct weir_ct_entry *held;
	__be16 victim = 0;
	__u32 i;
	int err;

	/* The pair this claim starts: its endpoint must have room for both. */
	if (!ct_charge_ok(rev->owner, 2))
		return rev->owner == WEIR_CT_OWNER_NODE ? -WEIR_DROP_CT_NODE_LIMIT : -WEIR_DROP_CT_ENDPOINT_LIMIT;
	for (i = 0; i < WEIR_CT_CLAIM_TRIES; i++) {
		*port = bpf_htons(min + bpf_get_prandom_u32() % span);
		if (skip_sockets && ct_node_socket(ctx, rkey))
			continue; /* as if another connection held it */
		err = bpf_map_update_elem(&weir_ct4, rkey, rev, BPF_NOEXIST);
		/* A full table sheds a closed connection once; it will not
		 * empty itself by trying again. */
		if (err == -E2BIG && ct_reclaim_closed(now))
			err = bpf_map_update_elem(&weir_ct4, rkey, rev, BPF_NOEXIST);
		if (!err) {
			ct_charge(rev->owner, 1);
			return 0;
		}
		if (err != -EEXIST)
			return -(int)full;
		/* Taken: the oldest holder that may go is the fallback. */
		held = bpf_map_lookup_elem(&weir_ct4, rkey);
		if (held && held->created_ns < oldest && ct_evict(rkey, now, 1)) {
			oldest = held->created_ns;
			victim = *port;
		}
	}
	/* Every try was taken (a SYN flood holds the range): the oldest
	 * connection among them that never completed, or that ended, goes and
	 * its port is this one's. */
	if (victim) {
		*port = victim;
		if (ct_evict(rkey, now, 0) && !bpf_map_update_elem(&weir_ct4, rkey, rev, BPF_NOEXIST)) {
			ct_charge(rev->owner, 1);
			return 0;
		}
	}
	return -(int)no_port;
}

/* Inserts a connection: the forward entry under key (replacing one only
 * when `replace`, a reused tuple), then its partner under rkey unless the
 * caller claimed that already (`have_rev`). 0 when inserted, 1 when
 * another CPU created the connection first (the caller follows its entry;
 * a claimed reply key is given back), -1 when the table is full, -2 when
 * the entries' endpoint holds its share already (nothing is left behind).
 * What is inserted is charged to fwd->owner. */
static __always_inline int ct_create(struct __ctx_buff *ctx, const struct weir_ct_key *key,
				     const struct weir_ct_entry *fwd, const struct weir_ct_key *rkey,
				     const struct weir_ct_entry *rev, __u8 tcp_flags, int replace, int have_rev)
{
	__u32 was_fwd = replace ? ct_owner_at(key) : 0, was_rev = 0;
	__u64 flags = replace ? BPF_ANY : BPF_NOEXIST;
	int err;

	if (!have_rev && !ct_charge_ok(fwd->owner, replace ? 1 : 2))
		return -2;
	/* A full table sheds closed connections first, one per entry needed. */
	err = bpf_map_update_elem(&weir_ct4, key, fwd, flags);
	if (err == -E2BIG && ct_reclaim_closed(fwd->created_ns))
		err = bpf_map_update_elem(&weir_ct4, key, fwd, flags);
	if (err) {
		if (have_rev) {
			bpf_map_delete_elem(&weir_ct4, rkey);
			ct_charge(rev->owner, -1);
		}
		return bpf_map_lookup_elem(&weir_ct4, key) ? 1 : -1;
	}
	if (!have_rev) {
		was_rev = ct_owner_at(rkey);
		err = bpf_map_update_elem(&weir_ct4, rkey, rev, BPF_ANY);
		if (err == -E2BIG && ct_reclaim_closed(fwd->created_ns))
			err = bpf_map_update_elem(&weir_ct4, rkey, rev, BPF_ANY);
		if (err) {
			/* Without its reverse entry the replies would escape untracked. */
			bpf_map_delete_elem(&weir_ct4, key);
			ct_charge(was_fwd, -1);
			return -1;
		}
		ct_recharge(was_rev, rev->owner);
	}
	/* A replaced forward entry hands its charge over (none if closed). */
	ct_recharge(was_fwd, fwd->owner);
	if (weir_flow_events)
		ct_report(ctx, key, fwd, WEIR_EV_FLOW_START | ((__u32)tcp_flags << 8), fwd->created_ns);
	return 0;
}

/* Tracks a connection nothing translates (the xlate tuple is the tuple
 * itself), replacing a stale entry of the tuple when `how` has
 * WEIR_CT_PLAIN_REPLACE (its low byte: the packet's TCP flags), charged to
 * `owner`, with the policy verdicts policy[0] (egress) and policy[1]
 * (ingress). A packet whose reverse tuple is tracked already is the other
 * half of a known connection (a NodePort backend's view of a connection
 * XDP translated, say) and gets no entries of its own: overwriting that
 * reverse entry would cut the known connection off. Best effort: a full
 * table leaves the connection untracked; 1 when it made the entries
 * (then the caller reports the flow start: ct_report_created). Not inlined: its two entries
 * would otherwise sit in the deepest callers' frames. */
#define WEIR_CT_PLAIN_REPLACE 0x100
static __noinline __attribute__((unused)) int ct_create_plain(struct __ctx_buff *ctx, const struct weir_ct_key *key,
							       __u32 how, __u32 owner, const __u32 *policy)
{
	/* One entry, in per-CPU scratch rather than on the stack (this frame
	 * adds to its callers' deepest), made the forward one, then turned
	 * into its partner. */
	struct weir_ct_key rkey = {};
	struct weir_ct_entry *e;
	__u32 zero = 0;
	__u8 tcp_flags = how & 0xff;
	int replace = !!(how & WEIR_CT_PLAIN_REPLACE);
	__u64 now = bpf_ktime_get_ns();
	__u32 was_fwd, was_rev;

	ct_partner_key_of(key, &rkey);
	if (!replace && bpf_map_lookup_elem(&weir_ct4, &rkey))
		return 0;
	/* Over its share the connection goes on untracked, like a full table. */
	if (!ct_charge_ok(owner, replace ? 1 : 2))
		return 0;
	e = bpf_map_lookup_elem(&weir_ct_scratch, &zero);
	if (!e)
		return 0;
	__builtin_memset(e, 0, sizeof(*e));
	e->xlate_saddr = key->saddr;
	e->xlate_daddr = key->daddr;
	e->xlate_sport = key->sport;
	e->xlate_dport = key->dport;
	e->state = key->proto == IPPROTO_TCP ? ct_next_state(WEIR_CT_NEW, tcp_flags) : WEIR_CT_NEW;
	e->expires_ns = now + ct_timeout(key->proto, e->state);
	e->packets = 1;
	e->bytes = ctx_len(ctx);
	e->created_ns = e->report_ns = now;
	e->seen = key->proto == IPPROTO_TCP ? ct_seen_bits(tcp_flags) : 0;
	e->owner = owner;
	e->policy_egress = policy[0];
	e->policy_ingress = policy[1];
	e->policy_rev = policy_revision();
	was_fwd = replace ? ct_owner_at(key) : 0;
	if (bpf_map_update_elem(&weir_ct4, key, e, replace ? BPF_ANY : BPF_NOEXIST))
		return 0;
	was_rev = replace ? ct_owner_at(&rkey) : 0;
	/* The partner: the tuple reversed, as ct_new_pair makes it. */
	e->xlate_saddr = key->daddr;
	e->xlate_daddr = key->saddr;
	e->xlate_sport = key->dport;
	e->xlate_dport = key->sport;
	e->flags = WEIR_CT_F_REVERSE;
	e->packets = 0;
	e->bytes = 0;
	e->seen = 0;
	if (bpf_map_update_elem(&weir_ct4, &rkey, e, replace ? BPF_ANY : BPF_NOEXIST)) {
		bpf_map_delete_elem(&weir_ct4, key);
		ct_charge(was_fwd, -1);
		return 0;
	}
	ct_recharge(was_fwd, owner);
	ct_recharge(was_rev, owner);
	return 1;
}

/* The flow start of a connection ct_create_plain made: reported by the
 * caller, so the event's frame is not stacked on ct_create_plain's. */
static __always_inline void ct_report_created(struct __ctx_buff *ctx, const struct weir_ct_key *key, __u8 tcp_flags)
{
	struct weir_ct_entry *fwd;

	if (!weir_flow_events)
		return;
	fwd = bpf_map_lookup_elem(&weir_ct4, key);
	if (fwd)
		ct_report(ctx, key, fwd, WEIR_EV_FLOW_START | ((__u32)tcp_flags << 8), fwd->created_ns);
}

/* Reads the packet's tuple into key: TCP, UDP and SCTP ports, or an ICMP
 * echo's identifier (see abi.h). *l4_flags gets TCP's flags, or the ICMP
 * type (an echo request and reply of identifier 0 have the same tuple).
 * Fragments: the first one's ports are recorded in weir_frag4, and a later
 * one (no L4 header; meta->later_fragment) gets them from there, so every
 * fragment of a datagram follows its connection; a later fragment whose
 * first one was not seen is -WEIR_DROP_FRAG_NOT_FOUND. Returns 1 when there
 * is a tuple, 0 when the packet has none to track (another protocol,
 * another ICMP type), or -reason. */
static __always_inline int ct_tuple(struct __ctx_buff *ctx, const struct ipv4_meta *meta, struct weir_ct_key *key,
				    __u8 *l4_flags)
{
	struct weir_frag_key fkey = {};
	struct weir_frag_ports *seen;
	__be16 ports[2] = {};
	__be16 id;
	__u8 icmp[2];

	switch (meta->protocol) {
	case IPPROTO_SCTP:
	case IPPROTO_TCP:
	case IPPROTO_UDP:
	case IPPROTO_ICMP:
		break;
	default:
		return 0;
	}
	key->saddr = meta->saddr;
	key->daddr = meta->daddr;
	key->proto = meta->protocol;
	fkey.saddr = meta->saddr;
	fkey.daddr = meta->daddr;
	fkey.id = meta->ip_id;
	fkey.proto = meta->protocol;
	if (meta->later_fragment) {
		seen = bpf_map_lookup_elem(&weir_frag4, &fkey);
		if (!seen)
			return -WEIR_DROP_FRAG_NOT_FOUND;
		key->sport = seen->sport;
		key->dport = seen->dport;
		*l4_flags = 0;
		return 1;
	}
	switch (meta->protocol) {
	case IPPROTO_SCTP:
		/* ipv4_parse does not know SCTP: its common header is 12 bytes. */
		if (meta->l4_off + 12 > ctx_len(ctx))
			return -WEIR_DROP_TRUNCATED_L4;
		/* fallthrough */
	case IPPROTO_TCP:
	case IPPROTO_UDP:
		if (ctx_load_bytes(ctx, meta->l4_off, ports, sizeof(ports)))
			return -WEIR_DROP_TRUNCATED_L4;
		if (meta->protocol == IPPROTO_TCP && ctx_load_bytes(ctx, meta->l4_off + 13, l4_flags, 1))
			return -WEIR_DROP_TRUNCATED_L4;
		break;
	default: /* ICMP */
		if (ctx_load_bytes(ctx, meta->l4_off, icmp, sizeof(icmp)))
			return -WEIR_DROP_TRUNCATED_L4;
		if ((icmp[0] != ICMP_ECHO && icmp[0] != ICMP_ECHOREPLY) || icmp[1] != 0)
			return 0;
		*l4_flags = icmp[0];
		/* The identifier, bytes 4-5 of an echo header. Loaded into one
		 * place and then copied: a pointer chosen by a condition becomes
		 * pointer arithmetic the verifier refuses. */
		if (ctx_load_bytes(ctx, meta->l4_off + 4, &id, sizeof(id)))
			return -WEIR_DROP_TRUNCATED_L4;
		if (icmp[0] == ICMP_ECHO)
			ports[0] = id;
		else
			ports[1] = id;
		break;
	}
	key->sport = ports[0];
	key->dport = ports[1];
	if (meta->is_fragment) {
		struct weir_frag_ports rec = { .sport = ports[0], .dport = ports[1] };

		/* LRU: never fails for want of room. */
		bpf_map_update_elem(&weir_frag4, &fkey, &rec, BPF_ANY);
	}
	return 1;
}

#endif /* WEIR_CONNTRACK_H */
