//! Throwaway network namespaces for safe experiments.
//!
//! A sandbox is a fresh network namespace (inside a fresh user namespace, so
//! no root is needed) with `lo` up and, optionally, a narrow ephemeral port
//! range: a loop reproduces there in a handful of tries and nothing touches
//! the host's own ports. When the last process in it exits, it is gone.
//!
//! `unshare(CLONE_NEWUSER)` refuses a process with more than one thread, so
//! there are exactly two ways in, both through [`crate::sys::ns::Plan`]:
//! - [`Sandbox::enter`]: the calling process moves in; call it first thing in
//!   `main`, before any thread exists (the `tcploop demo` way);
//! - [`Sandbox::command`]: a child process is started inside; the namespace
//!   is entered between `fork()` and `exec()`, where the child is
//!   single-threaded (the `tcploop sandbox -- CMD` and test-suite way).

use std::io;
use std::process::Command;

use crate::ports::{PortRange, PortSet};
use crate::sys::ns::{self, Plan, Step};
use crate::sys::procsys;

/// How to isolate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Isolation {
    /// A user+net namespace; if user namespaces are unavailable and we are
    /// root, a network namespace alone.
    #[default]
    Auto,
    /// A user+net namespace only.
    UserNs,
    /// A network namespace only (root).
    NetNsOnly,
}

/// A sandbox description.
#[derive(Debug, Clone, Default)]
pub struct Sandbox {
    /// `ip_local_port_range` to set inside (None: the kernel's default).
    pub range: Option<PortRange>,
    /// `ip_local_reserved_ports` to set inside.
    pub reserved: Option<PortSet>,
    /// How to isolate.
    pub isolation: Isolation,
}

/// What was entered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entered {
    /// A user namespace and a network namespace.
    UserAndNet,
    /// A network namespace only (as root, user namespaces being unavailable).
    NetOnly,
}

/// The lowest start of a port range the kernel accepts in a new network
/// namespace: `ip_local_port_range` may not start below
/// `net.ipv4.ip_unprivileged_port_start`, which is 1024 there.
pub const MIN_RANGE_START: u16 = 1024;

/// Why a sandbox could not be entered.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The kernel would refuse the port range (EINVAL).
    #[error(
        "the port range {0} cannot be set: the kernel refuses (EINVAL) a range that starts below \
         net.ipv4.ip_unprivileged_port_start, which is 1024 in a new namespace; start at 1024 or \
         above (ends of different parity, e.g. 40000-40009, are preferred)"
    )]
    Range(PortRange),
    /// The process has threads already.
    #[error(
        "cannot enter a namespace from a process with {0} threads (unshare needs a single thread)"
    )]
    Threaded(usize),
    /// User namespaces are not allowed and we are not root.
    #[error(
        "cannot create a user namespace ({0}); unprivileged user namespaces may be disabled \
         (sysctl user.max_user_namespaces, kernel.unprivileged_userns_clone, or an AppArmor \
         restriction); run as root to use a plain network namespace"
    )]
    NoUserNs(#[source] io::Error),
    /// A later step failed.
    #[error("setting up the namespace: {what}")]
    Setup {
        /// Which step.
        what: &'static str,
        /// The kernel's answer.
        #[source]
        source: io::Error,
    },
}

impl Sandbox {
    /// A sandbox with this port range.
    pub fn with_range(range: PortRange) -> Sandbox {
        Sandbox {
            range: Some(range),
            ..Sandbox::default()
        }
    }

    fn plan(&self, user_ns: bool) -> Plan {
        let mut sysctls = vec![];
        if let Some(r) = self.range {
            sysctls.push((procsys::PORT_RANGE, format!("{} {}", r.low, r.high)));
        }
        if let Some(res) = &self.reserved {
            sysctls.push((procsys::RESERVED_PORTS, res.to_string()));
        }
        Plan::new(user_ns, &sysctls)
    }

    fn plans(&self) -> Vec<Plan> {
        match self.isolation {
            Isolation::UserNs => vec![self.plan(true)],
            Isolation::NetNsOnly => vec![self.plan(false)],
            Isolation::Auto if ns::euid() == 0 => vec![self.plan(true), self.plan(false)],
            Isolation::Auto => vec![self.plan(true)],
        }
    }

    /// Checks what the kernel would refuse, before anything is entered.
    pub fn validate(&self) -> Result<(), SandboxError> {
        match self.range {
            Some(r) if r.low < MIN_RANGE_START => Err(SandboxError::Range(r)),
            _ => Ok(()),
        }
    }

    /// Moves the calling process into a new sandbox. The process must be
    /// single-threaded.
    pub fn enter(&self) -> Result<Entered, SandboxError> {
        self.validate()?;
        let threads = ns::thread_count().unwrap_or(1);
        if threads > 1 {
            return Err(SandboxError::Threaded(threads));
        }
        let mut last = None;
        for plan in self.plans() {
            match plan.apply() {
                Ok(()) => {
                    return Ok(if plan.user_ns {
                        Entered::UserAndNet
                    } else {
                        Entered::NetOnly
                    })
                }
                Err((Step::Unshare, e)) => last = Some((plan.user_ns, e)),
                Err((step, e)) => return Err(setup_error(step, e)),
            }
        }
        let (user_ns, e) = last.expect("at least one plan");
        Err(if user_ns {
            SandboxError::NoUserNs(e)
        } else {
            SandboxError::Setup {
                what: "unshare(CLONE_NEWNET)",
                source: e,
            }
        })
    }

    /// A command that runs `program` inside a new sandbox of its own.
    /// Spawning it fails with the namespace error if entering fails.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new(program);
        ns::enter_before_exec(&mut cmd, self.plans());
        cmd
    }
}

fn setup_error(step: Step, source: io::Error) -> SandboxError {
    let what = match step {
        Step::Unshare => "unshare",
        Step::IdMap => "writing /proc/self/uid_map and gid_map",
        Step::LoopbackUp => "bringing lo up",
        Step::Sysctl => "writing the port range or reserved ports",
    };
    SandboxError::Setup { what, source }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_range_below_1024_is_refused_before_the_kernel_is_asked() {
        let s = Sandbox::with_range(PortRange {
            low: 100,
            high: 200,
        });
        let e = s.validate().unwrap_err().to_string();
        assert!(e.contains("100-200") && e.contains("1024"), "{e}");
        assert!(Sandbox::with_range(PortRange {
            low: 1024,
            high: 1033
        })
        .validate()
        .is_ok());
    }
}
