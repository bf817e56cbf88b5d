//! Human text never passes control characters from the system to the
//! terminal: a process named `ESC[2J ESC[31m X newline Y` (set with
//! prctl(PR_SET_NAME)) owns a loop; scan, watch, audit and kill print its
//! name escaped, with no ESC byte and no extra line. JSON keeps it exact.

use std::io::BufRead;
use std::process::{Command, Stdio};

use crate::common::Reaped;
use crate::common::{self, json_lines, of_type, output, stdout, Sandbox};

/// The hostile name, 12 bytes (comm holds 15).
const NAME: &str = "\x1b[2J\x1b[31mX\nY";
/// How the text output must show it.
/// python3 renames itself to its first argument, then connects a socket
/// to its own address (a loop held by that name), says `ready` and waits.
const HOLDER: &str = include_str!("fixtures/escape_hostile_name.py");
const SHOWN: &str = "\\x1b[2J\\x1b[31mX\\nY";

#[test]
fn a_process_name_with_escape_sequences_and_a_newline_is_escaped_in_text_output() {
    scenario_hostile_name::run_ok(&Sandbox::range("40000-40009"));
}

scenario! {
    fn scenario_hostile_name(out) {
        // python3 renames itself, then connects a socket to its own address:
        // a loop, held by the hostile name
        let mut holder = Reaped(
            Command::new("python3")
                .args(["-c", HOLDER, NAME])
                .stdout(Stdio::piped())
                .spawn()
                .expect("python3"),
        );
        let mut ready = String::new();
        std::io::BufReader::new(holder.0.stdout.take().unwrap())
            .read_line(&mut ready)
            .unwrap();
        assert_eq!(ready, "ready\n");
        let comm = std::fs::read_to_string(format!("/proc/{}/comm", holder.0.id())).unwrap();
        assert_eq!(comm, format!("{NAME}\n"), "the name really is hostile");

        let check = |what: &str, text: &str| {
            assert!(
                !text.contains('\x1b'),
                "{what}: an ESC byte reached the terminal:\n{text}"
            );
            assert!(
                text.contains(SHOWN),
                "{what}: the name is not shown escaped:\n{text}"
            );
            assert!(
                !text.lines().any(|l| l.starts_with('Y')),
                "{what}: the name started a line of its own:\n{text}"
            );
        };
        let text = |args: &[&str]| {
            let o = output(&mut common::tcploop(args));
            stdout(&o)
        };
        check("scan", &text(&["scan"]));
        check(
            "watch",
            &text(&["watch", "--count", "1", "--interval", "10ms"]),
        );
        check("audit", &text(&["audit"]));

        // the control: JSON carries the exact name
        let o = output(&mut common::tcploop(&["scan", "--json"]));
        let lines = json_lines(&o);
        let loops = of_type(&lines, "socket");
        assert!(
            loops
                .iter()
                .any(|l| l.to_string().contains(r#""\u001b[2J\u001b[31mX\nY""#)),
            "{lines:?}"
        );

        check("kill", &text(&["kill", "--port", "40004", "--yes"]));
        std::fs::write(out, "ok").unwrap();
    }
}
