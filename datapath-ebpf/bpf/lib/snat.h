/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Masquerading: pod traffic to destinations outside the cluster CIDR leaves
 * through the uplink with the node IP as its source (to_netdev), and the
 * replies are translated back to the pod on the uplink's ingress
 * (from_netdev), before the local-pod delivery.
 *
 * A masqueraded flow is a connection in conntrack.h's table, flagged
 * WEIR_CT_F_MASQ, its two entries keyed as each direction's packets carry
 * them on the wire:
 *
 *   forward  pod:pport -> remote:rport    becomes  node:nport -> remote:rport
 *   reverse  remote:rport -> node:nport   becomes  remote:rport -> pod:pport
 *
 * The reverse key is what makes a node port unique per remote endpoint, so
 * it is claimed first (ct_claim_port) at a random port of
 * [WEIR_SNAT_PORT_MIN, WEIR_SNAT_PORT_MAX]; the forward entry then makes
 * every later packet of the flow find the same port. ICMP echo is handled
 * the same way with the echo identifier as the port. from_pod leaves such
 * flows to to_netdev: it creates no entry for a packet bound to be
 * masqueraded, and does not follow a MASQ one.
 *
 * The node's own sockets share the port range: a candidate port that a node
 * socket already uses towards the same remote (or listens on) is skipped,
 * found with the kernel's socket lookup. The other order is not covered: a
 * node connection opened later may pick a port a masqueraded flow holds
 * for the same remote ip:port, and its replies would go to the pod.
 *
 * Not handled (passed on untranslated): non-first fragments, ICMP errors
 * quoting a masqueraded flow, other L4 protocols. */
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
#include "policy.h"
#include "nat.h"
#include "endpoint.h"
#include "overlay.h"

/* The range in use: the loader may narrow it (tests do, to exhaust it). */
volatile const __u16 weir_snat_port_min = WEIR_SNAT_PORT_MIN;
volatile const __u16 weir_snat_port_max = WEIR_SNAT_PORT_MAX;

/* Is a local pod's packet to daddr masqueraded: bound outside the cluster
 * (pods and nodes), with masquerading on? */
static __always_inline int snat_bound(const struct weir_config *cfg, __be32 saddr, __be32 daddr)
{
	if (!cfg || !(cfg->flags & WEIR_CFG_F_MASQUERADE) || !cfg->node_ip)
		return 0;
	if ((saddr & cfg->cluster_mask) != cfg->cluster_net)
		return 0;
	if ((daddr & cfg->cluster_mask) == cfg->cluster_net || daddr == cfg->node_ip)
		return 0;
	/* Other nodes are cluster members: they route to pod CIDRs, and a
	 * pod's reply to a node's NodePort SNAT must keep the pod's address. */
	return !bpf_map_lookup_elem(&weir_nodes, &daddr);
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

	if (nat_addr(skb, addr_off, old_addr, addr, key->proto, l4, !meta->later_fragment))
		return WEIR_DROP_REWRITE_FAILED;
	if (meta->later_fragment)
		err = 0; /* no L4 header: the first fragment carried the port */
	else if (key->proto == IPPROTO_ICMP)
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

/* Is the packet a local pod's, bound outside the cluster? Records the pod
 * as the drop context's endpoint when it is. */
static __always_inline int snat_wanted(struct __sk_buff *skb, const struct weir_config *cfg,
				       const struct ipv4_meta *meta)
{
	struct weir_ep_info *src;

	if (!snat_bound(cfg, meta->saddr, meta->daddr))
		return 0;
	/* Only pods of this node: their replies are ours to deliver. */
	src = lookup_ep_v4(meta->saddr);
	if (!src)
		return 0;
	obs_endpoint(skb, src, WEIR_DIR_EGRESS);
	return 1;
}

/* Claims a node port for a new flow and inserts both entries; `replace`
 * when a stale forward entry of the same tuple goes. */
static __always_inline __u32 snat_new(struct __sk_buff *skb, const struct weir_ct_key *key, __be32 node_ip,
				      __u8 tcp_flags, __u64 now, int replace, __be16 *out_port)
{
	__u32 min = weir_snat_port_min, span = (__u32)weir_snat_port_max - min + 1;
	struct weir_ct_entry fwd = {}, rev = {};
	struct weir_ct_key rkey = {}, to = *key;
	struct weir_ct_entry *other;
	int ret;

	to.saddr = node_ip;
	ct_new_pair(key, &to, tcp_flags, skb->len, now, 0, WEIR_CT_F_MASQ, &fwd, &rkey, &rev);
	/* Charged to the pod (snat_wanted named it the drop context's endpoint). */
	fwd.owner = rev.owner = skb->cb[WEIR_CB_ENDPOINT];
	/* The pod's from_pod judged it already (and dropped it if denied);
	 * judged here again for the verdict this connection keeps: an audit,
	 * an allow and its rule. */
	fwd.policy_egress = policy_judge(fwd.owner, WEIR_DIR_EGRESS, key->daddr, policy_l4(key->proto, key->dport), 0);
	ret = policy_drop_reason(fwd.policy_egress, 0);
	if (ret)
		return ret;
	rev.policy_egress = fwd.policy_egress;
	fwd.policy_rev = rev.policy_rev = policy_revision();
	ret = ct_claim_port(skb, &rkey, &rkey.dport, &rev, min, span, 1, WEIR_DROP_SNAT_PORTS_EXHAUSTED,
			    WEIR_DROP_SNAT_PORTS_EXHAUSTED);
	if (ret)
		return -ret;
	fwd.xlate_sport = rkey.dport;
	ret = ct_create(skb, key, &fwd, &rkey, &rev, tcp_flags, replace, 1);
	if (ret == -2)
		return WEIR_DROP_CT_ENDPOINT_LIMIT;
	if (ret < 0)
		return WEIR_DROP_SNAT_PORTS_EXHAUSTED;
	if (ret > 0) {
		/* Another CPU set this flow up first: follow its choice. */
		other = bpf_map_lookup_elem(&weir_ct4, key);
		if (!other)
			return WEIR_DROP_SNAT_PORTS_EXHAUSTED;
		*out_port = other->xlate_sport;
		return WEIR_DROP_NONE;
	}
	*out_port = fwd.xlate_sport;
	return WEIR_DROP_NONE;
}

/* to_netdev's work: masquerade a local pod's packet bound outside the
 * cluster. Returns WEIR_DROP_NONE and sets *translated, or a reason. */
static __always_inline __u32 snat4_egress(struct __sk_buff *skb, struct ipv4_meta *meta, int *translated)
{
	struct weir_config *cfg = node_config();
	struct weir_ct_key key = {};
	struct weir_ct_entry *e;
	__u8 l4_flags = 0;
	__be32 node_ip;
	__be16 port;
	__u64 now;
	__u32 reason;
	int ret, replace = 0;

	*translated = 0;
	if (!cfg || !snat_wanted(skb, cfg, meta))
		return WEIR_DROP_NONE;
	node_ip = cfg->node_ip;
	ret = ct_tuple(skb, meta, &key, &l4_flags);
	if (ret <= 0)
		return -ret;
	/* Only what the pod starts: an echo request, not a reply. */
	if (key.proto == IPPROTO_ICMP && l4_flags != ICMP_ECHO)
		return WEIR_DROP_NONE;
	now = bpf_ktime_get_ns();

	e = bpf_map_lookup_elem(&weir_ct4, &key);
	/* A reply of a connection the remote opened (native routing reaches
	 * pods from outside): the remote expects the pod's address. */
	if (e && (e->flags & (WEIR_CT_F_REVERSE | WEIR_CT_F_MASQ)) == WEIR_CT_F_REVERSE && e->expires_ns >= now)
		return WEIR_DROP_NONE;
	if (e) {
		/* A flow idle past its deadline (its reverse entry may be going
		 * away under the GC), a fresh SYN on a closed one (port reuse),
		 * a changed node IP, or a connection from_pod tracked before
		 * masquerading was switched on: start over with a fresh port. */
		if (!(e->flags & WEIR_CT_F_MASQ) || e->expires_ns < now || ct_is_reuse(e, key.proto, l4_flags, now) ||
		    e->xlate_saddr != node_ip) {
			struct weir_ct_key rkey = {};
			struct weir_ct_entry *r;

			ct_partner_key(e, key.proto, &rkey);
			r = bpf_map_lookup_elem(&weir_ct4, &rkey);
			/* The GC may have collected it and another flow taken the
			 * port since: only remove a reverse entry that is ours. */
			if (r && r->xlate_daddr == key.saddr && r->xlate_dport == key.sport) {
				/* The exchange: a FIN on another CPU may release it too. */
				ct_release_closed(r);
				bpf_map_delete_elem(&weir_ct4, &rkey);
			}
			replace = 1;
		} else {
			ct_refresh(skb, &key, e, l4_flags, now);
			reason = snat_rewrite(skb, meta, &key, e->xlate_saddr, e->xlate_sport, 0);
			*translated = !reason;
			return reason;
		}
	}
	/* A later fragment without its flow: its first fragment claimed no
	 * port (or the record of it was lost). */
	if (meta->later_fragment)
		return WEIR_DROP_FRAG_NOT_FOUND;
	reason = snat_new(skb, &key, node_ip, l4_flags, now, replace, &port);
	if (reason)
		return reason;
	reason = snat_rewrite(skb, meta, &key, node_ip, port, 0);
	*translated = !reason;
	return reason;
}

/* The reply half, on the entry from_netdev looked up for the packet: a
 * reply to a masqueraded flow gets the pod's address and port back.
 * WEIR_DROP_NONE or a reason. */
static __always_inline __u32 snat4_reply(struct __sk_buff *skb, struct ipv4_meta *meta, const struct weir_ct_key *key,
					 struct weir_ct_entry *e, __u8 l4_flags)
{
	ct_refresh(skb, key, e, l4_flags, bpf_ktime_get_ns());
	return snat_rewrite(skb, meta, key, e->xlate_daddr, e->xlate_dport, 1);
}

#endif /* WEIR_SNAT_H */
