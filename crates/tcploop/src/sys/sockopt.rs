//! The socket options of a socket another process holds: whether it set
//! `SO_REUSEADDR` and `SO_REUSEPORT`, which decide whether a server's
//! `bind()` of the same port succeeds. The socket dump does not carry them.
//!
//! `pidfd_open(2)` and `pidfd_getfd(2)` (Linux 5.6+) duplicate the holder's
//! descriptor into this process; `getsockopt(2)` reads the two options on
//! the duplicate, which is closed at once. The socket itself is not changed:
//! this process only holds one more reference to it for the time of two
//! `getsockopt` calls. `pidfd_getfd` needs `PTRACE_MODE_ATTACH_REALCREDS`
//! over the process (root, or the same user where Yama allows it); without
//! it the answer is EPERM and the options stay unknown. The descriptor
//! number may have been closed and reused since it was read from
//! `/proc/PID/fd`: the duplicate's inode is compared with the expected one.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;

/// `SO_REUSEADDR` and `SO_REUSEPORT` of one socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReuseFlags {
    /// `SO_REUSEADDR` is set.
    pub reuseaddr: bool,
    /// `SO_REUSEPORT` is set.
    pub reuseport: bool,
}

/// Reads the reuse options of the socket `fd` of process `pid`, whose
/// inode must be `inode` (`Ok(None)`: the descriptor is now another file).
pub fn reuse_flags(pid: u32, fd: i32, inode: u64) -> io::Result<Option<ReuseFlags>> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| io::Error::from_raw_os_error(libc::ESRCH))?;
    // SAFETY: pidfd_open(pid, flags) takes two integers and returns a new
    // descriptor or -1.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if pidfd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pidfd was just returned by pidfd_open and is owned by nobody else.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd as i32) };
    use std::os::fd::AsRawFd;
    // SAFETY: pidfd_getfd(pidfd, targetfd, flags) takes three integers and
    // returns a new descriptor (close-on-exec) or -1.
    let dup = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) };
    if dup < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: dup was just returned by pidfd_getfd and is owned by nobody else.
    let dup = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(dup as i32) });
    if dup.metadata()?.ino() != inode {
        return Ok(None);
    }
    let s = socket2::SockRef::from(&dup);
    Ok(Some(ReuseFlags {
        reuseaddr: s.reuse_address()?,
        reuseport: s.reuse_port()?,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn reads_this_process_own_sockets_and_refuses_a_reused_descriptor() {
        let a = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        a.set_reuse_address(true).unwrap();
        let b = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        b.set_reuse_port(true).unwrap();
        let ino = |s: &socket2::Socket| {
            std::fs::metadata(format!("/proc/self/fd/{}", s.as_raw_fd()))
                .unwrap()
                .ino()
        };
        let me = std::process::id();
        let fa = reuse_flags(me, a.as_raw_fd(), ino(&a)).unwrap().unwrap();
        assert_eq!((fa.reuseaddr, fa.reuseport), (true, false));
        let fb = reuse_flags(me, b.as_raw_fd(), ino(&b)).unwrap().unwrap();
        assert_eq!((fb.reuseaddr, fb.reuseport), (false, true));
        // the descriptor holds another socket than expected: not read
        assert_eq!(reuse_flags(me, a.as_raw_fd(), ino(&b)).unwrap(), None);
    }
}
