/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Ethernet parsing and MAC rewriting. */
#ifndef WEIR_ETH_H
#define WEIR_ETH_H

#include <linux/if_ether.h>
#include "common.h"

/* Returns the EtherType in host order, or 0 when the frame is too short. */
static __always_inline __u16 eth_proto(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;

	if ((void *)(eth + 1) > data_end)
		return 0;
	return bpf_ntohs(eth->h_proto);
}

/* Writes destination then source MAC: one 12-byte store. */
static __always_inline int eth_rewrite(struct __sk_buff *skb, const __u8 *dst, const __u8 *src)
{
	__u8 macs[ETH_ALEN * 2];

	__builtin_memcpy(macs, dst, ETH_ALEN);
	__builtin_memcpy(macs + ETH_ALEN, src, ETH_ALEN);
	return bpf_skb_store_bytes(skb, 0, macs, sizeof(macs), 0);
}

#endif /* WEIR_ETH_H */
