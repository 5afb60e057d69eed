/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* The service maps and the choice of a backend for a new connection, with
 * no packet in sight: the per-packet service path (lb.h, nodeport.h) and
 * the socket-level one (bpf_sock.c, at connect time) share them. lb.h
 * explains the maps. */
#ifndef WEIR_LB_SELECT_H
#define WEIR_LB_SELECT_H

#include "common.h"
#include "abi.h"
#include "hash.h"

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, WEIR_LB_MAX_SERVICES);
	__type(key, struct weir_lb_svc_key);
	__type(value, struct weir_lb_svc);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} weir_lb4_services SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, WEIR_LB_MAX_BACKENDS);
	__type(key, struct weir_lb_backend_key);
	__type(value, struct weir_lb_backend);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} weir_lb4_backends SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, WEIR_LB_MAX_SERVICES);
	__type(key, __u32);
	__type(value, struct weir_lb_maglev);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} weir_lb4_maglev SEC(".maps");

/* LRU is right here, unlike conntrack: losing an affinity record only
 * means the client's next connection may pick another backend. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct weir_lb_affinity_key);
	__type(value, struct weir_lb_affinity);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} weir_lb4_affinity SEC(".maps");

/* Picks the backend for a new connection, and its slot; WEIR_DROP_NONE or
 * a reason. */
static __always_inline __u32 lb4_select_slot(const struct weir_lb_svc *svc, const struct weir_ct_key *tuple,
					     __u64 now, struct weir_lb_backend *out, __u32 *slot)
{
	struct weir_lb_backend_key bkey = { .service_id = svc->service_id };
	struct weir_lb_affinity_key akey = {};
	struct weir_lb_affinity *aff;
	struct weir_lb_backend *be;
	__u32 count = svc->count;
	__u64 affinity_ns = (__u64)svc->affinity_timeout_s * WEIR_NSEC_PER_SEC;

	if (!count)
		return WEIR_DROP_NO_SERVICE_BACKEND;

	if (affinity_ns) {
		akey.client = tuple->saddr;
		akey.service_id = svc->service_id;
		aff = bpf_map_lookup_elem(&weir_lb4_affinity, &akey);
		if (aff && aff->slot >= 1 && aff->slot <= count && now - aff->last_used_ns <= affinity_ns) {
			bkey.slot = aff->slot;
			be = bpf_map_lookup_elem(&weir_lb4_backends, &bkey);
			if (be && be->ip == aff->backend_ip)
				goto found;
		}
	}

	if (svc->algorithm == WEIR_LB_ALG_MAGLEV) {
		struct weir_lb_maglev *table;
		__u32 id = svc->service_id;
		__u32 idx;

		table = bpf_map_lookup_elem(&weir_lb4_maglev, &id);
		if (!table)
			return WEIR_DROP_NO_SERVICE_BACKEND;
		idx = weir_jhash_3words(tuple->saddr, tuple->daddr,
					((__u32)tuple->sport << 16) | tuple->dport, tuple->proto) %
		      WEIR_LB_MAGLEV_M;
		/* The verifier does not bound the result of a modulo, and clang
		 * drops a bounds check it can prove redundant: hide the value
		 * from clang so the check stays for the verifier to see. */
		asm volatile("" : "+r"(idx));
		if (idx >= WEIR_LB_MAGLEV_M)
			return WEIR_DROP_NO_SERVICE_BACKEND;
		bkey.slot = table->slots[idx];
	} else {
		bkey.slot = bpf_get_prandom_u32() % count + 1;
	}
	be = bpf_map_lookup_elem(&weir_lb4_backends, &bkey);
	/* Only in the instant between the agent shrinking a service and
	 * deleting its surplus slots. */
	if (!be)
		return WEIR_DROP_NO_SERVICE_BACKEND;

found:
	if (affinity_ns) {
		struct weir_lb_affinity rec = { .slot = bkey.slot, .backend_ip = be->ip, .last_used_ns = now };

		/* LRU map: an update cannot fail for lack of room. */
		bpf_map_update_elem(&weir_lb4_affinity, &akey, &rec, BPF_ANY);
	}
	*out = *be;
	*slot = bkey.slot;
	return WEIR_DROP_NONE;
}

/* Picks the backend for a new connection; WEIR_DROP_NONE or a reason. */
static __always_inline __u32 lb4_select(const struct weir_lb_svc *svc, const struct weir_ct_key *tuple, __u64 now,
					struct weir_lb_backend *out)
{
	__u32 slot;

	return lb4_select_slot(svc, tuple, now, out, &slot);
}

#endif /* WEIR_LB_SELECT_H */
