/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Includes, helpers and constants every weir program needs. */
#ifndef WEIR_COMMON_H
#define WEIR_COMMON_H

#include <linux/types.h>
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#ifndef __always_inline
#define __always_inline inline __attribute__((always_inline))
#endif

/* TCX: "not ours, let the next program on this hook decide". Classic tc
 * treats it like TC_ACT_OK at the end of the chain. */
#define WEIR_PASS_ON TC_ACT_UNSPEC

/* Return values, one convention for every helper:
 *  - a step that can fail for a reason returns __u32: WEIR_DROP_NONE (0)
 *    on success, else the drop reason (abi.h);
 *  - a lookup that answers yes, no or "drop" returns int: 1 (yes, outputs
 *    filled), 0 (no, nothing to do), -reason;
 *  - the rewrite primitives (ctx/, nat.h, ipv4_dec_ttl) return 0 or a
 *    negative errno, as the kernel helpers they wrap do;
 *  - a part of a program that may end it returns int: a TC/XDP verdict,
 *    or WEIR_CONTINUE for "go on with the next step" (no verdict is -2). */
#define WEIR_CONTINUE (-2)

#define likely(x) __builtin_expect(!!(x), 1)
#define unlikely(x) __builtin_expect(!!(x), 0)

#define WEIR_NSEC_PER_SEC 1000000000ULL

#endif /* WEIR_COMMON_H */
