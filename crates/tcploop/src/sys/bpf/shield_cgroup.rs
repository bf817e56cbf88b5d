//! The shield's cgroup hook: `bpf/shield_cgroup.bpf.c` attached as
//! `cgroup/connect4` and `cgroup/connect6` to a cgroup v2 directory (the
//! root covers every process of the host, in every network namespace),
//! with links pinned in `/sys/fs/bpf/tcploop/shield/cgroup-<INODE>/`
//! (`link4`, `link6`, `stats`; INODE is the cgroup directory's), so that a
//! second `on` is a no-op and `off` removes exactly that directory.

use std::fs;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use aya::maps::{MapData, PerCpuArray};
use aya::programs::{CgroupSockAddr, ProgramInfo};
use aya::EbpfLoader;

use super::shield::PIN_ROOT;
use super::{classify, classify_error, Refusal};

/// The compiled hook (`bpf/shield_cgroup.bpf.o`).
static OBJECT: &[u8] = aya::include_bytes_aligned!("../../../bpf/shield_cgroup.bpf.o");

const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

/// Where cgroup v2 is mounted: `/sys/fs/cgroup` on a pure v2 host,
/// `/sys/fs/cgroup/unified` on a hybrid one; `None` without cgroup v2.
pub fn default_root() -> Option<PathBuf> {
    ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| is_cgroup2(p))
}

fn is_cgroup2(p: &Path) -> bool {
    // f_type is i64 on x86_64 and narrower elsewhere.
    #[allow(clippy::unnecessary_cast)]
    rustix::fs::statfs(p).is_ok_and(|s| s.f_type as i64 == CGROUP2_SUPER_MAGIC)
}

/// The hook found attached to a cgroup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupAttached {
    /// When `on` loaded it.
    pub since: Option<SystemTime>,
    /// Connects refused (IPv4 incl. v4-mapped, IPv6); `None`: unreadable.
    pub refused: Option<(u64, u64)>,
    /// Its pin directory.
    pub dir: PathBuf,
}

fn dir_for(cgroup: &Path) -> Result<PathBuf, Refusal> {
    if !is_cgroup2(cgroup) {
        return Err(Refusal::Unsupported(format!(
            "{} is not a cgroup v2 directory",
            cgroup.display()
        )));
    }
    let st = rustix::fs::stat(cgroup)
        .map_err(|e| classify(&format!("stat {}", cgroup.display()), &e.into()))?;
    Ok(Path::new(PIN_ROOT).join(format!("cgroup-{}", st.st_ino)))
}

/// The hook on `cgroup`, if attached.
pub fn status(cgroup: &Path) -> Result<Option<CgroupAttached>, Refusal> {
    let dir = dir_for(cgroup)?;
    match fs::symlink_metadata(dir.join("link4")) {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(classify(&format!("reading {}", dir.display()), &e)),
    }
    let since = ProgramInfo::from_pin(dir.join("prog4"))
        .ok()
        .and_then(|i| i.loaded_at());
    let refused = read_counters(&dir.join("stats")).ok();
    Ok(Some(CgroupAttached {
        since,
        refused,
        dir,
    }))
}

fn read_counters(path: &Path) -> Result<(u64, u64), Box<dyn std::error::Error>> {
    let map = aya::maps::Map::PerCpuArray(MapData::from_pin(path)?);
    let arr: PerCpuArray<_, u64> = PerCpuArray::try_from(map)?;
    let sum =
        |i: u32| -> Result<u64, aya::maps::MapError> { Ok(arr.get(&i, 0)?.iter().copied().sum()) };
    Ok((sum(0)?, sum(1)?))
}

/// Attaches the hook to `cgroup` unless it is there. Returns `(true, _)`
/// when attached now, `(false, _)` when it was on already.
pub fn attach(cgroup: &Path) -> Result<(bool, CgroupAttached), Refusal> {
    super::precheck_net()?;
    let _lock = super::shield::lock_root()?;
    if let Some(a) = status(cgroup)? {
        return Ok((false, a));
    }
    let dir = dir_for(cgroup)?;
    if dir.exists() {
        let _ = remove_dir(&dir); // half made: start again
    }
    {
        use std::os::unix::fs::DirBuilderExt;
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(|e| classify(&format!("creating {}", dir.display()), &e))?;
    }
    if let Err(r) = attach_into(cgroup, &dir) {
        let _ = remove_dir(&dir);
        return Err(r);
    }
    match status(cgroup)? {
        Some(a) => Ok((true, a)),
        None => Err(Refusal::Unsupported(
            "the cgroup hook was attached but cannot be read back".into(),
        )),
    }
}

fn attach_into(cgroup: &Path, dir: &Path) -> Result<(), Refusal> {
    let cg: OwnedFd = rustix::fs::open(
        cgroup,
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .map_err(|e| classify(&format!("opening {}", cgroup.display()), &e.into()))?;
    let mut ebpf = EbpfLoader::new()
        .load(OBJECT)
        .map_err(|e| classify_error("loading shield_cgroup.bpf.o", &e))?;
    ebpf.map("cgroup_stats")
        .ok_or_else(|| Refusal::Unsupported("shield_cgroup.bpf.o has no cgroup_stats map".into()))?
        .pin(dir.join("stats"))
        .map_err(|e| classify_error("pinning the counters", &e))?;
    // Both programs are loaded and pinned before either is attached.
    for (name, pin) in [("shield_connect4", "4"), ("shield_connect6", "6")] {
        let p: &mut CgroupSockAddr = ebpf
            .program_mut(name)
            .ok_or_else(|| Refusal::Unsupported(format!("shield_cgroup.bpf.o has no {name}")))?
            .try_into()
            .map_err(|e| classify_error(name, &e))?;
        p.load()
            .map_err(|e| classify_error(&format!("loading {name}"), &e))?;
        p.pin(dir.join(format!("prog{pin}")))
            .map_err(|e| classify_error(&format!("pinning {name}"), &e))?;
    }
    // aya 0.13 cannot hand out a cgroup link to pin: the link is made and
    // pinned here (BPF_LINK_CREATE, BPF_OBJ_PIN).
    const BPF_CGROUP_INET4_CONNECT: u32 = 10;
    const BPF_CGROUP_INET6_CONNECT: u32 = 11;
    for (name, pin, attach_type) in [
        ("shield_connect4", "4", BPF_CGROUP_INET4_CONNECT),
        ("shield_connect6", "6", BPF_CGROUP_INET6_CONNECT),
    ] {
        let p: &mut CgroupSockAddr = ebpf
            .program_mut(name)
            .ok_or_else(|| Refusal::Unsupported(format!("shield_cgroup.bpf.o has no {name}")))?
            .try_into()
            .map_err(|e| classify_error(name, &e))?;
        let prog = p.fd().map_err(|e| classify_error(name, &e))?;
        let link = link_create(prog.as_fd(), cg.as_fd(), attach_type)
            .map_err(|e| classify(&format!("attaching {name} to the cgroup"), &e))?;
        obj_pin(link.as_fd(), &dir.join(format!("link{pin}")))
            .map_err(|e| classify(&format!("pinning the {name} link"), &e))?;
    }
    Ok(())
}

/// `bpf(BPF_LINK_CREATE)`: a link of `prog` to the cgroup `target`.
fn link_create(
    prog: BorrowedFd<'_>,
    target: BorrowedFd<'_>,
    attach_type: u32,
) -> io::Result<OwnedFd> {
    const BPF_LINK_CREATE: libc::c_long = 28;
    // union bpf_attr, link_create: prog_fd, target_fd, attach_type, flags.
    let mut attr = [0u32; 32];
    attr[0] = prog.as_raw_fd() as u32;
    attr[1] = target.as_raw_fd() as u32;
    attr[2] = attach_type;
    // SAFETY: bpf(2) reads `attr` (128 bytes, the unused part zeroed).
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_LINK_CREATE,
            attr.as_mut_ptr(),
            std::mem::size_of_val(&attr),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this fd to us; nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// `bpf(BPF_OBJ_PIN)`: pins `fd` at `path` in bpffs.
fn obj_pin(fd: BorrowedFd<'_>, path: &Path) -> io::Result<()> {
    const BPF_OBJ_PIN: libc::c_long = 6;
    let cpath = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // union bpf_attr, obj_pin: pathname (u64), bpf_fd, file_flags.
    let mut attr = [0u64; 16];
    attr[0] = cpath.as_ptr() as u64;
    attr[1] = fd.as_raw_fd() as u32 as u64;
    // SAFETY: bpf(2) reads `attr`; the pathname points at a live C string.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_PIN,
            attr.as_mut_ptr(),
            std::mem::size_of_val(&attr),
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Detaches and unpins the hook of `cgroup`; whether it was there.
pub fn detach(cgroup: &Path) -> Result<bool, Refusal> {
    let _lock = super::shield::lock_root()?;
    let dir = dir_for(cgroup)?;
    if !dir.exists() {
        return Ok(false);
    }
    let was = dir.join("link4").exists();
    // Unpinning the links detaches them (nothing else holds them).
    remove_dir(&dir).map_err(|e| classify(&format!("removing {}", dir.display()), &e))?;
    Ok(was)
}

fn remove_dir(dir: &Path) -> io::Result<()> {
    for e in fs::read_dir(dir)?.flatten() {
        fs::remove_file(e.path())?;
    }
    fs::remove_dir(dir)
}
