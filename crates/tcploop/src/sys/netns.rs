//! Other network namespaces of the host (`network_namespaces(7)`): finding
//! them and doing work inside them with `setns(2)`.
//!
//! A netlink socket, a `/proc/thread-self/net/tcp` read and a `bind(2)` all
//! see the namespace of the *thread* that makes them. So each piece of work
//! runs on a short-lived thread of its own that first calls
//! `setns(fd, CLONE_NEWNET)`; the rest of the process stays where it was.
//! That is allowed in a multithreaded process (unlike `unshare` of a user
//! namespace) but needs `CAP_SYS_ADMIN` over the user namespace that owns
//! the target namespace, and opening another user's `/proc/PID/ns/net` needs
//! ptrace rights: without them the namespace is skipped and counted.
//!
//! A host's namespaces are found as the distinct targets of
//! `/proc/*/ns/net` (one process named for each) plus the files that
//! `ip netns add` bind-mounts under `/run/netns/` (which may have no process).

use std::collections::BTreeMap;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use rustix::fs::{open, stat, Mode, OFlags};
use rustix::thread::{move_into_link_name_space, LinkNameSpaceType};

use super::procfd::{FdError, Proc};

/// Where `ip netns` keeps named namespaces.
pub const RUN_NETNS: &str = "/run/netns";

/// A network namespace found on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Netns {
    /// Its inode (what `readlink /proc/PID/ns/net` shows as `net:[INODE]`).
    pub inode: u64,
    /// A file that refers to it: `/proc/PID/ns/net` or `/run/netns/NAME`.
    pub path: PathBuf,
    /// The lowest pid found in it, if any process is.
    pub pid: Option<u32>,
    /// Its name under `/run/netns`, if it has one.
    pub name: Option<String>,
}

impl Netns {
    /// The model's label of this namespace: its process's command name read
    /// from `proc`, and no path when it is the caller's own (`own`, its
    /// inode: nothing to `setns(2)` into).
    pub fn label(&self, proc: &Proc, own: u64) -> crate::model::NetnsLabel {
        crate::model::NetnsLabel {
            inode: self.inode,
            pid: self.pid,
            comm: self.pid.and_then(|p| proc.comm(p)),
            name: self.name.clone(),
            path: (self.inode != own).then(|| self.path.clone()),
        }
    }
}

/// The namespaces of the host, and what could not be looked at.
#[derive(Debug, Clone, Default)]
pub struct NetnsList {
    /// Distinct namespaces, by inode.
    pub found: Vec<Netns>,
    /// Processes whose `/proc/PID/ns/net` could not be read (another user's:
    /// their namespaces may be missing from `found`).
    pub unreadable_pids: u64,
}

/// The inode of the calling thread's network namespace.
pub fn current() -> io::Result<u64> {
    Ok(stat("/proc/thread-self/ns/net")?.st_ino)
}

/// Lists the host's network namespaces, the caller's included.
pub fn list(proc: &Proc) -> io::Result<NetnsList> {
    list_with(proc, &[Path::new(RUN_NETNS)])
}

/// Where container runtimes bind-mount their namespaces: `ip netns` and
/// CNI plugins (containerd, CRI-O, Podman as root) use `/run/netns`,
/// Docker `/var/run/docker/netns`.
pub const RUNTIME_NETNS_DIRS: &[&str] = &[RUN_NETNS, "/var/run/docker/netns"];

/// The magic number of nsfs (`statfs(2)`): a namespace file bind-mounted
/// somewhere is on nsfs; a file just created there, not yet mounted, is not.
const NSFS_MAGIC: i64 = 0x6e73_6673;

/// [`list`] with other directories of bind-mounted namespaces than
/// `/run/netns`. Entries that are not (yet) namespaces are skipped.
pub fn list_with(proc: &Proc, dirs: &[&Path]) -> io::Result<NetnsList> {
    let mut by_inode: BTreeMap<u64, Netns> = BTreeMap::new();
    let mut out = NetnsList::default();
    for pid in proc.pids()? {
        match proc.ns(pid, "net") {
            Ok(inode) => {
                by_inode.entry(inode).or_insert_with(|| Netns {
                    inode,
                    path: PathBuf::from(format!("/proc/{pid}/ns/net")),
                    pid: Some(pid),
                    name: None,
                });
            }
            Err(FdError::Vanished) => {}
            Err(_) => out.unreadable_pids += 1,
        }
    }
    for dir in dirs.iter().filter_map(|d| std::fs::read_dir(d).ok()) {
        for e in dir.flatten() {
            let path = e.path();
            // f_type is i64 on x86_64 and narrower elsewhere.
            #[allow(clippy::unnecessary_cast)]
            let is_ns = rustix::fs::statfs(&path).is_ok_and(|s| s.f_type as i64 == NSFS_MAGIC);
            if !is_ns {
                continue;
            }
            let Ok(st) = stat(&path) else { continue };
            let name = e.file_name().to_string_lossy().into_owned();
            let inode = st.st_ino;
            by_inode
                .entry(inode)
                .and_modify(|n| n.name = Some(name.clone()))
                .or_insert(Netns {
                    inode,
                    path,
                    pid: None,
                    name: Some(name),
                });
        }
    }
    out.found = by_inode.into_values().collect();
    Ok(out)
}

/// Why work in another namespace could not start.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// Opening the namespace file failed (EACCES: another user's process).
    #[error("opening {}: {source}", path.display())]
    Open {
        /// The file.
        path: PathBuf,
        /// What the kernel said.
        #[source]
        source: io::Error,
    },
    /// `setns(2)` failed (EPERM: no CAP_SYS_ADMIN over its user namespace).
    #[error("setns({}): {source}", path.display())]
    Setns {
        /// The file.
        path: PathBuf,
        /// What the kernel said.
        #[source]
        source: io::Error,
    },
}

impl NetnsError {
    /// The kernel's error.
    pub fn io(&self) -> &io::Error {
        match self {
            NetnsError::Open { source, .. } | NetnsError::Setns { source, .. } => source,
        }
    }
}

/// Runs `f` on a new thread that first enters the network namespace that
/// `path` refers to, and returns what `f` returns. Anything `f` opens
/// (a netlink socket, a probe socket) stays in that namespace afterwards,
/// whichever thread uses it.
pub fn run_in<T: Send>(path: &Path, f: impl FnOnce() -> T + Send) -> Result<T, NetnsError> {
    let fd: OwnedFd = open(path, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty()).map_err(|e| {
        NetnsError::Open {
            path: path.to_owned(),
            source: e.into(),
        }
    })?;
    std::thread::scope(|s| {
        s.spawn(|| {
            move_into_link_name_space(
                std::os::fd::AsFd::as_fd(&fd),
                Some(LinkNameSpaceType::Network),
            )
            .map_err(|e| NetnsError::Setns {
                path: path.to_owned(),
                source: e.into(),
            })?;
            Ok(f())
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_own_namespace_is_listed() {
        let me = current().unwrap();
        let l = list(&Proc::open().unwrap()).unwrap();
        let mine = l.found.iter().find(|n| n.inode == me).expect("own netns");
        assert!(mine.pid.is_some());
    }

    #[test]
    fn entering_the_own_namespace_works_and_a_missing_one_is_an_open_error() {
        let me = current().unwrap();
        let there = run_in(Path::new("/proc/self/ns/net"), || current().unwrap()).unwrap();
        assert_eq!(there, me);
        assert!(matches!(
            run_in(Path::new("/nonexistent/ns"), || ()),
            Err(NetnsError::Open { .. })
        ));
    }
}
