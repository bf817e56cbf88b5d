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
    if crate::common::no_sandboxes() {
        return;
    }
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

/// Values that broke, or could break, a command once parsed.
const NASTY: &[&str] = &[
    "",
    "0",
    "-1",
    "1",
    "65535",
    "65536",
    "18446744073709551615",
    "1e30",
    "0-0",
    "1-65535",
    "65535-1",
    "40000-40009",
    "100-200",
    ",,,",
    "1,2,3-1",
    "::ffff:127.0.0.1",
    "::1",
    "256.256.256.256",
    "127.0.0.2",
    "\u{1b}[2J",
    "a\nb",
    "/nonexistent/x",
    "/dev/null",
    "/proc/self/status",
    "bash",
    "man",
];

/// The options of each command run here (the ones that end by themselves).
const COMMANDS: &[(&str, &[&str])] = &[
    ("ports", &["--json"]),
    ("check", &["--host", "--client", "--local-range", "--json"]),
    (
        "scan",
        &["--port", "--source", "--all-netns", "--no-owners", "--json"],
    ),
    ("kill", &["--port", "--source", "--json"]),
    ("free-port", &["--count", "--host", "--json"]),
    (
        "audit",
        &["--ports", "--ports-file", "--emit-sysctl", "--json"],
    ),
    ("completions", &["--dir"]),
    ("watch", &["--interval", "--kill-after", "--json"]),
];

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(128))]

    /// The commands run, in a sandbox, on argv made of their own options
    /// and nasty values: whatever they answer, no panic (exit 101) and a
    /// documented exit code. `watch` gets `--count 1`, so that it ends.
    #[test]
    fn no_argv_makes_a_command_panic(
        cmd in 0usize..COMMANDS.len(),
        picks in proptest::collection::vec((0usize..16, 0usize..NASTY.len(), proptest::bool::ANY), 0..5),
    ) {
        let (name, opts) = COMMANDS[cmd];
        let mut args: Vec<&str> = vec![name];
        for (o, v, flag) in picks {
            if flag {
                args.push(opts[o % opts.len()]);
            }
            args.push(NASTY[v]);
        }
        if name == "watch" {
            args.extend(["--count", "1"]);
        }
        let o = output(common::sandboxed("40000-40009", &args).stdout(Stdio::null()));
        let err = stderr(&o);
        proptest::prop_assert!(!err.contains("panicked"), "{args:?}: {err}");
        proptest::prop_assert!(
            matches!(o.status.code(), Some(0..=3)),
            "{args:?}: exit {:?}: {err}",
            o.status
        );
    }
}
