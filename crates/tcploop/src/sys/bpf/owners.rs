//! Socket owners found in the kernel: the `task_file` BPF iterator of
//! `bpf/owners.bpf.c`.
//!
//! A BPF iterator is a program the kernel runs once for every object of a
//! kind, here every open file of every task of the reader's PID namespace,
//! while userspace `read(2)`s a file descriptor made from it
//! (`BPF_ITER_CREATE`). What the program writes with `bpf_seq_write` is
//! what `read` returns. One pass over 100k files costs about 60 ms, against
//! about 6 µs a file for reading the `/proc/PID/fd/N` links one by one.
//!
//! Two programs share the object (see its comments): `owners_loops` keeps
//! the self-connected TCP sockets, `owners_wanted` the sockets whose inode
//! is in the map `wanted`. Each kept socket comes back as a [`Record`].
//!
//! Why by hand rather than through aya's program types: aya 0.13 has no
//! iterator program type (it cannot even parse an `iter/` section), and
//! newer aya needs a newer Rust. So the object is parsed and relocated
//! (CO-RE against the kernel's BTF, the map reference) with `aya-obj`, the
//! same crate aya uses underneath, and the four `bpf(2)` commands aya would
//! issue (`BPF_MAP_CREATE`, `BPF_PROG_LOAD` as `BPF_TRACE_ITER` against the
//! kernel's `bpf_iter_task_file`, `BPF_LINK_CREATE`, `BPF_ITER_CREATE`) are
//! issued here, each with its attribute struct spelled out (`bpf(2)`,
//! `include/uapi/linux/bpf.h`).

use std::collections::HashSet;
use std::ffi::CString;
use std::io::{self, Read};
use std::mem::size_of;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use aya_obj::btf::{Btf, BtfKind};
use aya_obj::generated::{bpf_attach_type, bpf_cmd, bpf_insn, bpf_map_type, bpf_prog_type};
use aya_obj::Object;

use super::{classify, precheck, Refusal, VMLINUX_BTF};

/// The compiled object (`make -C crates/tcploop/bpf`), 8-byte aligned: the
/// ELF parser reads its headers in place.
static OBJECT: &Aligned<[u8]> = &Aligned(*include_bytes!("../../../bpf/owners.bpf.o"));

#[repr(C, align(8))]
struct Aligned<T: ?Sized>(T);

/// One record's size on the wire (`struct record` in the C source).
pub const RECORD_SIZE: usize = 32;

/// How many inodes `owners_wanted` can look for in one pass.
const WANTED_CAPACITY: u32 = 1 << 20;

/// One socket fd the iterator kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The process, numbered in the reader's PID namespace.
    pub pid: u32,
    /// The file descriptor.
    pub fd: i32,
    /// The socket's inode.
    pub inode: u64,
    /// The command name (`comm`, at most 15 bytes).
    pub comm: String,
}

/// What one pass of the iterator returned.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pass {
    /// The socket fds kept, in the kernel's order (by pid, then fd).
    pub records: Vec<Record>,
    /// Open files visited (every fd of every task walked).
    pub files_visited: u64,
}

/// Why a pass's output could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    /// The output is not a whole number of records.
    #[error("iterator output of {0} bytes is not a whole number of 32-byte records")]
    Truncated(usize),
    /// The trailer (the last record, fd -1) is missing: the pass stopped early.
    #[error("iterator output has no trailer record: the pass did not finish")]
    NoTrailer,
}

/// Parses the iterator's output: 32-byte records `{u32 pid, s32 fd, u64
/// inode, char comm[16]}` in native byte order, the last one a trailer
/// `{0, -1, files visited}`.
pub fn parse(bytes: &[u8]) -> Result<Pass, ParseError> {
    if bytes.len() % RECORD_SIZE != 0 {
        return Err(ParseError::Truncated(bytes.len()));
    }
    let mut pass = Pass::default();
    let mut trailer = false;
    for r in bytes.chunks_exact(RECORD_SIZE) {
        let pid = u32::from_ne_bytes(r[0..4].try_into().expect("4 bytes"));
        let fd = i32::from_ne_bytes(r[4..8].try_into().expect("4 bytes"));
        let inode = u64::from_ne_bytes(r[8..16].try_into().expect("8 bytes"));
        if fd == -1 {
            trailer = true;
            pass.files_visited = inode;
            continue;
        }
        let comm = &r[16..32];
        let len = comm.iter().position(|b| *b == 0).unwrap_or(comm.len());
        pass.records.push(Record {
            pid,
            fd,
            inode,
            comm: String::from_utf8_lossy(&comm[..len]).into_owned(),
        });
    }
    if !trailer {
        return Err(ParseError::NoTrailer);
    }
    Ok(pass)
}

/// The two iterator programs, loaded and attached, and their map. Dropping
/// it closes every fd: the kernel frees the programs, links and map.
#[derive(Debug)]
pub struct OwnerIter {
    loops: OwnedFd,
    wanted: OwnedFd,
    map: OwnedFd,
}

impl OwnerIter {
    /// Loads both programs and attaches them as `task_file` iterators.
    /// Refused (with the step that failed) without BTF, without the
    /// privileges (CAP_BPF + CAP_PERFMON, or root), or when the kernel
    /// rejects the program.
    pub fn load() -> Result<OwnerIter, Refusal> {
        precheck()?;
        // the map first: the cheapest call that needs the privileges, so
        // that an unprivileged caller is told at once
        let map =
            map_create(8, 1, WANTED_CAPACITY).map_err(|e| classify("creating the BPF map", &e))?;
        let btf = Btf::from_sys_fs().map_err(|e| {
            Refusal::Unsupported(format!("reading the kernel's BTF ({VMLINUX_BTF}): {e}"))
        })?;
        let target = btf
            .id_by_type_name_kind("bpf_iter_task_file", BtfKind::Func)
            .map_err(|_| {
                Refusal::Unsupported(
                    "finding bpf_iter_task_file in the kernel's BTF (task_file iterators need \
                     Linux 5.8+)"
                        .into(),
                )
            })?;
        let mut obj = Object::parse(&OBJECT.0)
            .map_err(|e| Refusal::Unsupported(format!("parsing owners.bpf.o: {e}")))?;
        obj.relocate_btf(&btf)
            .map_err(|e| Refusal::Unsupported(format!("CO-RE relocation of owners.bpf.o: {e}")))?;
        let map_def = obj
            .maps
            .get("wanted")
            .ok_or_else(|| Refusal::Unsupported("owners.bpf.o has no map `wanted`".into()))?
            .clone();
        if (map_def.key_size(), map_def.value_size()) != (8, 1) {
            return Err(Refusal::Unsupported(
                "owners.bpf.o: the map `wanted` is not u64 -> u8".into(),
            ));
        }
        obj.relocate_maps(
            [("wanted", map.as_raw_fd(), &map_def)].into_iter(),
            &HashSet::new(),
        )
        .map_err(|e| Refusal::Unsupported(format!("map relocation of owners.bpf.o: {e}")))?;
        let license = obj.license.clone();
        let attach = |name: &str| -> Result<OwnedFd, Refusal> {
            let f = obj
                .functions
                .values()
                .find(|f| f.name == name)
                .ok_or_else(|| Refusal::Unsupported(format!("owners.bpf.o has no {name}")))?;
            let prog = prog_load(name, &f.instructions, &license, target)
                .map_err(|e| classify(&format!("loading the BPF program {name}"), &e))?;
            link_create(&prog).map_err(|e| classify("attaching the task_file iterator", &e))
        };
        Ok(OwnerIter {
            loops: attach("owners_loops")?,
            wanted: attach("owners_wanted")?,
            map,
        })
    }

    /// One pass keeping every self-connected TCP socket, in every network
    /// namespace.
    pub fn loops(&self) -> io::Result<Pass> {
        run(&self.loops)
    }

    /// One pass keeping the sockets with these inodes (at most 2^20).
    pub fn wanted(&self, inodes: &[u64]) -> io::Result<Pass> {
        if inodes.len() > WANTED_CAPACITY as usize {
            return Err(io::Error::other(format!(
                "{} inodes asked for, at most {WANTED_CAPACITY} in one pass",
                inodes.len()
            )));
        }
        let mut added = vec![];
        let res = (|| {
            for i in inodes {
                map_update(&self.map, *i)?;
                added.push(*i);
            }
            run(&self.wanted)
        })();
        for i in added {
            let _ = map_delete(&self.map, i);
        }
        res
    }
}

/// Creates an iterator from the link and reads it to the end.
fn run(link: &OwnedFd) -> io::Result<Pass> {
    let attr = IterCreate {
        link_fd: link.as_raw_fd() as u32,
        flags: 0,
    };
    let mut file = std::fs::File::from(bpf(bpf_cmd::BPF_ITER_CREATE, &attr)?);
    let mut out = Vec::with_capacity(64 * 1024);
    file.read_to_end(&mut out)?;
    parse(&out).map_err(io::Error::other)
}

// The attribute structs of the bpf(2) commands used, each the leading part
// of `union bpf_attr` for its command (the kernel zero-fills the rest).

#[repr(C)]
struct MapCreate {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
}

#[repr(C)]
struct MapElem {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

#[repr(C)]
struct ProgLoad {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
    prog_btf_fd: u32,
    func_info_rec_size: u32,
    func_info: u64,
    func_info_cnt: u32,
    line_info_rec_size: u32,
    line_info: u64,
    line_info_cnt: u32,
    attach_btf_id: u32,
}

#[repr(C)]
struct LinkCreate {
    prog_fd: u32,
    target_fd: u32,
    attach_type: u32,
    flags: u32,
    iter_info: u64,
    iter_info_len: u32,
    _pad: u32,
}

#[repr(C)]
struct IterCreate {
    link_fd: u32,
    flags: u32,
}

/// `bpf(cmd, attr, sizeof attr)` for a command that returns a new fd.
fn bpf<T>(cmd: bpf_cmd, attr: &T) -> io::Result<OwnedFd> {
    let fd = bpf_call(cmd, attr)?;
    // SAFETY: the commands passed here return a new file descriptor that
    // nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// `bpf(cmd, attr, sizeof attr)`, the raw result.
fn bpf_call<T>(cmd: bpf_cmd, attr: &T) -> io::Result<i64> {
    // SAFETY: `attr` is a live, initialized #[repr(C)] struct laid out as
    // the leading fields of `union bpf_attr` for `cmd`, and its size is
    // passed with it; every pointer inside it points to memory that
    // outlives the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd as libc::c_long,
            attr as *const T,
            size_of::<T>() as libc::c_ulong,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn map_create(key_size: u32, value_size: u32, max_entries: u32) -> io::Result<OwnedFd> {
    const BPF_F_NO_PREALLOC: u32 = 1;
    bpf(
        bpf_cmd::BPF_MAP_CREATE,
        &MapCreate {
            map_type: bpf_map_type::BPF_MAP_TYPE_HASH as u32,
            key_size,
            value_size,
            max_entries,
            map_flags: BPF_F_NO_PREALLOC,
        },
    )
}

fn map_update(map: &OwnedFd, inode: u64) -> io::Result<()> {
    let value = 1u8;
    bpf_call(
        bpf_cmd::BPF_MAP_UPDATE_ELEM,
        &MapElem {
            map_fd: map.as_raw_fd() as u32,
            _pad: 0,
            key: &inode as *const u64 as u64,
            value: &value as *const u8 as u64,
            flags: 0,
        },
    )
    .map(drop)
}

fn map_delete(map: &OwnedFd, inode: u64) -> io::Result<()> {
    bpf_call(
        bpf_cmd::BPF_MAP_DELETE_ELEM,
        &MapElem {
            map_fd: map.as_raw_fd() as u32,
            _pad: 0,
            key: &inode as *const u64 as u64,
            value: 0,
            flags: 0,
        },
    )
    .map(drop)
}

/// Loads `insns` as an iterator program for the kernel function `target`
/// (a BTF id). On a verifier rejection the error carries the verifier's
/// last lines.
fn prog_load(
    name: &str,
    insns: &[bpf_insn],
    license: &CString,
    target: u32,
) -> io::Result<OwnedFd> {
    let mut prog_name = [0u8; 16];
    for (d, s) in prog_name.iter_mut().zip(name.bytes().take(15)) {
        *d = s;
    }
    let attr = |log: &mut [u8]| ProgLoad {
        prog_type: bpf_prog_type::BPF_PROG_TYPE_TRACING as u32,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: u32::from(!log.is_empty()),
        log_size: log.len() as u32,
        log_buf: if log.is_empty() {
            0
        } else {
            log.as_mut_ptr() as u64
        },
        kern_version: 0,
        prog_flags: 0,
        prog_name,
        prog_ifindex: 0,
        expected_attach_type: bpf_attach_type::BPF_TRACE_ITER as u32,
        prog_btf_fd: 0,
        func_info_rec_size: 0,
        func_info: 0,
        func_info_cnt: 0,
        line_info_rec_size: 0,
        line_info: 0,
        line_info_cnt: 0,
        attach_btf_id: target,
    };
    match bpf(bpf_cmd::BPF_PROG_LOAD, &attr(&mut [])) {
        Err(e)
            if e.raw_os_error() == Some(libc::EINVAL) || e.raw_os_error() == Some(libc::EACCES) =>
        {
            // again, with the verifier's log, to say why
            let mut log = vec![0u8; 64 * 1024];
            match bpf(bpf_cmd::BPF_PROG_LOAD, &attr(&mut log)) {
                Ok(fd) => Ok(fd),
                Err(e2) => {
                    let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
                    let text = String::from_utf8_lossy(&log[..end]);
                    let tail: Vec<&str> = text.lines().rev().take(2).collect();
                    if tail.is_empty() {
                        Err(e2)
                    } else {
                        let tail: Vec<&str> = tail.into_iter().rev().collect();
                        Err(io::Error::new(
                            e2.kind(),
                            format!("{e2}; verifier: {}", tail.join(" / ")),
                        ))
                    }
                }
            }
        }
        r => r,
    }
}

fn link_create(prog: &OwnedFd) -> io::Result<OwnedFd> {
    bpf(
        bpf_cmd::BPF_LINK_CREATE,
        &LinkCreate {
            prog_fd: prog.as_raw_fd() as u32,
            target_fd: 0,
            attach_type: bpf_attach_type::BPF_TRACE_ITER as u32,
            flags: 0,
            iter_info: 0,
            iter_info_len: 0,
            _pad: 0,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(pid: u32, fd: i32, inode: u64, comm: &[u8]) -> Vec<u8> {
        let mut r = vec![];
        r.extend_from_slice(&pid.to_ne_bytes());
        r.extend_from_slice(&fd.to_ne_bytes());
        r.extend_from_slice(&inode.to_ne_bytes());
        let mut c = [0u8; 16];
        c[..comm.len()].copy_from_slice(comm);
        r.extend_from_slice(&c);
        r
    }

    #[test]
    fn records_and_trailer() {
        let mut b = rec(1234, 3, 9771884, b"python3");
        // a 15-byte name fills the field up to its NUL
        b.extend(rec(77, 20000, 42, b"fifteen-chars-x"));
        b.extend(rec(0, -1, 100_567, b""));
        let p = parse(&b).unwrap();
        assert_eq!(p.files_visited, 100_567);
        assert_eq!(
            p.records,
            vec![
                Record {
                    pid: 1234,
                    fd: 3,
                    inode: 9771884,
                    comm: "python3".into()
                },
                Record {
                    pid: 77,
                    fd: 20000,
                    inode: 42,
                    comm: "fifteen-chars-x".into()
                },
            ]
        );
    }

    #[test]
    fn a_cut_or_unfinished_pass_is_an_error() {
        let b = rec(1, 3, 5, b"a");
        assert_eq!(parse(&b[..31]), Err(ParseError::Truncated(31)));
        assert_eq!(parse(&b), Err(ParseError::NoTrailer));
        assert_eq!(parse(&[]), Err(ParseError::NoTrailer));
    }

    /// The real programs against a listener of this process (root and BTF;
    /// skipped otherwise: the integration tests cover both paths).
    #[test]
    fn finds_this_process_holding_its_listener() {
        use std::os::fd::AsRawFd;
        let it = match OwnerIter::load() {
            Ok(it) => it,
            Err(e) => {
                eprintln!("SKIPPED finds_this_process_holding_its_listener: {e}");
                assert!(std::env::var_os("TCPLOOP_REQUIRE_PRIVILEGED").is_none());
                return;
            }
        };
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let link = std::fs::read_link(format!("/proc/self/fd/{}", l.as_raw_fd())).unwrap();
        let inode = crate::sys::procfd::socket_inode(link.as_os_str().as_encoded_bytes()).unwrap();
        let p = it.wanted(&[inode]).unwrap();
        assert_eq!(
            p.records,
            vec![Record {
                pid: std::process::id(),
                fd: l.as_raw_fd(),
                inode,
                comm: crate::sys::procfd::Proc::open()
                    .unwrap()
                    .comm(std::process::id())
                    .unwrap(),
            }]
        );
        assert!(p.files_visited > 3);
        // the map is emptied after each pass
        assert!(it.wanted(&[]).unwrap().records.is_empty());
        // a listener is no loop
        assert!(!it.loops().unwrap().records.iter().any(|r| r.inode == inode));
    }
}
