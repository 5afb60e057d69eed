/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* The packet context of XDP programs: the same ctx_* functions as
 * ctx/skb.h, so the rewrite and checksum helpers (nat.h, ipv4.h) serve
 * both. XDP has no store or checksum helpers of the skb kind: bytes in the
 * first buffer are read and written directly, anything past it (a
 * multi-buffer frame) through bpf_xdp_load_bytes / bpf_xdp_store_bytes,
 * and checksums are patched here by RFC 1624. A frame XDP sees comes from
 * a wire or a peer's stack with a complete checksum (replies whose
 * checksum may be CHECKSUM_PARTIAL are left to TC: bpf_xdp.c), so there is
 * no pseudo-header-only case. */
#ifndef WEIR_CTX_XDP_H
#define WEIR_CTX_XDP_H

#ifdef WEIR_CTX_SKB
#error "ctx/skb.h and ctx/xdp.h in one object: each program object has one packet context"
#endif
#define WEIR_CTX_XDP 1
#define __ctx_buff xdp_md

#include "../common.h"

/* Direct access only within this many bytes of the start: a bound the
 * verifier needs for a variable offset; headers never reach past it. */
#define WEIR_XDP_DIRECT_MAX 256

static __always_inline void *ctx_data(const struct __ctx_buff *ctx)
{
	return (void *)(long)ctx->data;
}

static __always_inline void *ctx_data_end(const struct __ctx_buff *ctx)
{
	return (void *)(long)ctx->data_end;
}

static __always_inline __u32 ctx_len(struct __ctx_buff *ctx)
{
	return bpf_xdp_get_buff_len(ctx);
}

/* Where [off, off + len) sits in the first buffer, or NULL. */
static __always_inline void *ctx_direct(struct __ctx_buff *ctx, __u32 off, __u32 len)
{
	void *data = ctx_data(ctx);

	if (off > WEIR_XDP_DIRECT_MAX)
		return NULL;
	if (data + off + len > ctx_data_end(ctx))
		return NULL;
	return data + off;
}

/* len is a compile-time constant at every caller (1, 2, 4, 12 bytes). */
static __always_inline int ctx_load_bytes(struct __ctx_buff *ctx, __u32 off, void *to, __u32 len)
{
	void *p = ctx_direct(ctx, off, len);

	if (!p)
		return bpf_xdp_load_bytes(ctx, off, to, len);
	__builtin_memcpy(to, p, len);
	return 0;
}

static __always_inline int ctx_store_bytes(struct __ctx_buff *ctx, __u32 off, const void *from, __u32 len)
{
	void *p = ctx_direct(ctx, off, len);

	if (!p)
		return bpf_xdp_store_bytes(ctx, off, (void *)from, len);
	__builtin_memcpy(p, from, len);
	return 0;
}

static __always_inline __u16 csum_fold32(__u32 s)
{
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	return (__u16)s;
}

/* RFC 1624 over the raw (network order) words: the one's complement sum
 * does not care which byte order both sides use. size is 2 or 4. */
static __always_inline __u16 csum_replace(__u16 sum, __u32 from, __u32 to, __u32 size)
{
	__u32 s = (__u16)~sum;

	if (size == 4)
		s += ((from & 0xffff) ^ 0xffff) + ((from >> 16) ^ 0xffff) + (to & 0xffff) + (to >> 16);
	else
		s += ((from & 0xffff) ^ 0xffff) + (to & 0xffff);
	return ~csum_fold32(s);
}

static __always_inline int ctx_l3_csum_replace(struct __ctx_buff *ctx, __u32 off, __u32 from, __u32 to, __u32 size)
{
	__u16 sum;

	if (ctx_load_bytes(ctx, off, &sum, sizeof(sum)))
		return -1;
	sum = csum_replace(sum, from, to, size);
	return ctx_store_bytes(ctx, off, &sum, sizeof(sum));
}

/* The skb helper's flags: the field size in the low bits, and
 * BPF_F_MARK_MANGLED_0 for UDP, whose 0 means "no checksum" (left alone)
 * and whose computed 0 is sent as 0xffff. BPF_F_PSEUDO_HDR needs nothing:
 * the checksum here is always complete. */
static __always_inline int ctx_l4_csum_replace(struct __ctx_buff *ctx, __u32 off, __u32 from, __u32 to, __u64 flags)
{
	__u32 size = flags & BPF_F_HDR_FIELD_MASK;
	int mangled_0 = (flags & BPF_F_MARK_MANGLED_0) != 0;
	__u16 sum;

	if (ctx_load_bytes(ctx, off, &sum, sizeof(sum)))
		return -1;
	if (mangled_0 && !sum)
		return 0;
	sum = csum_replace(sum, from, to, size);
	if (mangled_0 && !sum)
		sum = 0xffff;
	return ctx_store_bytes(ctx, off, &sum, sizeof(sum));
}

#endif /* WEIR_CTX_XDP_H */
