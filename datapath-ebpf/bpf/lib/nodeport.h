/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* NodePorts, externalIPs and LoadBalancer ingress IPs: services reached from
 * outside the cluster through the node's uplink. The same translation runs
 * in XDP (bpf_xdp.c, before an skb exists) and in TC (bpf_host.c's
 * from_netdev, for what XDP passes on, or when XDP is not attached), so the
 * decision is context-free: nodeport_ct() takes a tuple and returns the tuple
 * to rewrite it to; each hook rewrites with the means it has.
 *
 * Frontends live in lb.h's weir_lb4_services with WEIR_LB_F_EXTERNAL set:
 * the agent keys a NodePort by this node's IP (and nodePort), an externalIP
 * or LoadBalancer ingress IP by that address (and the service port). Such a
 * frontend has its own service id and backend list, because with
 * externalTrafficPolicy Local (WEIR_LB_F_LOCAL) only this node's endpoints
 * are eligible: the agent programs those alone, and an empty list means
 * "drop, counted as WEIR_DROP_NO_LOCAL_BACKEND" (what kube-proxy does).
 *
 * Connections, with C the client, F:fp the frontend, B:bp the backend and N
 * this node's IP (all in weir_ct4, flagged WEIR_CT_F_NODEPORT):
 *
 *   backend on this node, or policy Local (source kept):
 *     forward  C:cp -> F:fp   to  C:cp -> B:bp    then to the pod (stack or
 *                                                  from_netdev's redirect)
 *     reverse  B:bp -> C:cp   to  F:fp -> C:cp    in the pod's from_pod
 *                                                  (lb.h's lb4_xlate)
 *   backend on another node, policy Cluster (WEIR_CT_F_SNAT):
 *     forward  C:cp -> F:fp   to  N:np -> B:bp    back out of the node
 *     reverse  B:bp -> N:np   to  F:fp -> C:cp    arrives on the uplink,
 *                                                  back out to the client
 *
 * The SNAT port np is random in 61000..65535, reserved by inserting the
 * reverse entry with BPF_NOEXIST (a few tries; when all are taken the
 * oldest of them that never completed its handshake gives its port up, so
 * a SYN flood holding the range cannot shut genuine clients out; else a
 * counted drop). Every connection from outside is charged to the node's
 * share of the table (WEIR_CT_OWNER_NODE, conntrack.h). The
 * range sits above Linux's default ip_local_port_range (32768..60999) so the
 * node's own connections to a backend never share a reply tuple with a
 * translated one.
 *
 * Entries of other kinds (ClusterIP connections of local pods) are left to
 * their own paths: a nodeport hook only follows WEIR_CT_F_NODEPORT entries.
 *
 * Not handled: IPv6, SCTP frontends (the agent skips them: nat.h cannot
 * rewrite SCTP ports), ICMP errors quoting a translated connection, and
 * later fragments (no ports; they reach the stack untranslated). */
#ifndef WEIR_NODEPORT_H
#define WEIR_NODEPORT_H

#include <linux/in.h>
#include "common.h"
#include "abi.h"
#include "maps.h"
#include "conntrack.h"
#include "lb.h"
#include "policy.h"
#include "endpoint.h"
#include "overlay.h"
#include "drop.h"
#include "ipv4.h"

/* The tuple a packet arriving on the uplink becomes, given the entry the
 * caller looked up for its tuple (NULL for none). Returns 1 with *out
 * filled (translate), 0 when the packet is none of NodePort's business, or
 * -reason to drop. Creates the connection of a new one, unless the packet
 * may not start one (`may_create` 0: a later fragment). */
static __always_inline int nodeport_ct(void *ctx, const struct weir_ct_key *key, struct weir_ct_entry *ct,
				       __u8 tcp_flags, __u64 now, int may_create, struct weir_ct_key *out)
{
	struct weir_ct_entry fwd = {}, rev = {};
	struct weir_ct_key rkey = {}, to = {};
	struct weir_lb_svc_key skey = {};
	struct weir_lb_backend be = {};
	struct weir_lb_svc *svc, svc_copy;
	struct weir_config *cfg;
	struct weir_ep_info *local;
	__u32 reason, owner, pol_in = 0;
	int replace = 0, snat, ret;

	if (ct) {
		if (!(ct->flags & WEIR_CT_F_NODEPORT))
			return 0;
		/* Port reuse after a close: a new connection, a fresh backend
		 * (as in lb4_translate). The old reverse entry expires on its own. */
		if (!ct_is_reuse(ct, key->proto, tcp_flags, now)) {
			ct_refresh(ctx, key, ct, tcp_flags, now);
			ct_xlate_tuple(ct, key->proto, out);
			return 1;
		}
		replace = 1;
	}

	if (key->proto == IPPROTO_ICMP)
		return 0;
	skey.vip = key->daddr;
	skey.dport = key->dport;
	skey.proto = key->proto;
	svc = bpf_map_lookup_elem(&weir_lb4_services, &skey);
	if (!svc || !(svc->flags & WEIR_LB_F_EXTERNAL))
		return 0;
	/* A later fragment follows its first one's connection or none. */
	if (!may_create)
		return -WEIR_DROP_FRAG_NOT_FOUND;
	svc_copy = *svc;
	if ((svc_copy.flags & WEIR_LB_F_LOCAL) && !svc_copy.count)
		return -WEIR_DROP_NO_LOCAL_BACKEND;
	reason = lb4_select(&svc_copy, key, now, &be);
	if (reason)
		return -(int)reason;
	/* Only a remote backend under policy Cluster needs the replies to come
	 * back through this node. */
	local = lookup_ep_v4(be.ip);
	/* A local backend judges the client (policy.h); a remote one's node
	 * judges what arrives there. */
	if (local) {
		pol_in = policy_judge(local->endpoint_id, WEIR_DIR_INGRESS, key->saddr, policy_l4(key->proto, be.port),
				      0);
		reason = policy_drop_reason(pol_in, 1);
		if (reason)
			return -(int)reason;
	}
	snat = !(svc_copy.flags & WEIR_LB_F_LOCAL) && !local;
	/* Charged to the node's share, never the backend pod's: whoever is
	 * outside cannot fill a pod's share, nor the node's table beyond its
	 * own, and a full share first sheds the handshakes never completed. */
	owner = WEIR_CT_OWNER_NODE;
	if (!ct_node_room(key, replace ? 1 : 2, now))
		return -WEIR_DROP_CT_NODE_LIMIT;

	to.saddr = key->saddr;
	to.daddr = be.ip;
	to.sport = key->sport;
	to.dport = be.port;
	if (snat) {
		cfg = node_config();
		if (!cfg || !cfg->node_ip)
			return -WEIR_DROP_NAT_NO_PORT;
		to.saddr = cfg->node_ip;
	}
	ct_new_pair(key, &to, tcp_flags, ctx_len(ctx), now, svc_copy.service_id, WEIR_CT_F_NODEPORT | (snat ? WEIR_CT_F_SNAT : 0),
		    &fwd, &rkey, &rev);
	fwd.owner = rev.owner = owner;
	fwd.policy_ingress = rev.policy_ingress = pol_in;
	fwd.policy_rev = rev.policy_rev = policy_revision();
	if (snat) {
		/* The reverse entry is the port reservation: whoever inserts it
		 * first owns the port towards this backend. Above the node's
		 * own port range, so no socket check. */
		ret = ct_claim_port(ctx, &rkey, &rkey.dport, &rev, WEIR_NAT_PORT_MIN, WEIR_NAT_PORT_COUNT, 0,
				    WEIR_DROP_NAT_NO_PORT, WEIR_DROP_CT_MAP_FULL);
		if (ret)
			return ret;
		fwd.xlate_sport = rkey.dport;
	}
	ret = ct_create(ctx, key, &fwd, &rkey, &rev, tcp_flags, replace, snat);
	if (ret == -2)
		return -WEIR_DROP_CT_NODE_LIMIT;
	if (ret < 0)
		return -WEIR_DROP_CT_MAP_FULL;
	if (ret > 0) {
		/* Another CPU created the flow first: follow its choice. */
		ct = bpf_map_lookup_elem(&weir_ct4, key);
		if (!ct)
			return -WEIR_DROP_CT_MAP_FULL;
		ct_xlate_tuple(ct, key->proto, out);
		return 1;
	}
	ct_xlate_tuple(&fwd, key->proto, out);
	return 1;
}

#ifdef WEIR_CTX_SKB
/* Sends a translated packet out of the node towards meta->daddr from a TC
 * ingress hook: the SNATed forward packet and the reply on the uplink
 * (bpf_host.c), and a local backend's reply in from_pod (bpf_lxc.c). Never
 * through the stack: its input route check drops a packet whose source is
 * one of the node's own addresses (the node IP as SNAT or NodePort address).
 * VXLAN mode: remote pod CIDRs go into the tunnel. Otherwise the FIB picks
 * the device and bpf_redirect_neigh resolves the next hop's MAC; without a
 * FIB answer, out of the device the packet came in on. */
static __always_inline int nodeport_redirect_out(struct __sk_buff *skb, const struct ipv4_meta *meta)
{
	struct weir_config *cfg = node_config();
	struct bpf_fib_lookup fib = {};
	struct weir_route *route;
	__u32 ifindex = skb->ifindex;

	if (meta->ttl <= 1)
		return drop_packet(skb, WEIR_DROP_TTL_EXCEEDED);
	if (ipv4_dec_ttl(skb, meta->ttl))
		return drop_packet(skb, WEIR_DROP_REWRITE_FAILED);
	if (cfg && cfg->routing_mode == WEIR_ROUTING_VXLAN && cfg->tunnel_ifindex) {
		route = lookup_route_v4(meta->daddr);
		if (route) {
			if (set_tunnel_dst(skb, route))
				return drop_packet(skb, WEIR_DROP_REWRITE_FAILED);
			return bpf_redirect(cfg->tunnel_ifindex, 0);
		}
	}
	fib.family = AF_INET;
	fib.ipv4_src = meta->saddr;
	fib.ipv4_dst = meta->daddr;
	fib.ifindex = skb->ifindex;
	if (bpf_fib_lookup(skb, &fib, sizeof(fib), BPF_FIB_LOOKUP_SKIP_NEIGH) == BPF_FIB_LKUP_RET_SUCCESS)
		ifindex = fib.ifindex;
	return bpf_redirect_neigh(ifindex, NULL, 0, 0);
}

#endif /* WEIR_CTX_SKB */

#endif /* WEIR_NODEPORT_H */
