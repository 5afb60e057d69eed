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
#include "lb_select.h"
#include "conntrack.h"
#include "nat.h"
#include "drop.h"
#define WEIR_LB_HAIRPIN_IP bpf_htonl(WEIR_LB_HAIRPIN_IP_HOST)

#ifdef WEIR_CTX_SKB
/* The per-hook conntrack steps below are TC's: XDP (bpf_xdp.c) only needs
 * the backend choice above, through nodeport.h. */
#include "reject.h"
#include "snat.h"
#include "policy.h"

/* Follows a connection's entry: counts the packet and rewrites it to the
 * entry's tuple (nothing to rewrite for a plain connection). */
static __always_inline __u32 ct_follow(struct __sk_buff *skb, struct ipv4_meta *meta, const struct weir_ct_key *key,
				       struct weir_ct_entry *ct, __u8 l4_flags, __u64 now)
{
	ct_refresh(skb, key, ct, l4_flags, now);
	if (!ct->service_id && !(ct->flags & WEIR_CT_F_XLATE))
		return WEIR_DROP_NONE;
	/* ICMP echo: its identifier is no port to rewrite (services and
	 * NodePorts translate TCP, UDP and SCTP only). */
	if (key->proto == IPPROTO_ICMP)
		return WEIR_DROP_NONE;
	return nat_rewrite4(skb, meta, key, ct->xlate_saddr, ct->xlate_daddr, ct->xlate_sport, ct->xlate_dport);
}

/* Tracks a packet entering a local pod from elsewhere (another node, the
 * node itself, a NodePort backend's client), on the entry its tuple has
 * (NULL for none): reverse NAT for the replies of remote backends that
 * reach a client pod through the node's devices rather than through its
 * from_pod hook (bpf_host's delivery into a local pod, and to_pod), and,
 * with `create`, a plain entry for a connection seen for the first time.
 * Forward service entries are left alone: only the client's own from_pod
 * may pick or follow a backend. */
static __always_inline __u32 ct_into_pod(struct __sk_buff *skb, struct ipv4_meta *meta, const struct weir_ct_key *key,
					 struct weir_ct_entry *ct, __u8 l4_flags, __u64 now, int create, __u32 src_id)
{
	__u32 policy[2] = {}, reason;
	int replace = 0;

	if (ct) {
		if (!(ct->flags & WEIR_CT_F_REVERSE) && (ct->service_id || (ct->flags & WEIR_CT_F_XLATE)))
			return WEIR_DROP_NONE;
		/* A fresh SYN on a closed plain connection is a new one on a
		 * reused port: fresh entries (and a flow start, and a fresh
		 * verdict), not the old ones. */
		if ((ct->flags & WEIR_CT_F_REVERSE))
			return ct_follow(skb, meta, key, ct, l4_flags, now);
		if (!create || !ct_is_reuse(ct, key->proto, l4_flags, now)) {
			/* A policy change since it opened: judged again. */
			reason = policy_recheck(ct, key, 0, src_id);
			if (reason)
				return reason;
			return ct_follow(skb, meta, key, ct, l4_flags, now);
		}
		replace = 1;
	}
	/* A connection starts with a whole datagram or a first fragment. */
	if (!create || meta->later_fragment)
		return WEIR_DROP_NONE;
	/* The pod it enters judges it; nothing is tracked for a denied one. */
	reason = policy_connection(0, key->saddr, key->daddr, policy_l4(key->proto, key->dport), src_id, &policy[0],
				   &policy[1]);
	if (reason)
		return reason;
	/* Charged to the pod it enters (the drop context's endpoint). */
	if (ct_create_plain(skb, key, l4_flags | (replace ? WEIR_CT_PLAIN_REPLACE : 0), skb->cb[WEIR_CB_ENDPOINT],
			    policy))
		ct_report_created(skb, key, l4_flags);
	return WEIR_DROP_NONE;
}

/* ct_into_pod for a packet not looked up yet. */
static __always_inline __u32 ct_to_pod(struct __sk_buff *skb, struct ipv4_meta *meta, int create, __u32 src_id)
{
	struct weir_ct_key key = {};
	__u8 l4_flags = 0;
	int ret;

	ret = ct_tuple(skb, meta, &key, &l4_flags);
	if (ret <= 0)
		return -ret;
	return ct_into_pod(skb, meta, &key, bpf_map_lookup_elem(&weir_ct4, &key), l4_flags, bpf_ktime_get_ns(),
			   create, src_id);
}

/* from_pod's conntrack step, for a packet a local pod sent: follows the
 * connection's entry (service translation, reverse NAT of replies) or
 * creates it (choosing a service backend). Returns WEIR_DROP_NONE
 * (translated, or nothing to do) or why it cannot go on; nothing has been
 * rewritten when that is WEIR_DROP_NO_SERVICE_BACKEND. *ct_flags gets the
 * flags of the entry an existing connection followed (0 for none or a new
 * one): the reply of a NodePort connection must leave the node without
 * meeting the stack (nodeport.h). */
static __always_inline __u32 lb4_translate(struct __sk_buff *skb, struct ipv4_meta *meta, __u8 *ct_flags)
{
	struct weir_ct_key key = {}, rkey = {}, to = {};
	struct weir_ct_entry fwd = {}, rev = {};
	struct weir_lb_svc_key skey = {};
	struct weir_lb_backend be = {};
	struct weir_lb_svc *svc, svc_copy;
	struct weir_ct_entry *ct;
	__u8 l4_flags = 0;
	__u32 reason;
	__u64 now;
	struct weir_ct_entry *plain = NULL;
	__u32 policy[2] = {};
	int replace = 0;
	int ret;

	ret = ct_tuple(skb, meta, &key, &l4_flags);
	if (ret <= 0)
		return -ret;
	now = bpf_ktime_get_ns();

	ct = bpf_map_lookup_elem(&weir_ct4, &key);
	if (ct) {
		/* Masqueraded flows are to_netdev's (snat.h); a policy change
		 * since one opened is judged here, as for every other. */
		if (ct->flags & WEIR_CT_F_MASQ) {
			if (ct->flags & WEIR_CT_F_REVERSE)
				return WEIR_DROP_NONE;
			return policy_recheck(ct, &key, skb->cb[WEIR_CB_ENDPOINT], 0);
		}
		replace = 1;
		if (ct_is_reuse(ct, key.proto, l4_flags, now)) {
			/* A new connection on an old tuple: decided afresh. */
		} else if (ct->service_id || (ct->flags & (WEIR_CT_F_XLATE | WEIR_CT_F_REVERSE))) {
			*ct_flags = ct->flags;
			/* A policy change since it opened: judged again. */
			if (!(ct->flags & WEIR_CT_F_REVERSE)) {
				reason = policy_recheck(ct, &key, skb->cb[WEIR_CB_ENDPOINT], 0);
				if (reason) {
					flow_note_backend(&key, ct->xlate_daddr, ct->xlate_dport);
					return reason;
				}
			}
			return ct_follow(skb, meta, &key, ct, l4_flags, now);
		} else {
			/* A plain connection: still plain unless its destination
			 * became a service since (then it starts over as one). */
			plain = ct;
		}
	}

	skey.vip = key.daddr;
	skey.dport = key.dport;
	skey.proto = key.proto;
	svc = key.proto == IPPROTO_ICMP ? NULL : bpf_map_lookup_elem(&weir_lb4_services, &skey);
	if (!svc) {
		/* Not a service: plain routing, tracked as it is. */
		if (plain) {
			reason = policy_recheck(plain, &key, skb->cb[WEIR_CB_ENDPOINT], 0);
			if (reason)
				return reason;
			return ct_follow(skb, meta, &key, plain, l4_flags, now);
		}
		if (meta->later_fragment)
			return WEIR_DROP_NONE;
		/* A new connection: judged before anything is tracked. */
		reason = policy_connection(skb->cb[WEIR_CB_ENDPOINT], key.saddr, key.daddr,
					   policy_l4(key.proto, key.dport), 0, &policy[0], &policy[1]);
		if (reason)
			return reason;
		if (!snat_bound(node_config(), key.saddr, key.daddr))
			if (ct_create_plain(skb, &key, l4_flags | (replace ? WEIR_CT_PLAIN_REPLACE : 0),
					    skb->cb[WEIR_CB_ENDPOINT], policy))
				ct_report_created(skb, &key, l4_flags);
		return WEIR_DROP_NONE;
	}
	/* A later fragment never picks a backend: its first fragment made the
	 * connection (followed above), or made none (rejected, lost). */
	if (meta->later_fragment)
		return WEIR_DROP_FRAG_NOT_FOUND;
	/* The agent may rewrite the entry under us: work on one snapshot. */
	svc_copy = *svc;
	reason = lb4_select(&svc_copy, &key, now, &be);
	if (reason)
		return reason;
	/* The agent never programs these (nat.h explains); belt and braces. */
	if (key.proto == IPPROTO_SCTP && be.port != key.dport)
		return WEIR_DROP_NO_SERVICE_BACKEND;

	to.saddr = be.ip == key.saddr ? WEIR_LB_HAIRPIN_IP : key.saddr;
	to.daddr = be.ip;
	to.sport = key.sport;
	to.dport = be.port;
	ct_new_pair(&key, &to, l4_flags, skb->len, now, svc_copy.service_id, be.ip == key.saddr ? WEIR_CT_F_HAIRPIN : 0, &fwd,
		    &rkey, &rev);
	/* Charged to the pod that opened it. */
	fwd.owner = rev.owner = skb->cb[WEIR_CB_ENDPOINT];
	/* Judged as reaching the backend, before anything is tracked. */
	reason = policy_connection(fwd.owner, key.saddr, be.ip, policy_l4(key.proto, be.port), 0, &fwd.policy_egress,
				   &fwd.policy_ingress);
	if (reason) {
		flow_note_backend(&key, be.ip, be.port);
		return reason;
	}
	rev.policy_egress = fwd.policy_egress;
	rev.policy_ingress = fwd.policy_ingress;
	fwd.policy_rev = rev.policy_rev = policy_revision();
	ret = ct_create(skb, &key, &fwd, &rkey, &rev, l4_flags, replace, 0);
	if (ret == -2)
		return WEIR_DROP_CT_ENDPOINT_LIMIT;
	if (ret < 0)
		return WEIR_DROP_CT_MAP_FULL;
	if (ret > 0) {
		/* Another CPU created the same flow first: follow its choice so
		 * both packets go to the same backend. */
		ct = bpf_map_lookup_elem(&weir_ct4, &key);
		if (!ct)
			return WEIR_DROP_CT_MAP_FULL;
		return nat_rewrite4(skb, meta, &key, ct->xlate_saddr, ct->xlate_daddr, ct->xlate_sport,
				   ct->xlate_dport);
	}
	return nat_rewrite4(skb, meta, &key, to.saddr, to.daddr, to.sport, to.dport);
}

/* Service handling in from_pod for a packet a local endpoint sent:
 * returns WEIR_CONTINUE when the packet goes on (translated, or not a
 * service), otherwise the program's verdict: a counted drop, or the
 * rejection stage (WEIR_CALL_POD_REJECT, reject.h) that answers the client
 * when the service has no backend. */
static __always_inline int lb4_xlate(struct __sk_buff *skb, struct ipv4_meta *meta, __u8 *ct_flags)
{
	__u32 reason = lb4_translate(skb, meta, ct_flags);

	if (reason == WEIR_DROP_NO_SERVICE_BACKEND)
		return tail_call_stage(skb, WEIR_CALL_POD_REJECT);
	if (reason)
		return drop_packet(skb, reason);
	return WEIR_CONTINUE;
}

#endif /* WEIR_CTX_SKB */

#endif /* WEIR_LB_H */
