/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Every drop goes through here so none goes uncounted, and every drop
 * carries the same context: where it was seen (observation point), the
 * local endpoint and the direction relative to it, and the source and
 * destination identities where known.
 *
 * The context lives in skb->cb, the five u32 words of scratch the kernel
 * gives each TC program run: a program records what it learns as it goes
 * (obs_begin at entry, obs_endpoint once it knows the pod, obs_peer for
 * the other side) and drop_packet reads it, so the drop sites only name
 * their reason, and the drop event (flow.h) is made here alone. cb is also
 * what tail calls carry from one stage to the next.
 *
 * drop_packet hands the packet to the drop-notify program (a tail call, so
 * the accounting and the event are one program instead of code
 * inlined at every drop site); only when that program is missing does it
 * count the reason itself. XDP has no skb and cannot tail-call TC
 * programs: its one drop site passes the same context to xdp_drop. */
#ifndef WEIR_DROP_H
#define WEIR_DROP_H

#include "maps.h"
#include "flow.h"

/* Counts a packet under a reason. On its own (without drop_packet) for
 * packets the datapath refuses but answers, such as a connection to a
 * service without backends (reject.h). */
static __always_inline void count_reason(__u32 reason, __u32 len)
{
	__u32 key = reason & WEIR_DROP_REASON_MASK; /* a policy drop's rule is not counted here */
	struct weir_traffic *t = bpf_map_lookup_elem(&weir_drops, &key);

	if (t) {
		t->packets += 1;
		t->bytes += len;
	}
}

/* The one place a drop is accounted for: the counter by reason, and the
 * drop event with the context and the packet's tuple. */
static __always_inline void drop_account(struct __ctx_buff *ctx, __u32 reason)
{
	count_reason(reason, ctx_len(ctx));
	flow_drop(ctx, reason);
}

/* A program starts seeing a packet at `point`: nothing known yet. */
static __always_inline void obs_begin(struct __sk_buff *skb, __u32 point)
{
	skb->cb[WEIR_CB_OBS] = point | (WEIR_DIR_UNKNOWN << 8);
	skb->cb[WEIR_CB_ENDPOINT] = 0;
	skb->cb[WEIR_CB_SRC_IDENTITY] = 0;
	skb->cb[WEIR_CB_DST_IDENTITY] = 0;
}

/* The local endpoint the packet leaves (WEIR_DIR_EGRESS) or enters
 * (WEIR_DIR_INGRESS); its identity is the source or the destination. */
static __always_inline void obs_endpoint(struct __sk_buff *skb, const struct weir_ep_info *ep, __u32 direction)
{
	skb->cb[WEIR_CB_OBS] = (skb->cb[WEIR_CB_OBS] & 0xff) | (direction << 8);
	skb->cb[WEIR_CB_ENDPOINT] = ep->endpoint_id;
	if (direction == WEIR_DIR_EGRESS)
		skb->cb[WEIR_CB_SRC_IDENTITY] = ep->identity;
	else
		skb->cb[WEIR_CB_DST_IDENTITY] = ep->identity;
}

/* The destination is a local pod too (pod to pod on this node). */
static __always_inline void obs_peer(struct __sk_buff *skb, const struct weir_ep_info *dst)
{
	skb->cb[WEIR_CB_DST_IDENTITY] = dst->identity;
}

#ifdef WEIR_CTX_SKB
/* The drop-notify program's work: the context is in cb, the reason in
 * cb[WEIR_CB_SCRATCH]. */
static __always_inline int drop_notify_run(struct __sk_buff *skb)
{
	drop_account(skb, skb->cb[WEIR_CB_SCRATCH]);
	return TC_ACT_SHOT;
}
#endif

static __always_inline int drop_packet(struct __sk_buff *skb, __u32 reason)
{
	skb->cb[WEIR_CB_SCRATCH] = reason;
	bpf_tail_call(skb, &weir_calls, WEIR_CALL_DROP_NOTIFY);
	/* Not loaded (yet): counted all the same. */
	count_reason(reason, skb->len);
	return TC_ACT_SHOT;
}

/* Goes on with the next stage; a missing stage is a counted drop. */
static __always_inline int tail_call_stage(struct __sk_buff *skb, __u32 index)
{
	bpf_tail_call(skb, &weir_calls, index);
	return drop_packet(skb, WEIR_DROP_MISSED_TAIL_CALL);
}

/* XDP's drop: it has no skb->cb, and its events say so (flow.h). */
static __always_inline int xdp_drop(struct __ctx_buff *ctx, __u32 reason)
{
	drop_account(ctx, reason);
	return XDP_DROP;
}

#endif /* WEIR_DROP_H */
