/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Bob Jenkins' lookup3 final mix, as the kernel's jhash_3words: three words
 * in, one well-mixed word out, no loops, so the verifier sees straight-line
 * code. Used to pick a Maglev slot from a connection's 5-tuple. */
#ifndef WEIR_HASH_H
#define WEIR_HASH_H

#include <linux/types.h>

#define WEIR_JHASH_INITVAL 0xdeadbeef

static __always_inline __u32 weir_rol32(__u32 word, unsigned int shift)
{
	return (word << shift) | (word >> ((-shift) & 31));
}

static __always_inline __u32 weir_jhash_3words(__u32 a, __u32 b, __u32 c, __u32 initval)
{
	a += WEIR_JHASH_INITVAL + initval + (3 << 2);
	b += WEIR_JHASH_INITVAL + initval + (3 << 2);
	c += WEIR_JHASH_INITVAL + initval + (3 << 2);

	/* __jhash_final */
	c ^= b; c -= weir_rol32(b, 14);
	a ^= c; a -= weir_rol32(c, 11);
	b ^= a; b -= weir_rol32(a, 25);
	c ^= b; c -= weir_rol32(b, 16);
	a ^= c; a -= weir_rol32(c, 4);
	b ^= a; b -= weir_rol32(a, 14);
	c ^= b; c -= weir_rol32(b, 24);
	return c;
}

#endif /* WEIR_HASH_H */
