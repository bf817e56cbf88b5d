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
//! reads ELF headers and `#!` lines; [`gaps`] says what the guard does not
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

#[cfg(test)]
mod tests;
