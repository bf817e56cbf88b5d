//! Advisory locks on a file (`flock(2)`), to serialize read-modify-write
//! cycles on kernel settings between processes.

use std::io;
use std::os::fd::OwnedFd;
use std::path::Path;

use rustix::fs::{FlockOperation, Mode, OFlags, CWD};

/// An exclusive `flock(2)` held until dropped (closing the descriptor
/// releases it, also when the process dies).
#[derive(Debug)]
pub struct Lock {
    _fd: OwnedFd,
}

/// Opens (creating it, mode 0600, never following a symlink) `path` and
/// takes an exclusive lock on it, waiting for any other holder.
pub fn exclusive(path: &Path) -> io::Result<Lock> {
    let fd = rustix::fs::openat(
        CWD,
        path,
        OFlags::RDWR | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK,
        Mode::from_raw_mode(0o600),
    )?;
    let st = rustix::fs::fstat(&fd)?;
    if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::RegularFile {
        return Err(io::Error::other("the lock file is not a regular file"));
    }
    loop {
        match rustix::fs::flock(&fd, FlockOperation::LockExclusive) {
            Err(rustix::io::Errno::INTR) => continue,
            r => break r?,
        }
    }
    Ok(Lock { _fd: fd })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_waits_for_the_first() {
        let p = std::env::temp_dir().join(format!("tcploop-lock-{}", std::process::id()));
        let first = exclusive(&p).unwrap();
        let fd = rustix::fs::openat(CWD, &p, OFlags::RDWR, Mode::empty()).unwrap();
        assert_eq!(
            rustix::fs::flock(&fd, FlockOperation::NonBlockingLockExclusive),
            Err(rustix::io::Errno::WOULDBLOCK)
        );
        drop(first);
        rustix::fs::flock(&fd, FlockOperation::NonBlockingLockExclusive).unwrap();
        std::fs::remove_file(&p).unwrap();
    }
}
