/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Per-endpoint packet and byte counters. */
#ifndef WEIR_COUNTERS_H
#define WEIR_COUNTERS_H

#include "maps.h"

static __always_inline void count_traffic(__u32 endpoint_id, __u32 direction, __u32 len)
{
	struct weir_traffic_key key = { .endpoint_id = endpoint_id, .direction = direction };
	struct weir_traffic *t = bpf_map_lookup_elem(&weir_ep_traffic, &key);

	/* Per-CPU value: plain adds are race-free. */
	if (t) {
		t->packets += 1;
		t->bytes += len;
	}
}

#endif /* WEIR_COUNTERS_H */
