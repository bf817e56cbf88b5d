//! `--apply`: growing `net.ipv4.ip_local_reserved_ports` of the caller's
//! network namespace without ever losing a port, its own or another's.
//!
//! The kernel file is read and written whole, so two writers that do not
//! coordinate can drop each other's ports, and a write can fail half-way.
//! [`apply`] therefore takes an `flock(2)` ([`LOCK_FILE`]) around its
//! read-modify-write, reads the value back, checks that it holds every port
//! it held before and every port added, and writes the previous value back
//! when it does not ([`ApplyError::NotKept`]). The checks ([`grow`]) run
//! against a stand-in of the kernel file in the tests.

use std::io;
use std::path::{Path, PathBuf};

use super::SYSCTL_KEY;
use crate::ports::PortSet;
use crate::sys::procsys;

/// The lock file `apply` holds (`flock(2)`, exclusive) around its
/// read-modify-write of `ip_local_reserved_ports`, so that concurrent runs
/// never lose each other's ports. Created mode 0600 if absent; never
/// followed if it is a symlink. When it cannot be created (not root, /run
/// read-only), the fix is applied without it and the result says so.
pub const LOCK_FILE: &str = "/run/tcploop-reserved-ports.lock";

/// Why the fix could not be applied or persisted.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// Writing or reading `/proc/sys` failed.
    #[error(transparent)]
    Proc(#[from] procsys::ProcError),
    /// After the write, the kernel's value lacks ports that were reserved
    /// before or that should have been added. The previous value was
    /// written back (`restored`).
    #[error(
        "after writing, {SYSCTL_KEY} is {got}; it should contain {before} and {add}{}",
        match restored {
            Ok(v) => format!("; the previous value was restored ({v})"),
            Err(e) => format!("; restoring the previous value {before} FAILED: {e}"),
        }
    )]
    NotKept {
        /// The value before the write.
        before: PortSet,
        /// The ports to add.
        add: PortSet,
        /// What the kernel reports after the write.
        got: String,
        /// The value read back after restoring, or why restoring failed.
        restored: Result<String, String>,
    },
    /// The kernel's value could not be parsed.
    #[error("{SYSCTL_KEY} reads {0:?}, which is not a port list")]
    Parse(String),
    /// Reading or writing the sysctl.d file failed or was refused.
    #[error(transparent)]
    File(#[from] crate::safefile::SafeFileError),
    /// The sysctl.d file's own value of the key is not a port list.
    #[error("{}: line {line}: {SYSCTL_KEY} = {value:?} is not a port list; the file is left untouched", path.display())]
    FileValue {
        /// The file.
        path: PathBuf,
        /// The line (1-based).
        line: usize,
        /// The value.
        value: String,
    },
}

impl ApplyError {
    /// Whether the error is a permission problem (not root).
    pub fn is_permission(&self) -> bool {
        let kind = match self {
            ApplyError::Proc(e) => Some(e.source.kind()),
            ApplyError::File(e) => e.io_kind(),
            _ => None,
        };
        kind == Some(io::ErrorKind::PermissionDenied)
    }
}

/// What [`apply`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// The reservation read under the lock, before any write.
    pub before: PortSet,
    /// The reservation read back at the end.
    pub after: PortSet,
    /// Whether a value was written (false: every port was reserved already).
    pub wrote: bool,
    /// The lock file held, or `None` when it could not be taken (and why).
    pub lock: Result<PathBuf, String>,
}

/// Adds `add` to `/proc/sys/net/ipv4/ip_local_reserved_ports` of the
/// caller's network namespace, and only ever grows it:
///
/// 1. takes the [`LOCK_FILE`] lock, so that concurrent runs serialize;
/// 2. reads the live value (under the lock: what others added is kept);
/// 3. writes the union, unless nothing is missing;
/// 4. reads the value back and checks it holds every port it held before
///    and every port of `add`; if not, writes the previous value back and
///    fails with [`ApplyError::NotKept`].
pub fn apply(add: &PortSet) -> Result<Applied, ApplyError> {
    apply_with_lock(add, Path::new(LOCK_FILE))
}

/// [`apply`] with another lock file (tests).
pub fn apply_with_lock(add: &PortSet, lock_path: &Path) -> Result<Applied, ApplyError> {
    let (_guard, lock) = match crate::sys::lock::exclusive(lock_path) {
        Ok(g) => (Some(g), Ok(lock_path.to_owned())),
        Err(e) => (None, Err(format!("{}: {e}", lock_path.display()))),
    };
    let (before, after, wrote) = grow(&mut Kernel, add)?;
    Ok(Applied {
        before,
        after,
        wrote,
        lock,
    })
}

/// Where the reserved ports are read and written: the kernel
/// ([`Kernel`]), or a stand-in in the tests of [`grow`]'s checks.
trait ReservedPorts {
    fn read(&mut self) -> Result<String, procsys::ProcError>;
    fn write(&mut self, value: &str) -> Result<(), procsys::ProcError>;
}

/// `/proc/sys/net/ipv4/ip_local_reserved_ports` of this namespace.
struct Kernel;

impl ReservedPorts for Kernel {
    fn read(&mut self) -> Result<String, procsys::ProcError> {
        procsys::read(procsys::RESERVED_PORTS)
    }
    fn write(&mut self, value: &str) -> Result<(), procsys::ProcError> {
        procsys::write(procsys::RESERVED_PORTS, value)
    }
}

/// The read-modify-write of [`apply`], lock aside: returns the value
/// before, the value read back after, and whether anything was written.
fn grow(
    io: &mut impl ReservedPorts,
    add: &PortSet,
) -> Result<(PortSet, PortSet, bool), ApplyError> {
    let text = io.read()?;
    let before = PortSet::parse(&text).map_err(|_| ApplyError::Parse(text.trim().to_string()))?;
    let value = before.union(add);
    if value == before {
        return Ok((before.clone(), before, false));
    }
    let written = match io.write(&value.to_string()) {
        // refused (no privilege over the namespace): nothing was written,
        // so there is nothing to restore
        Err(e) if e.source.kind() == std::io::ErrorKind::PermissionDenied => return Err(e.into()),
        w => w,
    };
    let got = io.read().map(|t| t.trim().to_string());
    let kept = match (&written, &got) {
        (Ok(()), Ok(text)) => PortSet::parse(text)
            .ok()
            .filter(|g| before.iter().chain(add.iter()).all(|p| g.contains(p))),
        _ => None,
    };
    if let Some(after) = kept {
        return Ok((before, after, true));
    }
    // Something was lost (or the write failed half-way): put the previous
    // value back, and say what happened.
    let restored = restore(io, &before);
    let got = match (written, got) {
        (Err(e), _) => {
            if restored.is_ok() {
                return Err(e.into());
            }
            format!("unknown after a failed write ({e})")
        }
        (Ok(()), Ok(t)) => t,
        (Ok(()), Err(e)) => format!("unreadable ({e})"),
    };
    Err(ApplyError::NotKept {
        before,
        add: add.clone(),
        got,
        restored,
    })
}

fn restore(io: &mut impl ReservedPorts, before: &PortSet) -> Result<String, String> {
    io.write(&before.to_string()).map_err(|e| e.to_string())?;
    let back = io.read().map_err(|e| e.to_string())?;
    let back = back.trim().to_string();
    match PortSet::parse(&back) {
        Ok(b) if before.iter().all(|p| b.contains(p)) => Ok(back),
        _ => Err(format!("the kernel holds {back:?} after the restore")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in for the sysctl whose writes lose `drop` (as a concurrent
    /// writer that does not take the lock would), or fail.
    struct Lossy {
        value: String,
        drop: Option<u16>,
        fail_writes: bool,
        writes: Vec<String>,
    }

    impl ReservedPorts for Lossy {
        fn read(&mut self) -> Result<String, procsys::ProcError> {
            Ok(format!("{}\n", self.value))
        }
        fn write(&mut self, value: &str) -> Result<(), procsys::ProcError> {
            self.writes.push(value.to_string());
            if self.fail_writes && self.writes.len() == 1 {
                self.value = "1".into(); // half a value got through
                return Err(procsys::ProcError {
                    op: "writing",
                    path: "/proc/sys/net/ipv4/ip_local_reserved_ports".into(),
                    source: io::Error::from_raw_os_error(libc::EINVAL),
                });
            }
            let set = PortSet::parse(value).unwrap();
            // only the first write loses the port (the restore gets through)
            let drop = if self.writes.len() == 1 {
                self.drop
            } else {
                None
            };
            self.value = PortSet::from_ports(set.iter().filter(|p| Some(*p) != drop)).to_string();
            Ok(())
        }
    }

    fn lossy(value: &str, drop: Option<u16>, fail_writes: bool) -> Lossy {
        Lossy {
            value: value.into(),
            drop,
            fail_writes,
            writes: vec![],
        }
    }

    #[test]
    fn a_write_that_loses_a_reservation_is_undone_and_reported() {
        let add = PortSet::parse("40004").unwrap();
        // the control: nothing lost, the union is kept
        let mut k = lossy("8080,9000", None, false);
        let (before, after, wrote) = grow(&mut k, &add).unwrap();
        assert_eq!(
            (before.to_string(), after.to_string(), wrote),
            ("8080,9000".into(), "8080,9000,40004".into(), true)
        );
        // 9000 vanishes in the write: the previous value is written back
        let mut k = lossy("8080,9000", Some(9000), false);
        let e = grow(&mut k, &add).unwrap_err();
        assert!(
            matches!(&e, ApplyError::NotKept { restored: Ok(v), .. } if v == "8080,9000"),
            "{e}"
        );
        assert_eq!(k.writes, ["8080,9000,40004", "8080,9000"]);
        assert_eq!(k.value, "8080,9000");
        assert!(
            e.to_string().contains("the previous value was restored"),
            "{e}"
        );
        // a write that fails half-way: restored, and the write error said
        let mut k = lossy("8080,9000", None, true);
        let e = grow(&mut k, &add).unwrap_err();
        assert!(matches!(e, ApplyError::Proc(_)), "{e}");
        assert_eq!(k.value, "8080,9000");
        // nothing to add: nothing written
        let mut k = lossy("40004", None, false);
        assert!(!grow(&mut k, &add).unwrap().2);
        assert!(k.writes.is_empty());
    }
}
