//! `tcploop run`'s notes: what the guard does not cover for the command,
//! on stderr before the command replaces tcploop. Paths come from the
//! system: they are escaped.

use std::io::{self, Write};

use super::escape;
use crate::preload::{Gap, Plan};

/// `tcploop run: note: ... is a script run by ...` and one line a gap
/// (`warning` when the guard certainly does not cover the program).
pub fn notes(err: &mut dyn Write, plan: &Plan) -> io::Result<()> {
    if let (false, [first, .., last]) = (plan.gaps.is_empty(), plan.chain.as_slice()) {
        writeln!(
            err,
            "tcploop run: note: {} is a script run by {}",
            escape(&first.display().to_string()),
            escape(&last.display().to_string())
        )?;
    }
    for gap in &plan.gaps {
        let level = if gap.certain() { "warning" } else { "note" };
        writeln!(err, "tcploop run: {level}: {}", escape(&gap.to_string()))?;
    }
    Ok(())
}

/// A gap's kind, for the one-line `--strict` error.
pub fn kind(g: &Gap) -> &'static str {
    match g {
        Gap::Static { .. } => "statically linked",
        Gap::Setuid { .. } => "setuid",
        Gap::Setgid { .. } => "setgid",
        Gap::Go { .. } => "a Go program",
        Gap::Arch { .. } => "another architecture than the guard library",
        Gap::Unknown { .. } => "unknown format",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::preload::{ElfInfo, Library};
    use std::path::PathBuf;

    #[test]
    fn notes_name_the_script_and_each_gap_escaped() {
        let plan = Plan {
            library: Library {
                path: "/lib/libtcploop_preload.so".into(),
                elf: ElfInfo {
                    interpreter: None,
                    is_64: true,
                    machine: 62,
                    go: false,
                },
            },
            program: "/usr/local/bin/x\x1b".into(),
            gaps: vec![Gap::Static {
                path: "/opt/st\x1b[2Jatic".into(),
            }],
            chain: vec![
                PathBuf::from("/usr/local/bin/tool"),
                "/opt/st\x1b[2Jatic".into(),
            ],
            ld_preload: "/lib/libtcploop_preload.so".into(),
        };
        let mut v = vec![];
        notes(&mut v, &plan).unwrap();
        let text = String::from_utf8(v).unwrap();
        assert!(
            text.starts_with(
                "tcploop run: note: /usr/local/bin/tool is a script run by /opt/st\\x1b[2Jatic\n"
            ),
            "{text}"
        );
        assert_eq!(text.lines().count(), 2, "{text}");
        assert!(
            text.lines()
                .nth(1)
                .unwrap()
                .starts_with("tcploop run: warning: "),
            "{text}"
        );
        assert!(!text.contains('\x1b'));
        assert_eq!(kind(&plan.gaps[0]), "statically linked");
    }
}
