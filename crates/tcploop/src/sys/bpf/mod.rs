//! BPF: the compiled programs of `crates/tcploop/bpf/`, embedded in the
//! binary, loaded with aya. Only this module (and its children) speaks
//! `bpf(2)`; callers get the domain's types and a [`Refusal`] that says, in
//! one line, why BPF could not be used here and what to do instead.
//!
//! One child module a program: each owns its object's loading, attaching
//! and maps, and turns what the kernel gives into plain data:
//! - [`owners`]: the `task_file` iterator that finds which process holds
//!   which socket (`scan`);
//! - [`loops`]: the loop detector on `tp_btf/inet_sock_set_state` (`trace`,
//!   `watch --source ebpf`);
//! - [`shield`], [`shield_cgroup`]: the shield's programs.

pub mod loops;
pub mod owners;

use std::fmt;
use std::io;
use std::path::Path;

pub mod shield;
pub mod shield_cgroup;

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
                "{step}: permission denied (needs root, or in the initial user namespace \
                 CAP_BPF with CAP_PERFMON, or with CAP_NET_ADMIN for the shield)"
            ),
            Refusal::Unsupported(step) => write!(f, "{step}: refused by this kernel"),
        }
    }
}

impl std::error::Error for Refusal {}

/// Checks what can be checked without loading anything: BTF, and whether
/// this process runs in a user namespace other than the initial one (where
/// no capability counts for BPF, whatever the uid inside).
pub fn precheck() -> Result<(), Refusal> {
    if !Path::new(VMLINUX_BTF).exists() {
        return Err(Refusal::NoBtf);
    }
    if in_child_user_namespace() {
        return Err(Refusal::NotPermitted(
            "running in a user namespace other than the initial one".into(),
        ));
    }
    Ok(())
}

/// Whether `/proc/self/uid_map` maps less than the whole id space, which
/// is true in every user namespace but the initial one.
fn in_child_user_namespace() -> bool {
    match std::fs::read_to_string("/proc/self/uid_map") {
        Ok(map) => {
            let fields: Vec<&str> = map.split_whitespace().collect();
            fields != ["0", "0", "4294967295"]
        }
        Err(_) => false,
    }
}

/// Checks what can be checked before loading a networking program
/// (`sched_cls`): none of them need BTF, so only the capability is looked
/// at: without CAP_BPF and CAP_NET_ADMIN the load cannot succeed.
pub fn precheck_net() -> Result<(), Refusal> {
    // CAP_NET_ADMIN = 12, CAP_BPF = 39, CAP_SYS_ADMIN = 21 (capabilities(7)).
    let eff = effective_caps().unwrap_or(u64::MAX);
    let has = |c: u32| eff & (1u64 << c) != 0;
    if !has(12) || !(has(39) || has(21)) {
        return Err(Refusal::NotPermitted("loading the shield".into()));
    }
    Ok(())
}

/// The effective capability set of this process (`CapEff` in
/// `/proc/thread-self/status`). Capabilities count only in the initial user
/// namespace for BPF; inside a user namespace they are the namespace's, so
/// a load can still be refused with EPERM (then [`classify`] says so).
fn effective_caps() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/thread-self/status").ok()?;
    let hex = s.lines().find_map(|l| l.strip_prefix("CapEff:"))?.trim();
    u64::from_str_radix(hex, 16).ok()
}

/// Sorts any error of aya's (whose chain ends in the kernel's
/// `io::Error`) into a [`Refusal`].
pub fn classify_error(step: &str, err: &(dyn std::error::Error + 'static)) -> Refusal {
    let mut e: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(cur) = e {
        if let Some(io) = cur.downcast_ref::<io::Error>() {
            if io.raw_os_error().is_some() {
                return match io.raw_os_error() {
                    Some(libc::EPERM) | Some(libc::EACCES) => {
                        Refusal::NotPermitted(step.to_string())
                    }
                    _ => Refusal::Unsupported(format!("{step} ({err}: {io})")),
                };
            }
        }
        e = cur.source();
    }
    Refusal::Unsupported(format!("{step} ({err})"))
}

/// Sorts an error from a load or attach step into a [`Refusal`].
pub fn classify(step: &str, err: &io::Error) -> Refusal {
    match err.raw_os_error() {
        Some(libc::EPERM) | Some(libc::EACCES) => Refusal::NotPermitted(step.to_string()),
        _ => Refusal::Unsupported(format!("{step} ({err})")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] io::Error);

    #[test]
    fn a_nested_eperm_is_a_permission_refusal() {
        let e = Outer(io::Error::from_raw_os_error(libc::EPERM));
        assert_eq!(
            classify_error("loading", &e),
            Refusal::NotPermitted("loading".into())
        );
        let e = Outer(io::Error::from_raw_os_error(libc::EINVAL));
        assert!(
            matches!(classify_error("loading", &e), Refusal::Unsupported(s) if s.starts_with("loading ("))
        );
    }
}
