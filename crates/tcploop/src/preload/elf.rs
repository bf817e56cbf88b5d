//! ELF headers (class, machine, interpreter, Go build notes) and `#!`
//! lines: the facts the loader acts on, read from files, parsed by pure
//! functions.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use object::read::elf::{ElfFile, FileHeader, ProgramHeader};
use object::{Object, ReadRef};

use super::PreloadError;

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
