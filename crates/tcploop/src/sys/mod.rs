//! The only place that talks to the kernel: system calls, netlink and the
//! files under `/proc`. Everything above this module takes and returns plain
//! data and is tested from fixtures.
//!
//! One file per kernel interface:
//! - [`procsys`]: `/proc/sys` (ephemeral port range, reserved ports, kernel release);
//! - [`ns`]: `unshare(2)`, user-namespace id maps, bringing `lo` up;
//! - [`diag`]: the `NETLINK_SOCK_DIAG` socket dump (`sock_diag(7)`);
//! - [`packet`]: `AF_PACKET` capture on one interface (`packet(7)`);
//! - [`ifaddrs`]: this namespace's interface addresses (`getifaddrs(3)`);
//! - [`procnet`]: `/proc/net/tcp` and `tcp6`, the fallback socket table;
//! - [`cgroup`]: `/proc/PID/cgroup` and the container runtimes' state files;
//! - [`procfd`]: `/proc/PID/fd`, which process holds which socket;
//! - [`netns`]: the host's other network namespaces, entered with `setns(2)`;
//! - [`sockstat`]: `/proc/PID/net/sockstat{,6}`, a namespace's socket counts;
//! - [`tcpdiag`]: one sock_diag dump of both families in a single walk (for `watch`);
//! - [`lock`]: `flock(2)` on a lock file, around read-modify-write cycles;
//! - [`sockopt`]: another process's socket options (`pidfd_getfd(2)`, `getsockopt(2)`);
//! - [`poll`]: waiting for a socket to become writable, or fds readable (`poll(2)`);
//! - [`signal`]: SIGINT, SIGTERM and SIGCHLD read from a `signalfd(2)`;
//! - [`bpf`]: the BPF programs (the loop detector, the shield, the owners iterator), loaded with aya;
//! - [`inotify`]: watching directories for new namespaces (`inotify(7)`);
//! - [`iptables`]: the shield's iptables rule pair (runs `iptables`, the one exception).
#![allow(unsafe_code)]

pub mod bpf;
pub mod cgroup;
pub mod diag;
pub mod ifaddrs;
pub mod inotify;
pub mod iptables;
pub mod lock;
pub mod netns;
pub mod ns;
pub mod packet;
pub mod poll;
pub mod procfd;
pub mod procnet;
pub mod procsys;
pub mod signal;
pub mod sockopt;
pub mod sockstat;
pub mod tcpdiag;

/// Calls a libc function and turns `-1` into `io::Error::last_os_error()`.
macro_rules! syscall {
    ($fn: ident ( $($arg: expr),* $(,)* ) ) => {{
        // SAFETY: every call site passes valid pointers and lengths for the
        // named libc function; see the comment at each use.
        #[allow(unused_unsafe)]
        let res = unsafe { libc::$fn($($arg, )*) };
        if res == -1 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(res)
        }
    }};
}
pub(crate) use syscall;
