use super::*;
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};

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

/// `run` with `strict` refuses a program the guard certainly does not
/// cover, after the notes, and never reaches exec (the program file is
/// not even executable: an exec would fail, not replace the test).
#[test]
fn strict_refuses_before_exec_and_after_the_notes() {
    let dir = std::env::temp_dir().join(format!("tcploop-run-strict-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let library = dir.join(LIB_NAME);
    std::fs::write(&library, elf(true, X86_64, &[(PT_DYNAMIC, b"")])).unwrap();
    let program = dir.join("static-tool");
    std::fs::write(&program, elf(true, X86_64, &[])).unwrap();
    let cfg = |strict: bool| RunConfig {
        command: vec![program.clone().into(), "--flag".into()],
        env: Env {
            lib: Some(library.clone().into()),
            ..Env::default()
        },
        strict,
        log: false,
    };
    let mut seen = vec![];
    let e = run(&cfg(true), &mut |plan| {
        seen.push(plan.gaps.clone());
        Ok(())
    });
    assert!(
        matches!(&e, RunError::Strict { program: p, gap: Gap::Static { .. } } if *p == program),
        "{e:?}"
    );
    assert_eq!(seen.len(), 1, "the notes come first, once");
    // Notes that cannot be written stop the run, strict or not.
    let e = run(&cfg(false), &mut |_| {
        Err(std::io::ErrorKind::BrokenPipe.into())
    });
    assert!(matches!(e, RunError::Notes(_)), "{e:?}");
    // Not strict: exec is tried, and fails on a file that is not executable.
    let e = run(&cfg(false), &mut |_| Ok(()));
    assert!(
        matches!(&e, RunError::Exec { source, .. } if source.kind() == std::io::ErrorKind::PermissionDenied),
        "{e:?}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
