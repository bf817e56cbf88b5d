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

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use object::read::elf::{ElfFile, FileHeader, ProgramHeader};
use object::{Object, ReadRef};

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

/// Where to look for the library: `TCPLOOP_PRELOAD` if set (and then only
/// there), else beside the `tcploop` executable, then in `../lib` and
/// `../lib/tcploop` from it (the layout of a `/usr/local` install).
pub fn candidates(env_value: Option<&OsStr>, exe: Option<&Path>) -> Vec<PathBuf> {
    if let Some(v) = env_value.filter(|v| !v.is_empty()) {
        return vec![PathBuf::from(v)];
    }
    let Some(dir) = exe.and_then(Path::parent) else {
        return vec![];
    };
    vec![
        dir.join(LIB_NAME),
        dir.join("../lib").join(LIB_NAME),
        dir.join("../lib/tcploop").join(LIB_NAME),
    ]
}

/// Finds the library (see [`candidates`]) and returns its absolute path,
/// checked to be a shared object that fits in `LD_PRELOAD`.
pub fn find_library(
    env_value: Option<&OsStr>,
    exe: Option<&Path>,
) -> Result<Library, PreloadError> {
    let from_env = env_value.is_some_and(|v| !v.is_empty());
    let cands = candidates(env_value, exe);
    let Some(found) = cands.iter().find(|p| p.is_file()) else {
        return Err(match (from_env, cands.into_iter().next()) {
            (true, Some(p)) => PreloadError::EnvMissing(p),
            (_, _) => PreloadError::NotFound(candidates(None, exe)),
        });
    };
    let path = found.canonicalize().map_err(|source| PreloadError::Read {
        path: found.clone(),
        source,
    })?;
    if path
        .as_os_str()
        .as_bytes()
        .iter()
        .any(|&b| b == b':' || b == b' ')
    {
        return Err(PreloadError::BadPath(path));
    }
    let elf = inspect_elf_file(&path)?.ok_or_else(|| PreloadError::NotElf {
        path: path.clone(),
        reason: "no ELF header".into(),
    })?;
    Ok(Library { path, elf })
}

/// The library, found.
#[derive(Debug, Clone)]
pub struct Library {
    /// Its absolute path.
    pub path: PathBuf,
    /// Its ELF facts (class and machine, to compare with the program's).
    pub elf: ElfInfo,
}

/// The new `LD_PRELOAD`: the library first (so its `connect()` is the one
/// the program reaches, and `dlsym(RTLD_NEXT)` leads on to any other
/// preloaded library and then libc), then the existing value, kept as it
/// was. A value already naming the library is left unchanged.
pub fn ld_preload_value(lib: &Path, existing: Option<&OsStr>) -> OsString {
    let lib_bytes = lib.as_os_str().as_bytes();
    let Some(existing) =
        existing.filter(|e| !e.as_bytes().iter().all(|b| *b == b' ' || *b == b':'))
    else {
        return lib.as_os_str().to_owned();
    };
    let has = existing
        .as_bytes()
        .split(|b| *b == b':' || *b == b' ')
        .any(|item| item == lib_bytes);
    if has {
        return existing.to_owned();
    }
    let mut v = lib_bytes.to_vec();
    v.push(b':');
    v.extend_from_slice(existing.as_bytes());
    OsString::from_vec(v)
}

/// What the ELF headers say about an executable or library.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElfInfo {
    /// The program interpreter (`PT_INTERP`), e.g.
    /// `/lib64/ld-linux-x86-64.so.2`; `None`: statically linked.
    pub interpreter: Option<String>,
    /// 64-bit (`ELFCLASS64`).
    pub is_64: bool,
    /// `e_machine` (62: x86-64, 183: AArch64, 3: i386).
    pub machine: u16,
    /// Built by Go (a `.go.buildinfo` or `.note.go.buildid` section).
    pub go: bool,
}

impl ElfInfo {
    /// A short name of the class and machine, e.g. `64-bit x86-64`.
    pub fn arch(&self) -> String {
        let m = match self.machine {
            3 => "i386".to_string(),
            40 => "ARM".to_string(),
            62 => "x86-64".to_string(),
            183 => "AArch64".to_string(),
            243 => "RISC-V".to_string(),
            m => format!("machine {m}"),
        };
        format!("{}-bit {m}", if self.is_64 { 64 } else { 32 })
    }
}

/// Reads the ELF facts of `data`; `Ok(None)` when it is not ELF at all.
pub fn inspect_elf<'d, R: ReadRef<'d>>(data: R) -> Result<Option<ElfInfo>, String> {
    match data.read_bytes_at(0, 4) {
        Ok(magic) if magic == b"\x7fELF" => {}
        _ => return Ok(None),
    }
    let file = object::File::parse(data).map_err(|e| e.to_string())?;
    let info = match &file {
        object::File::Elf32(f) => elf_info(f),
        object::File::Elf64(f) => elf_info(f),
        _ => return Ok(None),
    };
    info.map(Some)
}

fn elf_info<'d, Elf: FileHeader, R: ReadRef<'d>>(
    f: &ElfFile<'d, Elf, R>,
) -> Result<ElfInfo, String> {
    let endian = f.endian();
    let mut interpreter = None;
    for ph in f.elf_program_headers() {
        if let Some(i) = ph
            .interpreter(endian, f.data())
            .map_err(|e| e.to_string())?
        {
            interpreter = Some(String::from_utf8_lossy(i).into_owned());
        }
    }
    let go = f.section_by_name(".go.buildinfo").is_some()
        || f.section_by_name(".note.go.buildid").is_some();
    Ok(ElfInfo {
        interpreter,
        is_64: f.is_64(),
        machine: f.elf_header().e_machine(endian).0,
        go,
    })
}

/// [`inspect_elf`] on a file, reading only the parts it needs.
pub fn inspect_elf_file(path: &Path) -> Result<Option<ElfInfo>, PreloadError> {
    let file = std::fs::File::open(path).map_err(|source| PreloadError::Read {
        path: path.to_owned(),
        source,
    })?;
    let cache = object::ReadCache::new(file);
    inspect_elf(&cache).map_err(|reason| PreloadError::NotElf {
        path: path.to_owned(),
        reason,
    })
}

/// A `#!` line: the interpreter and its optional single argument (as the
/// kernel splits it: at the first run of blanks).
pub fn parse_shebang(head: &[u8]) -> Option<(PathBuf, Option<OsString>)> {
    let rest = head.strip_prefix(b"#!")?;
    let line = rest.split(|b| *b == b'\n').next()?;
    let line = trim(line);
    let end = line
        .iter()
        .position(|b| *b == b' ' || *b == b'\t')
        .unwrap_or(line.len());
    let (interp, arg) = line.split_at(end);
    if interp.is_empty() {
        return None;
    }
    let arg = trim(arg);
    Some((
        PathBuf::from(OsStr::from_bytes(interp)),
        (!arg.is_empty()).then(|| OsStr::from_bytes(arg).to_owned()),
    ))
}

fn trim(b: &[u8]) -> &[u8] {
    let ws = |c: &u8| matches!(*c, b' ' | b'\t' | b'\r');
    let start = b.iter().position(|c| !ws(c)).unwrap_or(b.len());
    let end = b.iter().rposition(|c| !ws(c)).map_or(start, |e| e + 1);
    &b[start..end]
}

/// Finds `name` the way `execvp(3)` does: a name with a `/` is a path;
/// otherwise the first executable regular file of that name in `PATH`
/// (default `/usr/local/bin:/usr/bin:/bin`).
pub fn resolve_command(name: &OsStr, path_env: Option<&OsStr>) -> Option<PathBuf> {
    if name.as_bytes().contains(&b'/') {
        return Some(PathBuf::from(name));
    }
    if name.is_empty() {
        return None;
    }
    let path = path_env.unwrap_or(OsStr::new("/usr/local/bin:/usr/bin:/bin"));
    path.as_bytes()
        .split(|b| *b == b':')
        .map(|dir| {
            if dir.is_empty() {
                PathBuf::from(".")
            } else {
                PathBuf::from(OsStr::from_bytes(dir))
            }
        })
        .map(|dir| dir.join(name))
        .find(|p| is_executable_file(p))
}

fn is_executable_file(p: &Path) -> bool {
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

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

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal little-endian ELF file: the header and `phdrs` program
    /// headers, each `(p_type, contents)`, contents placed after them.
    fn elf(is_64: bool, machine: u16, phdrs: &[(u32, &[u8])]) -> Vec<u8> {
        let (ehsize, phentsize) = if is_64 { (64usize, 56usize) } else { (52, 32) };
        let mut data_off = ehsize + phentsize * phdrs.len();
        let mut out = vec![0u8; data_off];
        out[..4].copy_from_slice(b"\x7fELF");
        out[4] = if is_64 { 2 } else { 1 }; // EI_CLASS
        out[5] = 1; // EI_DATA: little-endian
        out[6] = 1; // EI_VERSION
        let put16 =
            |o: &mut Vec<u8>, at: usize, v: u16| o[at..at + 2].copy_from_slice(&v.to_le_bytes());
        let put32 =
            |o: &mut Vec<u8>, at: usize, v: u32| o[at..at + 4].copy_from_slice(&v.to_le_bytes());
        let put64 =
            |o: &mut Vec<u8>, at: usize, v: u64| o[at..at + 8].copy_from_slice(&v.to_le_bytes());
        put16(&mut out, 16, 3); // e_type: ET_DYN
        put16(&mut out, 18, machine);
        put32(&mut out, 20, 1); // e_version
        if is_64 {
            put64(&mut out, 32, ehsize as u64); // e_phoff
            put16(&mut out, 52, ehsize as u16);
            put16(&mut out, 54, phentsize as u16);
            put16(&mut out, 56, phdrs.len() as u16);
        } else {
            put32(&mut out, 28, ehsize as u32); // e_phoff
            put16(&mut out, 40, ehsize as u16);
            put16(&mut out, 42, phentsize as u16);
            put16(&mut out, 44, phdrs.len() as u16);
        }
        for (i, (ty, contents)) in phdrs.iter().enumerate() {
            let at = ehsize + i * phentsize;
            put32(&mut out, at, *ty);
            if is_64 {
                put64(&mut out, at + 8, data_off as u64); // p_offset
                put64(&mut out, at + 32, contents.len() as u64); // p_filesz
                put64(&mut out, at + 40, contents.len() as u64); // p_memsz
            } else {
                put32(&mut out, at + 4, data_off as u32);
                put32(&mut out, at + 16, contents.len() as u32);
                put32(&mut out, at + 20, contents.len() as u32);
            }
            out.extend_from_slice(contents);
            data_off += contents.len();
        }
        out
    }

    const PT_INTERP: u32 = 3;
    const PT_DYNAMIC: u32 = 2;
    const X86_64: u16 = 62;

    fn lib() -> ElfInfo {
        ElfInfo {
            interpreter: None,
            is_64: true,
            machine: X86_64,
            go: false,
        }
    }

    #[test]
    fn dynamic_executable_has_an_interpreter() {
        let f = elf(
            true,
            X86_64,
            &[(PT_INTERP, b"/lib64/ld-linux-x86-64.so.2\0")],
        );
        let info = inspect_elf(f.as_slice()).unwrap().unwrap();
        assert_eq!(
            info.interpreter.as_deref(),
            Some("/lib64/ld-linux-x86-64.so.2")
        );
        assert!(info.is_64 && !info.go);
        assert_eq!(elf_gaps(Path::new("/x"), &info, &lib()), vec![]);
    }

    #[test]
    fn static_pie_without_interpreter_is_static() {
        // A static-pie has PT_DYNAMIC (it relocates itself) but no PT_INTERP.
        let f = elf(true, X86_64, &[(PT_DYNAMIC, &[0u8; 16])]);
        let info = inspect_elf(f.as_slice()).unwrap().unwrap();
        assert_eq!(info.interpreter, None);
        assert_eq!(
            elf_gaps(Path::new("/x"), &info, &lib()),
            vec![Gap::Static { path: "/x".into() }]
        );
    }

    #[test]
    fn a_32_bit_program_cannot_load_a_64_bit_guard() {
        let f = elf(false, 3, &[(PT_INTERP, b"/lib/ld-linux.so.2\0")]);
        let info = inspect_elf(f.as_slice()).unwrap().unwrap();
        assert_eq!(info.arch(), "32-bit i386");
        let gaps = elf_gaps(Path::new("/x"), &info, &lib());
        assert_eq!(
            gaps,
            vec![Gap::Arch {
                path: "/x".into(),
                program: "32-bit i386".into(),
                library: "64-bit x86-64".into()
            }]
        );
        assert!(gaps[0].to_string().contains("UNPROTECTED"));
    }

    #[test]
    fn go_programs_are_named_even_when_dynamic() {
        let info = ElfInfo {
            interpreter: Some("/lib64/ld-linux-x86-64.so.2".into()),
            go: true,
            ..lib()
        };
        let gaps = elf_gaps(Path::new("/x"), &info, &lib());
        assert_eq!(gaps, vec![Gap::Go { path: "/x".into() }]);
        assert!(gaps[0].to_string().contains("gives up after 3 tries"));
    }

    #[test]
    fn not_elf_is_none_and_truncated_elf_is_an_error() {
        assert_eq!(inspect_elf(b"#!/bin/sh\n".as_slice()).unwrap(), None);
        assert_eq!(inspect_elf(b"".as_slice()).unwrap(), None);
        assert!(inspect_elf(b"\x7fELF\x02\x01\x01".as_slice()).is_err());
    }

    #[test]
    fn this_test_binary_is_dynamic() {
        let exe = std::env::current_exe().unwrap();
        let info = inspect_elf_file(&exe).unwrap().unwrap();
        assert!(info.interpreter.is_some(), "{info:?}");
        assert!(!info.go);
    }

    #[test]
    fn setuid_to_another_user_and_setgid_are_gaps() {
        let p = Path::new("/usr/bin/passwd");
        assert_eq!(
            setid_gaps(p, 0o104755, 0, 0, 1000),
            vec![Gap::Setuid {
                path: p.into(),
                owner: 0
            }]
        );
        // Root running a setuid-root program: no privilege gained, no secure mode.
        assert_eq!(setid_gaps(p, 0o104755, 0, 0, 0), vec![]);
        assert_eq!(
            setid_gaps(p, 0o102755, 0, 42, 1000),
            vec![Gap::Setgid {
                path: p.into(),
                group: 42
            }]
        );
        assert_eq!(setid_gaps(p, 0o100755, 0, 0, 1000), vec![]);
    }

    #[test]
    fn shebang_lines() {
        assert_eq!(
            parse_shebang(b"#!/bin/sh\necho"),
            Some(("/bin/sh".into(), None))
        );
        assert_eq!(
            parse_shebang(b"#! /usr/bin/env  python3 \r\n"),
            Some(("/usr/bin/env".into(), Some("python3".into())))
        );
        assert_eq!(
            parse_shebang(b"#!/usr/bin/env -S node --x\n"),
            Some(("/usr/bin/env".into(), Some("-S node --x".into())))
        );
        assert_eq!(parse_shebang(b"#!\n"), None);
        assert_eq!(parse_shebang(b"\x7fELF"), None);
    }

    #[test]
    fn ld_preload_keeps_the_existing_value_after_the_guard() {
        let lib = Path::new("/opt/t/libtcploop_preload.so");
        assert_eq!(
            ld_preload_value(lib, None),
            OsString::from("/opt/t/libtcploop_preload.so")
        );
        assert_eq!(
            ld_preload_value(lib, Some(OsStr::new(""))),
            OsString::from("/opt/t/libtcploop_preload.so")
        );
        assert_eq!(
            ld_preload_value(lib, Some(OsStr::new("libjemalloc.so.2 /x/y.so"))),
            OsString::from("/opt/t/libtcploop_preload.so:libjemalloc.so.2 /x/y.so")
        );
        let already = OsStr::new("/x.so:/opt/t/libtcploop_preload.so");
        assert_eq!(ld_preload_value(lib, Some(already)), already.to_owned());
    }

    #[test]
    fn library_candidates() {
        let exe = Path::new("/usr/local/bin/tcploop");
        assert_eq!(
            candidates(None, Some(exe)),
            vec![
                PathBuf::from("/usr/local/bin/libtcploop_preload.so"),
                PathBuf::from("/usr/local/bin/../lib/libtcploop_preload.so"),
                PathBuf::from("/usr/local/bin/../lib/tcploop/libtcploop_preload.so"),
            ]
        );
        assert_eq!(
            candidates(Some(OsStr::new("/x/l.so")), Some(exe)),
            vec![PathBuf::from("/x/l.so")]
        );
        // An empty TCPLOOP_PRELOAD is as if unset.
        assert_eq!(candidates(Some(OsStr::new("")), Some(exe)).len(), 3);
    }

    #[test]
    fn missing_library_error_says_how_to_get_it() {
        let dir = std::env::temp_dir().join(format!("tcploop-nolib-{}", std::process::id()));
        let exe = dir.join("tcploop");
        let e = find_library(None, Some(&exe)).unwrap_err().to_string();
        assert!(
            e.contains("cargo build --release -p tcploop-preload"),
            "{e}"
        );
        assert!(e.contains(ENV_LIB), "{e}");
        let e = find_library(Some(OsStr::new("/nonexistent/l.so")), Some(&exe)).unwrap_err();
        assert!(matches!(e, PreloadError::EnvMissing(_)), "{e}");
    }

    #[test]
    fn commands_are_found_like_execvp() {
        assert_eq!(
            resolve_command(OsStr::new("./x"), None),
            Some(PathBuf::from("./x"))
        );
        let sh = resolve_command(
            OsStr::new("sh"),
            Some(OsStr::new("/nonexistent:/bin:/usr/bin")),
        );
        assert_eq!(sh, Some(PathBuf::from("/bin/sh")));
        assert_eq!(
            resolve_command(OsStr::new("no-such-cmd-tcploop"), Some(OsStr::new("/bin"))),
            None
        );
    }
}
