/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Network policy: the verdict of a new connection, on its first packet,
 * after service translation (so a client reaching a pod through its
 * ClusterIP or NodePort is judged as reaching that pod). The conntrack
 * entries the connection then gets keep the verdict (abi.h's
 * policy_egress / policy_ingress): its later packets and every reply pass
 * on the entries without another lookup.
 *
 * A policy change reaches open connections too: the agent bumps
 * weir_policy_rev after every change, and a forward entry made under an
 * older revision is judged again on its next packet (policy_recheck), as
 * Cilium does and unlike iptables' "ESTABLISHED accepted". A connection
 * that became denied drops from its next packet on (its replies have
 * nothing left to answer); one still allowed goes on, its entry at the new
 * revision. Without this a UDP flow reusing a tuple within its timeout, or
 * any long-lived connection, would keep a verdict the policy no longer
 * gives. Steady state costs one array lookup per packet.
 *
 * The tables are the agent's (daemon/src/policy.rs compiles them, the
 * model crate's policy module decides them); abi.h describes the keys. */
#ifndef WEIR_POLICY_H
#define WEIR_POLICY_H

#include "common.h"
#include "abi.h"
#include "maps.h"
#include "endpoint.h"

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, WEIR_POLICY_MAX_ENTRIES);
	__type(key, struct weir_policy_key);
	__type(value, struct weir_policy_entry);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} weir_policy SEC(".maps");

/* Address -> the id of the most specific CIDR any policy names that
 * contains it (prefixes of `cidr` and `except` alike, so one id says which
 * of them contain the address). Pods and nodes have one too: ipBlock
 * matches their addresses, unlike service VIPs, which are never judged. */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, WEIR_POLICY_CIDR_MAX);
	__type(key, struct weir_route_key);
	__type(value, __u32);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} weir_policy_cidr SEC(".maps");

/* The revision of the tables, bumped by the agent after every change (of
 * policies, or of the identities they name). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} weir_policy_rev SEC(".maps");

static __always_inline __u32 policy_revision(void)
{
	__u32 zero = 0, *rev = bpf_map_lookup_elem(&weir_policy_rev, &zero);

	return rev ? *rev : 0;
}

/* The best of each layer over a connection's lookups (policy_take). */
struct policy_best {
	__u32 np;        /* WEIR_PA_* << WEIR_PV_SHIFT | rule */
	__u32 audit;     /* the same, audit-mode policies counted */
	__u32 admin;     /* WEIR_PT_* (rank and action) */
	__u32 admin_rule;
	__u32 baseline;
	__u32 baseline_rule;
};

/* The higher-precedence action of each layer wins, with its rule; in a
 * tier, the higher rank (the earlier rule). */
static __always_inline void policy_take(const struct weir_policy_entry *e, struct policy_best *b)
{
	if (!e)
		return;
	if (e->action > (b->np >> WEIR_PV_SHIFT))
		b->np = ((__u32)e->action << WEIR_PV_SHIFT) | (e->rule & WEIR_PV_REF_MASK);
	if (e->audit_action > (b->audit >> WEIR_PV_SHIFT))
		b->audit = ((__u32)e->audit_action << WEIR_PV_SHIFT) | (e->audit_rule & WEIR_PV_REF_MASK);
	if (e->admin > b->admin) {
		b->admin = e->admin;
		b->admin_rule = e->admin_rule & WEIR_PV_REF_MASK;
	}
	if (e->baseline > b->baseline) {
		b->baseline = e->baseline;
		b->baseline_rule = e->baseline_rule & WEIR_PV_REF_MASK;
	}
}

/* The verdict (WEIR_PV_* << WEIR_PV_SHIFT | ref) of local endpoint
 * `endpoint_id` in `direction` for a connection with `peer` on `l4`
 * (protocol | destination port in network order << 16). `peer_id`, when
 * not 0, is the peer's identity already known (the node itself), else
 * the ipcache's, WORLD when it has none. Not inlined: called from several
 * places of one program, and its keys must not add to their stacks.
 *
 * The tiers in order: ClusterNetworkPolicy's Admin tier (its first
 * matching rule: Accept allows, Deny drops, Pass goes on), NetworkPolicy
 * (weir's kinds with it: an explicit deny, an isolated endpoint's default
 * deny, an allow), and where that decides nothing the Baseline tier. Audit
 * verdicts come from the NetworkPolicy tier only, and never change what is
 * enforced. */
static __noinline __u32 policy_judge(__u32 endpoint_id, __u32 direction, __be32 peer, __u32 l4, __u32 peer_id)
{
	/* One key's room for both kinds of key: this frame adds to the
	 * deepest caller's stack. The address lookups come first. */
	union {
		struct weir_route_key rk;
		struct weir_policy_key k;
	} u = {};
	struct weir_ipcache_entry *ic;
	struct policy_best best = {};
	__u32 *cidr, cidr_id = 0, tier;
	__u8 a;

	u.rk.prefixlen = 64;
	u.rk.family = WEIR_AF_INET;
	u.rk.addr[0] = peer;
	if (!peer_id) {
		ic = bpf_map_lookup_elem(&weir_ipcache, &u.rk);
		peer_id = ic && ic->identity ? ic->identity : WEIR_ID_WORLD;
	}
	cidr = bpf_map_lookup_elem(&weir_policy_cidr, &u.rk);
	if (cidr)
		cidr_id = *cidr;

	__builtin_memset(&u, 0, sizeof(u));
	u.k.prefixlen = WEIR_POLICY_PREFIX_FULL;
	u.k.endpoint_id = endpoint_id;
	u.k.direction = direction;
	u.k.proto = l4 & 0xff;
	u.k.dport = l4 >> 16;
	u.k.peer = peer_id;
	policy_take(bpf_map_lookup_elem(&weir_policy, &u.k), &best);
	if (cidr_id) {
		u.k.peer = cidr_id;
		policy_take(bpf_map_lookup_elem(&weir_policy, &u.k), &best);
	}
	u.k.peer = WEIR_POLICY_PEER_ANY;
	policy_take(bpf_map_lookup_elem(&weir_policy, &u.k), &best);

	tier = best.admin & WEIR_PT_KIND_MASK;
	if (tier == WEIR_PT_ACCEPT)
		return (WEIR_PV_ALLOW << WEIR_PV_SHIFT) | best.admin_rule;
	if (tier == WEIR_PT_DENY)
		return (WEIR_PV_DENY << WEIR_PV_SHIFT) | best.admin_rule;
	a = best.np >> WEIR_PV_SHIFT;
	if (a == WEIR_PA_DENY)
		return (WEIR_PV_DENY << WEIR_PV_SHIFT) | (best.np & WEIR_PV_REF_MASK);
	if (a == WEIR_PA_DEFAULT_DENY)
		return (WEIR_PV_DENIED << WEIR_PV_SHIFT) | (best.np & WEIR_PV_REF_MASK);
	tier = best.baseline & WEIR_PT_KIND_MASK;
	if (a == WEIR_PA_NONE && tier == WEIR_PT_DENY)
		return (WEIR_PV_DENY << WEIR_PV_SHIFT) | best.baseline_rule;
	if ((best.audit >> WEIR_PV_SHIFT) == WEIR_PA_DENY || (best.audit >> WEIR_PV_SHIFT) == WEIR_PA_DEFAULT_DENY)
		return (WEIR_PV_AUDIT << WEIR_PV_SHIFT) | (best.audit & WEIR_PV_REF_MASK);
	if (a == WEIR_PA_ALLOW)
		return (WEIR_PV_ALLOW << WEIR_PV_SHIFT) | (best.np & WEIR_PV_REF_MASK);
	if (tier == WEIR_PT_ACCEPT)
		return (WEIR_PV_ALLOW << WEIR_PV_SHIFT) | best.baseline_rule;
	return WEIR_PV_NONE;
}

/* A denying verdict as the drop path carries it (abi.h), 0 otherwise. */
static __always_inline __u32 policy_drop_reason(__u32 verdict, __u32 ingress)
{
	__u32 kind = verdict >> WEIR_PV_SHIFT;

	if (kind < WEIR_PV_DENIED)
		return 0;
	return (kind == WEIR_PV_DENY ? WEIR_DROP_POLICY_DENY : WEIR_DROP_POLICY_DENIED) |
	       (ingress ? WEIR_DROP_F_INGRESS : 0) | ((verdict & WEIR_PV_REF_MASK) << WEIR_DROP_REF_SHIFT);
}

/* Judges a new connection saddr -> daddr on `l4` (see policy_judge), as
 * translated: the egress of `src_ep`, the local endpoint that sent it (0
 * for none), and the ingress of daddr's endpoint if it is local.
 * `src_id` is the source's identity when the caller knows it (0: the
 * ipcache's). A pod reaching itself (through its own service) is not
 * judged. 0 with the verdicts to keep in *egress and *ingress, or the
 * policy drop. */
static __always_inline __u32 policy_connection(__u32 src_ep, __be32 saddr, __be32 daddr, __u32 l4, __u32 src_id,
					       __u32 *egress, __u32 *ingress)
{
	struct weir_ep_info *dst = lookup_ep_v4(daddr);
	__u32 dst_ep = dst ? dst->endpoint_id : 0;
	__u32 v;

	if (src_ep && src_ep == dst_ep)
		return 0;
	if (src_ep) {
		v = policy_judge(src_ep, WEIR_DIR_EGRESS, daddr, l4, 0);
		if (policy_drop_reason(v, 0))
			return policy_drop_reason(v, 0);
		*egress = v;
	}
	if (dst_ep) {
		v = policy_judge(dst_ep, WEIR_DIR_INGRESS, saddr, l4, src_id);
		if (policy_drop_reason(v, 1))
			return policy_drop_reason(v, 1);
		*ingress = v;
	}
	return 0;
}

/* The l4 argument of a tuple's destination. */
static __always_inline __u32 policy_l4(__u8 proto, __be16 dport)
{
	return proto | ((__u32)dport << 16);
}

/* A forward entry's verdicts at the current revision: judged again (as a
 * new connection from key->saddr to where the entry sends it) when made
 * under an older one. 0 to go on, or the policy drop; an allowed one's
 * entry takes the new verdicts and revision, a denied one is judged again
 * on every packet until the policy allows it again. */
static __always_inline __u32 policy_recheck(struct weir_ct_entry *e, const struct weir_ct_key *key, __u32 src_ep,
					    __u32 src_id)
{
	__u32 rev = policy_revision(), eg = 0, in = 0, reason;

	if (e->policy_rev == rev)
		return 0;
	reason = policy_connection(src_ep, key->saddr, e->xlate_daddr, policy_l4(key->proto, e->xlate_dport), src_id,
				   &eg, &in);
	if (reason)
		return reason;
	e->policy_egress = eg;
	e->policy_ingress = in;
	e->policy_rev = rev;
	return 0;
}

#endif /* WEIR_POLICY_H */
