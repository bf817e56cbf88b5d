//! What the guard does not cover: the reasons a program would run without
//! it (static, setuid or setgid, Go, another machine), following `#!`
//! interpreters.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::elf::{inspect_elf_file, parse_shebang, ElfInfo};
use super::library::resolve_command;

/// A reason the guard will not protect a program.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gap {
    /// Statically linked: no loader, no `LD_PRELOAD`.
    Static {
        /// The executable.
        path: PathBuf,
    },
    /// Set-user-ID to another user: the loader runs in secure mode.
    Setuid {
        /// The executable.
        path: PathBuf,
        /// Its owner.
        owner: u32,
    },
    /// Set-group-ID: the loader runs in secure mode unless the caller's real
    /// group is already the file's.
    Setgid {
        /// The executable.
        path: PathBuf,
        /// Its group.
        group: u32,
    },
    /// A Go program: it calls the kernel itself.
    Go {
        /// The executable.
        path: PathBuf,
    },
    /// The program's class or machine differs from the library's.
    Arch {
        /// The executable.
        path: PathBuf,
        /// Its class and machine.
        program: String,
        /// The library's.
        library: String,
    },
    /// Not an ELF executable nor a script: cannot tell.
    Unknown {
        /// The file.
        path: PathBuf,
        /// What was found.
        reason: String,
    },
}

impl Gap {
    /// Whether the program certainly runs unprotected (`Unknown` and
    /// `Setgid` only may).
    pub fn certain(&self) -> bool {
        !matches!(self, Gap::Unknown { .. } | Gap::Setgid { .. })
    }
}

impl std::fmt::Display for Gap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Gap::Static { path } => write!(
                f,
                "{} is statically linked: no dynamic loader runs, so LD_PRELOAD cannot work \
                 and it runs UNPROTECTED against TCP loops",
                path.display()
            ),
            Gap::Setuid { path, owner } => write!(
                f,
                "{} is setuid (owner uid {owner}): the loader ignores LD_PRELOAD for it \
                 (secure mode), so it runs UNPROTECTED against TCP loops",
                path.display()
            ),
            Gap::Setgid { path, group } => write!(
                f,
                "{} is setgid (group gid {group}): unless your real group is already that \
                 one, the loader ignores LD_PRELOAD for it (secure mode) and it runs \
                 UNPROTECTED against TCP loops",
                path.display()
            ),
            Gap::Go { path } => write!(
                f,
                "{} is a Go program: Go calls the kernel directly, not libc's connect(), so \
                 the guard cannot see it. Go's net.Dial checks for a loop itself, but gives up \
                 after 3 tries and then returns the loop",
                path.display()
            ),
            Gap::Arch {
                path,
                program,
                library,
            } => write!(
                f,
                "{} is a {program} program and the guard library is {library}: the loader \
                 will skip the library, so it runs UNPROTECTED against TCP loops",
                path.display()
            ),
            Gap::Unknown { path, reason } => write!(
                f,
                "cannot tell whether {} can be protected ({reason})",
                path.display()
            ),
        }
    }
}

/// Inspects the program about to run (following `#!` interpreters, at most
/// four deep) and returns the reasons the guard will not protect it, with
/// the chain of files looked at. No gaps: dynamically linked, the guard
/// loads.
pub fn gaps(program: &Path, lib: &ElfInfo, path_env: Option<&OsStr>) -> (Vec<Gap>, Vec<PathBuf>) {
    let mut chain = vec![];
    let mut current = program.to_owned();
    for _ in 0..5 {
        chain.push(current.clone());
        let mut head = [0u8; 256];
        let n = match read_head(&current, &mut head) {
            Ok(n) => n,
            Err(e) => {
                return (
                    vec![Gap::Unknown {
                        path: current,
                        reason: e.to_string(),
                    }],
                    chain,
                )
            }
        };
        if let Some((interp, arg)) = parse_shebang(&head[..n]) {
            // `#!/usr/bin/env prog`: the program is `prog`, found in PATH.
            let via_env = interp.file_name() == Some(OsStr::new("env"));
            current = match (via_env, arg) {
                (true, Some(a)) if !a.as_bytes().starts_with(b"-") => {
                    match resolve_command(&a, path_env) {
                        Some(p) => p,
                        None => return (vec![], chain),
                    }
                }
                _ => interp,
            };
            continue;
        }
        return (file_gaps(&current, lib), chain);
    }
    (
        vec![Gap::Unknown {
            path: current,
            reason: "too many #! interpreters".into(),
        }],
        chain,
    )
}

fn read_head(path: &Path, buf: &mut [u8]) -> std::io::Result<usize> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// The gaps of one ELF file (not a script).
fn file_gaps(path: &Path, lib: &ElfInfo) -> Vec<Gap> {
    let info = match inspect_elf_file(path) {
        Ok(Some(i)) => i,
        Ok(None) => {
            return vec![Gap::Unknown {
                path: path.to_owned(),
                reason: "not an ELF executable nor a #! script".into(),
            }]
        }
        Err(e) => {
            return vec![Gap::Unknown {
                path: path.to_owned(),
                reason: e.to_string(),
            }]
        }
    };
    let mut gaps = elf_gaps(path, &info, lib);
    if let Ok(meta) = std::fs::metadata(path) {
        gaps.extend(setid_gaps(
            path,
            meta.mode(),
            meta.uid(),
            meta.gid(),
            crate::sys::ns::euid(),
        ));
    }
    gaps
}

/// The gaps the ELF facts show (pure).
pub fn elf_gaps(path: &Path, info: &ElfInfo, lib: &ElfInfo) -> Vec<Gap> {
    let path = path.to_owned();
    let mut gaps = vec![];
    if info.go {
        gaps.push(Gap::Go { path: path.clone() });
    }
    if info.interpreter.is_none() {
        gaps.push(Gap::Static { path });
    } else if (info.is_64, info.machine) != (lib.is_64, lib.machine) {
        gaps.push(Gap::Arch {
            path,
            program: info.arch(),
            library: lib.arch(),
        });
    }
    gaps
}

/// The gaps the mode bits show (pure): setuid to someone else, setgid.
pub fn setid_gaps(path: &Path, mode: u32, uid: u32, gid: u32, euid: u32) -> Vec<Gap> {
    let mut gaps = vec![];
    if mode & 0o4000 != 0 && uid != euid {
        gaps.push(Gap::Setuid {
            path: path.to_owned(),
            owner: uid,
        });
    }
    if mode & 0o2000 != 0 && mode & 0o010 != 0 {
        gaps.push(Gap::Setgid {
            path: path.to_owned(),
            group: gid,
        });
    }
    gaps
}
