//! An `LD_PRELOAD` library that makes a dynamically linked program unable to
//! end up connected to itself (a TCP *loop*, or self-connect).
//!
//! When a client `connect()`s to a port of its own host where nothing
//! listens, and the port lies in the ephemeral range, the kernel may choose
//! that very port as the client's source port; the SYN then arrives at the
//! sending socket and TCP's simultaneous open makes the connection
//! ESTABLISHED with itself. This library sits between the program and libc
//! (`tcploop run -- COMMAND` loads it) and turns such a loop back into what
//! the program would have seen without it: `ECONNREFUSED`.
//!
//! # What it interposes
//!
//! - `connect()` (and glibc's alias `__connect`): the real call runs first.
//!   When it returns 0 (a blocking connect that completed, or a second
//!   `connect()` on a non-blocking socket whose handshake has finished), the
//!   socket is checked; a loop is disconnected and the call fails with
//!   `errno = ECONNREFUSED`.
//! - `getsockopt(SOL_SOCKET, SO_ERROR)`: how a non-blocking connect learns
//!   its result after `EINPROGRESS` and `poll`/`epoll`/`select` (Java NIO and
//!   `java.net.Socket`, libuv/Node, curl, CPython with a timeout, mio/tokio
//!   all do this). When it reports 0 on a socket that is a loop, the loop is
//!   disconnected and the option value says `ECONNREFUSED` instead.
//!
//! - `sendto()` and `sendmsg()` with `MSG_FASTOPEN` and a destination (TCP
//!   Fast Open: the connect happens inside the send, with no `connect()`
//!   call to catch): when the destination port lies in the ephemeral range,
//!   the call becomes the guarded `connect()` above followed by the send
//!   without the flag. The program sees what TCP Fast Open without a cookie
//!   gives it: the bytes sent once connected (blocking), `EINPROGRESS`
//!   (non-blocking; it then waits and sends again), or `ECONNREFUSED` where
//!   it would have looped. Destinations outside the range keep Fast Open.
//! - A `connect()` on a socket with `TCP_FASTOPEN_CONNECT` whose SYN the
//!   kernel defers to the first write (with a cached cookie, or
//!   `net.ipv4.tcp_fastopen` allowing no cookie): it returns 0 before any
//!   packet, with no peer yet (`getpeername()` says ENOTCONN). Its source
//!   address and port are already chosen, so when they equal the
//!   destination, the first write would loop: it is refused then, in
//!   `connect()`.
//!
//! Everything else goes straight to libc. A loop is what
//! [`tcploop_guard::is_loop`] says it is: local address and port equal the
//! peer's (and the socket is `SOCK_STREAM`).
//!
//! # What it costs
//!
//! A loop needs the kernel to pick the destination port as the source port,
//! and it picks source ports from `ip_local_port_range`. So a connect to a
//! port outside that range (a service port: 443, 5432, 8080...) is let
//! through at once, without a system call; the range is read from
//! `/proc/sys/net/ipv4/ip_local_port_range` and trusted for a second. A
//! non-blocking connect's port is remembered from its `EINPROGRESS` to its
//! `SO_ERROR` read (a lock-free table of one atomic per descriptor), so the
//! same holds there. A connect to a port inside the range costs one
//! `getsockname()` (and a `getpeername()` when the ports match, or when
//! `SO_ERROR` is read for a connect the table does not know).
//!
//! # How a loop is undone
//!
//! The program owns the file descriptor, so it is never closed here. Instead
//! `connect(fd, {AF_UNSPEC})` dissolves the association: on Linux,
//! `tcp_disconnect()` sends a RST for an ESTABLISHED socket (no `SO_LINGER`
//! needed, and none is set, because it would stay on the descriptor and make
//! a later, real connection on it end with a RST), moves it to CLOSE and
//! frees the port at once (no TIME_WAIT), so the real server can bind it. The
//! `ECONNRESET` that the disconnect leaves pending is read back, so the
//! socket ends up exactly as a refused connect leaves it: unconnected, no
//! pending error, reusable for another `connect()`.
//!
//! # What it cannot see
//!
//! - Statically linked programs, setuid/setgid programs (the loader ignores
//!   `LD_PRELOAD` for them), and Go programs (Go calls the kernel directly;
//!   its `net.Dial` retries a loop twice by itself, then gives up).
//! - A non-blocking connect whose program never asks `SO_ERROR` nor calls
//!   `connect()` again, and takes writability alone as success (Rust's
//!   `TcpStream::connect_timeout` does this): the loop stays connected.
//! - `connect` issued through `syscall(SYS_connect)` or io_uring.
//! - A program that binds its source port itself to a port outside the
//!   ephemeral range and connects to that same port of its own address: it
//!   connects to itself every time, by construction, not by the kernel's
//!   draw that this guard is about.
//!
//! # Rules of this code
//!
//! Every exported function is called from C, in any thread, possibly in a
//! signal handler's neighbourhood: nothing here allocates, panics, or keeps
//! mutable state apart from atomics: the lazily resolved addresses of the
//! real libc functions, the cached port range, the pending-connect table and
//! the `TCPLOOP_LOG` switch.
//! `errno` is restored on every path where this library made calls of its
//! own. The library never calls its own exported symbols (`libc::connect`
//! or `libc::getsockopt` would resolve to them); it goes through `next_*`.
//!
//! With `TCPLOOP_LOG=1` in the environment, each prevented loop writes one
//! line to stderr (fd 2, a single `write(2)`), unless fd 2 is an IP socket.
#![allow(unsafe_code)] // the whole crate is a C ABI boundary

use std::ffi::CStr;
use std::fmt::{self, Write as _};
use std::mem::{size_of, MaybeUninit};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::ptr;
use std::sync::atomic::{AtomicU16, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};

use libc::{c_int, c_void, sockaddr, sockaddr_in, sockaddr_in6, sockaddr_storage, socklen_t};

/// `connect()`: the real call, then the loop check (see the crate docs).
///
/// # Safety
///
/// The contract of `connect(2)`: `addr` points to `len` readable bytes.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn connect(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int {
    // SAFETY: forwarded from our caller, who holds connect(2)'s contract.
    unsafe { guarded_connect(fd, addr, len) }
}

/// glibc's exported alias of `connect()`, guarded the same way.
///
/// # Safety
///
/// As [`connect`].
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn __connect(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int {
    // SAFETY: as in `connect`.
    unsafe { guarded_connect(fd, addr, len) }
}

/// `getsockopt()`: the real call; for `SOL_SOCKET`/`SO_ERROR` reporting 0,
/// the loop check (see the crate docs).
///
/// # Safety
///
/// The contract of `getsockopt(2)`: `len` points to a `socklen_t` and `val`
/// to `*len` writable bytes.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn getsockopt(
    fd: c_int,
    level: c_int,
    name: c_int,
    val: *mut c_void,
    len: *mut socklen_t,
) -> c_int {
    // SAFETY: forwarded from our caller, who holds getsockopt(2)'s contract.
    let ret = unsafe { next_getsockopt(fd, level, name, val, len) };
    if level != libc::SOL_SOCKET || name != libc::SO_ERROR {
        return ret;
    }
    // Reading SO_ERROR ends what this descriptor's pending connect told us.
    let dest_port = take_pending(fd);
    if ret != 0 || val.is_null() || len.is_null() {
        return ret;
    }
    // SAFETY: `len` is non-null and, by the caller's contract, readable;
    // when it says at least an int was written, `val` holds that int.
    unsafe {
        if (ptr::read_unaligned(len) as usize) < size_of::<c_int>()
            || ptr::read_unaligned(val.cast::<c_int>()) != 0
        {
            return ret;
        }
    }
    let saved = errno();
    if prevent_loop(fd, dest_port, Via::SoError) {
        // SAFETY: checked above: `val` has room for an int.
        unsafe { ptr::write_unaligned(val.cast::<c_int>(), libc::ECONNREFUSED) };
    }
    set_errno(saved);
    ret
}

/// The real connect, then the check when it succeeded.
///
/// # Safety
///
/// As [`connect`].
unsafe fn guarded_connect(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int {
    // SAFETY: as stated.
    unsafe { guarded_connect_via(fd, addr, len, Via::Connect) }
}

/// [`guarded_connect`], naming the call that caught a loop in the log.
///
/// # Safety
///
/// As [`connect`].
unsafe fn guarded_connect_via(fd: c_int, addr: *const sockaddr, len: socklen_t, via: Via) -> c_int {
    // SAFETY: forwarded; our caller holds connect(2)'s contract.
    let ret = unsafe { next_connect(fd, addr, len) };
    // SAFETY: `addr` is null or valid for `len` bytes, by the contract.
    let Some(port) = (unsafe { dest_port(addr, len) }) else {
        return ret; // AF_UNIX, AF_UNSPEC, AF_NETLINK...: cannot loop
    };
    if ret != 0 {
        if matches!(errno(), libc::EINPROGRESS | libc::EINTR) {
            // Still connecting: its SO_ERROR will tell the result.
            set_pending(fd, port);
        }
        return ret;
    }
    let saved = errno();
    // SAFETY: as above.
    let dest = unsafe { dest_addr(addr, len) };
    if prevent_loop_to(fd, Some(port), dest, via) {
        set_errno(libc::ECONNREFUSED);
        return -1;
    }
    set_errno(saved);
    ret
}

/// `MSG_FASTOPEN` (`send(2)`): connect and send in one call.
const MSG_FASTOPEN: c_int = 0x2000_0000;

/// `sendto()`: with `MSG_FASTOPEN` to a port in the ephemeral range, the
/// guarded connect, then the send without the flag (see the crate docs).
///
/// # Safety
///
/// The contract of `sendto(2)`: `buf` points to `len` readable bytes, `addr`
/// is null or points to `alen` readable bytes.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn sendto(
    fd: c_int,
    buf: *const c_void,
    len: libc::size_t,
    flags: c_int,
    addr: *const sockaddr,
    alen: socklen_t,
) -> libc::ssize_t {
    // SAFETY: `addr` is null or valid for `alen` bytes, by the contract.
    if flags & MSG_FASTOPEN != 0 && unsafe { fastopen_guarded(fd, addr, alen) } {
        // SAFETY: the guarded connect, on our caller's address.
        if unsafe { guarded_connect_via(fd, addr, alen, Via::FastOpen) } != 0 {
            return -1; // errno: EINPROGRESS, ECONNREFUSED, ...
        }
        // SAFETY: sendto(2)'s contract for `buf`, held by the caller; no address.
        return unsafe { next_sendto(fd, buf, len, flags & !MSG_FASTOPEN, ptr::null(), 0) };
    }
    // SAFETY: forwarded; our caller holds sendto(2)'s contract.
    unsafe { next_sendto(fd, buf, len, flags, addr, alen) }
}

/// `sendmsg()`: as [`sendto`], with the destination in `msg_name`.
///
/// # Safety
///
/// The contract of `sendmsg(2)`: `msg` points to a valid `msghdr`.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn sendmsg(
    fd: c_int,
    msg: *const libc::msghdr,
    flags: c_int,
) -> libc::ssize_t {
    if flags & MSG_FASTOPEN != 0 && !msg.is_null() {
        // SAFETY: `msg` is valid by the contract; msghdr is plain data.
        let mut m = unsafe { ptr::read(msg) };
        let addr = m.msg_name.cast_const().cast::<sockaddr>();
        // SAFETY: msg_name is null or valid for msg_namelen bytes.
        if unsafe { fastopen_guarded(fd, addr, m.msg_namelen) } {
            // SAFETY: the guarded connect, on our caller's address.
            if unsafe { guarded_connect_via(fd, addr, m.msg_namelen, Via::FastOpen) } != 0 {
                return -1;
            }
            m.msg_name = ptr::null_mut();
            m.msg_namelen = 0;
            // SAFETY: the caller's msghdr, minus the address; its buffers
            // are valid by the contract.
            return unsafe { next_sendmsg(fd, &m, flags & !MSG_FASTOPEN) };
        }
    }
    // SAFETY: forwarded; our caller holds sendmsg(2)'s contract.
    unsafe { next_sendmsg(fd, msg, flags) }
}

/// Whether a Fast Open send to `addr` needs the guard: an IP destination
/// whose port may be a source port here, on a stream socket.
///
/// # Safety
///
/// `addr` is null or points to `alen` readable bytes.
unsafe fn fastopen_guarded(fd: c_int, addr: *const sockaddr, alen: socklen_t) -> bool {
    // SAFETY: as stated.
    match unsafe { dest_port(addr, alen) } {
        Some(port) => {
            let saved = errno();
            let yes = may_be_ephemeral(port) && is_stream(fd);
            set_errno(saved);
            yes
        }
        None => false,
    }
}

/// The destination of a connect as a `SocketAddr` (`None`: not IP, or too
/// short).
///
/// # Safety
///
/// `addr` is null or points to `len` readable bytes.
unsafe fn dest_addr(addr: *const sockaddr, len: socklen_t) -> Option<SocketAddr> {
    if addr.is_null() {
        return None;
    }
    let n = (len as usize).min(size_of::<sockaddr_storage>());
    let mut s = MaybeUninit::<sockaddr_storage>::zeroed();
    // SAFETY: copies `n` <= len readable bytes into a zeroed storage of at
    // least `n` bytes.
    unsafe { ptr::copy_nonoverlapping(addr.cast::<u8>(), s.as_mut_ptr().cast::<u8>(), n) };
    // SAFETY: zero-initialised, then partly overwritten with plain bytes.
    to_socket_addr(unsafe { s.assume_init_ref() }, n as socklen_t)
}

/// Where a loop was caught, for the log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    Connect,
    SoError,
    /// `sendto`/`sendmsg` with `MSG_FASTOPEN`.
    FastOpen,
}

/// If `fd` is a TCP socket connected to itself, disconnects it (RST, port
/// freed) and logs it; returns whether it did.
///
/// A loop needs the source port, which the kernel picks from the ephemeral
/// range, to equal the destination port: a destination port outside the
/// range cannot loop, and most connects (to service ports) end here without
/// a system call. `dest_port`, the port connected to (known in `connect()`,
/// and in `SO_ERROR` from the pending table), allows that test first;
/// otherwise `getpeername()` tells it.
fn prevent_loop(fd: c_int, dest_port: Option<u16>, via: Via) -> bool {
    prevent_loop_to(fd, dest_port, None, via)
}

/// [`prevent_loop`], knowing the destination `connect()` was given: a
/// connect that returned 0 with no peer yet (deferred by
/// `TCP_FASTOPEN_CONNECT` until the first write) is judged against it.
fn prevent_loop_to(fd: c_int, dest_port: Option<u16>, dest: Option<SocketAddr>, via: Via) -> bool {
    let (local, peer) = match dest_port {
        Some(port) => {
            if !may_be_ephemeral(port) {
                return false;
            }
            let Some(local) = sock_name(fd, libc::getsockname) else {
                return false;
            };
            if local.port() != port {
                return false;
            }
            let peer = match sock_name(fd, libc::getpeername) {
                Some(peer) => peer,
                // no peer yet: a deferred Fast Open connect; its SYN goes
                // to `dest` at the first write
                None if errno() == libc::ENOTCONN => match dest {
                    Some(d) => d,
                    None => return false,
                },
                None => return false,
            };
            (local, peer)
        }
        None => {
            let Some(peer) = sock_name(fd, libc::getpeername) else {
                return false; // not connected (yet, or any more)
            };
            if !may_be_ephemeral(peer.port()) {
                return false;
            }
            let Some(local) = sock_name(fd, libc::getsockname) else {
                return false;
            };
            (local, peer)
        }
    };
    if !tcploop_guard::is_loop(local, peer) || !is_stream(fd) {
        return false;
    }
    disconnect(fd);
    log_prevented(fd, local, via);
    true
}

/// The destination port of the connect in progress on each descriptor (the
/// index), from `connect()`'s `EINPROGRESS` to the next `SO_ERROR` read on
/// that descriptor, which takes it; 0: not known. It lets the `SO_ERROR`
/// check of a connect to a port outside the ephemeral range end without a
/// system call, and the others with one. A descriptor above the table, or
/// one with no port pending, gets the full check. 128 KiB of zeroed memory,
/// touched only where used.
///
/// An entry left behind (a connect abandoned before its `SO_ERROR` was
/// read) is overwritten by the next non-blocking connect on that descriptor
/// number; it could only mislead the check of a socket that was connected
/// non-blocking under another number and then `dup2()`ed onto this one
/// before its `SO_ERROR` was read there.
static PENDING: [AtomicU16; PENDING_FDS] = [const { AtomicU16::new(0) }; PENDING_FDS];
const PENDING_FDS: usize = 65536;

fn set_pending(fd: c_int, port: u16) {
    if let Some(slot) = usize::try_from(fd).ok().and_then(|i| PENDING.get(i)) {
        slot.store(port, Ordering::Relaxed);
    }
}

fn take_pending(fd: c_int) -> Option<u16> {
    let slot = usize::try_from(fd).ok().and_then(|i| PENDING.get(i))?;
    match slot.swap(0, Ordering::Relaxed) {
        0 => None,
        port => Some(port),
    }
}

/// The port of an `AF_INET`/`AF_INET6` destination, `None` for any other
/// family.
///
/// # Safety
///
/// `addr` is null or points to `len` readable bytes.
unsafe fn dest_port(addr: *const sockaddr, len: socklen_t) -> Option<u16> {
    // sin_port and sin6_port both sit right after the 2-byte family.
    if addr.is_null() || (len as usize) < 4 {
        return None;
    }
    // SAFETY: at least 4 readable bytes; read unaligned, as C callers may
    // pass any byte buffer.
    let family = unsafe { ptr::read_unaligned(addr.cast::<libc::sa_family_t>()) };
    match c_int::from(family) {
        libc::AF_INET | libc::AF_INET6 => {
            // SAFETY: bytes 2..4, within the 4 checked above.
            let port = unsafe { ptr::read_unaligned(addr.cast::<u8>().add(2).cast::<u16>()) };
            Some(u16::from_be(port))
        }
        _ => None,
    }
}

/// `getsockname()` or `getpeername()` as a `SocketAddr` (`None` for an
/// error or a non-IP socket).
fn sock_name(
    fd: c_int,
    f: unsafe extern "C" fn(c_int, *mut sockaddr, *mut socklen_t) -> c_int,
) -> Option<SocketAddr> {
    let mut storage = MaybeUninit::<sockaddr_storage>::zeroed();
    let mut len = size_of::<sockaddr_storage>() as socklen_t;
    // SAFETY: a sockaddr_storage-sized buffer and its length.
    if unsafe { f(fd, storage.as_mut_ptr().cast(), &mut len) } != 0 {
        return None;
    }
    // SAFETY: zero-initialised, then (partly) filled by the kernel.
    to_socket_addr(unsafe { storage.assume_init_ref() }, len)
}

/// A kernel socket address as a `SocketAddr`, on the stack.
fn to_socket_addr(s: &sockaddr_storage, len: socklen_t) -> Option<SocketAddr> {
    let len = len as usize;
    match c_int::from(s.ss_family) {
        libc::AF_INET if len >= size_of::<sockaddr_in>() => {
            // SAFETY: sockaddr_storage is aligned and large enough for any
            // sockaddr; the family says which one it holds.
            let sin = unsafe { &*(s as *const sockaddr_storage).cast::<sockaddr_in>() };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)),
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 if len >= size_of::<sockaddr_in6>() => {
            // SAFETY: as above.
            let sin6 = unsafe { &*(s as *const sockaddr_storage).cast::<sockaddr_in6>() };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// Whether `fd` is a `SOCK_STREAM` socket (TCP, or MPTCP).
fn is_stream(fd: c_int) -> bool {
    let mut ty: c_int = 0;
    let mut len = size_of::<c_int>() as socklen_t;
    // SAFETY: an int-sized buffer and its length.
    let r = unsafe {
        next_getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_TYPE,
            (&mut ty as *mut c_int).cast(),
            &mut len,
        )
    };
    r == 0 && ty == libc::SOCK_STREAM
}

/// Dissolves the connection without closing the descriptor: `connect()` to
/// `AF_UNSPEC` runs `tcp_disconnect()`, which sends a RST and frees the port;
/// then the `ECONNRESET` it leaves pending is consumed.
fn disconnect(fd: c_int) {
    // SAFETY: sockaddr is plain old data; all-zero is a valid value.
    let mut unspec: sockaddr = unsafe { std::mem::zeroed() };
    unspec.sa_family = libc::AF_UNSPEC as libc::sa_family_t;
    // SAFETY: a valid sockaddr and its size.
    unsafe { next_connect(fd, &unspec, size_of::<sockaddr>() as socklen_t) };
    let mut pending: c_int = 0;
    let mut len = size_of::<c_int>() as socklen_t;
    // SAFETY: an int-sized buffer and its length.
    unsafe {
        next_getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            (&mut pending as *mut c_int).cast(),
            &mut len,
        )
    };
}

// ---------------------------------------------------------------------------
// The next definitions of the interposed symbols (libc's, or another
// preloaded library's), resolved once with dlsym(RTLD_NEXT).

/// The address of the next definition of a symbol, resolved on first use.
/// Threads racing on the first use all store the same value.
struct Next {
    name: &'static CStr,
    addr: AtomicUsize,
}

impl Next {
    const fn new(name: &'static CStr) -> Next {
        Next {
            name,
            addr: AtomicUsize::new(0),
        }
    }

    /// The address, or 0 when the symbol cannot be found.
    fn get(&self) -> usize {
        let a = self.addr.load(Ordering::Acquire);
        if a != 0 {
            return a;
        }
        // SAFETY: dlsym with RTLD_NEXT and a NUL-terminated name.
        let a = unsafe { libc::dlsym(libc::RTLD_NEXT, self.name.as_ptr()) } as usize;
        self.addr.store(a, Ordering::Release);
        a
    }
}

static NEXT_CONNECT: Next = Next::new(c"connect");
static NEXT_GETSOCKOPT: Next = Next::new(c"getsockopt");
static NEXT_SENDTO: Next = Next::new(c"sendto");
static NEXT_SENDMSG: Next = Next::new(c"sendmsg");

type SendtoFn = unsafe extern "C" fn(
    c_int,
    *const c_void,
    libc::size_t,
    c_int,
    *const sockaddr,
    socklen_t,
) -> libc::ssize_t;
type SendmsgFn = unsafe extern "C" fn(c_int, *const libc::msghdr, c_int) -> libc::ssize_t;

/// The next `sendto()` (see [`next_connect`]).
///
/// # Safety
///
/// sendto(2)'s contract.
unsafe fn next_sendto(
    fd: c_int,
    buf: *const c_void,
    len: libc::size_t,
    flags: c_int,
    addr: *const sockaddr,
    alen: socklen_t,
) -> libc::ssize_t {
    match NEXT_SENDTO.get() {
        // SAFETY: sendto(2)'s contract, held by the caller.
        0 => unsafe {
            libc::syscall(libc::SYS_sendto, fd, buf, len, flags, addr, alen) as libc::ssize_t
        },
        a => {
            // SAFETY: dlsym found libc's `sendto`, whose type this is.
            let f = unsafe { std::mem::transmute::<usize, SendtoFn>(a) };
            // SAFETY: sendto(2)'s contract, held by the caller.
            unsafe { f(fd, buf, len, flags, addr, alen) }
        }
    }
}

/// The next `sendmsg()` (see [`next_connect`]).
///
/// # Safety
///
/// sendmsg(2)'s contract.
unsafe fn next_sendmsg(fd: c_int, msg: *const libc::msghdr, flags: c_int) -> libc::ssize_t {
    match NEXT_SENDMSG.get() {
        // SAFETY: sendmsg(2)'s contract, held by the caller.
        0 => unsafe { libc::syscall(libc::SYS_sendmsg, fd, msg, flags) as libc::ssize_t },
        a => {
            // SAFETY: dlsym found libc's `sendmsg`, whose type this is.
            let f = unsafe { std::mem::transmute::<usize, SendmsgFn>(a) };
            // SAFETY: sendmsg(2)'s contract, held by the caller.
            unsafe { f(fd, msg, flags) }
        }
    }
}

type ConnectFn = unsafe extern "C" fn(c_int, *const sockaddr, socklen_t) -> c_int;
type GetsockoptFn = unsafe extern "C" fn(c_int, c_int, c_int, *mut c_void, *mut socklen_t) -> c_int;

/// The next `connect()`; the raw system call if there is none (cannot happen
/// in a process linked against libc, but never crash).
///
/// # Safety
///
/// connect(2)'s contract.
unsafe fn next_connect(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int {
    match NEXT_CONNECT.get() {
        // SAFETY: connect(2)'s contract, held by the caller.
        0 => unsafe { libc::syscall(libc::SYS_connect, fd, addr, len) as c_int },
        a => {
            // SAFETY: dlsym found libc's `connect`, whose type this is.
            let f = unsafe { std::mem::transmute::<usize, ConnectFn>(a) };
            // SAFETY: connect(2)'s contract, held by the caller.
            unsafe { f(fd, addr, len) }
        }
    }
}

/// The next `getsockopt()` (see [`next_connect`]).
///
/// # Safety
///
/// getsockopt(2)'s contract.
unsafe fn next_getsockopt(
    fd: c_int,
    level: c_int,
    name: c_int,
    val: *mut c_void,
    len: *mut socklen_t,
) -> c_int {
    match NEXT_GETSOCKOPT.get() {
        // SAFETY: getsockopt(2)'s contract, held by the caller.
        0 => unsafe { libc::syscall(libc::SYS_getsockopt, fd, level, name, val, len) as c_int },
        a => {
            // SAFETY: dlsym found libc's `getsockopt`, whose type this is.
            let f = unsafe { std::mem::transmute::<usize, GetsockoptFn>(a) };
            // SAFETY: getsockopt(2)'s contract, held by the caller.
            unsafe { f(fd, level, name, val, len) }
        }
    }
}

fn errno() -> c_int {
    // SAFETY: __errno_location returns this thread's errno, always valid.
    unsafe { *libc::__errno_location() }
}

fn set_errno(e: c_int) {
    // SAFETY: as in `errno`.
    unsafe { *libc::__errno_location() = e };
}

// ---------------------------------------------------------------------------
// The ephemeral port range of this network namespace, cached for a second.

/// The path of the range: two numbers, e.g. `32768\t60999\n`.
const RANGE_PATH: &CStr = c"/proc/sys/net/ipv4/ip_local_port_range";
/// How long a reading of the range is trusted, in milliseconds: a range
/// changed while the program runs is seen within this time.
const RANGE_TTL_MS: u64 = 1000;
/// The range, packed `(low << 16) | high`; 0: unknown (unreadable).
static RANGE: AtomicU32 = AtomicU32::new(0);
/// Until when (`CLOCK_MONOTONIC_COARSE`, ms) [`RANGE`] holds; 0: never read.
static RANGE_UNTIL: AtomicU64 = AtomicU64::new(0);

/// Whether `port` may be a source port `connect()` picks here: inside the
/// ephemeral range, or the range is unknown (then every port is checked).
fn may_be_ephemeral(port: u16) -> bool {
    match ephemeral_range() {
        Some((low, high)) => (low..=high).contains(&port),
        None => true,
    }
}

fn ephemeral_range() -> Option<(u16, u16)> {
    let now = coarse_ms();
    if now != 0 && now < RANGE_UNTIL.load(Ordering::Acquire) {
        return unpack_range(RANGE.load(Ordering::Acquire));
    }
    let range = read_range();
    RANGE.store(range.map_or(0, pack_range), Ordering::Release);
    RANGE_UNTIL.store(now.saturating_add(RANGE_TTL_MS), Ordering::Release);
    range
}

fn pack_range((low, high): (u16, u16)) -> u32 {
    (u32::from(low) << 16) | u32::from(high)
}

fn unpack_range(v: u32) -> Option<(u16, u16)> {
    (v != 0).then_some(((v >> 16) as u16, v as u16))
}

/// `CLOCK_MONOTONIC_COARSE` in milliseconds (a vDSO read, no system call);
/// 0 if unavailable (then the range is read every time).
fn coarse_ms() -> u64 {
    let mut ts = MaybeUninit::<libc::timespec>::zeroed();
    // SAFETY: a valid timespec to fill.
    if unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, ts.as_mut_ptr()) } != 0 {
        return 0;
    }
    // SAFETY: zero-initialised, then filled by clock_gettime.
    let ts = unsafe { ts.assume_init() };
    (ts.tv_sec as u64).saturating_mul(1000) + (ts.tv_nsec as u64) / 1_000_000
}

/// Reads the range with open/read/close on a stack buffer; `None` when it
/// cannot be read (no /proc in a chroot, no free descriptor...).
fn read_range() -> Option<(u16, u16)> {
    let mut buf = [0u8; 64];
    // SAFETY: a NUL-terminated path; the descriptor is ours and closed below.
    let fd = unsafe { libc::open(RANGE_PATH.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return None;
    }
    // SAFETY: reads at most buf.len() bytes into buf.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    // SAFETY: closes the descriptor opened above, once.
    unsafe { libc::close(fd) };
    parse_range(buf.get(..usize::try_from(n).ok()?)?)
}

/// Parses `ip_local_port_range`: two decimal numbers, low then high.
fn parse_range(text: &[u8]) -> Option<(u16, u16)> {
    let mut nums = text
        .split(|b| b.is_ascii_whitespace())
        .filter(|t| !t.is_empty())
        .map(|t| {
            t.iter().try_fold(0u16, |acc, &d| {
                if d.is_ascii_digit() {
                    acc.checked_mul(10)?.checked_add(u16::from(d - b'0'))
                } else {
                    None
                }
            })
        });
    let low = nums.next()??;
    let high = nums.next()??;
    (low <= high && low > 0).then_some((low, high))
}

// ---------------------------------------------------------------------------
// TCPLOOP_LOG=1: one line on stderr per prevented loop.

/// 0: not read yet; 1: off; 2: on.
static LOG: AtomicU8 = AtomicU8::new(0);

fn log_enabled() -> bool {
    match LOG.load(Ordering::Relaxed) {
        1 => false,
        2 => true,
        _ => {
            // SAFETY: getenv with a NUL-terminated name; the result is a
            // NUL-terminated string owned by the environment, read at once.
            let on = unsafe {
                let v = libc::getenv(c"TCPLOOP_LOG".as_ptr());
                !v.is_null() && log_value_on(CStr::from_ptr(v).to_bytes())
            };
            LOG.store(if on { 2 } else { 1 }, Ordering::Relaxed);
            on
        }
    }
}

/// `TCPLOOP_LOG` values that turn logging on: anything but empty and `0`.
fn log_value_on(v: &[u8]) -> bool {
    !v.is_empty() && v != b"0"
}

fn log_prevented(fd: c_int, local: SocketAddr, via: Via) {
    if !log_enabled() || !stderr_is_ours(fd) {
        return;
    }
    // SAFETY: getpid cannot fail.
    let pid = unsafe { libc::getpid() };
    let mut line = LineBuf::new();
    format_line(&mut line, pid, fd, local, via);
    // SAFETY: writes `len` initialised bytes of our buffer to stderr; a
    // failed or short write is ignored (best effort, like any log).
    unsafe { libc::write(2, line.buf.as_ptr().cast(), line.len) };
}

/// Whether fd 2 can take a log line: not the socket just reset (a program
/// that closed its stderr may get fd 2 for a socket), nor any other IP
/// socket, whose byte stream a log line would corrupt. A UNIX socket (the
/// journal's stderr under systemd), a pipe, a file or a terminal can.
fn stderr_is_ours(reset_fd: c_int) -> bool {
    reset_fd != 2 && sock_name(2, libc::getsockname).is_none()
}

/// The log line, always ending in a newline (the buffer keeps room for it).
fn format_line(line: &mut LineBuf, pid: c_int, fd: c_int, local: SocketAddr, via: Via) {
    let call = match via {
        Via::Connect => "connect()",
        Via::SoError => "getsockopt(SO_ERROR)",
        Via::FastOpen => "sendto/sendmsg(MSG_FASTOPEN)",
    };
    let _ = write!(
        line,
        "tcploop: pid {pid}: prevented a TCP loop: fd {fd} was connected to itself \
         ({local}); reset it and reported ECONNREFUSED from {call}"
    );
    line.finish();
}

/// A fixed line buffer on the stack; text that does not fit is cut.
struct LineBuf {
    buf: [u8; LineBuf::CAP],
    len: usize,
}

impl LineBuf {
    const CAP: usize = 256;

    fn new() -> LineBuf {
        LineBuf {
            buf: [0; LineBuf::CAP],
            len: 0,
        }
    }

    #[cfg(test)]
    fn as_bytes(&self) -> &[u8] {
        self.buf.get(..self.len).unwrap_or(&[])
    }

    /// Appends the newline, in the slot `write_str` always keeps free.
    fn finish(&mut self) {
        if let Some(b) = self.buf.get_mut(self.len) {
            *b = b'\n';
            self.len += 1;
        }
    }
}

impl fmt::Write for LineBuf {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let room = (LineBuf::CAP - 1).saturating_sub(self.len);
        let n = s.len().min(room);
        if let Some(dst) = self.buf.get_mut(self.len..self.len + n) {
            dst.copy_from_slice(&s.as_bytes()[..n]);
            self.len += n;
        }
        if n < s.len() {
            Err(fmt::Error)
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn storage_v4(ip: [u8; 4], port: u16) -> (sockaddr_storage, socklen_t) {
        // SAFETY: plain old data.
        let mut s: sockaddr_storage = unsafe { std::mem::zeroed() };
        // SAFETY: sockaddr_storage holds any sockaddr.
        let sin = unsafe { &mut *(&mut s as *mut sockaddr_storage).cast::<sockaddr_in>() };
        sin.sin_family = libc::AF_INET as libc::sa_family_t;
        sin.sin_port = port.to_be();
        sin.sin_addr.s_addr = u32::from_be_bytes(ip).to_be();
        (s, size_of::<sockaddr_in>() as socklen_t)
    }

    fn storage_v6(ip: Ipv6Addr, port: u16, scope: u32) -> (sockaddr_storage, socklen_t) {
        // SAFETY: plain old data.
        let mut s: sockaddr_storage = unsafe { std::mem::zeroed() };
        // SAFETY: sockaddr_storage holds any sockaddr.
        let sin6 = unsafe { &mut *(&mut s as *mut sockaddr_storage).cast::<sockaddr_in6>() };
        sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
        sin6.sin6_port = port.to_be();
        sin6.sin6_addr.s6_addr = ip.octets();
        sin6.sin6_scope_id = scope;
        (s, size_of::<sockaddr_in6>() as socklen_t)
    }

    #[test]
    fn converts_kernel_addresses() {
        let (s, len) = storage_v4([127, 0, 0, 1], 40004);
        assert_eq!(
            to_socket_addr(&s, len),
            Some("127.0.0.1:40004".parse().unwrap())
        );
        let (s, len) = storage_v6(Ipv6Addr::LOCALHOST, 40006, 0);
        assert_eq!(
            to_socket_addr(&s, len),
            Some("[::1]:40006".parse().unwrap())
        );
        let (s, len) = storage_v6("fe80::1".parse().unwrap(), 1, 7);
        assert_eq!(
            to_socket_addr(&s, len),
            Some("[fe80::1%7]:1".parse().unwrap())
        );
    }

    #[test]
    fn short_or_foreign_addresses_are_not_ip() {
        let (s, _) = storage_v4([127, 0, 0, 1], 40004);
        assert_eq!(to_socket_addr(&s, 8), None);
        // SAFETY: plain old data.
        let mut unix: sockaddr_storage = unsafe { std::mem::zeroed() };
        unix.ss_family = libc::AF_UNIX as libc::sa_family_t;
        assert_eq!(to_socket_addr(&unix, 110), None);
    }

    #[test]
    fn destination_port_of_inet_families_only() {
        let (s, len) = storage_v4([10, 0, 0, 1], 443);
        let p = (&s as *const sockaddr_storage).cast::<sockaddr>();
        // SAFETY: p points to a sockaddr_storage.
        unsafe {
            assert_eq!(dest_port(p, len), Some(443));
            assert_eq!(dest_port(p, 3), None);
            assert_eq!(dest_port(ptr::null(), len), None);
        }
        let (s, _) = storage_v6(Ipv6Addr::LOCALHOST, 8080, 0);
        let p = (&s as *const sockaddr_storage).cast::<sockaddr>();
        // SAFETY: as above; 24 bytes is the RFC 2133 sockaddr_in6 the kernel accepts.
        unsafe { assert_eq!(dest_port(p, 24), Some(8080)) };
        // SAFETY: plain old data.
        let mut unix: sockaddr_storage = unsafe { std::mem::zeroed() };
        unix.ss_family = libc::AF_UNIX as libc::sa_family_t;
        let p = (&unix as *const sockaddr_storage).cast::<sockaddr>();
        // SAFETY: as above.
        unsafe { assert_eq!(dest_port(p, 110), None) };
    }

    #[test]
    fn log_line_names_the_loop_and_the_call() {
        let mut line = LineBuf::new();
        format_line(
            &mut line,
            42,
            5,
            "127.0.0.1:40004".parse().unwrap(),
            Via::SoError,
        );
        assert_eq!(
            std::str::from_utf8(line.as_bytes()).unwrap(),
            "tcploop: pid 42: prevented a TCP loop: fd 5 was connected to itself \
             (127.0.0.1:40004); reset it and reported ECONNREFUSED from getsockopt(SO_ERROR)\n"
        );
    }

    #[test]
    fn long_log_lines_are_cut_and_still_end_in_a_newline() {
        let mut line = LineBuf::new();
        let long = "x".repeat(1000);
        assert!(write!(line, "{long}").is_err());
        line.finish();
        assert_eq!(line.len, LineBuf::CAP);
        assert_eq!(line.as_bytes().last(), Some(&b'\n'));
    }

    #[test]
    fn port_range_text() {
        assert_eq!(parse_range(b"32768\t60999\n"), Some((32768, 60999)));
        assert_eq!(parse_range(b"40000 40009"), Some((40000, 40009)));
        assert_eq!(parse_range(b"40009 40000\n"), None);
        assert_eq!(parse_range(b"70000 80000\n"), None);
        assert_eq!(parse_range(b"32768\n"), None);
        assert_eq!(parse_range(b"a b\n"), None);
        assert_eq!(parse_range(b""), None);
        assert_eq!(unpack_range(pack_range((1024, 65535))), Some((1024, 65535)));
        assert_eq!(unpack_range(0), None);
    }

    #[test]
    fn this_namespace_range_is_read() {
        let r = read_range().expect("/proc/sys/net/ipv4/ip_local_port_range");
        assert!(r.0 <= r.1);
        assert!(may_be_ephemeral(r.0) && may_be_ephemeral(r.1));
        if r.0 > 1 {
            assert!(!may_be_ephemeral(r.0 - 1));
        }
    }

    #[test]
    fn pending_ports_are_taken_once() {
        set_pending(7, 8080);
        assert_eq!(take_pending(7), Some(8080));
        assert_eq!(take_pending(7), None);
        // Outside the table: nothing kept, the full check runs.
        set_pending(-1, 1);
        set_pending(PENDING_FDS as c_int, 1);
        assert_eq!(take_pending(-1), None);
        assert_eq!(take_pending(PENDING_FDS as c_int), None);
    }

    #[test]
    fn log_switch_values() {
        assert!(log_value_on(b"1"));
        assert!(log_value_on(b"yes"));
        assert!(!log_value_on(b"0"));
        assert!(!log_value_on(b""));
    }

    /// The pass-through: on a real loopback connection to a listener of our
    /// own (port 0, so no port of the host is touched), the guarded calls
    /// behave exactly as libc's.
    #[test]
    fn normal_connections_pass_through() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let dest = listener.local_addr().unwrap();
        // SAFETY: plain libc socket calls on buffers of the right size.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
            assert!(fd >= 0);
            let (s, len) = storage_v4([127, 0, 0, 1], dest.port());
            let r = connect(fd, (&s as *const sockaddr_storage).cast(), len);
            assert_eq!(r, 0, "{}", std::io::Error::last_os_error());
            let mut e: c_int = -1;
            let mut el = size_of::<c_int>() as socklen_t;
            let r = getsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_ERROR,
                (&mut e as *mut c_int).cast(),
                &mut el,
            );
            assert_eq!((r, e), (0, 0));
            assert_eq!(sock_name(fd, libc::getpeername), Some(dest));
            assert!(!prevent_loop(fd, None, Via::SoError));
            libc::close(fd);
        }
    }
}
