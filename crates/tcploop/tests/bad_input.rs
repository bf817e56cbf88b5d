//! No input makes a command panic: each bad input below gets one line on
//! stderr and exit 2 (they used to panic, print an errno twice, or pass).

use std::process::Stdio;

use crate::common::{self, output, stderr};

/// `tcploop ARGS` in a sandbox, with stdout to `stdout_to` if given.
fn run(args: &[&str], stdout_to: Option<&str>) -> (Option<i32>, String) {
    let mut c = common::sandboxed("40000-40009", args);
    if let Some(p) = stdout_to {
        c.stdout(Stdio::from(
            std::fs::OpenOptions::new().write(true).open(p).unwrap(),
        ));
    }
    let o = output(&mut c);
    (o.status.code(), stderr(&o))
}

#[test]
fn bad_input_gets_one_line_and_exit_2_never_a_panic() {
    let cases: &[(&[&str], Option<&str>, &str)] = &[
        (
            &["connect", "40004", "--timeout", "18446744073709551615s"],
            None,
            "365 days",
        ),
        (&["connect", "40004", "--hold", "1e30"], None, "365 days"),
        (&["watch", "--interval", "1e300"], None, "365 days"),
        (
            &["watch", "--kill-after", "18446744073709551615s"],
            None,
            "365 days",
        ),
        (&["completions", "bash"], Some("/dev/full"), "No space left"),
        (&["completions", "man"], Some("/dev/full"), "No space left"),
        (
            &["sandbox", "--range", "100-200", "--", "true"],
            None,
            "1024",
        ),
        (&["demo", "--range", "1000-1009"], None, "1024"),
        (&["run", "--json", "--", "true"], None, "not an option"),
        (&["run", "--", ""], None, "empty"),
    ];
    for (args, to, want) in cases {
        let (code, err) = run(args, *to);
        assert!(!err.contains("panicked"), "{args:?} panicked:\n{err}");
        assert_eq!(code, Some(2), "{args:?}: {err}");
        let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
        assert!(
            lines.len() == 1 || (lines[0].starts_with("error:") && lines.len() <= 4),
            "{args:?}: one line, not:\n{err}"
        );
        assert!(err.contains(want), "{args:?}: {err}");
        if err.contains("os error") {
            assert_eq!(
                err.matches("os error").count(),
                1,
                "{args:?}: the errno said once: {err}"
            );
        }
    }
}
