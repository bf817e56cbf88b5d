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

use crate::sys::procfd::{FdError, Proc};

/// One process holding a socket through one fd.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Owner {
    /// Process id.
    pub pid: u32,
    /// Command name (`/proc/PID/comm`, up to 15 bytes; empty if the process
    /// exited before it was read).
    pub comm: String,
    /// The file descriptor number in that process.
    pub fd: i32,
}

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

/// The result of a lookup.
#[derive(Debug, Clone, Default)]
pub struct Owners {
    by_inode: HashMap<u64, Vec<Owner>>,
    /// Processes whose fd table was read.
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
    /// File descriptors read.
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

#[cfg(test)]
impl Owners {
    /// Records an owner (test fixtures).
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
                    owners.push(Owner { pid, comm, fd });
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

    #[test]
    fn nothing_wanted_reads_nothing() {
        let o = find_owners([0, 0], Search::FirstOwner).unwrap();
        assert_eq!(o.processes_read, 0);
    }
}
