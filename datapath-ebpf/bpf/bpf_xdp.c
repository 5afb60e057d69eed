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
 * the payload in later buffers is never read. */

#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include "lib/common.h"
#include "lib/abi.h"
#include "lib/maps.h"
#include "lib/drop.h"
#include "lib/nodeport.h"

/* RFC 1624 incremental update over the raw (network order) words: the
 * one's complement sum does not care which byte order both sides use. */
static __always_inline __u16 csum_fold32(__u32 s)
{
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	return (__u16)s;
}

static __always_inline void csum_replace4(__u16 *sum, __u32 from, __u32 to)
{
	__u32 s = (__u16)~*sum;

	s += ((from & 0xffff) ^ 0xffff) + ((from >> 16) ^ 0xffff) + (to & 0xffff) + (to >> 16);
	*sum = ~csum_fold32(s);
}

static __always_inline void csum_replace2(__u16 *sum, __u16 from, __u16 to)
{
	__u32 s = (__u16)~*sum;

	s += (from ^ 0xffff) + to;
	*sum = ~csum_fold32(s);
}

/* Rewrites addresses and ports, patching the IPv4 and L4 checksums. A UDP
 * checksum of 0 means "none" and stays 0; a computed 0 becomes 0xffff. */
static __always_inline void xdp_rewrite(struct iphdr *ip, __be16 *ports, __u16 *l4_csum, __u8 proto,
					const struct weir_ct_key *from, const struct weir_ct_key *to)
{
	int l4 = !(proto == IPPROTO_UDP && *l4_csum == 0);

	if (from->saddr != to->saddr) {
		csum_replace4((__u16 *)&ip->check, from->saddr, to->saddr);
		if (l4)
			csum_replace4(l4_csum, from->saddr, to->saddr);
		ip->saddr = to->saddr;
	}
	if (from->daddr != to->daddr) {
		csum_replace4((__u16 *)&ip->check, from->daddr, to->daddr);
		if (l4)
			csum_replace4(l4_csum, from->daddr, to->daddr);
		ip->daddr = to->daddr;
	}
	if (l4) {
		csum_replace2(l4_csum, from->sport, to->sport);
		csum_replace2(l4_csum, from->dport, to->dport);
		if (proto == IPPROTO_UDP && *l4_csum == 0)
			*l4_csum = 0xffff;
	}
	ports[0] = to->sport;
	ports[1] = to->dport;
}

SEC("xdp.frags")
int from_netdev_xdp(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct weir_ct_key key = {}, to = {};
	struct weir_ct_entry *seen;
	struct ethhdr *eth = data;
	struct iphdr *ip;
	__be16 *ports;
	__u16 *l4_csum;
	__u8 tcp_flags = 0;
	int ret;

	if ((void *)(eth + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP))
		return XDP_PASS;
	ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > data_end)
		return XDP_PASS;
	/* Options and fragments are left to TC, which handles both. */
	if (ip->version != 4 || ip->ihl != 5 || (ip->frag_off & bpf_htons(IP_MF | IP_OFFSET)))
		return XDP_PASS;
	switch (ip->protocol) {
	case IPPROTO_TCP: {
		struct tcphdr *th = (void *)(ip + 1);

		if ((void *)(th + 1) > data_end)
			return XDP_PASS;
		ports = (__be16 *)th;
		l4_csum = (__u16 *)&th->check;
		tcp_flags = ((__u8 *)th)[13];
		break;
	}
	case IPPROTO_UDP: {
		struct udphdr *uh = (void *)(ip + 1);

		if ((void *)(uh + 1) > data_end)
			return XDP_PASS;
		ports = (__be16 *)uh;
		l4_csum = (__u16 *)&uh->check;
		break;
	}
	default:
		return XDP_PASS;
	}
	key.saddr = ip->saddr;
	key.daddr = ip->daddr;
	key.sport = ports[0];
	key.dport = ports[1];
	key.proto = ip->protocol;

	/* Replies from backends are TC's: they come from a node whose stack
	 * may have left the checksum to offload (CHECKSUM_PARTIAL), which only
	 * an skb remembers; sent back out by XDP_TX it would arrive corrupt.
	 * Requests come from outside the cluster with complete checksums. */
	seen = bpf_map_lookup_elem(&weir_ct4, &key);
	if (seen && (seen->flags & WEIR_CT_F_REVERSE))
		return XDP_PASS;
	ret = nodeport_ct(ctx, &key, seen, tcp_flags, bpf_ktime_get_ns(), &to);
	if (ret == 0)
		return XDP_PASS;
	if (ret < 0) {
		struct weir_drop_ctx dctx = { .obs = WEIR_OBS_XDP | (WEIR_DIR_UNKNOWN << 8) };

		return xdp_drop(&dctx, -ret, data_end - data);
	}

	if (!lookup_ep_v4(to.daddr)) {
		struct bpf_fib_lookup fib = {};
		__u8 ttl = ip->ttl;
		long rc;

		/* TC drops it with a counted reason. */
		if (ttl <= 1)
			return XDP_PASS;
		fib.family = AF_INET;
		fib.tos = ip->tos;
		fib.l4_protocol = ip->protocol;
		fib.sport = to.sport;
		fib.dport = to.dport;
		fib.tot_len = bpf_ntohs(ip->tot_len);
		fib.ipv4_src = to.saddr;
		fib.ipv4_dst = to.daddr;
		fib.ifindex = ctx->ingress_ifindex;
		rc = bpf_fib_lookup(ctx, &fib, sizeof(fib), 0);
		if (rc != BPF_FIB_LKUP_RET_SUCCESS || fib.ifindex != ctx->ingress_ifindex)
			return XDP_PASS; /* untouched: from_netdev follows the new entries */
		xdp_rewrite(ip, ports, l4_csum, key.proto, &key, &to);
		csum_replace2((__u16 *)&ip->check, bpf_htons((__u16)ttl << 8), bpf_htons((__u16)(ttl - 1) << 8));
		ip->ttl = ttl - 1;
		__builtin_memcpy(eth->h_dest, fib.dmac, ETH_ALEN);
		__builtin_memcpy(eth->h_source, fib.smac, ETH_ALEN);
		return XDP_TX;
	}
	xdp_rewrite(ip, ports, l4_csum, key.proto, &key, &to);
	return XDP_PASS;
}

char _license[] SEC("license") = "Dual BSD/GPL";
