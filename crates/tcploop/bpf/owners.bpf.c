// SPDX-License-Identifier: MIT OR GPL-2.0
/* Who holds which socket, found in the kernel: a task_file iterator.
 *
 * Reading an iterator made from one of these programs runs it once for
 * every open file of every task of the reader's PID namespace (0.2 to
 * 0.6 us a file, ten times cheaper than reading /proc/PID/fd links). It
 * writes one 32-byte record for each socket it keeps:
 *
 *   u32 pid     the process, as the reader's PID namespace numbers it
 *   s32 fd      the file descriptor in that process
 *   u64 inode   the socket's inode (what sock_diag reports)
 *   char comm[16]  the task's command name
 *
 * and, at the end, a trailer {0, -1, files visited, ""}.
 *
 * Two programs:
 *  - owners_wanted keeps the sockets whose inode is in the map `wanted`,
 *    which the loader fills from the socket dump: what `tcploop scan` uses;
 *  - owners_loops keeps every TCP socket connected to itself (local address
 *    and port equal to the peer's): it needs no input, so it could run
 *    beside the dump, but it reads every socket's struct sock and costs
 *    1.5 to 2 times as much a pass (measured in bench/, scan).
 *
 * They are plain global functions, not SEC("iter/task_file") programs:
 * the loader attaches them as iter/task_file itself (see
 * src/sys/bpf/owners.rs for why).
 */
#include "owners.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>

#define AF_INET 2
#define AF_INET6 10
#define IPPROTO_TCP 6
#define SOCK_STREAM 1
#define MAX_PID_NS_LEVEL 32

char LICENSE[] SEC("license") = "Dual MIT/GPL";

/* Inodes to look for (owners_wanted). The loader sizes it. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1);
	__type(key, __u64);
	__type(value, __u8);
} wanted SEC(".maps");

struct record {
	__u32 pid;
	__s32 fd;
	__u64 inode;
	char comm[16];
};

/* The socket behind the file of ctx, if it is a socket of a process: the
 * first thread of each process only (threads share its fd table;
 * /proc/PID/fd shows the same). Its inode goes to *inode. */
static __always_inline struct socket *socket_of(struct bpf_iter__task_file *ctx, __u64 *inode)
{
	struct task_struct *task = ctx->task;
	struct file *file = ctx->file;
	struct socket *sock;

	if (!task || !file || task->pid != task->tgid)
		return 0;
	sock = bpf_sock_from_file(file);
	if (sock)
		*inode = file->f_inode->i_ino;
	return sock;
}

/* Whether the socket is TCP and connected to itself. */
static __always_inline int is_loop(struct socket *sock)
{
	struct sock *sk = sock->sk;
	__u16 num;

	if (!sk || sk->sk_protocol != IPPROTO_TCP || sk->sk_type != SOCK_STREAM)
		return 0;
	num = sk->__sk_common.skc_num;
	if (num == 0 || num != bpf_ntohs(sk->__sk_common.skc_dport))
		return 0;
	if (sk->__sk_common.skc_family == AF_INET) {
		__be32 a = sk->__sk_common.skc_rcv_saddr;

		return a != 0 && a == sk->__sk_common.skc_daddr;
	}
	if (sk->__sk_common.skc_family == AF_INET6) {
		__u64 l[2] = {}, p[2] = {};

		bpf_core_read(&l, sizeof(l), &sk->__sk_common.skc_v6_rcv_saddr);
		bpf_core_read(&p, sizeof(p), &sk->__sk_common.skc_v6_daddr);
		return (l[0] | l[1]) != 0 && l[0] == p[0] && l[1] == p[1];
	}
	return 0;
}

/* Writes the record of (task, fd, inode), the pid as the reader sees it:
 * the task's pid number at the level of the reader's PID namespace. */
static __always_inline void emit(struct bpf_iter__task_file *ctx, __u64 inode)
{
	struct task_struct *me = bpf_get_current_task_btf();
	struct task_struct *task = ctx->task;
	struct record r = {};
	struct upid up = {};
	struct pid *pid;
	unsigned int level;

	if (!task)
		return;
	level = BPF_CORE_READ(me, thread_pid, level);
	pid = task->thread_pid;
	if (!pid || level >= MAX_PID_NS_LEVEL || level > BPF_CORE_READ(pid, level))
		return;
	bpf_probe_read_kernel(&up, sizeof(up),
			      (char *)pid + bpf_core_field_offset(pid->numbers) +
				      level * sizeof(struct upid));
	r.pid = up.nr;
	r.fd = ctx->fd;
	r.inode = inode;
	bpf_probe_read_kernel_str(r.comm, sizeof(r.comm), task->comm);
	bpf_seq_write(ctx->meta->seq, &r, sizeof(r));
}

/* The last call (no task): the number of files visited. */
static __always_inline int trailer(struct bpf_iter__task_file *ctx)
{
	struct record r = {};

	if (ctx->task)
		return 0;
	r.fd = -1;
	r.inode = ctx->meta->seq_num;
	bpf_seq_write(ctx->meta->seq, &r, sizeof(r));
	return 1;
}

int owners_loops(struct bpf_iter__task_file *ctx)
{
	struct socket *sock;
	__u64 inode = 0;

	if (trailer(ctx))
		return 0;
	sock = socket_of(ctx, &inode);
	if (sock && is_loop(sock))
		emit(ctx, inode);
	return 0;
}

int owners_wanted(struct bpf_iter__task_file *ctx)
{
	__u64 inode = 0;

	if (trailer(ctx))
		return 0;
	if (socket_of(ctx, &inode) && bpf_map_lookup_elem(&wanted, &inode))
		emit(ctx, inode);
	return 0;
}
