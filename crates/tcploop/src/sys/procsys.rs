//! `/proc/sys` files: the ephemeral port range, the reserved ports and the
//! kernel release (`proc_sys_net_ipv4(5)`, `sysctl(8)` without shelling out).
//!
//! The `net` files show the network namespace of the *reader* (opened by this
//! thread), so the same calls inside a sandbox see the sandbox's values.
//!
//! **Read each file in one `read(2)`.** The kernel formats a sysctl value
//! afresh for each `read()` of an open file, and several handlers (among them
//! `proc_do_large_bitmap`, behind `ip_local_reserved_ports`) answer
//! end-of-file to any read at a non-zero offset. `fs::read_to_string` starts
//! with a 32-byte read, so a value longer than that came back cut short: with
//! `30000,30002,...,30012` reserved it returned `30000,30002,30004,30006,3`.
//! [`read`] therefore asks for [`READ_MAX`] bytes at once, more than any value
//! the kernel can print, and refuses an answer that fills the whole buffer.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

/// `net.ipv4.ip_local_port_range`: also governs IPv6.
pub const PORT_RANGE: &str = "/proc/sys/net/ipv4/ip_local_port_range";
/// `net.ipv4.ip_local_reserved_ports`.
pub const RESERVED_PORTS: &str = "/proc/sys/net/ipv4/ip_local_reserved_ports";
/// The kernel release, as `uname -r` prints it.
pub const OSRELEASE: &str = "/proc/sys/kernel/osrelease";

/// The buffer of one [`read`]: 512 KiB. The longest `/proc/sys` value this
/// tool reads is `ip_local_reserved_ports` with the worst possible pattern
/// (two reserved ports, one free, over all 65,536 ports: `1-2,4-5,...`), at
/// most 4 bytes a port, 256 KiB; the kernel accepts reads up to
/// `KMALLOC_MAX_SIZE` (4 MiB on x86-64).
pub const READ_MAX: usize = 512 * 1024;

/// An error reading or writing one `/proc` file, naming the file.
#[derive(Debug, thiserror::Error)]
#[error("{op} {}: {source}", path.display())]
pub struct ProcError {
    /// "reading" or "writing".
    pub op: &'static str,
    /// The file.
    pub path: PathBuf,
    /// What the kernel said.
    #[source]
    pub source: io::Error,
}

/// Reads a `/proc/sys` text file whole, in a single `read(2)` of
/// [`READ_MAX`] bytes (see the module's documentation for why a second read
/// must never be relied on).
pub fn read(path: impl AsRef<Path>) -> Result<String, ProcError> {
    read_max(path, READ_MAX)
}

/// [`read`] with a buffer of `max` bytes: an answer that fills the buffer
/// may have been cut, and is an error.
pub fn read_max(path: impl AsRef<Path>, max: usize) -> Result<String, ProcError> {
    let path = path.as_ref();
    let err = |source| ProcError {
        op: "reading",
        path: path.to_owned(),
        source,
    };
    let mut f = File::open(path).map_err(err)?;
    let mut buf = vec![0u8; max];
    let n = loop {
        match f.read(&mut buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => break r.map_err(err)?,
        }
    };
    if n >= max {
        return Err(err(io::Error::other(format!(
            "the value is {max} bytes or longer, more than one read can be trusted with"
        ))));
    }
    buf.truncate(n);
    String::from_utf8(buf).map_err(|e| err(io::Error::new(io::ErrorKind::InvalidData, e)))
}

/// Writes a `/proc/sys` file, as sysctl does. One `write(2)` carries values
/// up to a page; for longer ones the kernel takes whole items up to a page
/// and the rest follows at the next offset, which `proc_do_large_bitmap`
/// ORs into the value just written (so a reserved-ports list of any length
/// arrives whole). Callers that must know read the value back.
pub fn write(path: impl AsRef<Path>, value: &str) -> Result<(), ProcError> {
    let path = path.as_ref();
    let err = |source| ProcError {
        op: "writing",
        path: path.to_owned(),
        source,
    };
    let mut f = File::options().write(true).open(path).map_err(err)?;
    f.write_all(value.as_bytes()).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_that_fills_the_buffer_is_refused_not_cut() {
        // /proc/self/status is longer than 16 bytes: one read fills the buffer.
        let e = read_max("/proc/self/status", 16).unwrap_err();
        assert!(e.to_string().contains("16 bytes or longer"), "{e}");
        // the control: the same file with the full buffer reads whole
        let whole = read("/proc/self/status").unwrap();
        assert!(whole.contains("\nThreads:"), "{whole}");
    }

    #[test]
    fn the_kernel_release_reads_whole() {
        let r = read(OSRELEASE).unwrap();
        assert!(r.ends_with('\n') && r.trim().contains('.'), "{r:?}");
    }
}
