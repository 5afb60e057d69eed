/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Flow events: what the agent turns into Hubble flows. Three sources, one
 * record (struct weir_event, abi.h), one ring buffer:
 *
 *  - the conntrack (conntrack.h): a connection's first packet, the first
 *    SYN / SYN-ACK / FIN / RST of each direction, a periodic update of a
 *    live connection's counters, and its end. A steady stream therefore
 *    costs a handful of events, not one per packet; the counters live in
 *    the conntrack entry, so an event carries them for free;
 *  - the one drop helper (drop.h) and the rejection of a connection to a
 *    service without backends (reject.h): every dropped packet, with its
 *    reason;
 *  - traced endpoints (WEIR_EP_F_TRACE, set by the agent at run time):
 *    every packet in and out, for debugging one pod.
 *
 * A full ring buffer loses the event, never the packet: the loss is
 * counted per CPU in weir_events_lost, which the agent reports. Drop
 * events are rate limited per endpoint (abi.h, WEIR_DROP_EVENTS_*): what
 * the limit holds back is counted there too, in its own slot. */
#ifndef WEIR_FLOW_H
#define WEIR_FLOW_H

#include <linux/if_ether.h>
#include <linux/in.h>
#include "common.h"
#include "abi.h"

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, WEIR_EVENTS_BYTES);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} weir_events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, WEIR_LOST_SLOTS);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} weir_events_lost SEC(".maps");

/* Per endpoint and CPU, the drop events' theoretical arrival time (GCRA:
 * an event is let through while that time is at most a burst ahead of
 * now). LRU: endpoints come and go, and a new one starts with its burst. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_PERCPU_HASH);
	__uint(max_entries, WEIR_MAX_ENDPOINTS + 1);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} weir_drop_event_rate SEC(".maps");

/* The backend a new service connection was judged against when policy
 * refused it: the packet still carries the VIP (nothing is translated for
 * a denied connection), and the drop's event names the backend, as an
 * allowed connection's flow does. One slot per CPU, set just before the
 * drop and valid only for the packet whose tuple it holds. */
struct flow_drop_backend {
	struct weir_ct_key key;
	__be32 daddr;
	__be16 dport;
	__u16 valid;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct flow_drop_backend);
} weir_drop_backend SEC(".maps");

static __always_inline void flow_note_backend(const struct weir_ct_key *key, __be32 daddr, __be16 dport)
{
	__u32 zero = 0;
	struct flow_drop_backend *b = bpf_map_lookup_elem(&weir_drop_backend, &zero);

	if (!b)
		return;
	b->key = *key;
	b->daddr = daddr;
	b->dport = dport;
	b->valid = 1;
}

/* The noted backend, if it is for the packet the event holds. */
static __always_inline void flow_take_backend(struct weir_event *ev)
{
	__u32 zero = 0;
	struct flow_drop_backend *b = bpf_map_lookup_elem(&weir_drop_backend, &zero);

	if (!b || !b->valid)
		return;
	b->valid = 0;
	if (b->key.saddr == ev->tuple.saddr && b->key.daddr == ev->tuple.daddr && b->key.sport == ev->tuple.sport &&
	    b->key.dport == ev->tuple.dport && b->key.proto == ev->tuple.proto) {
		ev->xlate.daddr = b->daddr;
		ev->xlate.dport = b->dport;
	}
}

/* Never read: keeps struct weir_event in each object's BTF (records live
 * in the ring buffer and inlined code leaves no type behind), where
 * tests/abi_layout.rs compares it with the Rust twin. */
volatile const struct weir_event weir_event_layout = {};

/* 0 turns recording off (the benchmark's baseline): the verifier then
 * prunes every event path, since the value is frozen at load. */
volatile const __u32 weir_flow_events = 1;
/* Drop events let through per endpoint and CPU (abi.h); 0: no limit (the
 * flow benchmark, which makes its events out of one endpoint's drops). */
volatile const __u32 weir_drop_events_per_sec = WEIR_DROP_EVENTS_PER_SEC;

/* How often a live connection reports its counters. */
volatile const __u64 weir_flow_report_ns = 10ULL * 1000000000ULL;

/* A zeroed record with its header and the observation context filled
 * (from skb->cb in TC, drop.h; XDP knows only where it runs), or NULL:
 * recording off, or the ring full, then counted as lost. */
static __always_inline struct weir_event *flow_begin(struct __ctx_buff *ctx, __u8 kind)
{
	struct weir_event *ev;
	__u32 slot = WEIR_LOST_RING_FULL;
	__u64 *lost;

	if (!weir_flow_events)
		return NULL;
	ev = bpf_ringbuf_reserve(&weir_events, sizeof(*ev), 0);
	if (!ev) {
		lost = bpf_map_lookup_elem(&weir_events_lost, &slot);
		if (lost)
			*lost += 1;
		return NULL;
	}
	__builtin_memset(ev, 0, sizeof(*ev));
	ev->version = WEIR_EVENT_VERSION;
	ev->kind = kind;
	ev->size = sizeof(*ev);
	ev->ts_ns = bpf_ktime_get_ns();
	ev->len = ctx_len(ctx);
#ifdef WEIR_CTX_SKB
	ev->ifindex = ctx->ifindex;
	ev->obs = ctx->cb[WEIR_CB_OBS] & 0xff;
	ev->direction = (ctx->cb[WEIR_CB_OBS] >> 8) & 0xff;
	ev->endpoint_id = ctx->cb[WEIR_CB_ENDPOINT];
	ev->src_identity = ctx->cb[WEIR_CB_SRC_IDENTITY];
	ev->dst_identity = ctx->cb[WEIR_CB_DST_IDENTITY];
#else
	ev->ifindex = ctx->ingress_ifindex;
	ev->obs = WEIR_OBS_XDP;
	ev->direction = WEIR_DIR_UNKNOWN;
#endif
	return ev;
}

/* A conntrack event's fields: the packet's tuple, what its connection
 * makes of it and this direction's counters (conntrack.h's ct_report adds
 * the rest). */
static __always_inline void flow_ct_fill(struct weir_event *ev, const struct weir_ct_key *key,
					 const struct weir_ct_entry *e, __u8 tcp_flags)
{
	ev->tcp_flags = tcp_flags;
	ev->ct_flags = e->flags;
	ev->ct_state = e->state;
	ev->service_id = e->service_id;
	ev->tuple.saddr = key->saddr;
	ev->tuple.daddr = key->daddr;
	ev->tuple.sport = key->sport;
	ev->tuple.dport = key->dport;
	ev->tuple.proto = key->proto;
	ev->xlate.saddr = e->xlate_saddr;
	ev->xlate.daddr = e->xlate_daddr;
	ev->xlate.sport = e->xlate_sport;
	ev->xlate.dport = e->xlate_dport;
	ev->xlate.proto = key->proto;
	ev->packets = e->packets;
	ev->bytes = e->bytes;
	ev->policy_egress = e->policy_egress;
	ev->policy_ingress = e->policy_ingress;
}

/* Reads the packet's addresses, protocol and ports (or ICMP type) into
 * the event, from the packet itself: a drop may happen before anything
 * was parsed, so nothing is trusted but the bytes. */
static __always_inline void flow_packet_tuple(struct __ctx_buff *ctx, struct weir_event *ev)
{
	__be16 proto = 0, frag = 0;
	__u8 vihl = 0, l4 = 0;
	__u32 off;

	if (ctx_load_bytes(ctx, 12, &proto, sizeof(proto)) || proto != bpf_htons(ETH_P_IP))
		return;
	if (ctx_load_bytes(ctx, ETH_HLEN, &vihl, 1) || ctx_load_bytes(ctx, ETH_HLEN + 6, &frag, sizeof(frag)) ||
	    ctx_load_bytes(ctx, ETH_HLEN + 9, &l4, 1) || ctx_load_bytes(ctx, ETH_HLEN + 12, &ev->tuple.saddr, 8))
		return;
	ev->tuple.proto = l4;
	off = ETH_HLEN + (vihl & 0xf) * 4;
	/* A later fragment has no L4 header. */
	if (!(frag & bpf_htons(0x1fff))) {
		if (l4 == IPPROTO_TCP || l4 == IPPROTO_UDP || l4 == IPPROTO_SCTP) {
			if (!ctx_load_bytes(ctx, off, &ev->tuple.sport, 4) && l4 == IPPROTO_TCP)
				ctx_load_bytes(ctx, off + 13, &ev->tcp_flags, 1);
		} else if (l4 == IPPROTO_ICMP) {
			ctx_load_bytes(ctx, off, &ev->tcp_flags, 1);
		}
	}
	ev->xlate = ev->tuple;
}

/* A packet event (a drop, or a trace): the context and the packet. A
 * trace names the endpoint and direction itself (`endpoint_id` non-zero):
 * the packet may be on its way from one traced pod into another. Not
 * inlined, like ct_report. */
static __noinline void flow_packet_record(struct __ctx_buff *ctx, __u32 kind, __u32 reason, __u32 endpoint_id,
					  __u32 direction)
{
	struct weir_event *ev;

	__u32 verdict;

	ev = flow_begin(ctx, kind);
	if (!ev)
		return;
	/* A policy drop's reason carries its rule (abi.h). */
	ev->drop_reason = reason & WEIR_DROP_REASON_MASK;
	if (ev->drop_reason == WEIR_DROP_POLICY_DENIED || ev->drop_reason == WEIR_DROP_POLICY_DENY) {
		verdict = ((ev->drop_reason == WEIR_DROP_POLICY_DENY ? WEIR_PV_DENY : WEIR_PV_DENIED) << WEIR_PV_SHIFT) |
			  (reason >> WEIR_DROP_REF_SHIFT);
		if (reason & WEIR_DROP_F_INGRESS)
			ev->policy_ingress = verdict;
		else
			ev->policy_egress = verdict;
	}
	if (endpoint_id) {
		ev->endpoint_id = endpoint_id;
		ev->direction = direction;
	}
	flow_packet_tuple(ctx, ev);
	if (kind == WEIR_EV_DROP)
		flow_take_backend(ev);
	bpf_ringbuf_submit(ev, 0);
}

/* Whether endpoint `endpoint_id` may have one more drop event now; if not,
 * the event is counted as held back. */
static __always_inline int flow_drop_allowed(__u32 endpoint_id)
{
	__u32 slot = WEIR_LOST_RATE_LIMITED;
	__u64 now = bpf_ktime_get_ns();
	__u64 *tat, *held, next, interval;

	if (!weir_drop_events_per_sec)
		return 1;
	interval = 1000000000ULL / weir_drop_events_per_sec;
	tat = bpf_map_lookup_elem(&weir_drop_event_rate, &endpoint_id);
	if (!tat) {
		next = now + interval;
		bpf_map_update_elem(&weir_drop_event_rate, &endpoint_id, &next, BPF_ANY);
		return 1;
	}
	next = *tat > now ? *tat : now;
	if (next - now > (WEIR_DROP_EVENTS_BURST - 1) * interval) {
		held = bpf_map_lookup_elem(&weir_events_lost, &slot);
		if (held)
			*held += 1;
		return 0;
	}
	*tat = next + interval;
	return 1;
}

/* A dropped packet, with the context the program recorded. */
static __always_inline void flow_drop(struct __ctx_buff *ctx, __u32 reason)
{
	__u32 endpoint_id = 0;

	if (!weir_flow_events)
		return;
#ifdef WEIR_CTX_SKB
	endpoint_id = ctx->cb[WEIR_CB_ENDPOINT];
#endif
	if (flow_drop_allowed(endpoint_id))
		flow_packet_record(ctx, WEIR_EV_DROP, reason, 0, 0);
}

#ifdef WEIR_CTX_SKB
/* A traced endpoint's packet, as it leaves (WEIR_DIR_EGRESS) or enters the
 * endpoint. */
static __always_inline void flow_trace(struct __sk_buff *skb, const struct weir_ep_info *ep, __u32 direction)
{
	if (weir_flow_events && (ep->flags & WEIR_EP_F_TRACE))
		flow_packet_record(skb, WEIR_EV_TRACE, 0, ep->endpoint_id, direction);
}
#endif

#endif /* WEIR_FLOW_H */
