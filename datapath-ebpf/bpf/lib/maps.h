/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* All maps. Pinned by name so a restarted agent (and the programs already
 * attached to pod interfaces) keep using the same ones. */
#ifndef WEIR_MAPS_H
#define WEIR_MAPS_H

#include "common.h"
#include "abi.h"

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, WEIR_MAX_ENDPOINTS);
	__type(key, struct weir_ep_key);
	__type(value, struct weir_ep_info);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} weir_endpoints SEC(".maps");

/* Entries are created by the agent when it adds an endpoint: the datapath
 * only updates, so traffic can never fill this map. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, WEIR_MAX_ENDPOINTS * 2);
	__type(key, struct weir_traffic_key);
	__type(value, struct weir_traffic);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} weir_ep_traffic SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, WEIR_DROP_REASON_MAX);
	__type(key, __u32);
	__type(value, struct weir_traffic);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} weir_drops SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct weir_config);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} weir_config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 1024);
	__type(key, struct weir_route_key);
	__type(value, struct weir_route);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} weir_node_routes SEC(".maps");

/* Every other node's IP (network order) → 0. Traffic between pods and
 * nodes is cluster traffic: never masqueraded, so a node's own connections
 * to a pod (NodePort SNAT, probes) get their replies from the pod itself. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __be32);
	__type(value, __u32);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} weir_nodes SEC(".maps");

/* Address -> identity for the whole cluster (abi.h). */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, WEIR_IPCACHE_MAX);
	__type(key, struct weir_route_key);
	__type(value, struct weir_ipcache_entry);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} weir_ipcache SEC(".maps");

/* The stages programs tail-call (WEIR_CALL_*). Pinned like every map: a
 * prog array loses its programs once no user-space reference remains, and
 * the pod programs attached before an agent restart must still reach the
 * next stage while it is away; the restarted agent puts its own programs
 * into the same slots. */
struct {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(max_entries, WEIR_CALLS_MAX);
	__type(key, __u32);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} weir_calls SEC(".maps");

#endif /* WEIR_MAPS_H */
