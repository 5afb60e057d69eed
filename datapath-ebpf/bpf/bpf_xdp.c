// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* XDP on the node's uplink (native/driver mode): NodePort, externalIP and
 * LoadBalancer IP translation before the kernel allocates an skb.
 *
 *   from_netdev_xdp: for a tuple nodeport.h claims,
 *     - to a backend on this node: DNAT, XDP_PASS (from_netdev, or the stack
 *       through the pod's /32 route, delivers it);
 *     - anything that leaves again (a remote backend, source NATed to the
 *       node; a reply on its way back to the client): bpf_fib_lookup for
 *       the next hop, translate, XDP_TX. When the next hop is not on this
 *       same device (the vxlan tunnel: XDP cannot encapsulate) or is not
 *       resolved (no neighbour entry yet, forwarding off, no route), the
 *       packet is passed on untouched: the conntrack entries exist now, and
 *       from_netdev (TC) translates it the same way and forwards it with
 *       bpf_redirect_neigh or through the tunnel.
 *   IP options, fragments, non-TCP/UDP: passed on untouched to from_netdev,
 *   which parses them fully.
 *
 * The section is "xdp.frags" (BPF_F_XDP_HAS_FRAGS): a veth with a 9000-byte
 * MTU peer refuses a program that cannot see multi-buffer packets. Headers
 * are always in the first buffer; checksums are patched incrementally, so
 * the payload in later buffers is never read.
 *
 * Parsing, the tuple, the rewrite and the TTL hop are the same helpers TC
 * uses (ipv4.h, conntrack.h, nat.h), through the XDP context (ctx/xdp.h). */

#include "lib/ctx/xdp.h"
#include "lib/common.h"
#include "lib/abi.h"
#include "lib/maps.h"
#include "lib/drop.h"
#include "lib/eth.h"
#include "lib/ipv4.h"
#include "lib/conntrack.h"
#include "lib/nat.h"
#include "lib/nodeport.h"

SEC("xdp.frags")
int from_netdev_xdp(struct xdp_md *ctx)
{
	struct weir_ct_key key = {}, to = {};
	struct weir_ct_entry *seen;
	struct ipv4_meta meta = {};
	__u8 l4_flags = 0;
	int ret;

	if (eth_proto(ctx) != ETH_P_IP || ipv4_parse(ctx, &meta))
		return XDP_PASS;
	/* Options and fragments are left to TC, which handles both. */
	if (meta.l4_off != ETH_HLEN + sizeof(struct iphdr) || meta.is_fragment)
		return XDP_PASS;
	if (meta.protocol != IPPROTO_TCP && meta.protocol != IPPROTO_UDP)
		return XDP_PASS;
	if (ct_tuple(ctx, &meta, &key, &l4_flags) <= 0)
		return XDP_PASS;

	/* Replies from backends are TC's: they come from a node whose stack
	 * may have left the checksum to offload (CHECKSUM_PARTIAL), which only
	 * an skb remembers; sent back out by XDP_TX it would arrive corrupt.
	 * Requests come from outside the cluster with complete checksums. */
	seen = bpf_map_lookup_elem(&weir_ct4, &key);
	if (seen && (seen->flags & WEIR_CT_F_REVERSE))
		return XDP_PASS;
	ret = nodeport_ct(ctx, &key, seen, l4_flags, bpf_ktime_get_ns(), 1, &to);
	if (ret == 0)
		return XDP_PASS;
	if (ret < 0)
		return xdp_drop(ctx, -ret);

	if (!lookup_ep_v4(to.daddr)) {
		struct bpf_fib_lookup fib = {};
		struct iphdr *ip = ctx_data(ctx) + ETH_HLEN;

		/* TC drops it with a counted reason. */
		if (meta.ttl <= 1)
			return XDP_PASS;
		if ((void *)(ip + 1) > ctx_data_end(ctx))
			return XDP_PASS;
		fib.family = AF_INET;
		fib.tos = ip->tos;
		fib.l4_protocol = meta.protocol;
		fib.sport = to.sport;
		fib.dport = to.dport;
		fib.tot_len = bpf_ntohs(ip->tot_len);
		fib.ipv4_src = to.saddr;
		fib.ipv4_dst = to.daddr;
		fib.ifindex = ctx->ingress_ifindex;
		if (bpf_fib_lookup(ctx, &fib, sizeof(fib), 0) != BPF_FIB_LKUP_RET_SUCCESS ||
		    fib.ifindex != ctx->ingress_ifindex)
			return XDP_PASS; /* untouched: from_netdev follows the new entries */
		if (nat_rewrite4(ctx, &meta, &key, to.saddr, to.daddr, to.sport, to.dport) ||
		    ipv4_dec_ttl(ctx, meta.ttl) || eth_rewrite(ctx, fib.dmac, fib.smac))
			return xdp_drop(ctx, WEIR_DROP_REWRITE_FAILED);
		return XDP_TX;
	}
	if (nat_rewrite4(ctx, &meta, &key, to.saddr, to.daddr, to.sport, to.dport))
		return xdp_drop(ctx, WEIR_DROP_REWRITE_FAILED);
	return XDP_PASS;
}

char _license[] SEC("license") = "Dual BSD/GPL";
