//! Writing files as root without clobbering anything: the one way tcploop
//! creates or replaces a file (the sysctl.d file of `audit --persist`, the
//! textfile of `watch`, the pcap and SVG of `demo`).
//!
//! A root process that writes `/tmp/x.tmp1234` with `File::create` follows
//! a symlink planted there by any local user, and overwrites the file it
//! points to (`/etc/shadow`). So [`write()`]:
//!
//! 1. refuses a target that exists and is not a regular file (a symlink, a
//!    directory, a FIFO, a device, a socket): [`SafeFileError::NotRegular`];
//! 2. creates a temporary file in the target's directory with
//!    `O_CREAT | O_EXCL | O_NOFOLLOW` and an unpredictable name
//!    (`.NAME.tmp-<64 random bits>`): if anything exists at that name, even a
//!    dangling symlink, creation fails instead of following it;
//! 3. sets the mode explicitly with `fchmod(2)` (the umask does not apply),
//!    writes, `fsync(2)`s the file;
//! 4. `rename(2)`s it over the target (readers see the old file or the new
//!    one, never half of one; a symlink swapped in at the last moment is
//!    replaced, not followed), then `fsync(2)`s the directory so the rename
//!    survives a crash.
//!
//! On any failure the temporary file is removed and the target is untouched.
//! [`read`] is the matching reader: it refuses the same non-regular files
//! (opening a FIFO would block, a device could have side effects) and files
//! larger than a limit, and opens with `O_NOFOLLOW`.
//!
//! Built on rustix's safe `openat`/`renameat`/`fsync`; no crate does this
//! sequence (the `tempfile` crate's `persist` follows the same idea but
//! neither refuses a non-regular target nor syncs the directory).

use std::ffi::OsString;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, CWD};

/// The default limit of [`read`]: 1 MiB, far above any sysctl.d file.
pub const READ_LIMIT: u64 = 1024 * 1024;

/// What [`read()`] or [`write()`] refused, or what failed, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum SafeFileError {
    /// The path exists and is not a regular file.
    #[error("{} is a {kind}, not a regular file: refusing to {op} it", path.display())]
    NotRegular {
        /// The file.
        path: PathBuf,
        /// `symlink`, `directory`, `FIFO`, `character device`, ...
        kind: &'static str,
        /// `read` or `replace`.
        op: &'static str,
    },
    /// The file is larger than the caller's limit.
    #[error("{} is {size} bytes, more than the {limit} this file can sanely hold: refusing to read it", path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// A system call failed. (The kernel's answer is part of the message,
    /// not a separate cause, so that it is said once.)
    #[error("{op} {}: {error}", path.display())]
    Io {
        /// What was being done: `creating a temporary file in`, `writing`, ...
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The kernel's answer.
        error: io::Error,
    },
}

impl SafeFileError {
    /// The I/O error kind, if a system call failed (`PermissionDenied`: not root).
    pub fn io_kind(&self) -> Option<io::ErrorKind> {
        match self {
            SafeFileError::Io { error, .. } => Some(error.kind()),
            _ => None,
        }
    }
}

fn kind_name(t: FileType) -> &'static str {
    match t {
        FileType::RegularFile => "regular file",
        FileType::Directory => "directory",
        FileType::Symlink => "symlink",
        FileType::Fifo => "FIFO",
        FileType::Socket => "socket",
        FileType::CharacterDevice => "character device",
        FileType::BlockDevice => "block device",
        _ => "special file",
    }
}

fn io_err<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(rustix::io::Errno) -> SafeFileError + 'a {
    move |e| SafeFileError::Io {
        op,
        path: path.to_owned(),
        error: e.into(),
    }
}

/// What is at `path` now, without following a symlink: `None` if nothing.
fn lstat_type(path: &Path) -> Result<Option<FileType>, SafeFileError> {
    match rustix::fs::statat(CWD, path, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(FileType::from_raw_mode(st.st_mode))),
        Err(rustix::io::Errno::NOENT) => Ok(None),
        Err(e) => Err(io_err("looking at", path)(e)),
    }
}

/// Fails unless `path` is absent or a regular file (not a symlink to one).
pub fn check_target(path: &Path, op: &'static str) -> Result<(), SafeFileError> {
    match lstat_type(path)? {
        None | Some(FileType::RegularFile) => Ok(()),
        Some(t) => Err(SafeFileError::NotRegular {
            path: path.to_owned(),
            kind: kind_name(t),
            op,
        }),
    }
}

/// Reads `path` whole: `Ok(None)` if it does not exist; an error if it is
/// not a regular file (symlinks are not followed) or is larger than `limit`.
pub fn read(path: &Path, limit: u64) -> Result<Option<Vec<u8>>, SafeFileError> {
    if lstat_type(path)?.is_none() {
        return Ok(None);
    }
    check_target(path, "read")?;
    let fd = match rustix::fs::openat(
        CWD,
        path,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT) => return Ok(None),
        // O_NOFOLLOW on a symlink swapped in since the check
        Err(rustix::io::Errno::LOOP) => {
            return Err(SafeFileError::NotRegular {
                path: path.to_owned(),
                kind: "symlink",
                op: "read",
            })
        }
        Err(e) => return Err(io_err("opening", path)(e)),
    };
    let st = rustix::fs::fstat(&fd).map_err(io_err("looking at", path))?;
    let t = FileType::from_raw_mode(st.st_mode);
    if t != FileType::RegularFile {
        return Err(SafeFileError::NotRegular {
            path: path.to_owned(),
            kind: kind_name(t),
            op: "read",
        });
    }
    let size = st.st_size as u64;
    let too_large = |size| SafeFileError::TooLarge {
        path: path.to_owned(),
        size,
        limit,
    };
    if size > limit {
        return Err(too_large(size));
    }
    let mut buf = Vec::new();
    std::fs::File::from(fd)
        .take(limit + 1)
        .read_to_end(&mut buf)
        .map_err(|error| SafeFileError::Io {
            op: "reading",
            path: path.to_owned(),
            error,
        })?;
    if buf.len() as u64 > limit {
        return Err(too_large(buf.len() as u64));
    }
    Ok(Some(buf))
}

/// [`read`], as UTF-8 text.
pub fn read_to_string(path: &Path, limit: u64) -> Result<Option<String>, SafeFileError> {
    read(path, limit)?
        .map(|b| {
            String::from_utf8(b).map_err(|e| SafeFileError::Io {
                op: "reading",
                path: path.to_owned(),
                error: io::Error::new(io::ErrorKind::InvalidData, e),
            })
        })
        .transpose()
}

/// The directory a path's file lives in (`.` for a bare name) and its name.
fn split(path: &Path) -> Result<(PathBuf, OsString), SafeFileError> {
    let name = path
        .file_name()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| SafeFileError::Io {
            op: "naming",
            path: path.to_owned(),
            error: io::Error::new(io::ErrorKind::InvalidInput, "the path names no file"),
        })?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    Ok((dir, name.to_owned()))
}

/// Checks, before any work, that [`write()`] can create a file beside `path`:
/// the directory exists and is one, and the target is absent or a regular
/// file. (Whether the directory is writable is known only by trying: this
/// creates and removes one temporary file.)
pub fn check_writable(path: &Path) -> Result<(), SafeFileError> {
    check_target(path, "replace")?;
    let (dir, name) = split(path)?;
    let dirfd = open_dir(&dir)?;
    let (tmp, fd) = create_temp(&dirfd, &dir, &name, 0o600)?;
    drop(fd);
    let _ = rustix::fs::unlinkat(&dirfd, &tmp, AtFlags::empty());
    Ok(())
}

fn open_dir(dir: &Path) -> Result<std::os::fd::OwnedFd, SafeFileError> {
    rustix::fs::openat(
        CWD,
        dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(io_err("opening the directory", dir))
}

/// Creates `.NAME.tmp-RANDOM` in `dirfd` with O_CREAT|O_EXCL|O_NOFOLLOW and
/// mode `mode` (set with fchmod, whatever the umask).
fn create_temp(
    dirfd: &std::os::fd::OwnedFd,
    dir: &Path,
    name: &std::ffi::OsStr,
    mode: u32,
) -> Result<(OsString, std::fs::File), SafeFileError> {
    // A few tries: a name already taken (by chance, or planted) is skipped,
    // never opened.
    let mut last = rustix::io::Errno::EXIST;
    for _ in 0..8 {
        let mut tmp = OsString::from(".");
        tmp.push(name);
        tmp.push(format!(".tmp-{:016x}", rand::random::<u64>()));
        match rustix::fs::openat(
            dirfd,
            &tmp,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        ) {
            Ok(fd) => {
                let f = std::fs::File::from(fd);
                if let Err(e) = rustix::fs::fchmod(&f, Mode::from_raw_mode(mode)) {
                    let _ = rustix::fs::unlinkat(dirfd, &tmp, AtFlags::empty());
                    return Err(io_err("setting the mode of a temporary file in", dir)(e));
                }
                return Ok((tmp, f));
            }
            Err(rustix::io::Errno::EXIST) => last = rustix::io::Errno::EXIST,
            Err(e) => return Err(io_err("creating a temporary file in", dir)(e)),
        }
    }
    Err(io_err("creating a temporary file in", dir)(last))
}

/// Creates or atomically replaces `path` with `contents`, mode `mode`
/// (e.g. `0o644`), as described in the module's documentation.
pub fn write(path: &Path, contents: &[u8], mode: u32) -> Result<(), SafeFileError> {
    check_target(path, "replace")?;
    let (dir, name) = split(path)?;
    let dirfd = open_dir(&dir)?;
    let (tmp, mut f) = create_temp(&dirfd, &dir, &name, mode)?;
    let res = (|| {
        f.write_all(contents)
            .and_then(|()| f.sync_all())
            .map_err(|error| SafeFileError::Io {
                op: "writing",
                path: dir.join(&tmp),
                error,
            })?;
        drop(f);
        // again, just before the rename: refuse what appeared meanwhile
        check_target(path, "replace")?;
        rustix::fs::renameat(&dirfd, &tmp, &dirfd, &name).map_err(io_err("renaming over", path))
    })();
    if let Err(e) = res {
        let _ = rustix::fs::unlinkat(&dirfd, &tmp, AtFlags::empty());
        return Err(e);
    }
    rustix::fs::fsync(&dirfd).map_err(io_err("syncing the directory", &dir))
}

/// Whether a name is one of [`write()`]'s temporary files (for tests and
/// clean-up tools).
pub fn is_temp_name(name: &std::ffi::OsStr) -> bool {
    let b = name.as_bytes();
    b.starts_with(b".") && b.len() > 21 && b[b.len() - 21..].starts_with(b".tmp-")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, PermissionsExt};

    fn dir(name: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("tcploop-safefile-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn writes_a_new_file_and_replaces_one_with_mode_0644_whatever_the_umask() {
        let d = dir("new");
        let p = d.join("f.conf");
        let old = rustix::process::umask(Mode::from_raw_mode(0o077));
        write(&p, b"a\n", 0o644).unwrap();
        write(&p, b"b\n", 0o644).unwrap();
        rustix::process::umask(old);
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "b\n");
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);
        let names: Vec<_> = std::fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["f.conf"], "no temporary file left");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn refuses_a_symlink_a_directory_and_a_fifo_and_leaves_them_alone() {
        let d = dir("refuse");
        let victim = d.join("victim");
        std::fs::write(&victim, "precious").unwrap();
        let link = d.join("link");
        symlink(&victim, &link).unwrap();
        let e = write(&link, b"x", 0o644).unwrap_err();
        assert!(
            matches!(
                e,
                SafeFileError::NotRegular {
                    kind: "symlink",
                    ..
                }
            ),
            "{e}"
        );
        let e = read(&link, READ_LIMIT).unwrap_err();
        assert!(
            matches!(
                e,
                SafeFileError::NotRegular {
                    kind: "symlink",
                    ..
                }
            ),
            "{e}"
        );
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        assert!(std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());

        let sub = d.join("sub");
        std::fs::create_dir(&sub).unwrap();
        let e = write(&sub, b"x", 0o644).unwrap_err();
        assert!(
            matches!(
                e,
                SafeFileError::NotRegular {
                    kind: "directory",
                    ..
                }
            ),
            "{e}"
        );

        let fifo = d.join("fifo");
        rustix::fs::mknodat(CWD, &fifo, FileType::Fifo, Mode::from_raw_mode(0o600), 0).unwrap();
        let e = read(&fifo, READ_LIMIT).unwrap_err();
        assert!(
            matches!(e, SafeFileError::NotRegular { kind: "FIFO", .. }),
            "{e}"
        );
        let e = write(&fifo, b"x", 0o644).unwrap_err();
        assert!(
            matches!(e, SafeFileError::NotRegular { kind: "FIFO", .. }),
            "{e}"
        );

        // the control: a regular file is read and replaced
        write(&victim, b"new", 0o644).unwrap();
        assert_eq!(read(&victim, READ_LIMIT).unwrap().unwrap(), b"new");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn refuses_a_file_larger_than_the_limit() {
        let d = dir("large");
        let p = d.join("big");
        std::fs::write(&p, vec![b'x'; 100]).unwrap();
        let e = read(&p, 99).unwrap_err();
        assert!(
            matches!(
                e,
                SafeFileError::TooLarge {
                    size: 100,
                    limit: 99,
                    ..
                }
            ),
            "{e}"
        );
        assert_eq!(read(&p, 100).unwrap().unwrap().len(), 100);
        assert!(read(&d.join("absent"), 10).unwrap().is_none());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_missing_directory_fails_before_anything_is_written() {
        let e = check_writable(Path::new("/nonexistent-tcploop-dir/x.prom")).unwrap_err();
        assert_eq!(e.io_kind(), Some(io::ErrorKind::NotFound), "{e}");
        let d = dir("check");
        check_writable(&d.join("x.prom")).unwrap();
        assert_eq!(
            std::fs::read_dir(&d).unwrap().count(),
            0,
            "the probe file is removed"
        );
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn temp_names_are_recognised() {
        assert!(is_temp_name(std::ffi::OsStr::new(
            ".f.conf.tmp-0123456789abcdef"
        )));
        assert!(!is_temp_name(std::ffi::OsStr::new("f.conf")));
    }
}
