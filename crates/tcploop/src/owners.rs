//! Which processes hold a socket: from a socket inode (what sock_diag and
//! `/proc/net/tcp` report) to `(pid, command, fd)`.
//!
//! The kernel keeps no index from a socket to the processes that have it
//! open; the only way is to read every process's fd table under
//! `/proc/PID/fd` until the inode turns up (what `ss -p` and `lsof` do for
//! *every* socket, which is why they take seconds on a busy host). Here the
//! walk looks only for the inodes asked for, and with
//! [`Search::FirstOwner`] stops as soon as each has one owner. Processes are
//! visited from the fewest open fds to the most (`stat` of `/proc/PID/fd`
//! gives the count on Linux 6.2+), so that a looping client with a handful
//! of fds is found before the walk wades through a server's ten thousand.
//!
//! Where BPF is allowed (root, a kernel with BTF), the kernel does the walk
//! instead ([`OwnerSource::Bpf`], [`InKernel`]): a `task_file` iterator
//! visits every open file of every process in one pass, at a tenth of the
//! cost of reading the `/proc` links or less, and keeps only the sockets
//! whose inodes are asked for. Both sources name *every* process
//! holding a socket (a socket shared after `fork()` has several owners) and
//! give the same answers; [`OwnerSource::Auto`] picks the kernel's walk and
//! falls back to `/proc`, saying why.
//!
//! What cannot be seen is counted, never hidden: processes whose fd table
//! is not readable (another user's, without root) and processes that exit
//! during the walk. A socket with no owner found is *unknown*: held by an
//! unreadable process, by a process of another PID namespace, or by nobody
//! (orphaned sockets finishing their close; TIME-WAIT sockets, inode 0,
//! never have one).
//!
//! ```no_run
//! use tcploop::owners::{find_owners, Search};
//! let found = find_owners([9771884], Search::FirstOwner).unwrap();
//! for o in found.of(9771884) {
//!     println!("{} (pid {}, fd {})", o.comm, o.pid, o.fd);
//! }
//! println!("{} processes could not be read", found.processes_denied);
//! ```

use std::collections::{HashMap, HashSet};
use std::io;
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use crate::sys::bpf::owners::{OwnerIter, Pass};
use crate::sys::bpf::Refusal;
use crate::sys::procfd::{FdError, Proc};

pub use crate::model::Owner;

/// How far to walk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Search {
    /// Stop as soon as every inode has one owner (a socket shared by several
    /// processes, after `fork()`, then shows only the first found).
    #[default]
    FirstOwner,
    /// Walk every process: every owner of every inode (e.g. a listening
    /// socket shared by pre-forked workers).
    AllOwners,
}

/// Where to look for owners.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OwnerSource {
    /// The kernel's walk where BPF is allowed, else `/proc` (the report
    /// says why).
    #[default]
    Auto,
    /// The `/proc/PID/fd` walk only.
    Proc,
    /// The kernel's walk only: an error where BPF is not allowed.
    Bpf,
}

/// The source that was really used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnerSourceUsed {
    /// `/proc/PID/fd`, read from userspace.
    Proc,
    /// The `task_file` BPF iterator.
    Bpf,
}

impl OwnerSourceUsed {
    /// `proc` or `bpf`.
    pub fn as_str(self) -> &'static str {
        match self {
            OwnerSourceUsed::Proc => "proc",
            OwnerSourceUsed::Bpf => "bpf",
        }
    }
}

/// The result of a lookup.
#[derive(Debug, Clone, Default)]
pub struct Owners {
    by_inode: HashMap<u64, Vec<Owner>>,
    /// Passes of the kernel's iterator (0 for the `/proc` walk, and when
    /// no owner was needed).
    pub kernel_passes: u32,
    /// Processes whose fd table was read (the `/proc` walk; the kernel's
    /// walk reads every process and does not count them).
    pub processes_read: u64,
    /// Processes whose fd table could not be read (permission): owners in
    /// them are unknown.
    pub processes_denied: u64,
    /// Processes that exited during the walk (not an error).
    pub processes_vanished: u64,
    /// Processes not visited because every inode was already found.
    pub processes_skipped: u64,
    /// Other failures reading a process, with the last error seen.
    pub processes_failed: u64,
    /// The last unexpected error, if any (for the report).
    pub last_error: Option<String>,
    /// File descriptors read (the kernel's walk: every open file of every
    /// process).
    pub fds_read: u64,
}

impl Owners {
    /// The owners found for `inode` (empty: none found).
    pub fn of(&self, inode: u64) -> &[Owner] {
        self.by_inode.get(&inode).map_or(&[], Vec::as_slice)
    }

    /// How many of `inodes` (0s ignored) have no owner found.
    pub fn unknown(&self, inodes: impl IntoIterator<Item = u64>) -> u64 {
        inodes
            .into_iter()
            .filter(|i| *i != 0 && self.of(*i).is_empty())
            .count() as u64
    }

    /// Whether the walk covered every process (none denied or failed), so
    /// that an inode with no owner really has none in this PID namespace.
    pub fn complete(&self) -> bool {
        self.processes_denied == 0 && self.processes_failed == 0
    }
}

/// The kernel's walk, in two steps around the socket dump:
/// [`InKernel::start`] loads the iterator (a few ms: run it while the dump
/// runs), and [`InKernel::finish`] makes one pass keeping the sockets whose
/// inodes the dump found, every owner of each.
///
/// Why after the dump rather than beside it: the iterator can also test the
/// loop condition itself and so run while the dump runs, but measured at
/// 100k sockets that pass costs 1.5 to 2 times the inode pass (it reads
/// each socket's `struct sock`, a cache miss each; the inode pass stops at
/// the inode). Beside the dump it wins only with a core free: on a busy
/// 2-core machine the dump then the inode pass won four runs of seven, by
/// 5 to 13%, for a third less CPU in the kernel; the other way won the
/// three quietest (BENCHMARKS.md, scan). It also sees exactly what the
/// `/proc` walk sees: a loop made during the dump is in both or in neither.
#[derive(Debug)]
pub struct InKernel {
    iter: OwnerIter,
}

/// Why the kernel's walk could not be used.
#[derive(Debug, Clone, thiserror::Error)]
pub enum InKernelError {
    /// BPF is not allowed or not supported here.
    #[error("{0}")]
    Refused(Refusal),
    /// The iterator loaded but reading it failed.
    #[error("reading the task_file iterator: {0}")]
    Read(String),
}

impl From<Refusal> for InKernelError {
    fn from(r: Refusal) -> InKernelError {
        InKernelError::Refused(r)
    }
}

impl InKernel {
    /// Loads the iterator.
    pub fn start() -> Result<InKernel, InKernelError> {
        Ok(InKernel {
            iter: OwnerIter::load()?,
        })
    }

    /// The owners of `inodes` (0s ignored), every owner of each: one pass
    /// (none when no inode is asked for).
    pub fn finish(self, inodes: impl IntoIterator<Item = u64>) -> Result<Owners, InKernelError> {
        let mut wanted: Vec<u64> = inodes.into_iter().filter(|i| *i != 0).collect();
        wanted.sort_unstable();
        wanted.dedup();
        let mut out = Owners::default();
        if wanted.is_empty() {
            return Ok(out);
        }
        let pass = self
            .iter
            .wanted(&wanted)
            .map_err(|e| InKernelError::Read(e.to_string()))?;
        out.kernel_passes = 1;
        out.fds_read = pass.files_visited;
        out.add(&pass, &wanted.into_iter().collect());
        for owners in out.by_inode.values_mut() {
            owners.sort_by_key(|o| (o.pid, o.fd));
            owners.dedup();
        }
        Ok(out)
    }
}

impl Owners {
    /// Adds the records of a pass whose inode is wanted.
    fn add(&mut self, pass: &Pass, wanted: &HashSet<u64>) {
        for r in pass.records.iter().filter(|r| wanted.contains(&r.inode)) {
            self.by_inode.entry(r.inode).or_default().push(Owner {
                pid: r.pid,
                comm: r.comm.clone(),
                fd: r.fd,
                container: None,
            });
        }
    }

    /// Records an owner (test fixtures).
    #[cfg(test)]
    pub(crate) fn insert(&mut self, inode: u64, owner: Owner) {
        self.by_inode.entry(inode).or_default().push(owner);
    }
}

/// Finds the processes holding the sockets with these inodes (0s, the
/// TIME-WAIT and request sockets, are ignored). Fails only if `/proc`
/// cannot be listed at all.
///
/// The walk is spread over up to 4 threads (as many as CPUs), each taking
/// every Nth process of the same fewest-fds-first order.
pub fn find_owners(inodes: impl IntoIterator<Item = u64>, search: Search) -> io::Result<Owners> {
    let wanted: HashSet<u64> = inodes.into_iter().filter(|i| *i != 0).collect();
    if wanted.is_empty() {
        return Ok(Owners::default());
    }
    let proc = Proc::open()?;
    // the fewest fds first: a `stat` of /proc/PID/fd each, far cheaper than
    // reading the fds
    let mut order: Vec<(u64, u32)> = proc
        .pids()?
        .into_iter()
        .map(|pid| (proc.fd_count(pid).unwrap_or(u64::MAX), pid))
        .collect();
    order.sort_unstable();
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 4);
    let workers = if order.len() < 32 { 1 } else { workers };
    let shared = Shared {
        wanted: &wanted,
        search,
        missing: AtomicUsize::new(wanted.len()),
        found: Mutex::new(HashMap::new()),
        proc: &proc,
    };
    let parts: Vec<Owners> = if workers == 1 {
        vec![shared.walk(order.iter().map(|o| o.1))]
    } else {
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..workers)
                .map(|w| {
                    let (shared, order) = (&shared, &order);
                    s.spawn(move || shared.walk(order.iter().skip(w).step_by(workers).map(|o| o.1)))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                .collect()
        })
    };
    let mut out = Owners {
        by_inode: shared.found.into_inner().unwrap_or_else(|e| e.into_inner()),
        ..Owners::default()
    };
    for p in parts {
        out.processes_read += p.processes_read;
        out.processes_denied += p.processes_denied;
        out.processes_vanished += p.processes_vanished;
        out.processes_skipped += p.processes_skipped;
        out.processes_failed += p.processes_failed;
        out.fds_read += p.fds_read;
        if p.last_error.is_some() {
            out.last_error = p.last_error;
        }
    }
    for owners in out.by_inode.values_mut() {
        owners.sort_by_key(|o| (o.pid, o.fd));
    }
    Ok(out)
}

/// What the walking threads share.
struct Shared<'a> {
    wanted: &'a HashSet<u64>,
    search: Search,
    /// Wanted inodes with no owner yet.
    missing: AtomicUsize,
    found: Mutex<HashMap<u64, Vec<Owner>>>,
    proc: &'a Proc,
}

impl Shared<'_> {
    fn done(&self) -> bool {
        self.search == Search::FirstOwner && self.missing.load(Ordering::Relaxed) == 0
    }

    /// Walks these processes; returns the counters (owners go to `found`).
    fn walk(&self, pids: impl Iterator<Item = u32>) -> Owners {
        let mut out = Owners::default();
        for pid in pids {
            if self.done() {
                out.processes_skipped += 1;
                continue;
            }
            let mut comm: Option<String> = None;
            let res = self.proc.socket_fds(pid, |fd, inode| {
                if self.wanted.contains(&inode) {
                    let comm = comm
                        .get_or_insert_with(|| self.proc.comm(pid).unwrap_or_default())
                        .clone();
                    let mut found = self.found.lock().unwrap_or_else(|e| e.into_inner());
                    let owners = found.entry(inode).or_default();
                    if owners.is_empty() {
                        self.missing.fetch_sub(1, Ordering::Relaxed);
                    }
                    owners.push(Owner {
                        pid,
                        comm,
                        fd,
                        container: None,
                    });
                    drop(found);
                    if self.done() {
                        return ControlFlow::Break(());
                    }
                }
                ControlFlow::Continue(())
            });
            match res {
                Ok(n) => {
                    out.processes_read += 1;
                    out.fds_read += n;
                }
                Err(FdError::Denied) => out.processes_denied += 1,
                Err(FdError::Vanished) => out.processes_vanished += 1,
                Err(FdError::Other(e)) => {
                    out.processes_failed += 1;
                    out.last_error = Some(format!("/proc/{pid}/fd: {e}"));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    fn inode_of(fd: &impl AsRawFd) -> u64 {
        let p = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap();
        crate::sys::procfd::socket_inode(p.as_os_str().as_encoded_bytes()).unwrap()
    }

    #[test]
    fn finds_this_process_for_its_own_sockets() {
        let a = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let b = std::net::TcpListener::bind("[::1]:0").unwrap();
        let (ia, ib) = (inode_of(&a), inode_of(&b));
        let me = std::process::id();
        for search in [Search::FirstOwner, Search::AllOwners] {
            let o = find_owners([ia, ib, 0], search).unwrap();
            assert_eq!(o.of(ia).len(), 1);
            assert_eq!(o.of(ia)[0].pid, me);
            assert_eq!(o.of(ia)[0].fd, a.as_raw_fd());
            assert_eq!(o.of(ib)[0].fd, b.as_raw_fd());
            assert!(!o.of(ia)[0].comm.is_empty());
            assert_eq!(o.unknown([ia, ib, 0]), 0);
        }
    }

    #[test]
    fn a_dup_is_a_second_owner_fd_and_unknown_inodes_are_counted() {
        let a = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let dup = a.try_clone().unwrap();
        let ia = inode_of(&a);
        let o = find_owners([ia], Search::AllOwners).unwrap();
        let fds: Vec<i32> = o.of(ia).iter().map(|o| o.fd).collect();
        assert!(fds.contains(&a.as_raw_fd()) && fds.contains(&dup.as_raw_fd()));
        // an inode nobody holds: the walk covers everything and finds nothing
        let o = find_owners([u64::from(u32::MAX)], Search::FirstOwner).unwrap();
        assert_eq!(o.unknown([u64::from(u32::MAX)]), 1);
        assert_eq!(o.processes_skipped, 0);
        assert!(o.processes_read > 0);
    }

    /// The kernel's walk gives what the /proc walk gives: every owner,
    /// command name included. Root and BTF; skipped otherwise (the
    /// integration tests compare both sources).
    #[test]
    fn the_kernel_walk_finds_every_owner_like_the_proc_walk() {
        let k = match InKernel::start() {
            Ok(k) => k,
            Err(e) => {
                eprintln!("SKIPPED the_kernel_walk_finds_every_owner: {e}");
                assert!(std::env::var_os("TCPLOOP_REQUIRE_PRIVILEGED").is_none());
                return;
            }
        };
        let a = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let dup = a.try_clone().unwrap();
        let ia = inode_of(&a);
        let nobody = u64::from(u32::MAX);
        let o = k.finish([ia, 0, ia, nobody]).unwrap();
        assert_eq!(o.kernel_passes, 1);
        let me = std::process::id();
        let got: Vec<(u32, i32)> = o.of(ia).iter().map(|o| (o.pid, o.fd)).collect();
        assert_eq!(got, vec![(me, a.as_raw_fd()), (me, dup.as_raw_fd())]);
        let p = find_owners([ia], Search::AllOwners).unwrap();
        assert_eq!(o.of(ia), p.of(ia));
        assert_eq!(o.unknown([ia, nobody]), 1);
        // nothing asked: no pass at all
        let o = InKernel::start().unwrap().finish([0]).unwrap();
        assert_eq!(o.kernel_passes, 0);
    }

    #[test]
    fn nothing_wanted_reads_nothing() {
        let o = find_owners([0, 0], Search::FirstOwner).unwrap();
        assert_eq!(o.processes_read, 0);
    }
}
