//! The engine of `tcploop run`: protecting a program that cannot be changed
//! by loading the preload guard (`libtcploop_preload.so`, the
//! `tcploop-preload` crate) into it with `LD_PRELOAD`.
//!
//! The dynamic loader (`ld.so(8)`) maps the libraries named in `LD_PRELOAD`
//! before any other, so the guard's `connect()` and `getsockopt()` come
//! first in symbol lookup: every libc `connect()` of the program, its
//! libraries (libcurl, libuv, the JVM's libnio, CPython's socket module) and
//! its dynamically linked children goes through the guard, which turns a
//! connection to itself into `ECONNREFUSED`.
//!
//! That only works when the loader runs and honours the variable. This
//! module tells, from the executable's ELF headers, when it does not:
//!
//! - **static**: no `PT_INTERP` program header, so no loader runs at all
//!   (this includes static-pie executables, which have a `PT_DYNAMIC` but
//!   relocate themselves);
//! - **setuid / setgid**: the kernel sets `AT_SECURE` when the program gains
//!   privileges, and the loader then ignores `LD_PRELOAD` paths;
//! - **Go**: a `.go.buildinfo` or `.note.go.buildid` section; Go's runtime
//!   makes system calls itself, never through libc's `connect()` (its
//!   `net.Dial` retries a loop twice on its own, then returns it);
//! - **another machine or class** (a 32-bit program, a 64-bit guard): the
//!   loader skips the library with an error line.
//!
//! Scripts (`#!`) are followed to their interpreter, through `env`.
//!
//! Everything here is plain data and file reads; the checks are pure
//! functions tested on fixtures.

//! The module in three parts: [`library`] finds the guard library (and
//! the program, as `execvp(3)` would) and builds `LD_PRELOAD`; [`elf`]
//! reads ELF headers and `#!` lines; [`gaps`](mod@gaps) says what the guard does not
//! cover for a given program.

use std::path::PathBuf;

pub mod elf;
pub mod gaps;
pub mod library;

pub use elf::{inspect_elf, inspect_elf_file, parse_shebang, ElfInfo};
pub use gaps::{elf_gaps, gaps, setid_gaps, Gap};
pub use library::{candidates, find_library, ld_preload_value, resolve_command, Library};

/// The file name of the preload library, as cargo builds it.
pub const LIB_NAME: &str = "libtcploop_preload.so";
/// The environment variable naming the library explicitly.
pub const ENV_LIB: &str = "TCPLOOP_PRELOAD";
/// The environment variable the library reads: `1` logs each prevented loop.
pub const ENV_LOG: &str = "TCPLOOP_LOG";
/// The loader's variable.
pub const LD_PRELOAD: &str = "LD_PRELOAD";

/// Why `tcploop run` cannot start.
#[derive(Debug, thiserror::Error)]
pub enum PreloadError {
    /// `TCPLOOP_PRELOAD` names a file that is not there.
    #[error("{ENV_LIB}={0} does not exist")]
    EnvMissing(PathBuf),
    /// The library is nowhere to be found.
    #[error(
        "cannot find the preload guard library {LIB_NAME} (looked in {}). \
         `cargo install` installs only the tcploop binary: build the library with \
         `cargo build --release -p tcploop-preload` and copy target/release/{LIB_NAME} \
         beside tcploop, or set {ENV_LIB}=/path/to/{LIB_NAME}",
        .0.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
    )]
    NotFound(Vec<PathBuf>),
    /// The path cannot be put in `LD_PRELOAD`, whose separators are `:` and
    /// space.
    #[error("the library path {0} contains a space or a colon, which LD_PRELOAD cannot carry")]
    BadPath(PathBuf),
    /// A file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The library is not a shared object the loader could use.
    #[error("{path} is not an ELF shared library: {reason}")]
    NotElf {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// What [`plan`] reads from the environment, passed in so that the
/// engine reads none of it itself.
#[derive(Debug, Clone, Default)]
pub struct Env {
    /// `TCPLOOP_PRELOAD`.
    pub lib: Option<std::ffi::OsString>,
    /// The running `tcploop` executable (the library is looked for beside it).
    pub exe: Option<PathBuf>,
    /// `PATH`.
    pub path: Option<std::ffi::OsString>,
    /// `LD_PRELOAD` as it was.
    pub ld_preload: Option<std::ffi::OsString>,
}

/// How a command will be run under the guard.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The guard library.
    pub library: Library,
    /// The program, found as `execvp(3)` would.
    pub program: PathBuf,
    /// Why the guard may not cover it ([`Gap::certain`] ones: it will not).
    pub gaps: Vec<Gap>,
    /// The `#!` chain from the program to its interpreter (empty or one
    /// element when it is no script).
    pub chain: Vec<PathBuf>,
    /// The `LD_PRELOAD` value to run it with.
    pub ld_preload: std::ffi::OsString,
}

/// Why `tcploop run` cannot plan a command.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// The library is missing or unusable.
    #[error(transparent)]
    Library(#[from] PreloadError),
    /// The command is not on `PATH`.
    #[error("{}: command not found", .0.to_string_lossy())]
    NotFound(std::ffi::OsString),
}

/// Finds the library and the program `name`, and what the guard will not
/// cover for it.
pub fn plan(name: &std::ffi::OsStr, env: &Env) -> Result<Plan, PlanError> {
    let library = find_library(env.lib.as_deref(), env.exe.as_deref())?;
    let program = resolve_command(name, env.path.as_deref())
        .ok_or_else(|| PlanError::NotFound(name.to_owned()))?;
    let (gaps, chain) = gaps(&program, &library.elf, env.path.as_deref());
    let ld_preload = ld_preload_value(&library.path, env.ld_preload.as_deref());
    Ok(Plan {
        library,
        program,
        gaps,
        chain,
        ld_preload,
    })
}

/// What `tcploop run` is asked to do.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// The command and its arguments (a name first).
    pub command: Vec<std::ffi::OsString>,
    /// What the environment holds.
    pub env: Env,
    /// Refuse a program the guard certainly does not cover.
    pub strict: bool,
    /// Have the guard log each prevented loop ([`ENV_LOG`]).
    pub log: bool,
}

/// Why `tcploop run` did not replace itself with the command.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// No plan: the library or the program is missing.
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// The caller's notes could not be written.
    #[error("writing the notes")]
    Notes(#[source] std::io::Error),
    /// `strict`, and the guard certainly does not cover the program.
    #[error("not running {}: {gap}", .program.display())]
    Strict {
        /// The program.
        program: PathBuf,
        /// Why it would run unprotected.
        gap: Gap,
    },
    /// `execve(2)` failed.
    #[error("running {}", .program.display())]
    Exec {
        /// The program.
        program: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Plans the command, hands the plan to `notes` (what the guard will not
/// cover, said before the command starts), then replaces this process with
/// the command under the guard (`execvp(3)`: its exit status, signals and
/// terminal pass through). Returns only on failure.
pub fn run(cfg: &RunConfig, notes: &mut dyn FnMut(&Plan) -> std::io::Result<()>) -> RunError {
    use std::os::unix::process::CommandExt;
    let Some(name) = cfg.command.first() else {
        return RunError::Plan(PlanError::NotFound(Default::default()));
    };
    let plan = match plan(name, &cfg.env) {
        Ok(p) => p,
        Err(e) => return e.into(),
    };
    if let Err(e) = notes(&plan) {
        return RunError::Notes(e);
    }
    if let Some(g) = plan
        .gaps
        .iter()
        .find(|g| g.certain())
        .filter(|_| cfg.strict)
    {
        return RunError::Strict {
            program: plan.program.clone(),
            gap: g.clone(),
        };
    }
    let mut cmd = std::process::Command::new(name);
    cmd.args(&cfg.command[1..])
        .env(LD_PRELOAD, &plan.ld_preload);
    if cfg.log {
        cmd.env(ENV_LOG, "1");
    }
    RunError::Exec {
        program: plan.program,
        source: cmd.exec(),
    }
}

#[cfg(test)]
mod tests;
