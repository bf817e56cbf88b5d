//! Signals as a file descriptor (`signalfd(2)`): SIGINT, SIGTERM and
//! SIGCHLD are blocked and read from an fd, so that one `poll(2)` waits for
//! kernel events and signals alike, with no timer and no race between a
//! flag check and the wait.
//!
//! The mask is per thread and inherited by threads started afterwards:
//! create the [`SignalFd`] before any other thread. Children started with
//! `std::process::Command` get an empty mask again (the standard library
//! resets it between `fork` and `exec`).

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use super::syscall;

/// The signals a long-running command stops on, or watches for.
pub const WATCHED: [i32; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGCHLD];

/// A signalfd for [`WATCHED`]; the signals are blocked in the calling thread.
#[derive(Debug)]
pub struct SignalFd {
    fd: OwnedFd,
}

impl SignalFd {
    /// Blocks [`WATCHED`] in the calling thread and opens a non-blocking
    /// signalfd for them.
    pub fn new() -> io::Result<SignalFd> {
        // SAFETY: sigset_t is plain data; sigemptyset initialises it.
        let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: set is a valid sigset_t for these calls.
        unsafe {
            libc::sigemptyset(&mut set);
            for s in WATCHED {
                libc::sigaddset(&mut set, s);
            }
        }
        // SAFETY: set is initialised; the old mask is not wanted (null).
        let r = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
        if r != 0 {
            return Err(io::Error::from_raw_os_error(r));
        }
        let fd = syscall!(signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC))?;
        // SAFETY: fd was just returned by signalfd() and is owned by nobody else.
        Ok(SignalFd {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// The next pending signal's number, or `None` when none is pending.
    pub fn take(&self) -> io::Result<Option<i32>> {
        // SAFETY: signalfd_siginfo is plain data.
        let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
        let len = std::mem::size_of::<libc::signalfd_siginfo>();
        loop {
            // SAFETY: info is valid for len bytes.
            let n = unsafe {
                libc::read(
                    self.fd.as_raw_fd(),
                    (&mut info as *mut libc::signalfd_siginfo).cast(),
                    len,
                )
            };
            if n == len as isize {
                return Ok(Some(info.ssi_signo as i32));
            }
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock => return Ok(None),
                _ => return Err(e),
            }
        }
    }
}

impl AsFd for SignalFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}
