/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Ethernet parsing and MAC rewriting. */
#ifndef WEIR_ETH_H
#define WEIR_ETH_H

#include <linux/if_ether.h>
#include "common.h"

#if !defined(WEIR_CTX_SKB) && !defined(WEIR_CTX_XDP)
#error "include ctx/skb.h or ctx/xdp.h first"
#endif

/* Returns the EtherType in host order, or 0 when the frame is too short. */
static __always_inline __u16 eth_proto(struct __ctx_buff *ctx)
{
	void *data = ctx_data(ctx);
	void *data_end = ctx_data_end(ctx);
	struct ethhdr *eth = data;

	if ((void *)(eth + 1) > data_end)
		return 0;
	return bpf_ntohs(eth->h_proto);
}

/* Writes destination then source MAC: one 12-byte store. */
static __always_inline int eth_rewrite(struct __ctx_buff *ctx, const __u8 *dst, const __u8 *src)
{
	__u8 macs[ETH_ALEN * 2];

	__builtin_memcpy(macs, dst, ETH_ALEN);
	__builtin_memcpy(macs + ETH_ALEN, src, ETH_ALEN);
	return ctx_store_bytes(ctx, 0, macs, sizeof(macs));
}

#endif /* WEIR_ETH_H */
