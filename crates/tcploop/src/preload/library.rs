//! Finding the guard library (and the program to run, as `execvp(3)`
//! does), and the `LD_PRELOAD` value that names it.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::elf::{inspect_elf_file, ElfInfo};
use super::{PreloadError, LIB_NAME};

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
