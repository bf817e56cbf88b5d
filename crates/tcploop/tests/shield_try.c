/*
 * The shield's test client: connect() to ADDR:PORT N times, each a fresh
 * socket, the way MODE says, and count the outcomes:
 *   loops    connected, and the local address equals the peer (a loop)
 *   refused  ECONNREFUSED
 *   ok       connected to someone else (a real listener)
 *   other    anything else, including a try that took over 1 s (timeout)
 * A connected socket is closed with RST (SO_LINGER 0) so that no TIME_WAIT
 * entry piles up.
 *
 * MODE: block      blocking connect() (SO_SNDTIMEO 1 s)
 *       nonblock   non-blocking connect(), poll() 1 s, SO_ERROR
 *       uring      io_uring IORING_OP_CONNECT, CQE awaited 1 s (-DNO_URING: absent)
 *       tfo        sendto(MSG_FASTOPEN) with one byte in the SYN (SO_SNDTIMEO 1 s)
 *       bound      bind(BIND:PORT) first, then connect (BIND given as 6th argument)
 *       listen     a listener on ADDR:PORT; each try connects and accepts
 *       pair       a listener on ADDR:PORT; each try binds BIND:PORT, connects, accepts
 *       v6ext      blocking connect() whose SYN carries IPv6 extension headers (a
 *                  hop-by-hop and a destination options header, PadN each)
 *       timewait   blocking connect(), closed gracefully: a loop leaves a TIME_WAIT
 *                  entry of its self tuple (run with ip_local_port_range PORT PORT+1,
 *                  so that connect() can only pick PORT)
 *
 * Prints one line: mode=M loops=L refused=R ok=K other=O first_errno=E (0: none)
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>
#ifndef NO_URING
#include <liburing.h>
#endif

static struct sockaddr_storage dst;
static socklen_t dst_len;
static int family;

static int parse(const char *addr, int port, struct sockaddr_storage *ss, socklen_t *len)
{
	memset(ss, 0, sizeof(*ss));
	struct sockaddr_in *a4 = (struct sockaddr_in *)ss;
	struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)ss;
	if (inet_pton(AF_INET, addr, &a4->sin_addr) == 1) {
		a4->sin_family = AF_INET;
		a4->sin_port = htons(port);
		*len = sizeof(*a4);
		return AF_INET;
	}
	if (inet_pton(AF_INET6, addr, &a6->sin6_addr) == 1) {
		a6->sin6_family = AF_INET6;
		a6->sin6_port = htons(port);
		*len = sizeof(*a6);
		return AF_INET6;
	}
	fprintf(stderr, "bad address %s\n", addr);
	exit(2);
}

static void rst_close(int fd)
{
	struct linger l = {1, 0};
	setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof(l));
	close(fd);
}

static void timeouts(int fd)
{
	struct timeval tv = {1, 0};
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
}

/* 1: a loop, 0: connected elsewhere */
static int is_loop(int fd)
{
	struct sockaddr_storage a, b;
	socklen_t la = sizeof(a), lb = sizeof(b);
	if (getsockname(fd, (struct sockaddr *)&a, &la) || getpeername(fd, (struct sockaddr *)&b, &lb))
		return 0;
	return la == lb && memcmp(&a, &b, la) == 0;
}

static long loops, refused, ok, other;
static int first_error;

static void outcome(int fd, int err)
{
	if (err == 0) {
		if (is_loop(fd))
			loops++;
		else
			ok++;
	} else if (err == ECONNREFUSED) {
		refused++;
	} else {
		other++;
		if (!first_error)
			first_error = err;
	}
}

static int new_socket(void)
{
	int fd = socket(family, SOCK_STREAM, 0);
	if (fd < 0) {
		perror("socket");
		exit(2);
	}
	timeouts(fd);
	return fd;
}

int main(int argc, char **argv)
{
	if (argc < 5) {
		fprintf(stderr, "usage: %s MODE ADDR PORT N [BIND]\n", argv[0]);
		return 2;
	}
	const char *mode = argv[1];
	int port = atoi(argv[3]);
	long n = atol(argv[4]);
	family = parse(argv[2], port, &dst, &dst_len);
	int one = 1;
#ifndef NO_URING
	struct io_uring ring;
	if (!strcmp(mode, "uring") && io_uring_queue_init(8, &ring, 0)) {
		fprintf(stderr, "io_uring_queue_init failed\n");
		return 2;
	}
#endif
	int lfd = -1;
	int pair = !strcmp(mode, "pair");
	if (!strcmp(mode, "listen") || pair) {
		lfd = socket(family, SOCK_STREAM, 0);
		setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
		if (bind(lfd, (struct sockaddr *)&dst, dst_len) || listen(lfd, 128)) {
			perror("listen");
			return 2;
		}
	}
	for (long i = 0; i < n; i++) {
		int fd = new_socket();
		int err = 0;
		if (!strcmp(mode, "block") || !strcmp(mode, "listen")) {
			err = connect(fd, (struct sockaddr *)&dst, dst_len) ? errno : 0;
			if (lfd >= 0 && err == 0) {
				int c = accept(lfd, NULL, NULL);
				if (c < 0)
					err = errno;
				else
					rst_close(c);
			}
		} else if (!strcmp(mode, "v6ext")) {
			/* next header (set by the kernel), length 0 (8 bytes), PadN of 4 */
			unsigned char opt[8] = {0, 0, 1, 4, 0, 0, 0, 0};
			if (setsockopt(fd, IPPROTO_IPV6, IPV6_HOPOPTS, opt, sizeof(opt)) ||
			    setsockopt(fd, IPPROTO_IPV6, IPV6_DSTOPTS, opt, sizeof(opt))) {
				perror("IPV6_HOPOPTS/IPV6_DSTOPTS");
				return 2;
			}
			err = connect(fd, (struct sockaddr *)&dst, dst_len) ? errno : 0;
		} else if (!strcmp(mode, "timewait")) {
			err = connect(fd, (struct sockaddr *)&dst, dst_len) ? errno : 0;
			/* closed gracefully: the loop's tuple enters TIME_WAIT */
			outcome(fd, err);
			close(fd);
			continue;
		} else if (!strcmp(mode, "bound") || pair) {
			struct sockaddr_storage b;
			socklen_t bl;
			parse(argc > 5 ? argv[5] : argv[2], port, &b, &bl);
			setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
			if (bind(fd, (struct sockaddr *)&b, bl)) {
				err = errno;
			} else {
				err = connect(fd, (struct sockaddr *)&dst, dst_len) ? errno : 0;
			}
			if (pair && err == 0) {
				int c = accept(lfd, NULL, NULL);
				if (c < 0)
					err = errno;
				else
					rst_close(c);
			}
		} else if (!strcmp(mode, "nonblock")) {
			int fl = 1;
			if (ioctl(fd, FIONBIO, &fl)) {
				perror("FIONBIO");
				return 2;
			}
			if (connect(fd, (struct sockaddr *)&dst, dst_len) == 0) {
				err = 0;
			} else if (errno != EINPROGRESS) {
				err = errno;
			} else {
				struct pollfd p = {fd, POLLOUT, 0};
				int r = poll(&p, 1, 1000);
				if (r == 0) {
					err = ETIMEDOUT;
				} else {
					socklen_t l = sizeof(err);
					getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &l);
				}
			}
		} else if (!strcmp(mode, "tfo")) {
			/* one byte of data in the SYN (net.ipv4.tcp_fastopen=5 lets a
			   client send it without a cookie) */
			if (sendto(fd, "x", 1, MSG_FASTOPEN, (struct sockaddr *)&dst, dst_len) < 0)
				err = errno;
#ifndef NO_URING
		} else if (!strcmp(mode, "uring")) {
			struct io_uring_sqe *sqe = io_uring_get_sqe(&ring);
			io_uring_prep_connect(sqe, fd, (struct sockaddr *)&dst, dst_len);
			io_uring_submit(&ring);
			struct io_uring_cqe *cqe;
			struct __kernel_timespec ts = {1, 0};
			int r = io_uring_wait_cqe_timeout(&ring, &cqe, &ts);
			if (r < 0) {
				err = -r;
				fprintf(stderr, "io_uring: no completion: %s\n", strerror(-r));
				outcome(fd, err);
				break; /* the ring now holds a stale request */
			}
			err = cqe->res < 0 ? -cqe->res : 0;
			io_uring_cqe_seen(&ring, cqe);
#endif
		} else {
			fprintf(stderr, "unknown mode %s\n", mode);
			return 2;
		}
		outcome(fd, err);
		rst_close(fd);
	}
	printf("mode=%s loops=%ld refused=%ld ok=%ld other=%ld first_errno=%d\n", mode, loops, refused,
	       ok, other, first_error);
	return 0;
}
