/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Every drop goes through here so none goes uncounted. */
#ifndef WEIR_DROP_H
#define WEIR_DROP_H

#include "maps.h"

/* Counts a packet under a reason. On its own (without drop_packet) for
 * packets the datapath refuses but answers, such as a connection to a
 * service without backends (reject.h), and from XDP, which has no skb. */
static __always_inline void count_reason(__u32 reason, __u32 len)
{
	__u32 key = reason < WEIR_DROP_REASON_MAX ? reason : WEIR_DROP_NONE;
	struct weir_traffic *t = bpf_map_lookup_elem(&weir_drops, &key);

	if (t) {
		t->packets += 1;
		t->bytes += len;
	}
}

static __always_inline int drop_packet(struct __sk_buff *skb, __u32 reason)
{
	count_reason(reason, skb->len);
	return TC_ACT_SHOT;
}

#endif /* WEIR_DROP_H */
