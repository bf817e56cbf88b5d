//! Waiting for one socket to become writable (`poll(2)`): how a
//! non-blocking `connect()` completes. socket2 has no poll of its own.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// Waits up to `timeout_ms` for `fd` to be writable (or in error); `false`
/// on timeout. EINTR is retried.
pub fn writable(fd: BorrowedFd<'_>, timeout_ms: i32) -> io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLOUT,
        revents: 0,
    };
    loop {
        // SAFETY: pfd is a valid pollfd for the duration of the call.
        let n = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
        if n >= 0 {
            return Ok(n > 0);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}
