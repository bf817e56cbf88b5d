//! The loop detector in the kernel: `bpf/loops.bpf.c`, a `tp_btf` program
//! on the `inet_sock_set_state` tracepoint that sends one event into a ring
//! buffer each time a TCP socket connects to itself (SYN_SENT -> SYN_RECV
//! with its own address and port at both ends), and one when such a socket
//! leaves ESTABLISHED.
//!
//! This module loads and attaches the program (aya), waits on the ring
//! buffer with `poll(2)` (no timer: an idle reader costs nothing), parses
//! each record into a [`LoopEvent`], and reads the program's per-CPU
//! counters of events sent and dropped ([`Counters`]). The tracepoint is
//! host-wide; [`Options::netns`] makes the program itself keep only one
//! network namespace (a read-only global set before the verifier runs), and
//! `None` reports every namespace of the host.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, BorrowedFd};

use aya::maps::{MapData, PerCpuArray, RingBuf};
use aya::programs::BtfTracePoint;
use aya::{Btf, Ebpf, EbpfLoader};

use super::{classify_error, precheck, Refusal};

/// The compiled program (`make -C crates/tcploop/bpf`), embedded.
static OBJECT: &[u8] = aya::include_bytes_aligned!("../../../bpf/loops.bpf.o");

/// Size of one event record (`struct loop_event`).
pub const EVENT_LEN: usize = 128;
/// How many ancestors an event names (`ANCESTORS` in the C source).
pub const ANCESTORS: usize = 8;
/// The ring buffer's size unless [`Options::ring_bytes`] says otherwise
/// (2 MiB: about 16,000 events queued before a drop).
pub const DEFAULT_RING_BYTES: u32 = 2 * 1024 * 1024;
/// Live loops whose end the program can report (`LOOPS_TRACKED`): an LRU
/// map, so the oldest are forgotten when more are alive at once.
pub const LOOPS_TRACKED: u32 = 4096;

/// How to load the program.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Options {
    /// Report loops of this network namespace only (its inode); `None`:
    /// every namespace of the host.
    pub netns: Option<u32>,
    /// Ring buffer size in bytes (a power of two, at least a page); `None`:
    /// [`DEFAULT_RING_BYTES`].
    pub ring_bytes: Option<u32>,
}

/// Which kind of event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// A socket just connected to itself.
    Loop,
    /// A socket reported as a loop left ESTABLISHED (closed, reset,
    /// destroyed): the loop is over.
    End,
}

/// One event from the kernel, as plain data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoopEvent {
    /// Loop or end.
    pub kind: EventKind,
    /// When it happened, CLOCK_MONOTONIC nanoseconds ([`monotonic_ns`]).
    pub monotonic_ns: u64,
    /// For an end: when the loop formed (CLOCK_MONOTONIC ns); 0 for a loop.
    pub started_ns: u64,
    /// Process id (tgid) of the task running when the state changed: for a
    /// loop, the thread inside `connect()` (see [`LoopEvent::owned`]).
    pub pid: u32,
    /// Thread id of that task.
    pub tid: u32,
    /// Its command name (`comm`), as the kernel has it (may hold any byte).
    pub comm: String,
    /// The loop's address and port (local and peer: they are equal).
    pub addr: SocketAddr,
    /// Network namespace inode (`net:[INODE]`).
    pub netns: u32,
    /// Socket cookie: what sock_diag, `ss -e` and `SOCK_DESTROY` use.
    pub cookie: u64,
    /// Socket inode (what `/proc/PID/fd` links name); 0 if the socket had
    /// no file.
    pub inode: u64,
    /// cgroup v2 id of the task.
    pub cgroup_id: u64,
    /// The task's ancestors' pids: parent, grandparent, ...; 0 past the top.
    pub ancestors: [u32; ANCESTORS],
    /// Whether a task held the socket lock at the event. The self-SYN is
    /// queued to the socket's backlog while `connect()` holds the lock and
    /// processed on `release_sock()` in that thread, so this is 1 and the
    /// pid is the owner's; if it is ever 0 (a softirq), the owner must be
    /// found through [`LoopEvent::inode`].
    pub owned: bool,
    /// The TCP state before (SYN_SENT for a loop).
    pub old_state: u8,
    /// The TCP state after (SYN_RECV for a loop).
    pub new_state: u8,
}

/// The program's counters, summed over CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Loop events sent.
    pub loops: u64,
    /// Loop events lost: the ring buffer was full.
    pub loop_drops: u64,
    /// End events sent.
    pub ends: u64,
    /// End events lost: the ring buffer was full.
    pub end_drops: u64,
}

/// The attached program, its ring buffer and counters. Dropping it detaches
/// the program and frees the maps.
pub struct LoopSource {
    ring: RingBuf<MapData>,
    counters: PerCpuArray<MapData, u64>,
    // keeps the program loaded and attached (its link lives inside)
    _ebpf: Ebpf,
}

impl std::fmt::Debug for LoopSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoopSource")
            .field("ring_fd", &self.ring.as_raw_fd())
            .finish_non_exhaustive()
    }
}

impl LoopSource {
    /// Loads, verifies and attaches the program. Needs CAP_BPF and
    /// CAP_PERFMON (or root) in the initial user namespace, and BTF.
    pub fn open(opts: &Options) -> Result<LoopSource, Refusal> {
        precheck()?;
        let btf = Btf::from_sys_fs()
            .map_err(|e| Refusal::Unsupported(format!("reading the kernel's BTF ({e})")))?;
        let netns = opts.netns.unwrap_or(0);
        let mut loader = EbpfLoader::new();
        loader
            .btf(Some(&btf))
            .set_global("target_netns", &netns, true);
        if let Some(n) = opts.ring_bytes {
            loader.set_max_entries("events", n);
        }
        let mut ebpf = loader
            .load(OBJECT)
            .map_err(|e| classify_error("loading the loop detector (maps)", &e))?;
        let prog: &mut BtfTracePoint = ebpf
            .program_mut("loop_state")
            .ok_or_else(|| Refusal::Unsupported("the object has no loop_state program".into()))?
            .try_into()
            .map_err(|e| classify_error("loading the loop detector", &e))?;
        prog.load("inet_sock_set_state", &btf)
            .map_err(|e| classify_error("loading the loop detector (verifier)", &e))?;
        prog.attach()
            .map_err(|e| classify_error("attaching to tp_btf/inet_sock_set_state", &e))?;
        let ring = RingBuf::try_from(
            ebpf.take_map("events")
                .ok_or_else(|| Refusal::Unsupported("no events map".into()))?,
        )
        .map_err(|e| classify_error("opening the ring buffer", &e))?;
        let counters = PerCpuArray::try_from(
            ebpf.take_map("counters")
                .ok_or_else(|| Refusal::Unsupported("no counters map".into()))?,
        )
        .map_err(|e| classify_error("opening the counters", &e))?;
        Ok(LoopSource {
            ring,
            counters,
            _ebpf: ebpf,
        })
    }

    /// The ring buffer's file descriptor: readable (`poll(2)`) when events
    /// wait. Wait on it with [`crate::sys::poll::readable`].
    pub fn fd(&self) -> BorrowedFd<'_> {
        // SAFETY: the fd belongs to self.ring and lives as long as &self.
        unsafe { BorrowedFd::borrow_raw(self.ring.as_raw_fd()) }
    }

    /// Reads every event waiting in the ring buffer, in order, and returns
    /// how many there were. Records of an unexpected size are counted in
    /// the second number and skipped.
    pub fn drain(&mut self, mut f: impl FnMut(LoopEvent)) -> (u64, u64) {
        let (mut n, mut bad) = (0, 0);
        while let Some(item) = self.ring.next() {
            match parse_event(&item) {
                Some(e) => {
                    n += 1;
                    f(e);
                }
                None => bad += 1,
            }
        }
        (n, bad)
    }

    /// The program's counters, summed over CPUs.
    pub fn counters(&self) -> io::Result<Counters> {
        let get = |i: u32| -> io::Result<u64> {
            let v = self
                .counters
                .get(&i, 0)
                .map_err(|e| io::Error::other(format!("reading counter {i}: {e}")))?;
            Ok(v.iter().copied().fold(0u64, u64::wrapping_add))
        };
        Ok(Counters {
            loops: get(0)?,
            loop_drops: get(1)?,
            ends: get(2)?,
            end_drops: get(3)?,
        })
    }
}

/// Parses one ring-buffer record (`struct loop_event`, 128 bytes, native
/// byte order) into a [`LoopEvent`]. `None` if the size or kind is wrong.
pub fn parse_event(b: &[u8]) -> Option<LoopEvent> {
    if b.len() != EVENT_LEN {
        return None;
    }
    let u64_at = |o: usize| u64::from_ne_bytes(b[o..o + 8].try_into().expect("8 bytes"));
    let u32_at = |o: usize| u32::from_ne_bytes(b[o..o + 4].try_into().expect("4 bytes"));
    let u16_at = |o: usize| u16::from_ne_bytes(b[o..o + 2].try_into().expect("2 bytes"));
    let kind = match u32_at(40) {
        1 => EventKind::Loop,
        2 => EventKind::End,
        _ => return None,
    };
    let family = u16_at(88);
    let port = u16_at(90);
    let raw = &b[92..108];
    let ip = match family as i32 {
        libc::AF_INET => IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3])),
        libc::AF_INET6 => {
            let a: [u8; 16] = raw.try_into().expect("16 bytes");
            let v6 = Ipv6Addr::from(a);
            IpAddr::V6(v6)
        }
        _ => return None,
    };
    let mut ancestors = [0u32; ANCESTORS];
    for (i, a) in ancestors.iter_mut().enumerate() {
        *a = u32_at(56 + 4 * i);
    }
    let comm = &b[112..128];
    let comm_len = comm.iter().position(|&c| c == 0).unwrap_or(comm.len());
    Some(LoopEvent {
        kind,
        monotonic_ns: u64_at(0),
        started_ns: u64_at(32),
        pid: u32_at(44),
        tid: u32_at(48),
        comm: String::from_utf8_lossy(&comm[..comm_len]).into_owned(),
        addr: SocketAddr::new(ip, port),
        netns: u32_at(52),
        cookie: u64_at(8),
        inode: u64_at(24),
        cgroup_id: u64_at(16),
        ancestors,
        owned: b[110] != 0,
        old_state: b[108],
        new_state: b[109],
    })
}

/// CLOCK_MONOTONIC now, in nanoseconds: the clock of
/// [`LoopEvent::monotonic_ns`] (`bpf_ktime_get_ns`). `clock_gettime(2)`.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid timespec to write to; CLOCK_MONOTONIC exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A loop event as the program writes it: 127.0.0.1:40004, pid 4242.
    fn fixture() -> Vec<u8> {
        let mut b = vec![0u8; EVENT_LEN];
        b[0..8].copy_from_slice(&123_456_789u64.to_ne_bytes()); // ts_ns
        b[8..16].copy_from_slice(&77u64.to_ne_bytes()); // cookie
        b[16..24].copy_from_slice(&1u64.to_ne_bytes()); // cgroup_id
        b[24..32].copy_from_slice(&9999u64.to_ne_bytes()); // sock_inode
        b[40..44].copy_from_slice(&1u32.to_ne_bytes()); // kind: loop
        b[44..48].copy_from_slice(&4242u32.to_ne_bytes()); // tgid
        b[48..52].copy_from_slice(&4243u32.to_ne_bytes()); // tid
        b[52..56].copy_from_slice(&4026531840u32.to_ne_bytes()); // netns
        b[56..60].copy_from_slice(&100u32.to_ne_bytes()); // parent
        b[60..64].copy_from_slice(&1u32.to_ne_bytes()); // grandparent: init
        b[88..90].copy_from_slice(&2u16.to_ne_bytes()); // AF_INET
        b[90..92].copy_from_slice(&40004u16.to_ne_bytes()); // port
        b[92..96].copy_from_slice(&[127, 0, 0, 1]); // address
        b[108] = 2; // SYN_SENT
        b[109] = 3; // SYN_RECV
        b[110] = 1; // owned
        b[112..119].copy_from_slice(b"python3");
        b
    }

    #[test]
    fn a_loop_record_parses() {
        let e = parse_event(&fixture()).unwrap();
        assert_eq!(e.kind, EventKind::Loop);
        assert_eq!(e.addr, "127.0.0.1:40004".parse().unwrap());
        assert_eq!((e.pid, e.tid, e.netns), (4242, 4243, 4026531840));
        assert_eq!((e.cookie, e.inode, e.cgroup_id), (77, 9999, 1));
        assert_eq!(e.comm, "python3");
        assert_eq!(&e.ancestors[..3], &[100, 1, 0]);
        assert!(e.owned);
        assert_eq!((e.old_state, e.new_state), (2, 3));
    }

    #[test]
    fn ipv6_ends_and_bad_records() {
        let mut b = fixture();
        b[40..44].copy_from_slice(&2u32.to_ne_bytes()); // end
        b[32..40].copy_from_slice(&100u64.to_ne_bytes()); // started
        b[88..90].copy_from_slice(&10u16.to_ne_bytes()); // AF_INET6
        b[92..108].copy_from_slice(&Ipv6Addr::LOCALHOST.octets());
        b[112..128].copy_from_slice(b"sixteen-bytes-cm"); // no NUL: all 16
        let e = parse_event(&b).unwrap();
        assert_eq!(e.kind, EventKind::End);
        assert_eq!(e.started_ns, 100);
        assert_eq!(e.addr, "[::1]:40004".parse().unwrap());
        assert_eq!(e.comm, "sixteen-bytes-cm");
        assert!(parse_event(&b[..127]).is_none());
        b[40] = 9;
        assert!(parse_event(&b).is_none());
    }

    #[test]
    fn the_embedded_object_is_an_elf_bpf_object() {
        assert_eq!(&OBJECT[..4], b"\x7fELF");
        // e_machine EM_BPF (247)
        assert_eq!(u16::from_le_bytes([OBJECT[18], OBJECT[19]]), 247);
    }
}
