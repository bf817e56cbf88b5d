//! `/proc/sys` files: the ephemeral port range, the reserved ports and the
//! kernel release (`proc_sys_net_ipv4(5)`, `sysctl(8)` without shelling out).
//!
//! The `net` files show the network namespace of the *reader* (opened by this
//! thread), so the same calls inside a sandbox see the sandbox's values.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// `net.ipv4.ip_local_port_range`: also governs IPv6.
pub const PORT_RANGE: &str = "/proc/sys/net/ipv4/ip_local_port_range";
/// `net.ipv4.ip_local_reserved_ports`.
pub const RESERVED_PORTS: &str = "/proc/sys/net/ipv4/ip_local_reserved_ports";
/// The kernel release, as `uname -r` prints it.
pub const OSRELEASE: &str = "/proc/sys/kernel/osrelease";

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

/// Reads a small `/proc` text file whole.
pub fn read(path: impl AsRef<Path>) -> Result<String, ProcError> {
    let path = path.as_ref();
    fs::read_to_string(path).map_err(|source| ProcError {
        op: "reading",
        path: path.to_owned(),
        source,
    })
}

/// Writes a `/proc/sys` file (one `write(2)`, as sysctl does).
pub fn write(path: impl AsRef<Path>, value: &str) -> Result<(), ProcError> {
    let path = path.as_ref();
    fs::write(path, value).map_err(|source| ProcError {
        op: "writing",
        path: path.to_owned(),
        source,
    })
}
