//! BPF: the compiled programs of `crates/tcploop/bpf/`, embedded in the
//! binary, loaded with aya. Only this module (and its children) speaks
//! `bpf(2)`; callers get the domain's types and a [`Refusal`] that says, in
//! one line, why BPF could not be used here and what to do instead.
//!
//! One child module a program: each owns its object's loading, attaching
//! and maps, and turns what the kernel gives into plain data:
//! - [`owners`]: the `task_file` iterator that finds which process holds
//!   which socket (`scan`).

pub mod owners;

use std::fmt;
use std::io;
use std::path::Path;

/// Where the kernel publishes its own BTF (type information). `tp_btf`
/// programs and CO-RE relocations need it.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// Why BPF cannot be used here, sorted by what the user can do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The kernel has no BTF (`/sys/kernel/btf/vmlinux` missing).
    NoBtf,
    /// Permission denied: missing CAP_BPF/CAP_PERFMON/CAP_NET_ADMIN, or an
    /// unprivileged user namespace (capabilities are checked against the
    /// initial user namespace).
    NotPermitted(String),
    /// The kernel refused the program or the attach (old kernel, missing
    /// feature, verifier): the message says which step.
    Unsupported(String),
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::NoBtf => write!(f, "the kernel has no BTF ({VMLINUX_BTF} is missing)"),
            Refusal::NotPermitted(step) => write!(
                f,
                "{step}: permission denied (needs root, or CAP_BPF and CAP_PERFMON \
                 in the initial user namespace)"
            ),
            Refusal::Unsupported(step) => write!(f, "{step}: refused by this kernel"),
        }
    }
}

impl std::error::Error for Refusal {}

/// Checks what can be checked without loading anything.
pub fn precheck() -> Result<(), Refusal> {
    if !Path::new(VMLINUX_BTF).exists() {
        return Err(Refusal::NoBtf);
    }
    Ok(())
}

/// Sorts an error from a load or attach step into a [`Refusal`].
pub fn classify(step: &str, err: &io::Error) -> Refusal {
    match err.raw_os_error() {
        Some(libc::EPERM) | Some(libc::EACCES) => Refusal::NotPermitted(step.to_string()),
        _ => Refusal::Unsupported(format!("{step} ({err})")),
    }
}
