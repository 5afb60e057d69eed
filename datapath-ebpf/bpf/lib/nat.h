/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Rewriting IPv4 addresses and L4 ports in place with incremental checksum
 * updates (RFC 1624), for TC and XDP alike through the ctx layer (ctx/):
 * in TC the kernel's csum helpers, so that CHECKSUM_PARTIAL packets from a
 * pod (veth offload: the L4 field holds only the pseudo-header sum) are
 * patched correctly too, the helpers updating only the pseudo-header part
 * in that case; in XDP the same updates by hand.
 *
 * SCTP has no pseudo-header and its CRC32c covers the ports: rewriting
 * addresses leaves it valid, rewriting ports would not. Recomputing CRC32c
 * over a whole packet is not something the verifier lets us loop over, so
 * port translation is refused for SCTP (see lb.h and the agent). */
#ifndef WEIR_NAT_H
#define WEIR_NAT_H

#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include "common.h"
#include "abi.h"
#include "ipv4.h"

#define IP_CSUM_OFF (ETH_HLEN + __builtin_offsetof(struct iphdr, check))
#define IP_SADDR_OFF (ETH_HLEN + __builtin_offsetof(struct iphdr, saddr))
#define IP_DADDR_OFF (ETH_HLEN + __builtin_offsetof(struct iphdr, daddr))

/* Where the L4 checksum sits and which extra csum flags it needs; returns
 * -1 when the protocol has no checksum the helpers can patch (SCTP). */
static __always_inline int l4_csum_off(__u8 proto, __u32 l4_off, __u64 *flags)
{
	switch (proto) {
	case IPPROTO_TCP:
		*flags = 0;
		return l4_off + __builtin_offsetof(struct tcphdr, check);
	case IPPROTO_UDP:
		/* 0 means "no checksum" in UDP: keep it 0, and turn a computed 0
		 * into 0xffff instead of disabling the checksum by accident. */
		*flags = BPF_F_MARK_MANGLED_0;
		return l4_off + __builtin_offsetof(struct udphdr, check);
	}
	return -1;
}

/* Rewrites one address (at IP_SADDR_OFF or IP_DADDR_OFF). Nonzero on error. */
static __always_inline int nat_addr(struct __ctx_buff *ctx, __u32 addr_off, __be32 from, __be32 to, __u8 proto,
				    __u32 l4_off, int l4_csum)
{
	__u64 flags = 0;
	int csum_off;

	if (from == to)
		return 0;
	/* Later fragments carry no L4 header: l4_csum is 0 for them. */
	csum_off = l4_csum ? l4_csum_off(proto, l4_off, &flags) : -1;
	if (csum_off >= 0 &&
	    ctx_l4_csum_replace(ctx, csum_off, from, to, flags | BPF_F_PSEUDO_HDR | sizeof(to)))
		return -1;
	if (ctx_l3_csum_replace(ctx, IP_CSUM_OFF, from, to, sizeof(to)))
		return -1;
	return ctx_store_bytes(ctx, addr_off, &to, sizeof(to));
}

/* Rewrites one port at port_off (source: l4_off, destination: l4_off + 2,
 * the same for TCP, UDP and SCTP). Nonzero on error. */
static __always_inline int nat_port(struct __ctx_buff *ctx, __u32 port_off, __be16 from, __be16 to, __u8 proto,
				    __u32 l4_off)
{
	__u64 flags = 0;
	int csum_off;

	if (from == to)
		return 0;
	csum_off = l4_csum_off(proto, l4_off, &flags);
	if (csum_off < 0)
		return -1; /* SCTP: see the top of this file */
	if (ctx_l4_csum_replace(ctx, csum_off, from, to, flags | sizeof(to)))
		return -1;
	return ctx_store_bytes(ctx, port_off, &to, sizeof(to));
}

/* Rewrites the identifier of an ICMP echo header at l4_off. The ICMP
 * checksum has no pseudo-header, so address rewrites leave it alone
 * (l4_csum_off knows no ICMP) and only the identifier is patched here.
 * Nonzero on error. */
static __always_inline int nat_icmp_id(struct __ctx_buff *ctx, __u32 l4_off, __be16 from, __be16 to)
{
	if (from == to)
		return 0;
	if (ctx_l4_csum_replace(ctx, l4_off + 2, from, to, sizeof(to)))
		return -1;
	return ctx_store_bytes(ctx, l4_off + 4, &to, sizeof(to));
}

/* Rewrites the packet from tuple `from` to the given addresses and ports
 * and keeps meta in step, so a later lookup sees the new addresses.
 * WEIR_DROP_NONE or WEIR_DROP_REWRITE_FAILED. */
static __always_inline __u32 nat_rewrite4(struct __ctx_buff *ctx, struct ipv4_meta *meta, const struct weir_ct_key *from,
					  __be32 saddr, __be32 daddr, __be16 sport, __be16 dport)
{
	__u32 l4 = meta->l4_off;
	__u8 proto = from->proto;
	/* A later fragment has no L4 header: addresses only (the first
	 * fragment's checksum covers the whole datagram). */
	int has_l4 = !meta->later_fragment;

	if (nat_addr(ctx, IP_SADDR_OFF, from->saddr, saddr, proto, l4, has_l4) ||
	    nat_addr(ctx, IP_DADDR_OFF, from->daddr, daddr, proto, l4, has_l4))
		return WEIR_DROP_REWRITE_FAILED;
	if (has_l4 && (nat_port(ctx, l4, from->sport, sport, proto, l4) ||
		       nat_port(ctx, l4 + 2, from->dport, dport, proto, l4)))
		return WEIR_DROP_REWRITE_FAILED;
	meta->saddr = saddr;
	meta->daddr = daddr;
	return WEIR_DROP_NONE;
}

#endif /* WEIR_NAT_H */
