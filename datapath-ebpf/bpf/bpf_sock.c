// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* Socket-level load balancing: a socket of the node's own network
 * namespace (the node's processes, the kubelet and its probes,
 * host-network pods) that connects or sends to a service frontend
 * (ClusterIP, this node's NodePort, an external or LoadBalancer IP) is
 * given a backend's address at connect / sendmsg time, so its packets
 * leave addressed to the backend and no packet is ever translated. The
 * node has no route to a ClusterIP and its own NodePort is not a socket:
 * without this, neither answers from the node.
 *
 * Attached at the root of the cgroup v2 hierarchy (every socket of the
 * machine passes here), by one agent per node: sockets of any other
 * network namespace are left alone (weir_sock_netns, by
 * bpf_get_netns_cookie), so that several nodes of a lab on one machine, or
 * another CNI's namespaces, never see each other's services. Pods keep the
 * per-packet path (lb.h) in their from_pod hook.
 *
 *   connect4:     TCP and connected UDP: the backend for the socket's life;
 *   sendmsg4:     unconnected UDP, per datagram: the backend this socket
 *                 used for that service before while it is still in the
 *                 service (weir_sock_fwd4), else a new choice;
 *   recvmsg4:     unconnected UDP replies come from the service's address;
 *   getpeername4: a connected socket's peer is the service's address.
 * Both directions are kept by socket cookie (weir_sock_rev4, LRU: an
 * evicted record only means getpeername/recvmsg shows the backend).
 *
 * A frontend without a usable backend refuses: connect and sendmsg fail
 * with ECONNREFUSED (bpf_set_retval), as kube-proxy's REJECT rule makes
 * them fail. The IPv6 twins (connect6, sendmsg6, recvmsg6, getpeername6)
 * are the same functions over weir_lb6_* once services have IPv6
 * frontends. */

#include <linux/in.h>
#include <linux/errno.h>
#include "lib/common.h"
#include "lib/abi.h"
#include "lib/maps.h"
#include "lib/lb_select.h"

#define WEIR_SOCK_ALLOW 1
#define WEIR_SOCK_REFUSE 0

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, WEIR_SOCK_MAX_NETNS);
	__type(key, __u64);
	__type(value, __u8);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} weir_sock_netns SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct weir_sock_rev_key);
	__type(value, struct weir_sock_rev);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} weir_sock_rev4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct weir_sock_fwd_key);
	__type(value, struct weir_sock_fwd);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} weir_sock_fwd4 SEC(".maps");

static __always_inline int sock_is_ours(struct bpf_sock_addr *ctx)
{
	__u64 cookie = bpf_get_netns_cookie(ctx);

	return bpf_map_lookup_elem(&weir_sock_netns, &cookie) != NULL;
}

static __always_inline int sock_proto(struct bpf_sock_addr *ctx, __u8 *proto)
{
	if (ctx->protocol == IPPROTO_TCP || ctx->protocol == IPPROTO_UDP) {
		*proto = ctx->protocol;
		return 1;
	}
	return 0;
}

/* The backend an unconnected UDP socket used for this service before, if
 * it still holds its slot. */
static __always_inline int sock_fwd_cached(const struct weir_sock_fwd_key *fkey, const struct weir_lb_svc *svc,
					   struct weir_lb_backend *out)
{
	struct weir_lb_backend_key bkey = { .service_id = svc->service_id };
	struct weir_lb_backend *be;
	struct weir_sock_fwd *fwd;

	fwd = bpf_map_lookup_elem(&weir_sock_fwd4, fkey);
	if (!fwd || fwd->service_id != svc->service_id || fwd->slot < 1 || fwd->slot > svc->count)
		return 0;
	bkey.slot = fwd->slot;
	be = bpf_map_lookup_elem(&weir_lb4_backends, &bkey);
	if (!be || be->ip != fwd->backend_ip || be->port != fwd->backend_port)
		return 0;
	*out = *be;
	return 1;
}

/* Points the socket at a backend of the frontend it names, if it names
 * one. `datagram`: an unconnected UDP send (sendmsg4), from `src` if the
 * sender chose one (only sendmsg4 may read msg_src_ip4). */
static __always_inline int sock4_xlate_fwd(struct bpf_sock_addr *ctx, int datagram, __be32 src)
{
	struct weir_lb_svc_key skey = {};
	struct weir_sock_fwd_key fkey = {};
	struct weir_sock_rev_key rkey = {};
	struct weir_sock_rev rev = {};
	struct weir_lb_backend be = {};
	struct weir_ct_key tuple = {};
	struct weir_config *cfg;
	struct weir_lb_svc *svc, svc_copy;
	__u64 cookie;
	__u32 zero = 0, slot = 0;
	__u8 proto;

	if (!sock_proto(ctx, &proto) || !sock_is_ours(ctx))
		return WEIR_SOCK_ALLOW;
	skey.vip = ctx->user_ip4;
	skey.dport = (__be16)ctx->user_port;
	skey.proto = proto;
	svc = bpf_map_lookup_elem(&weir_lb4_services, &skey);
	if (!svc)
		return WEIR_SOCK_ALLOW;
	/* The agent may rewrite the entry under us: work on one snapshot. */
	svc_copy = *svc;
	cookie = bpf_get_socket_cookie(ctx);

	fkey.cookie = cookie;
	fkey.vip = skey.vip;
	fkey.vport = skey.dport;
	fkey.proto = proto;
	if (!datagram || !sock_fwd_cached(&fkey, &svc_copy, &be)) {
		/* The tuple lb4_select hashes (Maglev) and keys affinity by: the
		 * node's address is the client (ClientIP affinity sees the node
		 * as one client, as kube-proxy does), the socket cookie stands
		 * in for the source port no one has chosen yet. */
		cfg = bpf_map_lookup_elem(&weir_config, &zero);
		tuple.saddr = src ? src : (cfg ? cfg->node_ip : 0);
		tuple.daddr = skey.vip;
		tuple.sport = (__be16)(cookie ^ (cookie >> 16) ^ (cookie >> 32));
		tuple.dport = skey.dport;
		tuple.proto = proto;
		if (lb4_select_slot(&svc_copy, &tuple, bpf_ktime_get_ns(), &be, &slot)) {
			bpf_set_retval(-ECONNREFUSED);
			return WEIR_SOCK_REFUSE;
		}
		if (datagram) {
			struct weir_sock_fwd fwd = {
				.service_id = svc_copy.service_id,
				.slot = slot,
				.backend_ip = be.ip,
				.backend_port = be.port,
			};

			bpf_map_update_elem(&weir_sock_fwd4, &fkey, &fwd, BPF_ANY);
		}
	}

	rkey.cookie = cookie;
	rkey.backend_ip = be.ip;
	rkey.backend_port = be.port;
	rkey.proto = proto;
	rev.vip = skey.vip;
	rev.vport = skey.dport;
	/* LRU map: an update cannot fail for lack of room. */
	bpf_map_update_elem(&weir_sock_rev4, &rkey, &rev, BPF_ANY);

	ctx->user_ip4 = be.ip;
	ctx->user_port = be.port;
	return WEIR_SOCK_ALLOW;
}

/* Shows the service's address where the socket would see the backend's. */
static __always_inline int sock4_xlate_rev(struct bpf_sock_addr *ctx)
{
	struct weir_sock_rev_key rkey = {};
	struct weir_sock_rev *rev;
	__u8 proto;

	if (!sock_proto(ctx, &proto) || !sock_is_ours(ctx))
		return WEIR_SOCK_ALLOW;
	rkey.cookie = bpf_get_socket_cookie(ctx);
	rkey.backend_ip = ctx->user_ip4;
	rkey.backend_port = (__be16)ctx->user_port;
	rkey.proto = proto;
	rev = bpf_map_lookup_elem(&weir_sock_rev4, &rkey);
	if (rev) {
		ctx->user_ip4 = rev->vip;
		ctx->user_port = rev->vport;
	}
	return WEIR_SOCK_ALLOW;
}

SEC("cgroup/connect4")
int sock_connect4(struct bpf_sock_addr *ctx)
{
	return sock4_xlate_fwd(ctx, 0, 0);
}

SEC("cgroup/sendmsg4")
int sock_sendmsg4(struct bpf_sock_addr *ctx)
{
	return sock4_xlate_fwd(ctx, 1, ctx->msg_src_ip4);
}

SEC("cgroup/recvmsg4")
int sock_recvmsg4(struct bpf_sock_addr *ctx)
{
	return sock4_xlate_rev(ctx);
}

SEC("cgroup/getpeername4")
int sock_getpeername4(struct bpf_sock_addr *ctx)
{
	return sock4_xlate_rev(ctx);
}

char _license[] SEC("license") = "Dual BSD/GPL";
