//! Entering a throwaway network namespace: `unshare(2)` with
//! `CLONE_NEWUSER | CLONE_NEWNET`, the id maps of `user_namespaces(7)`,
//! `lo` up through `SIOCSIFFLAGS` (`netdevice(7)`), and `/proc/sys` writes.
//!
//! Every function here is async-signal-safe (raw system calls on buffers
//! prepared in advance, no allocation), so that [`Plan::apply`] can run in the
//! child of `fork()` inside a threaded process (`Command::pre_exec`), where
//! only such calls are allowed. `unshare(CLONE_NEWUSER)` itself refuses to
//! run in a process with more than one thread (EINVAL): a forked child, or
//! `main` before any thread starts, is single-threaded.

use std::ffi::{CStr, CString};
use std::io;

use super::syscall;

/// Everything needed to enter a namespace, prepared before `fork()`.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Create a user namespace too (no root needed); otherwise only a
    /// network namespace (root only).
    pub user_ns: bool,
    uid_map: CString,
    gid_map: CString,
    sysctls: Vec<(CString, CString)>,
}

const SETGROUPS: &CStr = c"/proc/self/setgroups";
const UID_MAP: &CStr = c"/proc/self/uid_map";
const GID_MAP: &CStr = c"/proc/self/gid_map";

/// Which step of entering failed: the caller words the error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// `unshare(2)`.
    Unshare,
    /// Writing `/proc/self/{setgroups,uid_map,gid_map}`.
    IdMap,
    /// Bringing `lo` up.
    LoopbackUp,
    /// Writing a `/proc/sys` value.
    Sysctl,
}

impl Plan {
    /// A plan mapping the current uid and gid to root inside the new user
    /// namespace, then writing each `(path, value)` sysctl.
    pub fn new(user_ns: bool, sysctls: &[(&str, String)]) -> Plan {
        // SAFETY: getuid/getgid cannot fail and take no arguments.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        let cs = |s: String| CString::new(s).expect("no NUL in generated text");
        Plan {
            user_ns,
            uid_map: cs(format!("0 {uid} 1")),
            gid_map: cs(format!("0 {gid} 1")),
            sysctls: sysctls
                .iter()
                .map(|(p, v)| (cs(p.to_string()), cs(v.clone())))
                .collect(),
        }
    }

    /// Enters the namespace(s) and sets them up. Async-signal-safe.
    pub fn apply(&self) -> Result<(), (Step, io::Error)> {
        let flags = if self.user_ns {
            libc::CLONE_NEWUSER | libc::CLONE_NEWNET
        } else {
            libc::CLONE_NEWNET
        };
        syscall!(unshare(flags)).map_err(|e| (Step::Unshare, e))?;
        if self.user_ns {
            write_file(SETGROUPS, b"deny").map_err(|e| (Step::IdMap, e))?;
            write_file(UID_MAP, self.uid_map.as_bytes()).map_err(|e| (Step::IdMap, e))?;
            write_file(GID_MAP, self.gid_map.as_bytes()).map_err(|e| (Step::IdMap, e))?;
        }
        set_up(c"lo").map_err(|e| (Step::LoopbackUp, e))?;
        for (path, value) in &self.sysctls {
            write_file(path, value.as_bytes()).map_err(|e| (Step::Sysctl, e))?;
        }
        Ok(())
    }
}

/// Makes `cmd` enter a namespace between `fork()` and `exec()`, trying each
/// plan in turn while `unshare` refuses (a user+net namespace, then a plain
/// network namespace as root). Spawning fails with the error of the last
/// plan tried.
pub fn enter_before_exec(cmd: &mut std::process::Command, plans: Vec<Plan>) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the forked child, where only
    // async-signal-safe calls are allowed: Plan::apply makes only raw
    // system calls on buffers prepared here, before the fork.
    unsafe {
        cmd.pre_exec(move || {
            let mut last = io::Error::from_raw_os_error(libc::EPERM);
            for plan in &plans {
                match plan.apply() {
                    Ok(()) => return Ok(()),
                    Err((Step::Unshare, e)) => last = e,
                    Err((_, e)) => return Err(e),
                }
            }
            Err(last)
        });
    }
}

/// `open(2)` + `write(2)` until all is written + `close(2)`;
/// async-signal-safe. A `/proc/sys` value longer than a page arrives in
/// several writes (the kernel takes whole items up to a page; for
/// `ip_local_reserved_ports`, the later writes add to the first).
fn write_file(path: &CStr, data: &[u8]) -> io::Result<()> {
    let fd = syscall!(open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC))?;
    let mut done = 0;
    let mut res = Ok(());
    while done < data.len() {
        let rest = &data[done..];
        // SAFETY: fd is open; rest is a valid buffer of rest.len() bytes.
        let n = unsafe { libc::write(fd, rest.as_ptr().cast(), rest.len()) };
        match n {
            -1 if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted => continue,
            -1 => {
                res = Err(io::Error::last_os_error());
                break;
            }
            0 => {
                res = Err(io::Error::from(io::ErrorKind::WriteZero));
                break;
            }
            n => done += n as usize,
        }
    }
    // SAFETY: fd is ours and closed once.
    unsafe { libc::close(fd) };
    res
}

/// Sets IFF_UP on an interface (`ioctl SIOCGIFFLAGS` then `SIOCSIFFLAGS`).
/// Hand-written: 20 lines against the rtnetlink crates' dozen dependencies.
fn set_up(name: &CStr) -> io::Result<()> {
    let fd = syscall!(socket(
        libc::AF_INET,
        libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
        0
    ))?;
    // SAFETY: ifreq is plain data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    let bytes = name.to_bytes();
    if bytes.len() >= req.ifr_name.len() {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    for (dst, src) in req.ifr_name.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: fd is a socket, req a valid ifreq with a NUL-terminated name.
    let mut res = syscall!(ioctl(fd, libc::SIOCGIFFLAGS, &mut req as *mut libc::ifreq));
    if res.is_ok() {
        // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
        unsafe { req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
        res = syscall!(ioctl(fd, libc::SIOCSIFFLAGS, &mut req as *mut libc::ifreq));
    }
    // SAFETY: fd is ours and closed once.
    unsafe { libc::close(fd) };
    res.map(|_| ())
}

/// Number of threads of this process (`Threads:` of `/proc/self/status`).
pub fn thread_count() -> io::Result<usize> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
        .ok_or_else(|| io::Error::other("no Threads: line in /proc/self/status"))
}

/// The effective uid (0 for root).
pub fn euid() -> u32 {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() }
}
