// SPDX-License-Identifier: (MIT OR GPL-2.0)
//
// The shield's cgroup hook (`tcploop shield on --cgroup-root`): refuses, at
// connect() time, a TCP connect to a loopback address (127.0.0.0/8, ::1,
// ::ffff:127.0.0.0/104) where nothing listens, with ECONNREFUSED, for every
// process of a cgroup subtree in any network namespace. Such a connect can
// only fail (refused) or loop, so refusing it at once takes only the loop
// away. It covers a new container from its first connect, before the
// classifier is attached to its `lo`.
//
// Differences from the classifier on `lo` (documented in the README): only
// loopback destinations (a connect to an interface address of the
// namespace is not seen as local here); a non-blocking connect fails at
// once instead of returning EINPROGRESS; a listener that appears between
// the check and the SYN is missed (the connect is refused as it would
// have been a moment earlier).
//
// The listener check is bpf_sk_lookup_tcp with the destination only: the
// established lookup cannot match (no source), the listener lookup finds a
// socket listening on the destination address or on the wildcard, in the
// caller's network namespace.

#include <linux/bpf.h>
#include <linux/in.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "Dual MIT/GPL";

#define SOCK_STREAM 1
#define ECONNREFUSED 111

#define STAT_REFUSED_V4 0
#define STAT_REFUSED_V6 1
#define STAT_COUNT 2

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, STAT_COUNT);
	__type(key, __u32);
	__type(value, __u64);
} cgroup_stats SEC(".maps");

static __always_inline void count(__u32 which)
{
	__u64 *v = bpf_map_lookup_elem(&cgroup_stats, &which);

	if (v)
		*v += 1;
}

// 1: something listens on daddr:dport (IPv4, network order).
static __always_inline int listening4(struct bpf_sock_addr *ctx, __u32 daddr, __u16 dport)
{
	struct bpf_sock_tuple t = {};

	t.ipv4.daddr = daddr;
	t.ipv4.dport = dport;
	struct bpf_sock *sk = bpf_sk_lookup_tcp(ctx, &t, sizeof(t.ipv4), BPF_F_CURRENT_NETNS, 0);
	if (!sk)
		return 0;
	bpf_sk_release(sk);
	return 1;
}

static __always_inline int refuse(__u32 which)
{
	count(which);
	bpf_set_retval(-ECONNREFUSED);
	return 0; // reject
}

SEC("cgroup/connect4")
int shield_connect4(struct bpf_sock_addr *ctx)
{
	if (ctx->type != SOCK_STREAM || ctx->protocol != IPPROTO_TCP)
		return 1;
	__u32 daddr = ctx->user_ip4;
	if ((bpf_ntohl(daddr) >> 24) != 127)
		return 1;
	if (listening4(ctx, daddr, (__u16)ctx->user_port))
		return 1;
	return refuse(STAT_REFUSED_V4);
}

SEC("cgroup/connect6")
int shield_connect6(struct bpf_sock_addr *ctx)
{
	if (ctx->type != SOCK_STREAM || ctx->protocol != IPPROTO_TCP)
		return 1;
	__u32 a0 = ctx->user_ip6[0], a1 = ctx->user_ip6[1], a2 = ctx->user_ip6[2],
	      a3 = ctx->user_ip6[3];
	__u16 dport = (__u16)ctx->user_port;

	// ::ffff:127.x.y.z, an IPv4 connect through an IPv6 socket
	if (a0 == 0 && a1 == 0 && a2 == bpf_htonl(0xffff) && (bpf_ntohl(a3) >> 24) == 127) {
		if (listening4(ctx, a3, dport))
			return 1;
		return refuse(STAT_REFUSED_V4);
	}
	// ::1
	if (a0 != 0 || a1 != 0 || a2 != 0 || a3 != bpf_htonl(1))
		return 1;
	struct bpf_sock_tuple t = {};
	t.ipv6.daddr[3] = a3;
	t.ipv6.dport = dport;
	struct bpf_sock *sk = bpf_sk_lookup_tcp(ctx, &t, sizeof(t.ipv6), BPF_F_CURRENT_NETNS, 0);
	if (sk) {
		bpf_sk_release(sk);
		return 1;
	}
	return refuse(STAT_REFUSED_V6);
}
