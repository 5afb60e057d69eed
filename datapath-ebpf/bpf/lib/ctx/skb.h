/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* The packet context of TC programs. Helpers shared by TC and XDP take a
 * `struct __ctx_buff *` and reach the packet only through the ctx_*
 * functions below (ctx/xdp.h has the same set for XDP), so a rewrite or a
 * checksum update is written once. Include exactly one of the two, first,
 * in each program object. */
#ifndef WEIR_CTX_SKB_H
#define WEIR_CTX_SKB_H

#ifdef WEIR_CTX_XDP
#error "ctx/skb.h and ctx/xdp.h in one object: each program object has one packet context"
#endif
#define WEIR_CTX_SKB 1
#define __ctx_buff __sk_buff

#include "../common.h"

static __always_inline void *ctx_data(const struct __ctx_buff *ctx)
{
	return (void *)(long)ctx->data;
}

static __always_inline void *ctx_data_end(const struct __ctx_buff *ctx)
{
	return (void *)(long)ctx->data_end;
}

/* The whole packet, paged data included. */
static __always_inline __u32 ctx_len(const struct __ctx_buff *ctx)
{
	return ctx->len;
}

/* 0 or a negative errno, as the kernel's helpers. */
static __always_inline int ctx_load_bytes(const struct __ctx_buff *ctx, __u32 off, void *to, __u32 len)
{
	return bpf_skb_load_bytes(ctx, off, to, len);
}

static __always_inline int ctx_store_bytes(struct __ctx_buff *ctx, __u32 off, const void *from, __u32 len)
{
	return bpf_skb_store_bytes(ctx, off, from, len, 0);
}

/* Incremental checksum updates (RFC 1624). The skb helpers also know the
 * CHECKSUM_PARTIAL case (a pod's veth offload leaves only the pseudo-header
 * sum in the L4 field): with BPF_F_PSEUDO_HDR they update that part alone. */
static __always_inline int ctx_l3_csum_replace(struct __ctx_buff *ctx, __u32 off, __u32 from, __u32 to, __u32 size)
{
	return bpf_l3_csum_replace(ctx, off, from, to, size);
}

static __always_inline int ctx_l4_csum_replace(struct __ctx_buff *ctx, __u32 off, __u32 from, __u32 to, __u64 flags)
{
	return bpf_l4_csum_replace(ctx, off, from, to, flags);
}

#endif /* WEIR_CTX_SKB_H */
