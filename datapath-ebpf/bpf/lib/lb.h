/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* ClusterIP services: per-connection backend selection at the client's
 * from_pod hook, DNAT to the backend, reverse NAT of the replies, all
 * remembered in conntrack.h so that a connection keeps its backend.
 *
 * Maps (the agent writes services, backends and maglev; the datapath writes
 * affinity and conntrack):
 *   weir_lb4_services  {vip, port, proto} -> {service_id, count, ...}
 *   weir_lb4_backends  {service_id, slot 1..n} -> {ip, port}; slots
 *                      1..count take new connections, slots past count
 *                      are terminating backends, kept for visibility only
 *                      (conntrack stores the backend's ip:port itself, so
 *                      established flows never need the slot again)
 *   weir_lb4_maglev    service_id -> the whole lookup table (M slots)
 *   weir_lb4_affinity  {client, service_id} -> {slot, backend ip, last use}
 *
 * Why the Maglev table is one HASH value per service rather than one entry
 * per {service_id, index} or one big ARRAY indexed service_id * M + index:
 *  - the agent replaces a table with a single map update, so the datapath
 *    never sees half of an old table and half of a new one;
 *  - one entry per index would be M hash elements (about 100 bytes of
 *    overhead each) and M syscalls per update; a global ARRAY would reserve
 *    M * 4 bytes for every possible service whether it uses Maglev or not;
 *    with BPF_F_NO_PREALLOC a service without Maglev costs nothing and one
 *    with Maglev costs one 4 KiB element;
 *  - the verifier sees one lookup and one bounded array index.
 *
 * Hairpin: a pod that reaches a service and is picked as its own backend
 * would receive a packet with its own address as source, which its kernel
 * drops as martian. Such connections are also source-NATed to the
 * link-local WEIR_LB_HAIRPIN_IP (pods route it via their default gateway,
 * 169.254.1.1, so the replies come back through from_pod, where the reverse
 * entry turns them back into VIP -> pod).
 *
 * A service without a usable backend rejects the connection (reject.h:
 * TCP RST, ICMP port unreachable otherwise), counted as
 * WEIR_DROP_NO_SERVICE_BACKEND.
 *
 * Not handled here yet: ICMP errors that quote a translated connection,
 * ICMP echo to a VIP (passed on untouched), non-first fragments (they carry
 * no ports and are passed on untouched). */
#ifndef WEIR_LB_H
#define WEIR_LB_H

#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include "common.h"
#include "abi.h"
#include "ipv4.h"
#include "hash.h"
#include "conntrack.h"
#include "nat.h"
#include "drop.h"
#include "reject.h"

/* lb4_xlate: not a TC verdict, the packet goes on through from_pod. */
#define WEIR_LB_CONTINUE (-2)

#define WEIR_LB_HAIRPIN_IP bpf_htonl(WEIR_LB_HAIRPIN_IP_HOST)

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, WEIR_LB_MAX_SERVICES);
	__type(key, struct weir_lb_svc_key);
	__type(value, struct weir_lb_svc);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} weir_lb4_services SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, WEIR_LB_MAX_BACKENDS);
	__type(key, struct weir_lb_backend_key);
	__type(value, struct weir_lb_backend);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} weir_lb4_backends SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, WEIR_LB_MAX_SERVICES);
	__type(key, __u32);
	__type(value, struct weir_lb_maglev);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} weir_lb4_maglev SEC(".maps");

/* LRU is right here, unlike conntrack: losing an affinity record only
 * means the client's next connection may pick another backend. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct weir_lb_affinity_key);
	__type(value, struct weir_lb_affinity);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} weir_lb4_affinity SEC(".maps");

/* Picks the backend for a new connection; WEIR_DROP_NONE or a reason. */
static __always_inline __u32 lb4_select(const struct weir_lb_svc *svc, const struct weir_ct_key *tuple, __u64 now,
					struct weir_lb_backend *out)
{
	struct weir_lb_backend_key bkey = { .service_id = svc->service_id };
	struct weir_lb_affinity_key akey = {};
	struct weir_lb_affinity *aff;
	struct weir_lb_backend *be;
	__u32 count = svc->count;
	__u64 affinity_ns = (__u64)svc->affinity_timeout_s * WEIR_NSEC_PER_SEC;

	if (!count)
		return WEIR_DROP_NO_SERVICE_BACKEND;

	if (affinity_ns) {
		akey.client = tuple->saddr;
		akey.service_id = svc->service_id;
		aff = bpf_map_lookup_elem(&weir_lb4_affinity, &akey);
		if (aff && aff->slot >= 1 && aff->slot <= count && now - aff->last_used_ns <= affinity_ns) {
			bkey.slot = aff->slot;
			be = bpf_map_lookup_elem(&weir_lb4_backends, &bkey);
			if (be && be->ip == aff->backend_ip)
				goto found;
		}
	}

	if (svc->algorithm == WEIR_LB_ALG_MAGLEV) {
		struct weir_lb_maglev *table;
		__u32 id = svc->service_id;
		__u32 idx;

		table = bpf_map_lookup_elem(&weir_lb4_maglev, &id);
		if (!table)
			return WEIR_DROP_NO_SERVICE_BACKEND;
		idx = weir_jhash_3words(tuple->saddr, tuple->daddr,
					((__u32)tuple->sport << 16) | tuple->dport, tuple->proto) %
		      WEIR_LB_MAGLEV_M;
		/* The verifier does not bound the result of a modulo, and clang
		 * drops a bounds check it can prove redundant: hide the value
		 * from clang so the check stays for the verifier to see. */
		asm volatile("" : "+r"(idx));
		if (idx >= WEIR_LB_MAGLEV_M)
			return WEIR_DROP_NO_SERVICE_BACKEND;
		bkey.slot = table->slots[idx];
	} else {
		bkey.slot = bpf_get_prandom_u32() % count + 1;
	}
	be = bpf_map_lookup_elem(&weir_lb4_backends, &bkey);
	/* Only in the instant between the agent shrinking a service and
	 * deleting its surplus slots. */
	if (!be)
		return WEIR_DROP_NO_SERVICE_BACKEND;

found:
	if (affinity_ns) {
		struct weir_lb_affinity rec = { .slot = bkey.slot, .backend_ip = be->ip, .last_used_ns = now };

		/* LRU map: an update cannot fail for lack of room. */
		bpf_map_update_elem(&weir_lb4_affinity, &akey, &rec, BPF_ANY);
	}
	*out = *be;
	return WEIR_DROP_NONE;
}

/* Rewrites the packet from tuple `from` to the tuple held in `to` and keeps
 * meta in step, so the caller's delivery lookup sees the new addresses. */
static __always_inline __u32 lb4_rewrite(struct __sk_buff *skb, struct ipv4_meta *meta, const struct weir_ct_key *from,
					 __be32 saddr, __be32 daddr, __be16 sport, __be16 dport)
{
	__u32 l4 = meta->l4_off;
	__u8 proto = from->proto;

	if (nat_addr(skb, IP_SADDR_OFF, from->saddr, saddr, proto, l4, 1) ||
	    nat_addr(skb, IP_DADDR_OFF, from->daddr, daddr, proto, l4, 1) ||
	    nat_port(skb, l4, from->sport, sport, proto, l4) ||
	    nat_port(skb, l4 + 2, from->dport, dport, proto, l4))
		return WEIR_DROP_REWRITE_FAILED;
	meta->saddr = saddr;
	meta->daddr = daddr;
	return WEIR_DROP_NONE;
}

/* Reads the packet's 5-tuple into key and, for TCP, its flags. Returns 1
 * when there is a tuple, 0 when there is nothing to translate (not TCP, UDP
 * or SCTP, or a later fragment without ports), or -reason. */
static __always_inline int lb4_tuple(struct __sk_buff *skb, const struct ipv4_meta *meta, struct weir_ct_key *key,
				     __u8 *tcp_flags)
{
	__be16 ports[2];
	__u16 frag_off;

	switch (meta->protocol) {
	case IPPROTO_TCP:
	case IPPROTO_UDP:
		break;
	case IPPROTO_SCTP:
		/* ipv4_parse does not know SCTP: its common header is 12 bytes. */
		if (meta->l4_off + 12 > skb->len)
			return -WEIR_DROP_TRUNCATED_L4;
		break;
	default:
		return 0;
	}
	if (meta->is_fragment) {
		if (bpf_skb_load_bytes(skb, ETH_HLEN + __builtin_offsetof(struct iphdr, frag_off), &frag_off, 2))
			return -WEIR_DROP_MALFORMED_IPV4;
		if (frag_off & bpf_htons(IP_OFFSET))
			return 0; /* no ports to look up */
	}
	if (bpf_skb_load_bytes(skb, meta->l4_off, ports, sizeof(ports)))
		return -WEIR_DROP_TRUNCATED_L4;
	if (meta->protocol == IPPROTO_TCP && bpf_skb_load_bytes(skb, meta->l4_off + 13, tcp_flags, 1))
		return -WEIR_DROP_TRUNCATED_L4;
	key->saddr = meta->saddr;
	key->daddr = meta->daddr;
	key->sport = ports[0];
	key->dport = ports[1];
	key->proto = meta->protocol;
	return 1;
}

/* Reverse NAT only: for replies of remote backends that reach the client
 * pod through the node's devices rather than through a from_pod hook
 * (bpf_host's delivery into a local pod, and to_pod). Forward entries are
 * left alone: only the client's own from_pod may pick or follow a backend. */
static __always_inline __u32 lb4_rev_nat(struct __sk_buff *skb, struct ipv4_meta *meta)
{
	struct weir_ct_key key = {};
	struct weir_ct_entry *ct;
	__u8 tcp_flags = 0;
	int ret;

	ret = lb4_tuple(skb, meta, &key, &tcp_flags);
	if (ret <= 0)
		return -ret;
	ct = bpf_map_lookup_elem(&weir_ct4, &key);
	if (!ct || !(ct->flags & WEIR_CT_F_REVERSE))
		return WEIR_DROP_NONE;
	ct_refresh(ct, key.proto, tcp_flags, bpf_ktime_get_ns());
	if (tcp_flags & (WEIR_TCP_FIN | WEIR_TCP_RST))
		ct_close_partner(ct, key.proto, bpf_ktime_get_ns());
	return lb4_rewrite(skb, meta, &key, ct->xlate_saddr, ct->xlate_daddr, ct->xlate_sport, ct->xlate_dport);
}

/* Service translation for a packet a pod sent. Returns WEIR_DROP_NONE
 * (translated, or nothing to do) or why it cannot go on; nothing has been
 * rewritten when that is WEIR_DROP_NO_SERVICE_BACKEND. *ct_flags gets the
 * flags of the conntrack entry an existing connection followed (0 for none
 * or a new one): the reply of a NodePort connection must leave the node
 * without meeting the stack (nodeport.h). */
static __always_inline __u32 lb4_translate(struct __sk_buff *skb, struct ipv4_meta *meta, __u8 *ct_flags)
{
	struct weir_ct_key key = {}, rkey = {};
	struct weir_ct_entry fwd = {}, rev = {};
	struct weir_lb_svc_key skey = {};
	struct weir_lb_backend be = {};
	struct weir_lb_svc *svc, svc_copy;
	struct weir_ct_entry *ct;
	__u8 tcp_flags = 0;
	__u32 reason;
	__u64 now;
	int stale = 0;
	int ret;

	ret = lb4_tuple(skb, meta, &key, &tcp_flags);
	if (ret <= 0)
		return -ret;
	now = bpf_ktime_get_ns();

	ct = bpf_map_lookup_elem(&weir_ct4, &key);
	if (ct) {
		/* A fresh SYN on a closed or expired (not yet collected) forward
		 * entry is port reuse: a new connection that deserves a fresh,
		 * live backend rather than the old one. */
		if (!(ct->flags & WEIR_CT_F_REVERSE) && key.proto == IPPROTO_TCP &&
		    (tcp_flags & (WEIR_TCP_SYN | WEIR_TCP_ACK)) == WEIR_TCP_SYN &&
		    (ct->state == WEIR_CT_CLOSING || ct->expires_ns < now)) {
			stale = 1;
		} else {
			ct_refresh(ct, key.proto, tcp_flags, now);
			if (tcp_flags & (WEIR_TCP_FIN | WEIR_TCP_RST))
				ct_close_partner(ct, key.proto, now);
			*ct_flags = ct->flags;
			return lb4_rewrite(skb, meta, &key, ct->xlate_saddr, ct->xlate_daddr, ct->xlate_sport,
					   ct->xlate_dport);
		}
	}

	skey.vip = key.daddr;
	skey.dport = key.dport;
	skey.proto = key.proto;
	svc = bpf_map_lookup_elem(&weir_lb4_services, &skey);
	if (!svc)
		return WEIR_DROP_NONE; /* not a service: plain routing */
	/* The agent may rewrite the entry under us: work on one snapshot. */
	svc_copy = *svc;
	reason = lb4_select(&svc_copy, &key, now, &be);
	if (reason)
		return reason;
	/* The agent never programs these (nat.h explains); belt and braces. */
	if (key.proto == IPPROTO_SCTP && be.port != key.dport)
		return WEIR_DROP_NO_SERVICE_BACKEND;

	fwd.xlate_saddr = be.ip == key.saddr ? WEIR_LB_HAIRPIN_IP : key.saddr;
	fwd.xlate_daddr = be.ip;
	fwd.xlate_sport = key.sport;
	fwd.xlate_dport = be.port;
	fwd.service_id = svc_copy.service_id;
	fwd.flags = be.ip == key.saddr ? WEIR_CT_F_HAIRPIN : 0;
	fwd.state = key.proto == IPPROTO_TCP ? ct_next_state(WEIR_CT_NEW, tcp_flags) : WEIR_CT_NEW;
	fwd.expires_ns = now + ct_timeout(key.proto, fwd.state);
	fwd.packets = 1;

	ct_partner_key(&fwd, key.proto, &rkey);
	rev.xlate_saddr = key.daddr;
	rev.xlate_daddr = key.saddr;
	rev.xlate_sport = key.dport;
	rev.xlate_dport = key.sport;
	rev.service_id = fwd.service_id;
	rev.flags = fwd.flags | WEIR_CT_F_REVERSE;
	rev.state = fwd.state;
	rev.expires_ns = fwd.expires_ns;

	if (bpf_map_update_elem(&weir_ct4, &key, &fwd, stale ? BPF_ANY : BPF_NOEXIST)) {
		/* Another CPU created the same flow first: follow its choice so
		 * both packets go to the same backend. Otherwise the map is full. */
		ct = bpf_map_lookup_elem(&weir_ct4, &key);
		if (!ct)
			return WEIR_DROP_CT_MAP_FULL;
		return lb4_rewrite(skb, meta, &key, ct->xlate_saddr, ct->xlate_daddr, ct->xlate_sport,
				   ct->xlate_dport);
	}
	if (bpf_map_update_elem(&weir_ct4, &rkey, &rev, BPF_ANY)) {
		/* Without its reverse entry the replies would escape untranslated. */
		bpf_map_delete_elem(&weir_ct4, &key);
		return WEIR_DROP_CT_MAP_FULL;
	}
	return lb4_rewrite(skb, meta, &key, fwd.xlate_saddr, fwd.xlate_daddr, fwd.xlate_sport, fwd.xlate_dport);
}

/* Service handling in from_pod for a packet the endpoint src sent: returns
 * WEIR_LB_CONTINUE when the packet goes on (translated, or not a service),
 * otherwise the program's verdict: a counted drop, or the rejection sent
 * back to the client when the service has no backend. */
static __always_inline int lb4_xlate(struct __sk_buff *skb, struct ipv4_meta *meta, const struct weir_ep_info *src,
				     __u8 *ct_flags)
{
	__u32 reason = lb4_translate(skb, meta, ct_flags);

	if (reason == WEIR_DROP_NO_SERVICE_BACKEND)
		return reject4(skb, meta, src);
	if (reason)
		return drop_packet(skb, reason);
	return WEIR_LB_CONTINUE;
}

#endif /* WEIR_LB_H */
