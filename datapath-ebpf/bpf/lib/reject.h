/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Rejecting a connection to a service without backends, as kube-proxy and
 * Cilium do, so that the client fails at once instead of retransmitting
 * into a black hole until its own timeout:
 *
 *   TCP:        a RST, built in place from the client's segment the way a
 *               closed port answers (RFC 9293 3.10.7.1): for a segment
 *               without ACK, <SEQ=0><ACK=SEG.SEQ+SEG.LEN><CTL=RST,ACK>
 *               (SYN and FIN count in SEG.LEN); with ACK, <SEQ=SEG.ACK>
 *               <CTL=RST>. A RST is never answered.
 *   UDP, SCTP:  ICMP destination unreachable, port unreachable (RFC 792,
 *               RFC 1122 3.2.2.1), quoting the client's IP header and the
 *               first 8 bytes after it, which is what the client's kernel
 *               needs to find the socket.
 *
 * The answer comes from the address the client contacted (the VIP), so the
 * client's socket matches it. It goes straight back into the client's
 * namespace: from_pod runs on TC ingress of the client's host veth, whose
 * peer is the client's eth0, so bpf_redirect_peer(src->ifindex) delivers it
 * there, counted as the client's ingress like any delivery.
 *
 * Checksums are computed from scratch with bpf_csum_diff over small stack
 * buffers of constant size, zero-padded where the real header is shorter
 * (IP options): zero words do not change a ones' complement sum, and the
 * verifier only sees constant sizes.
 *
 * A packet the pod sent with CHECKSUM_PARTIAL (veth offload) keeps that
 * state, with csum_start at the same bytes (the trims happen behind them,
 * and the ICMP room is pushed in front of them). That is harmless: the
 * answer is only ever delivered locally, where CHECKSUM_PARTIAL counts as
 * already verified, and the checksums written here are complete anyway. */
#ifndef WEIR_REJECT_H
#define WEIR_REJECT_H

#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include "common.h"
#include "abi.h"
#include "drop.h"
#include "endpoint.h"
#include "ipv4.h"
#include "conntrack.h"

#ifndef IP_DF
#define IP_DF 0x4000
#endif

#define REJECT_TTL 64
#define REJECT_IP_MAX_HLEN 60
#define REJECT_ICMP_DEST_UNREACH 3
#define REJECT_ICMP_PORT_UNREACH 3
/* RFC 1812 4.3.2.5: ICMP errors are sent with precedence 6 (internetwork
 * control), keeping the original TOS bits, as Linux does. */
#define REJECT_ICMP_TOS(orig) (((orig) & 0x1e) | 0xc0)

/* A TCP header without options, flags as one byte. */
struct reject_tcphdr {
	__be16 sport;
	__be16 dport;
	__be32 seq;
	__be32 ack;
	__u8 doff; /* data offset in words, high nibble */
	__u8 flags;
	__be16 window;
	__sum16 check;
	__be16 urg;
};

/* The TCP pseudo-header followed by the segment: one checksum run. */
struct reject_tcp_csum {
	__be32 saddr;
	__be32 daddr;
	__u8 zero;
	__u8 proto;
	__be16 len;
	struct reject_tcphdr tcp;
};

struct reject_icmphdr {
	__u8 type;
	__u8 code;
	__sum16 check;
	__u32 unused;
};

/* The original IP header, options included, zero-padded to the maximum. */
struct reject_iphdr {
	struct iphdr h;
	__u8 options[REJECT_IP_MAX_HLEN - sizeof(struct iphdr)];
};

/* The ICMP message: header, quoted IP header (zero-padded) and 8 bytes.
 * Only the first 8 + ihl + 8 bytes go on the wire; the padding is zero so
 * the checksum over the whole buffer is the checksum of those. */
struct reject_icmp_msg {
	struct reject_icmphdr icmp;
	__u8 quote[REJECT_IP_MAX_HLEN + 8];
};

static __always_inline __sum16 reject_csum_fold(__s64 sum)
{
	__u32 s = (__u32)sum;

	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	return (__sum16)~s;
}

/* Ones' complement checksum of a stack buffer; size a multiple of 4. */
#define reject_csum(buf) reject_csum_fold(bpf_csum_diff(NULL, 0, (__be32 *)(buf), sizeof(*(buf)), 0))

/* The client's segment becomes the RST, in place: same IP header (options
 * kept, addresses swapped), a 20-byte TCP header, no payload. ihl_len is
 * 20..60 (reject4 makes sure the verifier knows). Returns 0, or -1 when
 * there is nothing to answer or the packet cannot be rewritten. */
static __always_inline int reject4_tcp(struct __sk_buff *skb, __u64 ihl_len)
{
	struct reject_iphdr ip = {};
	struct reject_tcp_csum c = {};
	struct reject_tcphdr in;
	__u32 tcp_hlen, tot_len, seg_len;

	if (bpf_skb_load_bytes(skb, ETH_HLEN, &ip, ihl_len))
		return -1;
	if (bpf_skb_load_bytes(skb, ETH_HLEN + ihl_len, &in, sizeof(in)))
		return -1;
	if (in.flags & WEIR_TCP_RST)
		return -1;
	tcp_hlen = (in.doff >> 4) * 4;
	tot_len = bpf_ntohs(ip.h.tot_len);
	if (tcp_hlen < sizeof(in) || ihl_len + tcp_hlen > tot_len)
		return -1;
	seg_len = tot_len - ihl_len - tcp_hlen + !!(in.flags & WEIR_TCP_SYN) + !!(in.flags & WEIR_TCP_FIN);

	c.saddr = ip.h.daddr;
	c.daddr = ip.h.saddr;
	c.proto = IPPROTO_TCP;
	c.len = bpf_htons(sizeof(c.tcp));
	c.tcp.sport = in.dport;
	c.tcp.dport = in.sport;
	if (in.flags & WEIR_TCP_ACK) {
		c.tcp.seq = in.ack;
		c.tcp.flags = WEIR_TCP_RST;
	} else {
		c.tcp.ack = bpf_htonl(bpf_ntohl(in.seq) + seg_len);
		c.tcp.flags = WEIR_TCP_RST | WEIR_TCP_ACK;
	}
	c.tcp.doff = (sizeof(c.tcp) / 4) << 4;
	c.tcp.check = reject_csum(&c);

	ip.h.saddr = c.saddr;
	ip.h.daddr = c.daddr;
	ip.h.tot_len = bpf_htons(ihl_len + sizeof(c.tcp));
	ip.h.ttl = REJECT_TTL;
	ip.h.frag_off &= bpf_htons(IP_DF); /* a whole datagram now */
	ip.h.check = 0;
	ip.h.check = reject_csum(&ip);

	/* Shrinking the tail leaves the headers where they are. Only the fixed
	 * 20 bytes of the IP header changed: options are stored as they were. */
	if (bpf_skb_change_tail(skb, ETH_HLEN + ihl_len + sizeof(c.tcp), 0))
		return -1;
	if (bpf_skb_store_bytes(skb, ETH_HLEN, &ip.h, sizeof(ip.h), 0))
		return -1;
	return bpf_skb_store_bytes(skb, ETH_HLEN + ihl_len, &c.tcp, sizeof(c.tcp), 0);
}

/* The client's datagram becomes ICMP port unreachable: trim it to its IP
 * header + 8 bytes (the quote), then grow room for a new IP and ICMP header
 * in front of it. ihl_len is 20..60. Returns 0 or -1. */
static __always_inline int reject4_icmp(struct __sk_buff *skb, __u64 ihl_len)
{
	struct {
		struct iphdr h;
		struct reject_icmphdr icmp;
	} hdr = {};
	struct reject_icmp_msg msg = {};
	__u64 quote_len = ihl_len + 8;
	__u8 tos;

	/* The caller's parse guaranteed 8 bytes of L4 header (ipv4.h, lb4_tuple). */
	if (bpf_skb_load_bytes(skb, ETH_HLEN, msg.quote, quote_len))
		return -1;
	tos = msg.quote[1];
	msg.icmp.type = REJECT_ICMP_DEST_UNREACH;
	msg.icmp.code = REJECT_ICMP_PORT_UNREACH;
	msg.icmp.check = reject_csum(&msg);

	hdr.h.version = 4;
	hdr.h.ihl = sizeof(hdr.h) / 4;
	hdr.h.tos = REJECT_ICMP_TOS(tos);
	hdr.h.tot_len = bpf_htons(sizeof(hdr) + quote_len);
	hdr.h.ttl = REJECT_TTL;
	hdr.h.protocol = IPPROTO_ICMP;
	__builtin_memcpy(&hdr.h.saddr, msg.quote + __builtin_offsetof(struct iphdr, daddr), 4);
	__builtin_memcpy(&hdr.h.daddr, msg.quote + __builtin_offsetof(struct iphdr, saddr), 4);
	hdr.h.check = reject_csum(&hdr.h);
	hdr.icmp = msg.icmp;

	/* Trim first: less to move when growing, and no GSO state left (the
	 * helper resets it) for adjust_room to object to. */
	if (bpf_skb_change_tail(skb, ETH_HLEN + quote_len, 0))
		return -1;
	/* The room goes between the MAC and IP headers: that is
	 * BPF_ADJ_ROOM_MAC. BPF_ADJ_ROOM_NET would insert it behind the fixed
	 * 20 bytes of the IP header, splitting the quote. */
	if (bpf_skb_adjust_room(skb, sizeof(hdr), BPF_ADJ_ROOM_MAC, 0))
		return -1;
	return bpf_skb_store_bytes(skb, ETH_HLEN, &hdr, sizeof(hdr), 0);
}

/* The rejection could not be made: the attempt is dropped (its event is
 * out already). */
static __always_inline int reject_failed(__u32 len)
{
	count_reason(WEIR_DROP_NO_SERVICE_BACKEND, len);
	return TC_ACT_SHOT;
}

/* Answers a connection attempt to a service without backends and returns
 * the verdict. Counted under WEIR_DROP_NO_SERVICE_BACKEND either way, and
 * reported as a drop event before the packet becomes the answer: a packet
 * that gets no answer (one that cannot be rewritten) is dropped, counted
 * here rather than again by drop_packet. */
static __always_inline int reject4(struct __sk_buff *skb, const struct ipv4_meta *meta,
				   const struct weir_ep_info *src)
{
	__u64 ihl_len = meta->l4_off - ETH_HLEN;
	__u32 ifindex = src->ifindex;
	__u32 len = skb->len;
	int ret;

	flow_drop(skb, WEIR_DROP_NO_SERVICE_BACKEND);

	/* Variable-size loads need a known range. ipv4_parse checked it, but
	 * the verifier lost it on the way, and clang fuses the two checks into
	 * a bit trick the verifier cannot follow: keep them apart. */
	asm volatile("" : "+r"(ihl_len));
	if (ihl_len > REJECT_IP_MAX_HLEN)
		return reject_failed(len);
	asm volatile("" : "+r"(ihl_len));
	if (ihl_len < sizeof(struct iphdr))
		return reject_failed(len);
	if (meta->protocol == IPPROTO_TCP)
		ret = reject4_tcp(skb, ihl_len);
	else
		ret = reject4_icmp(skb, ihl_len);
	if (ret)
		return reject_failed(len);
	count_reason(WEIR_DROP_NO_SERVICE_BACKEND, len);
	/* MACs as if the client's gateway answered; counted as its ingress. */
	if (to_endpoint(skb, src) != TC_ACT_OK)
		return TC_ACT_SHOT;
	return bpf_redirect_peer(ifindex, 0);
}

#endif /* WEIR_REJECT_H */
