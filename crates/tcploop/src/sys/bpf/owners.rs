//! Socket owners found in the kernel: the `task_file` BPF iterator of
//! `bpf/owners.bpf.c`.
//!
//! A BPF iterator is a program the kernel runs once for every object of a
//! kind, here every open file of every task of the reader's PID namespace,
//! while userspace `read(2)`s a file descriptor made from it
//! (`BPF_ITER_CREATE`). What the program writes with `bpf_seq_write` is
//! what `read` returns. One pass over 100k files costs 20 to 60 ms (0.2 to
//! 0.6 µs a file), against about 4 to 6 µs a file for reading the
//! `/proc/PID/fd/N` links one by one.
//!
//! Two programs share the object (see its comments): `owners_wanted` keeps
//! the sockets whose inode is in the map `wanted` (what `scan` uses),
//! `owners_loops` the self-connected TCP sockets (loaded only on request:
//! the benchmark compares the two). Each kept socket comes back as a
//! [`Record`].
//!
//! Why by hand rather than through aya's program types: aya 0.13 has no
//! iterator program type (it cannot even parse an `iter/` section), and
//! newer aya needs a newer Rust. So the object is parsed (functions, map
//! reference, BTF) with `aya-obj`, the crate aya uses underneath, and the
//! `bpf(2)` commands aya would issue are issued here, each with its
//! attribute struct spelled out (`include/uapi/linux/bpf.h`):
//! `BPF_MAP_CREATE`, `BPF_BTF_LOAD` (the object's own type information),
//! `BPF_PROG_LOAD` as a `BPF_TRACE_ITER` program for the kernel's
//! `bpf_iter_task_file`, `BPF_LINK_CREATE`, `BPF_ITER_CREATE`.
//!
//! CO-RE (rewriting the object's field offsets for the running kernel) is
//! left to the kernel itself (`core_relos` of `BPF_PROG_LOAD`, Linux
//! 5.17+): userspace then never parses the kernel's 5 MB of BTF, which
//! would cost about 30 ms and 15 MB. It only reads it once, 64 KiB at a
//! time, for the id of `bpf_iter_task_file` ([`func_id`]).

use std::collections::HashSet;
use std::ffi::CString;
use std::io::{self, Read};
use std::mem::size_of;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use aya_obj::btf::{BtfFeatures, BtfKind};
use aya_obj::generated::{bpf_attach_type, bpf_cmd, bpf_insn, bpf_map_type, bpf_prog_type};
use object::{Object as _, ObjectSection as _};

use super::{classify, precheck, Refusal, VMLINUX_BTF};

/// The compiled object (`make -C crates/tcploop/bpf`), 8-byte aligned: the
/// ELF parser reads its headers in place.
static OBJECT: &Aligned<[u8]> = &Aligned(*include_bytes!("../../../bpf/owners.bpf.o"));

#[repr(C, align(8))]
struct Aligned<T: ?Sized>(T);

/// One record's size on the wire (`struct record` in the C source).
pub const RECORD_SIZE: usize = 32;

/// How many inodes `owners_wanted` looks for in one pass (more take more
/// passes). Small: the kernel allocates the hash table's buckets up front,
/// and a million of them cost 7 ms.
const WANTED_CAPACITY: u32 = 4096;

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

/// The iterator programs, loaded and attached, and their map. Dropping it
/// closes every fd: the kernel frees the programs, links and map.
#[derive(Debug)]
pub struct OwnerIter {
    loops: Option<OwnedFd>,
    wanted: OwnedFd,
    map: OwnedFd,
}

impl OwnerIter {
    /// Loads `owners_wanted` and attaches it as a `task_file` iterator.
    /// Refused (with the step that failed) without BTF, without the
    /// privileges (CAP_BPF + CAP_PERFMON, or root), or when the kernel
    /// rejects the program.
    pub fn load() -> Result<OwnerIter, Refusal> {
        Self::load_programs(false)
    }

    /// [`OwnerIter::load`], and `owners_loops` too (for [`OwnerIter::loops`]).
    pub fn load_with_loop_test() -> Result<OwnerIter, Refusal> {
        Self::load_programs(true)
    }

    fn load_programs(with_loops: bool) -> Result<OwnerIter, Refusal> {
        precheck()?;
        // the map first: the cheapest call that needs the privileges, so
        // that an unprivileged caller is told at once
        let map =
            map_create(8, 1, WANTED_CAPACITY).map_err(|e| classify("creating the BPF map", &e))?;
        let target = std::fs::File::open(VMLINUX_BTF)
            .and_then(|f| {
                use std::os::unix::fs::FileExt;
                func_id(|off, buf| f.read_at(buf, off), "bpf_iter_task_file")
            })
            .map_err(|e| Refusal::Unsupported(format!("reading {VMLINUX_BTF}: {e}")))?
            .ok_or_else(|| {
                Refusal::Unsupported(
                    "finding bpf_iter_task_file in the kernel's BTF (task_file iterators need \
                 Linux 5.8+)"
                        .into(),
                )
            })?;
        let bad = |what: &str, e: &dyn std::fmt::Display| {
            Refusal::Unsupported(format!("owners.bpf.o: {what}: {e}"))
        };
        let mut obj = aya_obj::Object::parse(&OBJECT.0).map_err(|e| bad("parsing", &e))?;
        let relos = core_relos(&OBJECT.0).map_err(|e| bad("reading .BTF.ext", &e))?;
        let map_def = obj
            .maps
            .get("wanted")
            .ok_or_else(|| bad("the map `wanted`", &"missing"))?
            .clone();
        if (map_def.key_size(), map_def.value_size()) != (8, 1) {
            return Err(bad("the map `wanted`", &"not u64 -> u8"));
        }
        obj.relocate_maps(
            [("wanted", map.as_raw_fd(), &map_def)].into_iter(),
            &HashSet::new(),
        )
        .map_err(|e| bad("map relocation", &e))?;
        // the object's own BTF, for the kernel's CO-RE: DATASEC sizes fixed
        // up as libbpf does, nothing removed (every feature is there)
        let features = BtfFeatures::new(true, true, true, true, true, true, true);
        let btf = obj
            .fixup_and_sanitize_btf(&features)
            .map_err(|e| bad("BTF", &e))?
            .ok_or_else(|| bad("BTF", &"missing"))?
            .clone();
        let btf_fd =
            btf_load(&btf.to_bytes()).map_err(|e| classify("loading the object's BTF", &e))?;
        let license = obj.license.clone();
        let attach = |name: &str| -> Result<OwnedFd, Refusal> {
            let f = obj
                .functions
                .values()
                .find(|f| f.name == name)
                .ok_or_else(|| bad(name, &"missing"))?;
            let func = btf
                .id_by_type_name_kind(name, BtfKind::Func)
                .map_err(|e| bad(name, &e))?;
            // the function's CO-RE records, their offsets made relative to it
            let start = f.section_offset as u32;
            let end = start + (f.instructions.len() * size_of::<bpf_insn>()) as u32;
            let mine: Vec<CoreRelo> = relos
                .iter()
                .filter(|r| (start..end).contains(&r.insn_off))
                .map(|r| CoreRelo {
                    insn_off: r.insn_off - start,
                    ..*r
                })
                .collect();
            let prog = prog_load(&Prog {
                name,
                insns: &f.instructions,
                license: &license,
                target,
                btf_fd: &btf_fd,
                func,
                relos: &mine,
            })
            .map_err(|e| classify(&format!("loading the BPF program {name}"), &e))?;
            link_create(&prog).map_err(|e| classify("attaching the task_file iterator", &e))
        };
        Ok(OwnerIter {
            loops: with_loops.then(|| attach("owners_loops")).transpose()?,
            wanted: attach("owners_wanted")?,
            map,
        })
    }

    /// One pass keeping every self-connected TCP socket, in every network
    /// namespace (loaded with [`OwnerIter::load_with_loop_test`]).
    pub fn loops(&self) -> io::Result<Pass> {
        match &self.loops {
            Some(link) => run(link),
            None => Err(io::Error::other("owners_loops was not loaded")),
        }
    }

    /// The sockets with these inodes: one pass for every 4,096 of them.
    pub fn wanted(&self, inodes: &[u64]) -> io::Result<Pass> {
        let mut all = Pass::default();
        for chunk in inodes.chunks(WANTED_CAPACITY as usize).chain(
            // no inode at all: still one (empty-handed) pass
            inodes.is_empty().then_some(&[][..]),
        ) {
            let p = self.wanted_pass(chunk)?;
            all.records.extend(p.records);
            all.files_visited += p.files_visited;
        }
        Ok(all)
    }

    fn wanted_pass(&self, inodes: &[u64]) -> io::Result<Pass> {
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

// Raw BTF (`Documentation/bpf/btf.rst`): a header, then the type records,
// each 12 bytes plus a part whose size depends on its kind, then the
// strings. Type ids count the records from 1.
const BTF_MAGIC: u16 = 0xeb9f;
const BTF_KIND_FUNC: u32 = 12;

/// The id of the `FUNC` type named `name` in raw BTF, read through
/// `read_at(offset, buf)` (`pread(2)`) in 64 KiB pieces, so that the
/// kernel's 5 MB are never held at once: first the string section, for the
/// offset of `name`, then the type records, for the `FUNC` that bears it.
/// `Ok(None)`: not there.
pub fn func_id(
    read_at: impl Fn(u64, &mut [u8]) -> io::Result<usize>,
    name: &str,
) -> io::Result<Option<u32>> {
    let mut r = Chunked::new(&read_at);
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, format!("BTF: {what}"));
    let hdr = r.get(0, 24)?.ok_or_else(|| bad("no header"))?;
    let u32_in = |b: &[u8], o: usize| u32::from_ne_bytes(b[o..o + 4].try_into().expect("4 bytes"));
    if u16::from_ne_bytes([hdr[0], hdr[1]]) != BTF_MAGIC {
        return Err(bad("bad magic"));
    }
    let hdr_len = u64::from(u32_in(&hdr, 4));
    let types = hdr_len + u64::from(u32_in(&hdr, 8));
    let types_end = types + u64::from(u32_in(&hdr, 12));
    let strings = hdr_len + u64::from(u32_in(&hdr, 16));
    let strings_end = strings + u64::from(u32_in(&hdr, 20));
    // the strings: NUL-separated, the first one empty, so every name but
    // that one follows a NUL: look for "\0name\0"
    let mut pattern = vec![0u8];
    pattern.extend_from_slice(name.as_bytes());
    pattern.push(0);
    let mut offsets = vec![];
    let mut at = strings;
    while at < strings_end {
        let want = (strings_end - at).min(CHUNK as u64) as usize;
        let Some(piece) = r.get(at, want)? else { break };
        for (i, w) in piece.windows(pattern.len()).enumerate() {
            if w == &pattern[..] {
                offsets.push(at - strings + i as u64 + 1);
            }
        }
        if want < CHUNK {
            break;
        }
        // overlap the next piece so that a name cut in two is still seen
        at += (want - pattern.len() + 1) as u64;
    }
    if offsets.is_empty() {
        return Ok(None);
    }
    let (mut at, mut id) = (types, 1u32);
    while at + 12 <= types_end {
        let rec = r
            .get(at, 12)?
            .ok_or_else(|| bad("type records cut short"))?;
        let (name_off, info) = (u64::from(u32_in(&rec, 0)), u32_in(&rec, 4));
        let (kind, vlen) = ((info >> 24) & 0x1f, u64::from(info & 0xffff));
        if kind == BTF_KIND_FUNC && offsets.contains(&name_off) {
            return Ok(Some(id));
        }
        at += 12
            + match kind {
                1 | 14 | 17 => 4,             // INT, VAR, DECL_TAG
                3 => 12,                      // ARRAY
                4 | 5 | 15 | 19 => 12 * vlen, // STRUCT, UNION, DATASEC, ENUM64
                6 | 13 => 8 * vlen,           // ENUM, FUNC_PROTO
                0 | 2 | 7..=12 | 16 | 18 => 0,
                k => return Err(bad(&format!("type kind {k} unknown to this walker"))),
            };
        id += 1;
    }
    Ok(None)
}

const CHUNK: usize = 64 * 1024;

/// Reads through `read_at` in pieces of [`CHUNK`], keeping one piece.
struct Chunked<'a, F> {
    read_at: &'a F,
    start: u64,
    buf: Vec<u8>,
}

impl<'a, F: Fn(u64, &mut [u8]) -> io::Result<usize>> Chunked<'a, F> {
    fn new(read_at: &'a F) -> Self {
        Chunked {
            read_at,
            start: 0,
            buf: vec![],
        }
    }

    /// The `len` bytes at `off` (`None` past the end).
    fn get(&mut self, off: u64, len: usize) -> io::Result<Option<Vec<u8>>> {
        let end = self.start + self.buf.len() as u64;
        if off < self.start || off + len as u64 > end {
            self.start = off;
            self.buf.resize(len.max(CHUNK), 0);
            let mut got = 0;
            while got < self.buf.len() {
                let n = (self.read_at)(off + got as u64, &mut self.buf[got..])?;
                if n == 0 {
                    break;
                }
                got += n;
            }
            self.buf.truncate(got);
            if got < len {
                return Ok(None);
            }
        }
        let i = (off - self.start) as usize;
        Ok(Some(self.buf[i..i + len].to_vec()))
    }
}

/// One CO-RE relocation record (`struct bpf_core_relo`): the instruction
/// (a byte offset), the local type and access path, the kind.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CoreRelo {
    insn_off: u32,
    type_id: u32,
    access_str_off: u32,
    kind: u32,
}

/// The CO-RE records of the `.text` section, from the object's `.BTF.ext`
/// (header, then `rec_size` and one block a section: name offset, count,
/// records). Offsets are bytes from the start of `.text`.
fn core_relos(elf: &[u8]) -> Result<Vec<CoreRelo>, String> {
    let file = object::File::parse(elf).map_err(|e| e.to_string())?;
    let ext = file
        .section_by_name(".BTF.ext")
        .ok_or("no .BTF.ext section")?
        .data()
        .map_err(|e| e.to_string())?;
    let btf = file
        .section_by_name(".BTF")
        .ok_or("no .BTF section")?
        .data()
        .map_err(|e| e.to_string())?;
    parse_core_relos(ext, btf, ".text")
}

/// [`core_relos`] on the section bytes: the records of section `sec`.
fn parse_core_relos(ext: &[u8], btf: &[u8], sec: &str) -> Result<Vec<CoreRelo>, String> {
    let u32_at = |b: &[u8], off: usize| -> Result<u32, String> {
        b.get(off..off + 4)
            .map(|x| u32::from_ne_bytes(x.try_into().expect("4 bytes")))
            .ok_or_else(|| format!("cut at byte {off}"))
    };
    let hdr_len = u32_at(ext, 4)? as usize;
    if hdr_len < 32 {
        return Ok(vec![]); // no CO-RE part
    }
    let (off, len) = (u32_at(ext, 24)? as usize, u32_at(ext, 28)? as usize);
    let part = ext
        .get(hdr_len + off..hdr_len + off + len)
        .ok_or("CO-RE part out of bounds")?;
    // section names are strings of the object's BTF
    let strings = {
        let h = u32_at(btf, 4)? as usize;
        let so = u32_at(btf, 16)? as usize;
        btf.get(h + so..).ok_or("BTF strings out of bounds")?
    };
    let name_at = |o: usize| -> Option<&[u8]> {
        let s = strings.get(o..)?;
        Some(&s[..s.iter().position(|b| *b == 0)?])
    };
    let rec_size = u32_at(part, 0)? as usize;
    if rec_size < size_of::<CoreRelo>() {
        return Err(format!("CO-RE records of {rec_size} bytes"));
    }
    let mut at = 4;
    let mut out = vec![];
    while at < part.len() {
        let (name, n) = (u32_at(part, at)? as usize, u32_at(part, at + 4)? as usize);
        at += 8;
        let ours = name_at(name) == Some(sec.as_bytes());
        for _ in 0..n {
            if ours {
                out.push(CoreRelo {
                    insn_off: u32_at(part, at)?,
                    type_id: u32_at(part, at + 4)?,
                    access_str_off: u32_at(part, at + 8)?,
                    kind: u32_at(part, at + 12)?,
                });
            }
            at += rec_size;
        }
    }
    Ok(out)
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
    attach_btf_obj_fd: u32,
    core_relo_cnt: u32,
    fd_array: u64,
    core_relos: u64,
    core_relo_rec_size: u32,
    log_true_size: u32,
}

#[repr(C)]
struct BtfLoad {
    btf: u64,
    btf_log_buf: u64,
    btf_size: u32,
    btf_log_size: u32,
    btf_log_level: u32,
}

/// `struct bpf_func_info`: where a function starts, and its BTF type.
#[repr(C)]
struct FuncInfo {
    insn_off: u32,
    type_id: u32,
}

/// What [`prog_load`] needs.
struct Prog<'a> {
    name: &'a str,
    insns: &'a [bpf_insn],
    license: &'a CString,
    /// The BTF id of the kernel function to attach to.
    target: u32,
    /// The object's BTF, loaded.
    btf_fd: &'a OwnedFd,
    /// The function's BTF id in it.
    func: u32,
    relos: &'a [CoreRelo],
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

fn btf_load(btf: &[u8]) -> io::Result<OwnedFd> {
    bpf(
        bpf_cmd::BPF_BTF_LOAD,
        &BtfLoad {
            btf: btf.as_ptr() as u64,
            btf_log_buf: 0,
            btf_size: btf.len() as u32,
            btf_log_size: 0,
            btf_log_level: 0,
        },
    )
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

/// Loads a function as an iterator program for the kernel function
/// `p.target`, the kernel applying its CO-RE records. On a verifier
/// rejection the error carries the verifier's last lines.
fn prog_load(p: &Prog) -> io::Result<OwnedFd> {
    let mut prog_name = [0u8; 16];
    for (d, s) in prog_name.iter_mut().zip(p.name.bytes().take(15)) {
        *d = s;
    }
    let func_info = [FuncInfo {
        insn_off: 0,
        type_id: p.func,
    }];
    let attr = |log: &mut [u8]| ProgLoad {
        prog_type: bpf_prog_type::BPF_PROG_TYPE_TRACING as u32,
        insn_cnt: p.insns.len() as u32,
        insns: p.insns.as_ptr() as u64,
        license: p.license.as_ptr() as u64,
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
        prog_btf_fd: p.btf_fd.as_raw_fd() as u32,
        func_info_rec_size: size_of::<FuncInfo>() as u32,
        func_info: func_info.as_ptr() as u64,
        func_info_cnt: 1,
        line_info_rec_size: 0,
        line_info: 0,
        line_info_cnt: 0,
        attach_btf_id: p.target,
        attach_btf_obj_fd: 0,
        core_relo_cnt: p.relos.len() as u32,
        fd_array: 0,
        core_relos: p.relos.as_ptr() as u64,
        core_relo_rec_size: size_of::<CoreRelo>() as u32,
        log_true_size: 0,
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

    /// A BTF blob: header, then `types` (raw records), then `strings`.
    fn btf(types: &[u8], strings: &[u8]) -> Vec<u8> {
        let mut b = vec![];
        b.extend_from_slice(&BTF_MAGIC.to_ne_bytes());
        b.extend_from_slice(&[1, 0]); // version, flags
        for v in [
            24,
            0,
            types.len() as u32,
            types.len() as u32,
            strings.len() as u32,
        ] {
            b.extend_from_slice(&v.to_ne_bytes()); // hdr_len, type_off/len, str_off/len
        }
        b.extend_from_slice(types);
        b.extend_from_slice(strings);
        b
    }

    fn ty(name_off: u32, kind: u32, vlen: u32, size_or_type: u32, extra: usize) -> Vec<u8> {
        let mut r = vec![];
        r.extend_from_slice(&name_off.to_ne_bytes());
        r.extend_from_slice(&(kind << 24 | vlen).to_ne_bytes());
        r.extend_from_slice(&size_or_type.to_ne_bytes());
        r.extend(std::iter::repeat_n(0u8, extra));
        r
    }

    #[test]
    fn func_id_walks_every_kind_and_matches_whole_names() {
        // strings: "", "int", "bpf_iter_task_file_x", "bpf_iter_task_file", "task"
        let strings = b"\0int\0bpf_iter_task_file_x\0bpf_iter_task_file\0task\0";
        let mut t = vec![];
        t.extend(ty(1, 1, 0, 4, 4)); // 1: INT "int", 4 extra bytes
        t.extend(ty(0, 2, 0, 1, 0)); // 2: PTR to 1
        t.extend(ty(45, 4, 2, 16, 24)); // 3: STRUCT "task", 2 members
        t.extend(ty(0, 13, 1, 1, 8)); // 4: FUNC_PROTO, 1 param
        t.extend(ty(5, 12, 0, 4, 0)); // 5: FUNC "bpf_iter_task_file_x"
        t.extend(ty(0, 3, 0, 0, 12)); // 6: ARRAY
        t.extend(ty(26, 12, 0, 4, 0)); // 7: FUNC "bpf_iter_task_file"
        let b = btf(&t, strings);
        let read = |off: u64, buf: &mut [u8]| -> io::Result<usize> {
            // at most 5 bytes a read, as a stingy file would
            let off = (off as usize).min(b.len());
            let n = buf.len().min(5).min(b.len() - off);
            buf[..n].copy_from_slice(&b[off..off + n]);
            Ok(n)
        };
        assert_eq!(func_id(read, "bpf_iter_task_file").unwrap(), Some(7));
        assert_eq!(func_id(read, "bpf_iter_task_file_x").unwrap(), Some(5));
        assert_eq!(func_id(read, "task").unwrap(), None, "a STRUCT, not a FUNC");
        assert_eq!(func_id(read, "bpf_iter").unwrap(), None, "whole names only");
        let mut bad = b.clone();
        bad[0] = 0;
        let read_bad = |off: u64, buf: &mut [u8]| -> io::Result<usize> {
            let off = (off as usize).min(bad.len());
            let n = buf.len().min(bad.len() - off);
            buf[..n].copy_from_slice(&bad[off..off + n]);
            Ok(n)
        };
        assert!(func_id(read_bad, "task").is_err());
    }

    /// The real programs against a listener of this process (root and BTF;
    /// skipped otherwise: the integration tests cover both paths).
    #[test]
    fn finds_this_process_holding_its_listener() {
        use std::os::fd::AsRawFd;
        let it = match OwnerIter::load_with_loop_test() {
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
