/* SPDX-License-Identifier: MIT OR GPL-2.0 */
/*
 * The few kernel types the BPF programs of tcploop read, written by hand.
 *
 * Each struct lists only the fields used, under the kernel's own names, and
 * is marked preserve_access_index: clang then records every field access
 * as a CO-RE relocation, and the loader rewrites the offsets against the
 * running kernel's BTF (/sys/kernel/btf/vmlinux). The layout below is
 * therefore not the kernel's and never needs to be; only names and kinds
 * must match. A generated vmlinux.h (2.8 MB) is deliberately not used: it
 * would be committed, and it makes the object seven times larger.
 */
#ifndef TCPLOOP_VMLINUX_MIN_H
#define TCPLOOP_VMLINUX_MIN_H

typedef unsigned char __u8;
typedef unsigned short __u16;
typedef unsigned int __u32;
typedef unsigned long long __u64;
typedef signed char __s8;
typedef short __s16;
typedef int __s32;
typedef long long __s64;
typedef __u16 __be16;
typedef __u32 __be32;
typedef __u32 __wsum;

enum bpf_map_type {
	BPF_MAP_TYPE_PERCPU_ARRAY = 6,
	BPF_MAP_TYPE_LRU_HASH = 9,
	BPF_MAP_TYPE_RINGBUF = 27,
};

enum {
	BPF_ANY = 0,
};

#pragma clang attribute push(__attribute__((preserve_access_index)), apply_to = record)

struct in6_addr {
	union {
		__u8 u6_addr8[16];
		__be32 u6_addr32[4];
	} in6_u;
};

struct ns_common {
	unsigned int inum;
};

struct net {
	struct ns_common ns;
};

typedef struct {
	struct net *net;
} possible_net_t;

struct sock_common {
	__be32 skc_daddr;
	__be32 skc_rcv_saddr;
	__be16 skc_dport;
	__u16 skc_num;
	unsigned short skc_family;
	possible_net_t skc_net;
	struct in6_addr skc_v6_daddr;
	struct in6_addr skc_v6_rcv_saddr;
};

typedef struct {
	int owned;
} socket_lock_t;

struct inode {
	unsigned long i_ino;
};

struct socket {
	short type;
};

/* What sock_alloc_inode() allocates: the socket, then its inode. */
struct socket_alloc {
	struct socket socket;
	struct inode vfs_inode;
};

struct sock {
	struct sock_common __sk_common;
	struct socket *sk_socket;
	socket_lock_t sk_lock;
	__u16 sk_protocol;
};

struct task_struct {
	int pid;
	int tgid;
	struct task_struct *real_parent;
};

#pragma clang attribute pop

#endif
