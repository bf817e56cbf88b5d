//! The shield's BPF side: `bpf/shield.bpf.c` loaded, attached to `lo` of the
//! calling thread's network namespace, and pinned in bpffs so that it
//! outlives the command.
//!
//! # Where it lives
//!
//! Everything one `on` creates is pinned in one directory,
//! `/sys/fs/bpf/tcploop/shield/netns-<COOKIE>/` ([`PIN_ROOT`]), where COOKIE
//! is the namespace's cookie (`SO_NETNS_COOKIE`, a 64-bit number the kernel
//! never reuses until reboot, unlike namespace inode numbers):
//!
//! | pin | what |
//! | --- | --- |
//! | `prog` | the classifier (its load time is the shield's "since") |
//! | `stats` | the per-CPU counters (SYNs turned away, IPv4 and IPv6) |
//! | `link` | the tcx link on `lo` egress (kernels 6.6+): the shield is on while it is pinned |
//! | `tc-egress-PRIO-HANDLE` | instead of `link` on older kernels: the classifier again, naming the cls_bpf filter that `on` added under the clsact qdisc |
//!
//! `off` detaches and removes exactly that directory. The directory is
//! created and changed under an exclusive `flock(2)` of [`PIN_ROOT`], so two
//! `on` at once attach once. When a namespace dies, its `lo` and the tcx
//! link go with it (the pinned link is then *defunct*: its ifindex reads 0);
//! [`prune_defunct`] removes such directories.
//!
//! The program is attached on `lo`'s **egress**: a self-connect SYN is
//! rewritten before it loops back, the same place the iptables mechanism
//! works (OUTPUT).

use std::fs;
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use aya::maps::{MapData, PerCpuArray};
use aya::programs::links::FdLink;
use aya::programs::tc::{self, SchedClassifier, SchedClassifierLink, TcAttachOptions};
use aya::programs::{Link, LinkOrder, ProgramInfo, TcAttachType};
use aya::EbpfLoader;

use super::{classify_error, Refusal};

/// The compiled classifier (`bpf/shield.bpf.c`).
/// (Aligned: the ELF parser reads its headers in place.)
static OBJECT: &[u8] = aya::include_bytes_aligned!("../../../bpf/shield.bpf.o");

/// The bpffs mount the shield pins into.
pub const BPFFS: &str = "/sys/fs/bpf";
/// The directory of every namespace's shield: one `netns-<COOKIE>`
/// directory each.
pub const PIN_ROOT: &str = "/sys/fs/bpf/tcploop/shield";

const PROG: &str = "prog";
const STATS: &str = "stats";
const LINK: &str = "link";
const TC_PREFIX: &str = "tc-egress-";
/// The interface: loopback, whose name is `lo` in every namespace.
const LO: &str = "lo";

/// How the classifier is attached to `lo`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attach {
    /// A tcx link (Linux 6.6+): owned by a bpffs pin, gone with it.
    Tcx,
    /// A cls_bpf filter under a clsact qdisc (netlink; older kernels).
    Tc,
}

impl Attach {
    /// `tcx` or `tc`.
    pub fn name(self) -> &'static str {
        match self {
            Attach::Tcx => "tcx",
            Attach::Tc => "tc",
        }
    }

    /// What this kernel supports best: tcx on 6.6+.
    pub fn best() -> Attach {
        use crate::ports::KernelVersion;
        match crate::sys::procsys::read(crate::sys::procsys::OSRELEASE)
            .ok()
            .and_then(|r| KernelVersion::parse(&r))
        {
            Some(v) if v >= KernelVersion(6, 6, 0) => Attach::Tcx,
            Some(_) => Attach::Tc,
            None => Attach::Tcx,
        }
    }
}

/// The counters of one namespace's shield, summed over CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// IPv4 self-connect SYNs turned into RST+ACK.
    pub refused_v4: u64,
    /// IPv6 self-connect SYNs turned into RST+ACK.
    pub refused_v6: u64,
    /// IPv6 packets not inspected: extension headers the program does not
    /// walk (fragment, AH, ESP) or a chain longer than it walks.
    pub skipped_v6: u64,
}

/// A shield found attached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attached {
    /// How.
    pub attach: Attach,
    /// When the program was loaded (`on`).
    pub since: Option<SystemTime>,
    /// Its counters (`None` if the map could not be read).
    pub counters: Option<Counters>,
    /// Its pin directory.
    pub dir: PathBuf,
}

/// What [`attach`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Attached now.
    Attached(Attached),
    /// Already attached: nothing was changed.
    AlreadyOn(Attached),
}

/// The directory of the calling thread's namespace.
pub fn dir_here() -> io::Result<PathBuf> {
    Ok(Path::new(PIN_ROOT).join(format!("netns-{}", netns_cookie()?)))
}

/// The cookie of the calling thread's network namespace
/// (`getsockopt(SO_NETNS_COOKIE)`, Linux 5.14+, `socket(7)`).
pub fn netns_cookie() -> io::Result<u64> {
    let s = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::DGRAM, None)?;
    let mut v: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: getsockopt(2) on an fd we own, writing at most `len` bytes
    // into `v`, which is that large.
    let r = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            (&mut v as *mut u64).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(v)
}

/// Checks that [`BPFFS`] is a bpffs mount (`statfs(2)`, `BPF_FS_MAGIC`).
fn check_bpffs() -> Result<(), Refusal> {
    const BPF_FS_MAGIC: i64 = 0xcafe4a11;
    match rustix::fs::statfs(BPFFS) {
        // f_type is i64 on x86_64 and narrower elsewhere.
        #[allow(clippy::unnecessary_cast)]
        Ok(s) if s.f_type as i64 == BPF_FS_MAGIC => Ok(()),
        Ok(_) => Err(Refusal::Unsupported(format!(
            "{BPFFS} is not a bpffs mount (mount -t bpf bpf {BPFFS})"
        ))),
        Err(e) => Err(super::classify(&format!("statfs {BPFFS}"), &e.into())),
    }
}

/// An exclusive `flock(2)` on [`PIN_ROOT`], held while it lives.
pub(super) struct RootLock(#[allow(dead_code)] OwnedFd);

pub(super) fn lock_root() -> Result<RootLock, Refusal> {
    check_bpffs()?;
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(PIN_ROOT)
        .map_err(|e| super::classify(&format!("creating {PIN_ROOT}"), &e))?;
    let fd = rustix::fs::open(
        PIN_ROOT,
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .map_err(|e| super::classify(&format!("opening {PIN_ROOT}"), &e.into()))?;
    rustix::fs::flock(&fd, rustix::fs::FlockOperation::LockExclusive)
        .map_err(|e| super::classify(&format!("locking {PIN_ROOT}"), &e.into()))?;
    Ok(RootLock(fd))
}

/// The shield of the calling thread's namespace, if it is on.
pub fn status_here() -> Result<Option<Attached>, Refusal> {
    let dir = dir_here().map_err(|e| super::classify("SO_NETNS_COOKIE", &e))?;
    match fs::symlink_metadata(&dir) {
        Ok(_) => read_dir_state(&dir),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(super::classify(&format!("reading {}", dir.display()), &e)),
    }
}

/// Reads what is pinned in `dir`: `None` when no live attachment is there.
fn read_dir_state(dir: &Path) -> Result<Option<Attached>, Refusal> {
    let attach = if dir.join(LINK).exists() {
        match link_ifindex(&dir.join(LINK)) {
            Ok(0) => return Ok(None), // defunct: its lo is gone
            Ok(_) => Attach::Tcx,
            Err(e) => return Err(super::classify("reading the pinned link", &e)),
        }
    } else if tc_pin(dir).is_some() {
        Attach::Tc
    } else {
        return Ok(None);
    };
    let since = ProgramInfo::from_pin(dir.join(PROG))
        .ok()
        .and_then(|i| i.loaded_at());
    let counters = read_counters(&dir.join(STATS)).ok();
    Ok(Some(Attached {
        attach,
        since,
        counters,
        dir: dir.to_owned(),
    }))
}

fn tc_pin(dir: &Path) -> Option<(String, u16, u32)> {
    let rd = fs::read_dir(dir).ok()?;
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(rest) = name.strip_prefix(TC_PREFIX) {
            let (p, h) = rest.split_once('-')?;
            return Some((name.clone(), p.parse().ok()?, h.parse().ok()?));
        }
    }
    None
}

/// Sums the per-CPU counters of a pinned `stats` map.
fn read_counters(path: &Path) -> Result<Counters, Box<dyn std::error::Error>> {
    let data = MapData::from_pin(path)?;
    let map = aya::maps::Map::PerCpuArray(data);
    let arr: PerCpuArray<_, u64> = PerCpuArray::try_from(map)?;
    let sum =
        |i: u32| -> Result<u64, aya::maps::MapError> { Ok(arr.get(&i, 0)?.iter().copied().sum()) };
    Ok(Counters {
        refused_v4: sum(0)?,
        refused_v6: sum(1)?,
        skipped_v6: sum(2)?,
    })
}

/// Attaches the shield to `lo` of the calling thread's namespace, unless it
/// is on already. Everything is pinned before the lock is released; on any
/// failure what was created is removed again.
pub fn attach(how: Attach) -> Result<Outcome, Refusal> {
    super::precheck_net()?;
    let _lock = lock_root()?;
    let dir = dir_here().map_err(|e| super::classify("SO_NETNS_COOKIE", &e))?;
    if dir.exists() {
        if let Some(a) = read_dir_state(&dir)? {
            return Ok(Outcome::AlreadyOn(a));
        }
        // Left over from a namespace that reused the cookie? Cookies are
        // never reused; this is a half-made or defunct directory: clear it.
        remove_dir(&dir).map_err(|e| super::classify("clearing a stale pin directory", &e))?;
    }
    fs::create_dir(&dir)
        .map_err(|e| super::classify(&format!("creating {}", dir.display()), &e))?;
    match attach_into(&dir, how) {
        Ok(()) => {}
        Err(r) => {
            let _ = remove_dir(&dir);
            return Err(r);
        }
    }
    match read_dir_state(&dir)? {
        Some(a) => Ok(Outcome::Attached(a)),
        None => {
            let _ = detach_dir(&dir);
            Err(Refusal::Unsupported(
                "the shield was attached but cannot be read back".into(),
            ))
        }
    }
}

fn attach_into(dir: &Path, how: Attach) -> Result<(), Refusal> {
    let mut ebpf = EbpfLoader::new()
        .load(OBJECT)
        .map_err(|e| classify_error("loading shield.bpf.o", &e))?;
    let stats = ebpf
        .map("shield_stats")
        .ok_or_else(|| Refusal::Unsupported("shield.bpf.o has no shield_stats map".into()))?;
    stats
        .pin(dir.join(STATS))
        .map_err(|e| classify_error("pinning the counters", &e))?;
    let prog: &mut SchedClassifier = ebpf
        .program_mut("shield")
        .ok_or_else(|| Refusal::Unsupported("shield.bpf.o has no shield program".into()))?
        .try_into()
        .map_err(|e| classify_error("shield.bpf.o", &e))?;
    prog.load()
        .map_err(|e| classify_error("loading the classifier", &e))?;
    prog.pin(dir.join(PROG))
        .map_err(|e| classify_error("pinning the classifier", &e))?;
    match how {
        Attach::Tcx => {
            let id = prog
                .attach_with_options(
                    LO,
                    TcAttachType::Egress,
                    // First: a program before ours that returned TCX_PASS
                    // would end the chain before the shield saw the SYN; ours
                    // always returns TCX_NEXT, so every later one still runs.
                    TcAttachOptions::TcxOrder(LinkOrder::first()),
                )
                .map_err(|e| classify_error("attaching to lo (tcx)", &e))?;
            let link: SchedClassifierLink = prog
                .take_link(id)
                .map_err(|e| classify_error("taking the tcx link", &e))?;
            let fd: FdLink = link
                .try_into()
                .map_err(|e| classify_error("the tcx link", &e))?;
            // Pinned, the link stays attached after the process exits.
            fd.pin(dir.join(LINK))
                .map_err(|e| classify_error("pinning the tcx link", &e))?;
        }
        Attach::Tc => {
            // EEXIST: a clsact qdisc is there already. A qdisc added here
            // stays after `off` (aya 0.13 cannot delete one; it is empty
            // then and costs nothing): the one thing `off` leaves behind,
            // on kernels before 6.6 only.
            if let Err(e) = tc::qdisc_add_clsact(LO) {
                if e.kind() != io::ErrorKind::AlreadyExists {
                    return Err(super::classify("adding the clsact qdisc to lo", &e));
                }
            }
            let id = prog
                .attach_with_options(
                    LO,
                    TcAttachType::Egress,
                    TcAttachOptions::Netlink(Default::default()),
                )
                .map_err(|e| classify_error("attaching to lo (cls_bpf)", &e))?;
            let link = prog
                .take_link(id)
                .map_err(|e| classify_error("taking the tc filter", &e))?;
            let (p, h) = (
                link.priority()
                    .map_err(|e| classify_error("tc filter", &e))?,
                link.handle().map_err(|e| classify_error("tc filter", &e))?,
            );
            let name = format!("{TC_PREFIX}{p}-{h}");
            let pinned = prog.pin(dir.join(&name));
            if let Err(e) = pinned {
                let _ = link.detach();
                return Err(classify_error("pinning the tc filter's name", &e));
            }
            // The filter lives in the qdisc, not in the handle: dropping
            // the handle would detach it. It holds no fd.
            std::mem::forget(link);
        }
    }
    Ok(())
}

/// Detaches and unpins the shield of the calling thread's namespace.
/// Returns whether one was there.
pub fn detach() -> Result<bool, Refusal> {
    let _lock = lock_root()?;
    let dir = dir_here().map_err(|e| super::classify("SO_NETNS_COOKIE", &e))?;
    if !dir.exists() {
        return Ok(false);
    }
    detach_dir(&dir)
}

fn detach_dir(dir: &Path) -> Result<bool, Refusal> {
    let was = read_dir_state(dir).ok().flatten().is_some();
    if let Some((name, prio, handle)) = tc_pin(dir) {
        match SchedClassifierLink::attached(LO, TcAttachType::Egress, prio, handle) {
            Ok(link) => {
                if let Err(e) = link.detach() {
                    return Err(classify_error("removing the tc filter", &e));
                }
            }
            Err(e) => return Err(super::classify("finding lo", &e)),
        }
        let _ = fs::remove_file(dir.join(name));
    }
    // Unpinning the link detaches it (nothing else holds it).
    remove_dir(dir).map_err(|e| super::classify(&format!("removing {}", dir.display()), &e))?;
    Ok(was)
}

fn remove_dir(dir: &Path) -> io::Result<()> {
    for e in fs::read_dir(dir)?.flatten() {
        fs::remove_file(e.path())?;
    }
    fs::remove_dir(dir)
}

/// Removes the pin directories whose tcx link is defunct (their namespace
/// died). Returns how many were removed. Directories of live namespaces,
/// and `tc` ones (which cannot be checked from outside), are kept.
pub fn prune_defunct() -> Result<u64, Refusal> {
    if !Path::new(PIN_ROOT).exists() {
        return Ok(0);
    }
    let _lock = lock_root()?;
    let mut n = 0;
    let rd = fs::read_dir(PIN_ROOT).map_err(|e| super::classify("reading the pin root", &e))?;
    for e in rd.flatten() {
        let dir = e.path();
        let link = dir.join(LINK);
        if link.exists() && matches!(link_ifindex(&link), Ok(0)) && remove_dir(&dir).is_ok() {
            n += 1;
        }
    }
    Ok(n)
}

/// The interface index a pinned tcx link is attached to; 0 once its device
/// (the namespace's `lo`) is gone. `bpf(2)` `BPF_OBJ_GET` then
/// `BPF_OBJ_GET_INFO_BY_FD` (aya 0.13 does not expose link info).
fn link_ifindex(pin: &Path) -> io::Result<u32> {
    const BPF_OBJ_GET: libc::c_long = 7;
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
    let cpath = std::ffi::CString::new(pin.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // union bpf_attr, BPF_OBJ_GET: pathname (u64), bpf_fd, file_flags, path_fd.
    let mut attr = [0u64; 16];
    attr[0] = cpath.as_ptr() as u64;
    // SAFETY: bpf(2) reads `attr` (128 bytes, zeroed beyond the pathname
    // pointer, which points at a live NUL-terminated string).
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET,
            attr.as_mut_ptr(),
            std::mem::size_of_val(&attr),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this fd to us; nobody else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    // struct bpf_link_info: type, id, prog_id (u32 each), then a union
    // aligned to 8 bytes; for tcx: ifindex, attach_type (u32 each).
    let mut info = [0u32; 16];
    let mut attr = [0u64; 16];
    attr[0] = fd.as_fd().as_raw_fd() as u32 as u64 | ((std::mem::size_of_val(&info) as u64) << 32);
    attr[1] = info.as_mut_ptr() as u64;
    // SAFETY: bpf(2) writes at most info_len (64) bytes into `info`, which
    // is that large and lives across the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET_INFO_BY_FD,
            attr.as_mut_ptr(),
            std::mem::size_of_val(&attr),
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    const BPF_LINK_TYPE_TCX: u32 = 11;
    if info[0] != BPF_LINK_TYPE_TCX {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} is not a tcx link (type {})", pin.display(), info[0]),
        ));
    }
    Ok(info[4])
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_object_is_embedded_and_is_bpf_elf() {
        let o = super::OBJECT;
        assert_eq!(&o[..4], b"\x7fELF");
        // e_machine at 18: EM_BPF = 247
        assert_eq!(u16::from_le_bytes([o[18], o[19]]), 247);
    }

    #[test]
    fn the_netns_cookie_is_stable_within_a_namespace() {
        let a = super::netns_cookie().unwrap();
        assert_ne!(a, 0);
        assert_eq!(super::netns_cookie().unwrap(), a);
    }
}
