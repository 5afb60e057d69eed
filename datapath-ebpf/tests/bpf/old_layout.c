// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* Maps as an older weir might have pinned them, for tests/pins.rs:
 * weir_ct4 with a shorter entry, weir_endpoints with fewer entries, and
 * weir_drops exactly as today (it must be kept, not replaced). */
#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct old_ct_key {
	__u32 saddr, daddr;
	__u16 sport, dport;
	__u8 proto, pad[3];
};

struct old_ct_entry {
	__u64 expires_ns;
	__u64 packets;
	__u32 xlate_saddr, xlate_daddr;
	__u16 xlate_sport, xlate_dport;
	__u32 service_id;
};

struct old_ep_key {
	__u8 family, pad[3];
	__u32 addr[4];
};

struct old_ep_info {
	__u32 ifindex, endpoint_id, identity;
	__u8 pod_mac[6], host_mac[6];
	__u32 flags;
};

struct traffic {
	__u64 packets, bytes;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 131072);
	__type(key, struct old_ct_key);
	__type(value, struct old_ct_entry);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} weir_ct4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, struct old_ep_key);
	__type(value, struct old_ep_info);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} weir_endpoints SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 64);
	__type(key, __u32);
	__type(value, struct traffic);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} weir_drops SEC(".maps");

char _license[] SEC("license") = "Dual BSD/GPL";
