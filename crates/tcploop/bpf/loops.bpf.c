// SPDX-License-Identifier: MIT OR GPL-2.0
/*
 * loops.bpf.c: report every TCP loop (a socket connected to itself) the
 * moment it forms, and its end.
 *
 * The kernel announces every TCP state change on the inet_sock_set_state
 * tracepoint. A self-connect is the only active open that goes SYN_SENT ->
 * SYN_RECV (simultaneous open: the socket's own SYN came back to it) with
 * its own address and port at both ends; an ordinary connect goes SYN_SENT
 * -> ESTABLISHED. So the filter runs here, in the kernel, and the reader
 * wakes only for loops: one event a loop, whichever namespace it is in.
 *
 * The end of a loop is the moment its socket leaves ESTABLISHED (closed,
 * RST, destroyed). To report it with the loop's lifetime, the program keeps
 * the loops it reported (cookie, start) in an LRU hash: bounded memory
 * whatever happens (LOOPS_TRACKED entries; when more loops than that are
 * alive at once, the oldest are forgotten and their ends go unreported,
 * never anything else).
 *
 * Counters (per CPU, summed by the reader) say how many loops and ends were
 * sent and how many were dropped because the ring buffer was full: a reader
 * that sees drops catches up with one socket dump.
 *
 * Loaded by src/sys/bpf/loops.rs, which sets target_netns.
 */
#include "vmlinux_min.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>

#define AF_INET 2
#define AF_INET6 10
#define IPPROTO_TCP 6
#define TCP_ESTABLISHED 1
#define TCP_SYN_SENT 2
#define TCP_SYN_RECV 3

/* How many ancestors (parent, grandparent, ...) an event names: enough for
 * `tcploop trace -- make test` to recognise its grandchildren's loops even
 * after they have exited. */
#define ANCESTORS 8
/* Live loops whose end can be reported (LRU: the oldest are forgotten). */
#define LOOPS_TRACKED 4096

enum event_kind {
	EVENT_LOOP = 1,
	EVENT_LOOP_END = 2,
};

enum counter {
	COUNT_LOOPS,      /* loop events sent */
	COUNT_LOOP_DROPS, /* loop events lost: ring buffer full */
	COUNT_ENDS,       /* loop-end events sent */
	COUNT_END_DROPS,  /* loop-end events lost: ring buffer full */
	COUNTERS,
};

/* One event; 128 bytes. The reader parses it field by field at these
 * offsets (src/sys/bpf/loops.rs: EVENT_LEN and parse_event). */
struct loop_event {
	__u64 ts_ns;       /* 0: bpf_ktime_get_ns(), CLOCK_MONOTONIC */
	__u64 cookie;      /* 8: socket cookie (what sock_diag and ss -e show) */
	__u64 cgroup_id;   /* 16: the task's cgroup v2 id */
	__u64 sock_inode;  /* 24: the socket's inode (0: no struct socket) */
	__u64 start_ns;    /* 32: loop-end: when the loop formed; loop: 0 */
	__u32 kind;        /* 40: enum event_kind */
	__u32 tgid;        /* 44: process id of the current task */
	__u32 tid;         /* 48: thread id */
	__u32 netns;       /* 52: network namespace inode */
	__u32 ancestors[ANCESTORS]; /* 56: parent's tgid, its parent's, ... 0 past the top */
	__u16 family;      /* 88: AF_INET or AF_INET6 */
	__u16 port;        /* 90: the loop's port, host order */
	__u8 addr[16];     /* 92: the loop's address (IPv4: first 4 bytes) */
	__u8 oldstate;     /* 108 */
	__u8 newstate;     /* 109 */
	__u8 owned;        /* 110: sk_lock.owned: 1 when a task held the socket */
	__u8 pad;          /* 111 */
	char comm[16];     /* 112: the current task's command */
};

/* 0: every namespace; otherwise the inode of the one to report. Set by the
 * loader before the program is verified (read-only data). */
const volatile __u32 target_netns = 0;

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 2 * 1024 * 1024); /* the loader may change it */
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, COUNTERS);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

/* A loop reported and not ended yet. */
struct live_loop {
	__u64 cookie;
	__u64 start_ns;
};

/* Keyed by the socket's address, not its cookie: when a socket closes, the
 * kernel releases its port (inet_num = 0) before the state change is
 * announced, so the end no longer looks like a loop, and a hash lookup by
 * pointer is cheaper than making every closing socket of the host a cookie.
 * The cookie stored here guards against a reused address. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, LOOPS_TRACKED);
	__type(key, __u64);
	__type(value, struct live_loop);
} live SEC(".maps");

static __always_inline void count(__u32 which)
{
	__u64 *v = bpf_map_lookup_elem(&counters, &which);
	if (v)
		*v += 1;
}

/* Whether the socket's local address and port are its peer's. */
static __always_inline int is_self_connected(const struct sock *sk, __u16 family)
{
	__u16 num = BPF_CORE_READ(sk, __sk_common.skc_num);
	__u16 dport = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
	if (num != dport)
		return 0;
	if (family == AF_INET)
		return BPF_CORE_READ(sk, __sk_common.skc_rcv_saddr) ==
		       BPF_CORE_READ(sk, __sk_common.skc_daddr);
	if (family == AF_INET6) {
		struct in6_addr a = BPF_CORE_READ(sk, __sk_common.skc_v6_rcv_saddr);
		struct in6_addr b = BPF_CORE_READ(sk, __sk_common.skc_v6_daddr);
		return a.in6_u.u6_addr32[0] == b.in6_u.u6_addr32[0] &&
		       a.in6_u.u6_addr32[1] == b.in6_u.u6_addr32[1] &&
		       a.in6_u.u6_addr32[2] == b.in6_u.u6_addr32[2] &&
		       a.in6_u.u6_addr32[3] == b.in6_u.u6_addr32[3];
	}
	return 0;
}

static __always_inline void fill(struct loop_event *e, const struct sock *sk, __u16 family,
				 __u32 netns, __u64 cookie, __u64 now, int oldstate, int newstate)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct socket *sock;
	int i;

	e->ts_ns = now;
	e->cookie = cookie;
	e->cgroup_id = bpf_get_current_cgroup_id();
	e->tgid = id >> 32;
	e->tid = (__u32)id;
	e->netns = netns;
	e->family = family;
	e->port = BPF_CORE_READ(sk, __sk_common.skc_num);
	__builtin_memset(e->addr, 0, sizeof(e->addr));
	if (family == AF_INET) {
		__be32 a = BPF_CORE_READ(sk, __sk_common.skc_rcv_saddr);
		__builtin_memcpy(e->addr, &a, 4);
	} else {
		struct in6_addr a = BPF_CORE_READ(sk, __sk_common.skc_v6_rcv_saddr);
		__builtin_memcpy(e->addr, &a, 16);
	}
	e->oldstate = oldstate;
	e->newstate = newstate;
	e->owned = BPF_CORE_READ(sk, sk_lock.owned) ? 1 : 0;
	e->pad = 0;
	e->sock_inode = 0;
	sock = BPF_CORE_READ(sk, sk_socket);
	if (sock)
		e->sock_inode = BPF_CORE_READ((struct socket_alloc *)sock, vfs_inode.i_ino);
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	for (i = 0; i < ANCESTORS; i++) {
		__u32 pid = 0;
		if (task) {
			task = BPF_CORE_READ(task, real_parent);
			if (task)
				pid = BPF_CORE_READ(task, tgid);
		}
		e->ancestors[i] = pid;
		if (pid <= 1)
			task = 0;
	}
}

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(loop_state, const struct sock *sk, const int oldstate, const int newstate)
{
	int start = oldstate == TCP_SYN_SENT && newstate == TCP_SYN_RECV;
	int end = (oldstate == TCP_ESTABLISHED || oldstate == TCP_SYN_RECV) &&
		  newstate != TCP_ESTABLISHED;
	__u64 key = (__u64)(unsigned long)sk;
	struct live_loop *known, fresh;
	struct loop_event *e;
	__u64 cookie, now, started;
	__u32 netns;
	__u16 family;

	/* Every TCP state change of the host comes here: the cheap tests first. */
	if (!start && !end)
		return 0;
	if (BPF_CORE_READ(sk, sk_protocol) != IPPROTO_TCP)
		return 0;
	family = BPF_CORE_READ(sk, __sk_common.skc_family);
	netns = BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum);

	if (end) {
		known = bpf_map_lookup_elem(&live, &key);
		if (!known)
			return 0; /* not a loop reported here (or older than the attach) */
		started = known->start_ns;
		cookie = bpf_get_socket_cookie((void *)sk);
		if (cookie != known->cookie) {
			/* a new socket at the address of a forgotten one */
			bpf_map_delete_elem(&live, &key);
			return 0;
		}
		bpf_map_delete_elem(&live, &key);
		e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
		if (!e) {
			count(COUNT_END_DROPS);
			return 0;
		}
		/* the port may already be released (0): the reader knows it from
		 * the loop's own event, by cookie */
		fill(e, sk, family, netns, cookie, bpf_ktime_get_ns(), oldstate, newstate);
		e->kind = EVENT_LOOP_END;
		e->start_ns = started;
		bpf_ringbuf_submit(e, 0);
		count(COUNT_ENDS);
		return 0;
	}

	if (!is_self_connected(sk, family))
		return 0;
	if (target_netns && netns != target_netns)
		return 0;
	cookie = bpf_get_socket_cookie((void *)sk);
	now = bpf_ktime_get_ns();
	fresh.cookie = cookie;
	fresh.start_ns = now;
	bpf_map_update_elem(&live, &key, &fresh, BPF_ANY);
	e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count(COUNT_LOOP_DROPS);
		return 0;
	}
	fill(e, sk, family, netns, cookie, now, oldstate, newstate);
	e->kind = EVENT_LOOP;
	e->start_ns = 0;
	bpf_ringbuf_submit(e, 0);
	count(COUNT_LOOPS);
	return 0;
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
