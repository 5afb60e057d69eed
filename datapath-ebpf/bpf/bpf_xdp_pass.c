// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* XDP_PASS and nothing else, for the far end of a veth whose near end runs
 * bpf_xdp.c. Frames a veth sends with XDP_TX land in its peer's XDP ring,
 * and the kernel only schedules that ring's NAPI when the peer has an XDP
 * program: without one they wait for the next ordinary packet. A real NIC
 * needs nothing of the kind; `weir lab` puts this on the lab switch's ports. */

#include "lib/common.h"

SEC("xdp.frags")
int xdp_pass(struct xdp_md *ctx)
{
	return XDP_PASS;
}

char _license[] SEC("license") = "Dual BSD/GPL";
