/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Masquerading: pod traffic to destinations outside the cluster CIDR leaves
 * through the uplink with the node IP as its source (to_netdev), and the
 * replies are translated back to the pod on the uplink's ingress
 * (from_netdev), before the local-pod delivery.
 *
 * One map, one entry per direction, keyed by the tuple exactly as that
 * direction's packets carry it on the wire (as in conntrack.h):
 *
 *   forward  pod:pport -> remote:rport    becomes  node:nport -> remote:rport
 *   reverse  remote:rport -> node:nport   becomes  remote:rport -> pod:pport
 *
 * The reverse key is what makes a node port unique per remote endpoint, so
 * it is claimed first, with BPF_NOEXIST, at a random port of
 * [WEIR_SNAT_PORT_MIN, WEIR_SNAT_PORT_MAX]; the forward entry then makes
 * every later packet of the flow find the same port. ICMP echo is handled
 * the same way with the echo identifier as the port: the forward key has it
 * in sport (dport 0), the reverse key in dport (sport 0).
 *
 * Each entry holds only the address and port the packet is rewritten to;
 * the partner key follows from the key and that value (snat_partner_key).
 * Deadlines and TCP states are conntrack.h's; entries past their deadline
 * are removed by the agent's GC once the partner has expired too.
 *
 * Like weir_ct4 the map is a preallocated HASH and not LRU: evicting a live
 * entry would hand its port to another flow while the first one still runs.
 *
 * The node's own sockets share the port range: a candidate port that a node
 * socket already uses towards the same remote (or listens on) is skipped,
 * found with the kernel's socket lookup. The other order is not covered: a
 * node connection opened later may pick a port a masqueraded flow holds
 * for the same remote ip:port, and its replies would go to the pod.
 *
 * Not handled (passed on untranslated): non-first fragments, ICMP errors
 * quoting a masqueraded flow, other L4 protocols.
 *
 * The Rust twins live in datapath-ebpf/src/snat.rs. */
#ifndef WEIR_SNAT_H
#define WEIR_SNAT_H

#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include "common.h"
#include "abi.h"
#include "maps.h"
#include "ipv4.h"
#include "conntrack.h"
#include "nat.h"
#include "endpoint.h"
#include "overlay.h"

/* Random tries before giving up: with a quarter of the range taken for one
 * remote endpoint, eight tries all fail with probability 1.5e-5. */
#define WEIR_SNAT_ATTEMPTS 8

/* The range in use: the loader may narrow it (tests do, to exhaust it). */
volatile const __u16 weir_snat_port_min = WEIR_SNAT_PORT_MIN;
volatile const __u16 weir_snat_port_max = WEIR_SNAT_PORT_MAX;

#define ICMP_ECHOREPLY 0
#define ICMP_ECHO 8

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, WEIR_SNAT_MAX_ENTRIES);
	__type(key, struct weir_ct_key);
	__type(value, struct weir_snat_entry);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} weir_snat4 SEC(".maps");

/* The key of the other direction's entry. */
static __always_inline void snat_partner_key(const struct weir_ct_key *key, const struct weir_snat_entry *e,
					     struct weir_ct_key *out)
{
	out->proto = key->proto;
	if (e->flags & WEIR_SNAT_F_REVERSE) {
		out->saddr = e->addr;
		out->sport = e->port;
		out->daddr = key->saddr;
		out->dport = key->sport;
	} else {
		out->saddr = key->daddr;
		out->sport = key->dport;
		out->daddr = e->addr;
		out->dport = e->port;
	}
}

/* Counts a packet and pushes the deadline out; FIN or RST closes both
 * directions (see ct_close_partner). */
static __always_inline void snat_refresh(const struct weir_ct_key *key, struct weir_snat_entry *e, __u8 tcp_flags,
					 __u64 now)
{
	__u8 state = e->state;

	if (key->proto == IPPROTO_TCP)
		state = ct_next_state(state, tcp_flags);
	if (state != e->state)
		e->state = state;
	e->expires_ns = now + ct_timeout(key->proto, state);
	__sync_fetch_and_add(&e->packets, 1);
	if (key->proto == IPPROTO_TCP && (tcp_flags & (WEIR_TCP_FIN | WEIR_TCP_RST))) {
		struct weir_ct_key pkey = {};
		struct weir_snat_entry *p;

		snat_partner_key(key, e, &pkey);
		p = bpf_map_lookup_elem(&weir_snat4, &pkey);
		if (p && p->state != WEIR_CT_CLOSING) {
			p->state = WEIR_CT_CLOSING;
			p->expires_ns = now + WEIR_CT_TIMEOUT_TCP_CLOSING;
		}
	}
}

/* Reads the packet's tuple for masquerading. `want_icmp` is the ICMP type
 * this direction translates (echo requests out, echo replies in). Returns
 * 1 with key filled, 0 when the packet is not translatable, or -reason. */
static __always_inline int snat_tuple(struct __sk_buff *skb, const struct ipv4_meta *meta, __u8 want_icmp, int reverse,
				      struct weir_ct_key *key, __u8 *tcp_flags)
{
	__be16 ports[2] = {};
	__u8 icmp[2];

	if (meta->is_fragment) {
		__u16 frag_off;

		if (bpf_skb_load_bytes(skb, ETH_HLEN + __builtin_offsetof(struct iphdr, frag_off), &frag_off, 2))
			return -WEIR_DROP_MALFORMED_IPV4;
		if (frag_off & bpf_htons(IP_OFFSET))
			return 0; /* no L4 header */
	}
	switch (meta->protocol) {
	case IPPROTO_TCP:
	case IPPROTO_UDP:
		if (bpf_skb_load_bytes(skb, meta->l4_off, ports, sizeof(ports)))
			return -WEIR_DROP_TRUNCATED_L4;
		if (meta->protocol == IPPROTO_TCP && bpf_skb_load_bytes(skb, meta->l4_off + 13, tcp_flags, 1))
			return -WEIR_DROP_TRUNCATED_L4;
		break;
	case IPPROTO_ICMP:
		if (bpf_skb_load_bytes(skb, meta->l4_off, icmp, sizeof(icmp)))
			return -WEIR_DROP_TRUNCATED_L4;
		if (icmp[0] != want_icmp || icmp[1] != 0)
			return 0;
		/* The identifier, bytes 4-5 of an echo header. */
		if (bpf_skb_load_bytes(skb, meta->l4_off + 4, reverse ? &ports[1] : &ports[0], sizeof(__be16)))
			return -WEIR_DROP_TRUNCATED_L4;
		break;
	default:
		return 0;
	}
	key->saddr = meta->saddr;
	key->daddr = meta->daddr;
	key->sport = ports[0];
	key->dport = ports[1];
	key->proto = meta->protocol;
	return 1;
}

/* Rewrites the source (forward) or destination (reverse) address and port.
 * For ICMP the "port" is the echo identifier, whose checksum has no
 * pseudo-header: nat_addr leaves it alone, nat_icmp_id patches it. */
static __always_inline __u32 snat_rewrite(struct __sk_buff *skb, struct ipv4_meta *meta, const struct weir_ct_key *key,
					  __be32 addr, __be16 port, int reverse)
{
	__u32 l4 = meta->l4_off;
	__u32 addr_off = reverse ? IP_DADDR_OFF : IP_SADDR_OFF;
	__be32 old_addr = reverse ? key->daddr : key->saddr;
	__be16 old_port = reverse ? key->dport : key->sport;
	int err;

	if (nat_addr(skb, addr_off, old_addr, addr, key->proto, l4, 1))
		return WEIR_DROP_REWRITE_FAILED;
	if (key->proto == IPPROTO_ICMP)
		err = nat_icmp_id(skb, l4, old_port, port);
	else
		err = nat_port(skb, reverse ? l4 + 2 : l4, old_port, port, key->proto, l4);
	if (err)
		return WEIR_DROP_REWRITE_FAILED;
	if (reverse)
		meta->daddr = addr;
	else
		meta->saddr = addr;
	return WEIR_DROP_NONE;
}

/* Is the packet a local pod's, bound outside the cluster (pods and nodes)?
 * Records the pod as the drop context's endpoint when it is. */
static __always_inline int snat_wanted(struct __sk_buff *skb, const struct weir_config *cfg,
				       const struct ipv4_meta *meta)
{
	struct weir_ep_info *src;

	if (!(cfg->flags & WEIR_CFG_F_MASQUERADE) || !cfg->node_ip)
		return 0;
	if ((meta->saddr & cfg->cluster_mask) != cfg->cluster_net)
		return 0;
	if ((meta->daddr & cfg->cluster_mask) == cfg->cluster_net || meta->daddr == cfg->node_ip)
		return 0;
	/* Other nodes are cluster members: they route to pod CIDRs, and a
	 * pod's reply to a node's NodePort SNAT must keep the pod's address. */
	if (bpf_map_lookup_elem(&weir_nodes, &meta->daddr))
		return 0;
	/* Only pods of this node: their replies are ours to deliver. */
	src = lookup_ep_v4(meta->saddr);
	if (!src)
		return 0;
	obs_endpoint(skb, src, WEIR_DIR_EGRESS);
	return 1;
}

/* Does a socket of the node already own the reverse tuple, i.e. would the
 * stack take a packet remote:rport -> node:port as its own? */
static __always_inline int snat_node_socket(struct __sk_buff *skb, const struct weir_ct_key *rkey)
{
	struct bpf_sock_tuple t = {};
	struct bpf_sock *sk;

	t.ipv4.saddr = rkey->saddr;
	t.ipv4.daddr = rkey->daddr;
	t.ipv4.sport = rkey->sport;
	t.ipv4.dport = rkey->dport;
	if (rkey->proto == IPPROTO_TCP)
		sk = bpf_skc_lookup_tcp(skb, &t, sizeof(t.ipv4), BPF_F_CURRENT_NETNS, 0);
	else if (rkey->proto == IPPROTO_UDP)
		sk = bpf_sk_lookup_udp(skb, &t, sizeof(t.ipv4), BPF_F_CURRENT_NETNS, 0);
	else
		return 0; /* ping sockets' identifiers are not looked up */
	if (!sk)
		return 0;
	bpf_sk_release(sk);
	return 1;
}

/* Claims a node port for a new flow: the reverse entry first (it is the one
 * that must be unique), then the forward one. */
static __always_inline __u32 snat_new(struct __sk_buff *skb, const struct weir_ct_key *key, __be32 node_ip,
				      __u8 tcp_flags, __u64 now, __be16 *out_port)
{
	__u32 min = weir_snat_port_min, span = (__u32)weir_snat_port_max - min + 1;
	struct weir_snat_entry fwd = {}, rev = {};
	struct weir_ct_key rkey = {};
	__u32 i;
	int err = 0;

	fwd.addr = node_ip;
	fwd.state = key->proto == IPPROTO_TCP ? ct_next_state(WEIR_CT_NEW, tcp_flags) : WEIR_CT_NEW;
	fwd.expires_ns = now + ct_timeout(key->proto, fwd.state);
	fwd.packets = 1;
	rev.addr = key->saddr;
	rev.port = key->sport;
	rev.flags = WEIR_SNAT_F_REVERSE;
	rev.state = fwd.state;
	rev.expires_ns = fwd.expires_ns;

	rkey.saddr = key->daddr;
	rkey.daddr = node_ip;
	rkey.sport = key->dport;
	rkey.proto = key->proto;
	for (i = 0; i < WEIR_SNAT_ATTEMPTS; i++) {
		__u16 port = min + bpf_get_prandom_u32() % span;

		rkey.dport = bpf_htons(port);
		if (snat_node_socket(skb, &rkey)) {
			err = -17; /* taken, as if by another flow */
			continue;
		}
		err = bpf_map_update_elem(&weir_snat4, &rkey, &rev, BPF_NOEXIST);
		if (!err)
			break;
		/* A full table will not empty itself by trying again. */
		if (err != -17 /* EEXIST */)
			return WEIR_DROP_SNAT_PORTS_EXHAUSTED;
	}
	if (err)
		return WEIR_DROP_SNAT_PORTS_EXHAUSTED;

	fwd.port = rkey.dport;
	err = bpf_map_update_elem(&weir_snat4, key, &fwd, BPF_NOEXIST);
	if (err) {
		struct weir_snat_entry *other;

		/* Release the port: either another CPU set this flow up first
		 * (follow its choice) or the table is full. */
		bpf_map_delete_elem(&weir_snat4, &rkey);
		other = bpf_map_lookup_elem(&weir_snat4, key);
		if (!other)
			return WEIR_DROP_SNAT_PORTS_EXHAUSTED;
		*out_port = other->port;
		return WEIR_DROP_NONE;
	}
	*out_port = fwd.port;
	return WEIR_DROP_NONE;
}

/* to_netdev's work: masquerade a local pod's packet bound outside the
 * cluster. Returns WEIR_DROP_NONE and sets *translated, or a reason. */
static __always_inline __u32 snat4_egress(struct __sk_buff *skb, struct ipv4_meta *meta, int *translated)
{
	struct weir_config *cfg = node_config();
	struct weir_ct_key key = {};
	struct weir_snat_entry *e;
	__u8 tcp_flags = 0;
	__be32 node_ip;
	__be16 port;
	__u64 now;
	__u32 reason;
	int ret;

	*translated = 0;
	if (!cfg || !snat_wanted(skb, cfg, meta))
		return WEIR_DROP_NONE;
	node_ip = cfg->node_ip;
	ret = snat_tuple(skb, meta, ICMP_ECHO, 0, &key, &tcp_flags);
	if (ret <= 0)
		return -ret;
	now = bpf_ktime_get_ns();

	e = bpf_map_lookup_elem(&weir_snat4, &key);
	if (e) {
		/* A flow idle past its deadline (its reverse entry may be going
		 * away under the GC), or a fresh SYN on a closed one (port
		 * reuse): start over with a fresh port. */
		if (e->expires_ns < now ||
		    (key.proto == IPPROTO_TCP && (tcp_flags & (WEIR_TCP_SYN | WEIR_TCP_ACK)) == WEIR_TCP_SYN &&
		     e->state == WEIR_CT_CLOSING) ||
		    e->addr != node_ip) {
			struct weir_ct_key rkey = {};
			struct weir_snat_entry *r;

			snat_partner_key(&key, e, &rkey);
			r = bpf_map_lookup_elem(&weir_snat4, &rkey);
			/* The GC may have collected it and another flow taken the
			 * port since: only remove a reverse entry that is ours. */
			if (r && r->addr == key.saddr && r->port == key.sport)
				bpf_map_delete_elem(&weir_snat4, &rkey);
			bpf_map_delete_elem(&weir_snat4, &key);
		} else {
			snat_refresh(&key, e, tcp_flags, now);
			reason = snat_rewrite(skb, meta, &key, e->addr, e->port, 0);
			*translated = !reason;
			return reason;
		}
	}
	reason = snat_new(skb, &key, node_ip, tcp_flags, now, &port);
	if (reason)
		return reason;
	reason = snat_rewrite(skb, meta, &key, node_ip, port, 0);
	*translated = !reason;
	return reason;
}

/* from_netdev's first step: a reply to a masqueraded flow gets the pod's
 * address and port back. WEIR_DROP_NONE (translated or not ours) or a
 * reason. */
static __always_inline __u32 snat4_ingress(struct __sk_buff *skb, struct ipv4_meta *meta)
{
	struct weir_config *cfg = node_config();
	struct weir_ct_key key = {};
	struct weir_snat_entry *e;
	__u8 tcp_flags = 0;
	int ret;

	if (!cfg || !(cfg->flags & WEIR_CFG_F_MASQUERADE) || !cfg->node_ip || meta->daddr != cfg->node_ip)
		return WEIR_DROP_NONE;
	ret = snat_tuple(skb, meta, ICMP_ECHOREPLY, 1, &key, &tcp_flags);
	/* Malformed packets on a node device are the stack's to judge. */
	if (ret <= 0)
		return WEIR_DROP_NONE;
	e = bpf_map_lookup_elem(&weir_snat4, &key);
	if (!e || !(e->flags & WEIR_SNAT_F_REVERSE))
		return WEIR_DROP_NONE; /* the node's own traffic */
	snat_refresh(&key, e, tcp_flags, bpf_ktime_get_ns());
	return snat_rewrite(skb, meta, &key, e->addr, e->port, 1);
}

#endif /* WEIR_SNAT_H */
