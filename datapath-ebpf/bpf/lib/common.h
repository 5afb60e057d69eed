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

#define likely(x) __builtin_expect(!!(x), 1)
#define unlikely(x) __builtin_expect(!!(x), 0)

#endif /* WEIR_COMMON_H */
