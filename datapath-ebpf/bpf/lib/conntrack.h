/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Connection tracking for translated (service) connections.
 *
 * One entry per direction, keyed by the 5-tuple exactly as that direction's
 * packets carry it on the wire, so a single lookup on the packet's own tuple
 * tells both "is this a tracked flow" and "which way is it going":
 *
 *   forward  client:cport -> VIP:vport      xlate to  client':cport -> backend:bport
 *   reverse  backend:bport -> client':cport xlate to  VIP:vport -> client:cport
 *
 * (client' is the client, or the hairpin address when a pod reached itself.)
 * Each entry carries the tuple to rewrite the packet to; swapping source and
 * destination of that tuple gives the key of the partner entry, which is how
 * the agent's GC and the FIN/RST handling find the other direction.
 *
 * The map is a plain, preallocated HASH and deliberately not LRU: evicting a
 * live entry would silently move a connection to another backend (or leave
 * its replies untranslated). A full table refuses new connections instead,
 * counted as WEIR_DROP_CT_MAP_FULL, and the agent's GC makes room.
 *
 * The key, the entry and their flags are ABI (abi.h). */
#ifndef WEIR_CONNTRACK_H
#define WEIR_CONNTRACK_H

#include <linux/in.h>
#include "common.h"
#include "abi.h"

/* Every timeout in one place. Entries are refreshed to now + timeout on each
 * packet; an entry past its deadline is only removed by the agent's GC, and
 * only when its partner has expired too (a connection lives while either
 * direction is active). */
#define WEIR_NSEC_PER_SEC 1000000000ULL
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

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, WEIR_CT_MAX_ENTRIES);
	__type(key, struct weir_ct_key);
	__type(value, struct weir_ct_entry);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} weir_ct4 SEC(".maps");

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

/* Counts a packet and pushes the deadline out. Racing CPUs may both write
 * state/expires: either value is a valid outcome, so no lock. */
static __always_inline void ct_refresh(struct weir_ct_entry *e, __u8 proto, __u8 tcp_flags, __u64 now)
{
	__u8 state = e->state;

	if (proto == IPPROTO_TCP)
		state = ct_next_state(state, tcp_flags);
	if (state != e->state)
		e->state = state;
	e->expires_ns = now + ct_timeout(proto, state);
	__sync_fetch_and_add(&e->packets, 1);
}

/* FIN or RST closes the whole connection: without this the quiet side of a
 * reset connection would keep its entry for the established timeout. */
static __always_inline void ct_close_partner(const struct weir_ct_entry *e, __u8 proto, __u64 now)
{
	struct weir_ct_key pkey = {};
	struct weir_ct_entry *p;

	ct_partner_key(e, proto, &pkey);
	p = bpf_map_lookup_elem(&weir_ct4, &pkey);
	if (p && p->state != WEIR_CT_CLOSING) {
		p->state = WEIR_CT_CLOSING;
		p->expires_ns = now + WEIR_CT_TIMEOUT_TCP_CLOSING;
	}
}

#endif /* WEIR_CONNTRACK_H */
