//! Which process holds which socket: the fd tables under `/proc/PID/fd`
//! (`proc_pid_fd(5)`). Each entry is a magic link; for a socket its target
//! reads `socket:[INODE]`, the inode that sock_diag and `/proc/net/tcp`
//! report. There is no reverse index in the kernel: finding the owner of a
//! socket means reading the links of every process until it turns up.
//!
//! Done with `openat(2)`, `getdents64(2)` and `readlinkat(2)` relative to
//! directory fds (through `rustix`), one system call per fd and no
//! allocation per entry: about 3.7 µs an fd, the cost that makes `ss -p` and
//! `lsof` slow. Callers walk only as far as they must (see
//! [`crate::owners`]).
//!
//! Reading another user's fd table needs the same uid or ptrace rights
//! (`CAP_SYS_PTRACE`); some processes refuse even root (EACCES on
//! `/proc/1/fd` in some VMs). Processes and fds come and go during a walk.
//! Each of these comes back as a [`FdError`] variant for the caller to count,
//! never as a reason to stop.

use std::ffi::CStr;
use std::io;
use std::mem::MaybeUninit;
use std::ops::ControlFlow;
use std::os::fd::OwnedFd;

use rustix::fs::{openat, readlinkat_raw, statat, AtFlags, Mode, OFlags, RawDir, CWD};

/// Why one process's fd table could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FdError {
    /// No permission (another user's process, without ptrace rights).
    #[error("permission denied")]
    Denied,
    /// The process exited during the walk.
    #[error("process exited")]
    Vanished,
    /// Anything else the kernel said.
    #[error("{0}")]
    Other(#[source] io::Error),
}

impl From<rustix::io::Errno> for FdError {
    fn from(e: rustix::io::Errno) -> FdError {
        match e {
            rustix::io::Errno::ACCESS | rustix::io::Errno::PERM => FdError::Denied,
            rustix::io::Errno::NOENT | rustix::io::Errno::SRCH => FdError::Vanished,
            e => FdError::Other(e.into()),
        }
    }
}

/// An open `/proc` directory, the base of every lookup.
#[derive(Debug)]
pub struct Proc {
    dir: OwnedFd,
}

fn dir_flags() -> OFlags {
    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC
}

/// Parses a decimal file name (`1234`) as a number.
fn number(name: &CStr) -> Option<u32> {
    let b = name.to_bytes();
    if b.is_empty() || b.len() > 10 || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(b).ok()?.parse().ok()
}

/// `socket:[12345]` to 12345; anything else (files, pipes) to `None`.
pub fn socket_inode(link: &[u8]) -> Option<u64> {
    let inner = link.strip_prefix(b"socket:[")?.strip_suffix(b"]")?;
    if inner.is_empty() || !inner.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(inner).ok()?.parse().ok()
}

/// `net:[4026531840]` to 4026531840 (the target of `/proc/PID/ns/net`).
pub fn ns_inode(link: &[u8], kind: &str) -> Option<u64> {
    let inner = link
        .strip_prefix(kind.as_bytes())?
        .strip_prefix(b":[")?
        .strip_suffix(b"]")?;
    std::str::from_utf8(inner).ok()?.parse().ok()
}

impl Proc {
    /// Opens `/proc`.
    pub fn open() -> io::Result<Proc> {
        Ok(Proc {
            dir: openat(CWD, "/proc", dir_flags(), Mode::empty())?,
        })
    }

    /// Every process id (thread-group leader) listed in `/proc`, ascending.
    pub fn pids(&self) -> io::Result<Vec<u32>> {
        let fd = openat(&self.dir, ".", dir_flags(), Mode::empty())?;
        let mut buf = Vec::with_capacity(32 * 1024);
        let mut it = RawDir::new(fd, buf.spare_capacity_mut());
        let mut pids = vec![];
        while let Some(e) = it.next() {
            if let Some(pid) = number(e?.file_name()) {
                pids.push(pid);
            }
        }
        pids.sort_unstable();
        Ok(pids)
    }

    /// The number of open fds of `pid`: the size `stat(2)` reports for
    /// `/proc/PID/fd` (Linux 6.2+; older kernels report 0). Cheap, and
    /// allowed where reading the table is.
    pub fn fd_count(&self, pid: u32) -> Result<u64, FdError> {
        let st = statat(&self.dir, format!("{pid}/fd"), AtFlags::empty())?;
        Ok(st.st_size as u64)
    }

    /// Calls `f(fd, inode)` for every socket fd of `pid`, until `f` breaks.
    /// Fds closed during the walk are skipped. Returns how many fds were
    /// read.
    pub fn socket_fds(
        &self,
        pid: u32,
        mut f: impl FnMut(i32, u64) -> ControlFlow<()>,
    ) -> Result<u64, FdError> {
        let fd_dir = openat(&self.dir, format!("{pid}/fd"), dir_flags(), Mode::empty())?;
        let mut buf = Vec::with_capacity(16 * 1024);
        let mut it = RawDir::new(&fd_dir, buf.spare_capacity_mut());
        let mut link = [MaybeUninit::<u8>::uninit(); 64];
        let mut read = 0;
        while let Some(e) = it.next() {
            let e = e.map_err(FdError::from)?;
            let name = e.file_name();
            let Some(fd) = number(name) else { continue };
            let target = match readlinkat_raw(&fd_dir, name, &mut link) {
                Ok((init, _)) => &*init,
                Err(rustix::io::Errno::NOENT) => continue, // closed meanwhile
                Err(e) => return Err(e.into()),
            };
            read += 1;
            if let Some(inode) = socket_inode(target) {
                if f(fd as i32, inode).is_break() {
                    break;
                }
            }
        }
        Ok(read)
    }

    /// The command name of `pid` (`/proc/PID/comm`, at most 15 bytes), if
    /// it can still be read.
    pub fn comm(&self, pid: u32) -> Option<String> {
        let fd = openat(
            &self.dir,
            format!("{pid}/comm"),
            OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .ok()?;
        let mut buf = [0u8; 64];
        let n = rustix::io::read(&fd, &mut buf).ok()?;
        Some(
            String::from_utf8_lossy(&buf[..n])
                .trim_end_matches('\n')
                .to_string(),
        )
    }

    /// The inode of a namespace of `pid` (`kind` is `net`, `user`...), from
    /// the link `/proc/PID/ns/KIND` (`net:[4026531840]`).
    pub fn ns(&self, pid: u32, kind: &str) -> Result<u64, FdError> {
        let mut link = [MaybeUninit::<u8>::uninit(); 64];
        let (init, _) = readlinkat_raw(&self.dir, format!("{pid}/ns/{kind}"), &mut link)?;
        ns_inode(init, kind).ok_or_else(|| {
            FdError::Other(io::Error::other(format!(
                "unexpected /proc/{pid}/ns/{kind} link {:?}",
                String::from_utf8_lossy(init)
            )))
        })
    }

    /// The effective uid owning `/proc/PID` (the process's uid).
    pub fn uid(&self, pid: u32) -> Result<u32, FdError> {
        Ok(statat(&self.dir, format!("{pid}"), AtFlags::empty())?.st_uid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_targets() {
        assert_eq!(socket_inode(b"socket:[9771884]"), Some(9771884));
        assert_eq!(socket_inode(b"socket:[]"), None);
        assert_eq!(socket_inode(b"pipe:[123]"), None);
        assert_eq!(socket_inode(b"/dev/null"), None);
        assert_eq!(socket_inode(b"socket:[12a]"), None);
        assert_eq!(ns_inode(b"net:[4026531840]", "net"), Some(4026531840));
        assert_eq!(ns_inode(b"user:[4026531837]", "net"), None);
    }

    #[test]
    fn pid_names() {
        assert_eq!(number(c"1234"), Some(1234));
        assert_eq!(number(c"self"), None);
        assert_eq!(number(c""), None);
        assert_eq!(number(c"99999999999"), None);
    }

    #[test]
    fn finds_a_socket_of_this_process() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let ino = {
            use std::os::fd::AsRawFd;
            let p = std::fs::read_link(format!("/proc/self/fd/{}", l.as_raw_fd())).unwrap();
            socket_inode(p.as_os_str().as_encoded_bytes()).unwrap()
        };
        let proc = Proc::open().unwrap();
        let me = std::process::id();
        assert!(proc.pids().unwrap().contains(&me));
        let mut found = None;
        proc.socket_fds(me, |fd, i| {
            if i == ino {
                found = Some(fd);
                return ControlFlow::Break(());
            }
            ControlFlow::Continue(())
        })
        .unwrap();
        use std::os::fd::AsRawFd;
        assert_eq!(found, Some(l.as_raw_fd()));
        assert!(proc.fd_count(me).unwrap() >= 1);
        assert!(proc.comm(me).is_some());
        assert!(proc.ns(me, "net").unwrap() > 0);
        assert!(matches!(
            proc.socket_fds(u32::MAX - 1, |_, _| ControlFlow::Continue(())),
            Err(FdError::Vanished)
        ));
    }
}
