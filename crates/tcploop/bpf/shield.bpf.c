// SPDX-License-Identifier: (MIT OR GPL-2.0)
//
// The shield: a tc classifier on `lo` that makes a TCP self-connect fail
// the way a connect to a closed port fails (ECONNREFUSED), for every
// program of the network namespace.
//
// A self-connect is a SYN whose source address and port equal its
// destination address and port (the kernel picked the destination port as
// the ephemeral source port, or the socket was bound to it). Such a SYN can
// only travel over `lo` (interface addresses of the namespace are routed
// through `lo` as well). We rewrite it, in place, into the answer a closed
// port gives: RST+ACK with ack = seq + 1. The socket, in SYN_SENT, receives
// it and connect() fails with ECONNREFUSED.
//
// Addresses and ports need no swap: they are equal. What changes:
// - the flags: SYN -> RST|ACK;
// - the acknowledgment number: seq + 1 (seq + 1 is what a SYN_SENT socket
//   accepts; with TCP Fast Open data in the SYN it still lies between
//   snd_una and snd_nxt);
// - every TCP option becomes a NOP (same length). Otherwise a SYN from a
//   socket that reuses a TIME_WAIT entry of its own tuple carries an old
//   timestamp echo, the RST fails the PAWS check, is dropped, and connect()
//   hangs until ETIMEDOUT.
// The TCP checksum is fixed with the l4 checksum helpers (which do the
// right thing for CHECKSUM_PARTIAL skbs, the usual case on lo).
//
// Most packets are passed over after a look at their headers in place, at
// constant offsets (`surely_not`); a possible self-connect SYN is then read
// with bpf_skb_load_bytes and written with bpf_skb_store_bytes (no direct
// packet access at a variable offset: that would need CAP_PERFMON, and a
// direct write makes the verifier unclone every cloned TCP skb). The program never drops a packet and never skips later
// programs: it always returns TC_ACT_UNSPEC (TCX_NEXT).
//
// IPv6 extension headers (hop-by-hop, routing, destination options) are
// walked, at most MAX_EXT_HDRS of them; a fragment header, AH, ESP or a
// longer chain leaves the packet untouched (counted in STAT_SKIPPED_V6).
//
// Counters (per-CPU array `shield_stats`): SYNs turned away, IPv4 and IPv6,
// and IPv6 packets not inspected because of their extension headers.

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/pkt_cls.h>
#include <linux/tcp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "Dual MIT/GPL";

#define STAT_REFUSED_V4 0
#define STAT_REFUSED_V6 1
#define STAT_SKIPPED_V6 2
#define STAT_COUNT 3

#define MAX_EXT_HDRS 6
#define TCP_OPTS_MAX 40

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, STAT_COUNT);
	__type(key, __u32);
	__type(value, __u64);
} shield_stats SEC(".maps");

static __always_inline void count(__u32 which)
{
	__u64 *v = bpf_map_lookup_elem(&shield_stats, &which);

	if (v)
		*v += 1;
}

// Offsets inside struct tcphdr.
#define TCP_ACK_OFF 8
#define TCP_FLAGS_WORD_OFF 12 // doff/reserved byte and the flags byte
#define TCP_CSUM_OFF 16

#define FLAG_FIN 0x01
#define FLAG_SYN 0x02
#define FLAG_RST 0x04
#define FLAG_ACK 0x10

// Rewrites the SYN at `tcp_off` into RST+ACK (ack = seq + 1, options NOPs).
// Returns 0 on success. Any failure leaves the packet as it was or, at
// worst, a SYN with NOP options: never dropped.
static __always_inline int turn_away(struct __sk_buff *skb, __u32 tcp_off)
{
	struct tcphdr th;
	__u32 csum_off = tcp_off + TCP_CSUM_OFF;

	if (bpf_skb_load_bytes(skb, tcp_off, &th, sizeof(th)))
		return -1;

	// Options: every byte after the fixed header becomes a NOP (1).
	__u32 opt_len = th.doff * 4;
	if (opt_len < sizeof(th) || opt_len > sizeof(th) + TCP_OPTS_MAX)
		return -1;
	opt_len -= sizeof(th);
	if (opt_len) {
		__u8 old[TCP_OPTS_MAX] = {};
		__u8 nops[TCP_OPTS_MAX];

		// Option lengths are multiples of 4 (doff counts 32-bit words);
		// the mask tells the verifier the length is bounded.
		opt_len &= 0x3c;
		if (opt_len == 0 || opt_len > TCP_OPTS_MAX)
			return -1;
		__builtin_memset(nops, 1, sizeof(nops));
		if (bpf_skb_load_bytes(skb, tcp_off + sizeof(th), old, opt_len))
			return -1;
		__s64 diff = bpf_csum_diff((__be32 *)old, opt_len, (__be32 *)nops, opt_len, 0);
		if (diff < 0)
			return -1;
		if (bpf_skb_store_bytes(skb, tcp_off + sizeof(th), nops, opt_len, 0))
			return -1;
		if (bpf_l4_csum_replace(skb, csum_off, 0, diff, 0))
			return -1;
	}

	// Acknowledge the SYN: ack = seq + 1.
	__be32 old_ack = th.ack_seq;
	__be32 new_ack = bpf_htonl(bpf_ntohl(th.seq) + 1);
	if (bpf_skb_store_bytes(skb, tcp_off + TCP_ACK_OFF, &new_ack, sizeof(new_ack), 0))
		return -1;
	if (bpf_l4_csum_replace(skb, csum_off, old_ack, new_ack, sizeof(new_ack)))
		return -1;

	// Flags: SYN -> RST|ACK, the data offset byte unchanged.
	__u16 old_word, new_word;
	if (bpf_skb_load_bytes(skb, tcp_off + TCP_FLAGS_WORD_OFF, &old_word, sizeof(old_word)))
		return -1;
	new_word = old_word;
	((__u8 *)&new_word)[1] = FLAG_RST | FLAG_ACK;
	if (bpf_skb_store_bytes(skb, tcp_off + TCP_FLAGS_WORD_OFF, &new_word, sizeof(new_word), 0))
		return -1;
	if (bpf_l4_csum_replace(skb, csum_off, old_word, new_word, sizeof(new_word)))
		return -1;
	return 0;
}

// Whether the TCP segment at `tcp_off` is a SYN (no ACK) from port P to P.
static __always_inline int self_syn(struct __sk_buff *skb, __u32 tcp_off)
{
	struct {
		__be16 source;
		__be16 dest;
		__be32 seq;
		__be32 ack;
		__u8 doff;
		__u8 flags;
	} h;

	if (bpf_skb_load_bytes(skb, tcp_off, &h, sizeof(h)))
		return 0;
	if ((h.flags & (FLAG_SYN | FLAG_ACK | FLAG_RST | FLAG_FIN)) != FLAG_SYN)
		return 0;
	return h.source == h.dest;
}

static __always_inline void ipv4(struct __sk_buff *skb)
{
	struct iphdr ip;

	if (bpf_skb_load_bytes(skb, ETH_HLEN, &ip, sizeof(ip)))
		return;
	if (ip.protocol != IPPROTO_TCP || ip.saddr != ip.daddr)
		return;
	// A later fragment carries no TCP header.
	if (ip.frag_off & bpf_htons(0x1fff))
		return;
	__u32 tcp_off = ETH_HLEN + ip.ihl * 4;
	if (ip.ihl < 5)
		return;
	if (!self_syn(skb, tcp_off))
		return;
	if (turn_away(skb, tcp_off) == 0)
		count(STAT_REFUSED_V4);
}

static __always_inline void ipv6(struct __sk_buff *skb)
{
	struct ipv6hdr ip;

	if (bpf_skb_load_bytes(skb, ETH_HLEN, &ip, sizeof(ip)))
		return;
	if (ip.saddr.in6_u.u6_addr32[0] != ip.daddr.in6_u.u6_addr32[0] ||
	    ip.saddr.in6_u.u6_addr32[1] != ip.daddr.in6_u.u6_addr32[1] ||
	    ip.saddr.in6_u.u6_addr32[2] != ip.daddr.in6_u.u6_addr32[2] ||
	    ip.saddr.in6_u.u6_addr32[3] != ip.daddr.in6_u.u6_addr32[3])
		return;

	__u8 next = ip.nexthdr;
	__u32 off = ETH_HLEN + sizeof(ip);
	int i;

	// Walk the extension headers that may precede TCP, a bounded number.
#pragma unroll
	for (i = 0; i < MAX_EXT_HDRS; i++) {
		if (next != IPPROTO_HOPOPTS && next != IPPROTO_ROUTING && next != IPPROTO_DSTOPTS)
			break;
		__u8 ext[2]; // next header, length in 8-byte units not counting the first 8
		if (bpf_skb_load_bytes(skb, off, ext, sizeof(ext)))
			return;
		next = ext[0];
		off += (ext[1] + 1) * 8;
	}
	if (next != IPPROTO_TCP) {
		// Another extension header (fragment, AH, ESP) or too many:
		// not inspected.
		if (next == IPPROTO_HOPOPTS || next == IPPROTO_ROUTING || next == IPPROTO_DSTOPTS ||
		    next == IPPROTO_FRAGMENT || next == IPPROTO_AH || next == IPPROTO_ESP)
			count(STAT_SKIPPED_V6);
		return;
	}
	if (!self_syn(skb, off))
		return;
	if (turn_away(skb, off) == 0)
		count(STAT_REFUSED_V6);
}

// The fast path: most loopback packets are told apart from a self-connect
// SYN by reading the headers in place (constant offsets, no helper call):
// returns 1 when the packet certainly is not one, 0 when it may be (the
// slow path above then looks, with bpf_skb_load_bytes).
static __always_inline int surely_not(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct tcphdr *th;

	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = data + ETH_HLEN;

		if ((void *)(ip + 1) > data_end)
			return 0;
		if (ip->protocol != IPPROTO_TCP || ip->saddr != ip->daddr)
			return 1;
		if (ip->ihl != 5)
			return 0; // IP options: the slow path
		th = (void *)(ip + 1);
	} else if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip = data + ETH_HLEN;

		if ((void *)(ip + 1) > data_end)
			return 0;
		if (ip->nexthdr != IPPROTO_TCP)
			return ip->nexthdr != IPPROTO_HOPOPTS && ip->nexthdr != IPPROTO_ROUTING &&
			       ip->nexthdr != IPPROTO_DSTOPTS && ip->nexthdr != IPPROTO_FRAGMENT &&
			       ip->nexthdr != IPPROTO_AH && ip->nexthdr != IPPROTO_ESP;
		th = (void *)(ip + 1);
	} else {
		return 1;
	}
	if ((void *)(th + 1) > data_end)
		return 0;
	// Not a bare SYN, or ports that differ: not a self-connect.
	return !th->syn || th->ack || th->rst || th->fin || th->source != th->dest;
}

SEC("classifier")
int shield(struct __sk_buff *skb)
{
	if (surely_not(skb))
		return TC_ACT_UNSPEC;
	if (skb->protocol == bpf_htons(ETH_P_IP))
		ipv4(skb);
	else if (skb->protocol == bpf_htons(ETH_P_IPV6))
		ipv6(skb);
	return TC_ACT_UNSPEC;
}
