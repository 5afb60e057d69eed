/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* IPv4 parsing: options, fragments and truncated L4 headers handled here so
 * the programs only see packets that are safe to act on. */
#ifndef WEIR_IPV4_H
#define WEIR_IPV4_H

#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include "common.h"
#include "abi.h"
#include "eth.h"

/* linux/icmp.h drags in libc socket headers that do not exist for the BPF
 * target; only the size of the fixed ICMP header is needed. */
#define ICMP_HDR_LEN 8

#define IP_MF 0x2000
#define IP_OFFSET 0x1fff

struct ipv4_meta {
	__be32 saddr;
	__be32 daddr;
	__u8 protocol;
	__u8 ttl;
	__u8 is_fragment;    /* any fragment, the first included */
	__u8 later_fragment; /* offset > 0: no L4 header at all */
	__u32 l4_off;
	__be16 ip_id;
	__u16 pad;
};

/* Fills meta and returns WEIR_DROP_NONE, or the reason to drop. */
static __always_inline __u32 ipv4_parse(struct __ctx_buff *ctx, struct ipv4_meta *meta)
{
	void *data = ctx_data(ctx);
	void *data_end = ctx_data_end(ctx);
	struct iphdr *ip = data + ETH_HLEN;
	__u32 ihl_len, len;

	if ((void *)(ip + 1) > data_end)
		return WEIR_DROP_MALFORMED_IPV4;
	if (ip->version != 4 || ip->ihl < 5)
		return WEIR_DROP_MALFORMED_IPV4;
	ihl_len = ip->ihl * 4;
	/* Options are legal: skip them by IHL instead of assuming 20 bytes. */
	if ((void *)ip + ihl_len > data_end)
		return WEIR_DROP_MALFORMED_IPV4;
	if (bpf_ntohs(ip->tot_len) < ihl_len)
		return WEIR_DROP_MALFORMED_IPV4;
	/* A header that claims more than the frame carries (padding after the
	 * datagram is fine): what follows it cannot be trusted. The length is
	 * read once (a helper call in XDP). */
	len = ctx_len(ctx);
	if (ETH_HLEN + bpf_ntohs(ip->tot_len) > len)
		return WEIR_DROP_MALFORMED_IPV4;

	meta->saddr = ip->saddr;
	meta->daddr = ip->daddr;
	meta->protocol = ip->protocol;
	meta->ttl = ip->ttl;
	meta->is_fragment = (ip->frag_off & bpf_htons(IP_MF | IP_OFFSET)) != 0;
	meta->later_fragment = (ip->frag_off & bpf_htons(IP_OFFSET)) != 0;
	meta->ip_id = ip->id;
	meta->l4_off = ETH_HLEN + ihl_len;

	/* Later fragments carry no L4 header: route them by L3 alone. */
	if (ip->frag_off & bpf_htons(IP_OFFSET))
		return WEIR_DROP_NONE;

	{
		__u32 need = 0;

		switch (ip->protocol) {
		case IPPROTO_TCP:
			need = sizeof(struct tcphdr);
			break;
		case IPPROTO_UDP:
			need = sizeof(struct udphdr);
			break;
		case IPPROTO_ICMP:
			need = ICMP_HDR_LEN;
			break;
		}
		/* The whole length, not data_end: the L4 header may sit in
		 * paged data (or a later XDP buffer). */
		if (need && meta->l4_off + need > len)
			return WEIR_DROP_TRUNCATED_L4;
	}
	return WEIR_DROP_NONE;
}

/* A router hop: decrement TTL and patch the header checksum. */
static __always_inline int ipv4_dec_ttl(struct __ctx_buff *ctx, __u8 ttl)
{
	__u32 ttl_off = ETH_HLEN + __builtin_offsetof(struct iphdr, ttl);
	__u32 csum_off = ETH_HLEN + __builtin_offsetof(struct iphdr, check);
	__u8 new_ttl = ttl - 1;

	/* TTL is the high byte of a 16-bit word shared with protocol. */
	if (ctx_l3_csum_replace(ctx, csum_off, bpf_htons((__u16)ttl << 8), bpf_htons((__u16)new_ttl << 8), 2))
		return -1;
	return ctx_store_bytes(ctx, ttl_off, &new_ttl, 1);
}

#endif /* WEIR_IPV4_H */
