//! `tcploop connect`: the article's reproducer, in throwaway namespaces with
//! a 10-port range so that a loop comes within a few tries.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};

use crate::common::*;

const NARROW: &str = "40000-40009";

/// Can a server bind this address now (no SO_REUSEADDR, as the
/// stricter servers do)? Returns the errno on failure.
fn bind_errno(addr: &str) -> Option<i32> {
    let a: SocketAddr = addr.parse().unwrap();
    let s = Socket::new(Domain::for_address(a), Type::STREAM, Some(Protocol::TCP)).unwrap();
    s.bind(&a.into()).err().map(|e| e.raw_os_error().unwrap())
}

#[test]
fn reproduces_the_article_output() {
    if crate::common::no_sandboxes() {
        return;
    }
    let o = output(&mut sandboxed(NARROW, &["connect", "40004"]));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let text = stdout(&o);
    for want in [
        "127.0.0.1:40004: possible, expect about 5 tries",
        "Trying to connect...",
        "Connected after ",
        "local 127.0.0.1:40004  peer 127.0.0.1:40004",
        "SELF-CONNECT",
        "read the same bytes back from itself",
        "Port 40004 is stolen",
        "Released with RST: port 40004 is free again.",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
}

#[test]
fn the_article_form_without_subcommand_works() {
    if crate::common::no_sandboxes() {
        return;
    }
    let o = output(&mut sandboxed(NARROW, &["40004", "--json", "--no-hold"]));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let r = &of_type(&json_lines(&o), "result")[0];
    assert_eq!(r["outcome"], "self-connect");
    assert_eq!(r["local"], r["peer"]);
    assert_eq!(r["echo"], true);
    assert_eq!(r["port_stolen"], true);
    assert_eq!(r["released"], "rst");
    assert!(r["tries"].as_u64().unwrap() >= 1);
    assert!(r["tries_per_s"].as_f64().unwrap() > 0.0);
}

#[test]
fn every_socket_mode_loops() {
    if crate::common::no_sandboxes() {
        return;
    }
    for extra in [
        &["--reuse-socket"][..],
        &["--fresh-socket"],
        &["--jobs", "2"],
        &["--fresh-socket", "--jobs", "2"],
        &["--reuseaddr"],
    ] {
        let mut args = vec!["connect", "40006", "--json", "--no-hold"];
        args.extend_from_slice(extra);
        let o = output(&mut sandboxed(NARROW, &args));
        assert_eq!(o.status.code(), Some(0), "{extra:?}: {}", stderr(&o));
        let r = &of_type(&json_lines(&o), "result")[0];
        assert_eq!(r["outcome"], "self-connect", "{extra:?}");
        assert_eq!(r["local"], "127.0.0.1:40006", "{extra:?}");
    }
}

#[test]
fn ipv6_loops_too() {
    if crate::common::no_sandboxes() {
        return;
    }
    let o = output(&mut sandboxed(
        NARROW,
        &["connect", "40008", "--host", "::1", "--json", "--no-hold"],
    ));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let r = &of_type(&json_lines(&o), "result")[0];
    assert_eq!(r["local"], "[::1]:40008");
    assert_eq!(r["peer"], "[::1]:40008");
}

scenario! {
    /// Inside the sandbox: hold a loop, look at it with ss, try to bind its
    /// port, release it, bind again; also the graceful close and TIME-WAIT.
    fn hold_and_release(out) {
        let mut child = tcploop(&["connect", "40004", "--hold", "5s"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let l = lines.next().expect("connect ended before holding").unwrap();
            if l.starts_with("Holding the loop") {
                break;
            }
            assert!(Instant::now() < deadline);
        }
        let while_held = bind_errno("127.0.0.1:40004");
        let ss = std::process::Command::new("ss")
            .args(["-tnH", "state", "established"])
            .output()
            .expect("ss (iproute2)");
        let ss = String::from_utf8_lossy(&ss.stdout).into_owned();
        // Ctrl-C while holding: released, exit 130 as documented.
        signal(child.id(), libc::SIGINT);
        let status = child.wait().unwrap();
        let rest: Vec<String> = lines.map_while(Result::ok).collect();
        let after_rst = bind_errno("127.0.0.1:40004");

        let graceful = output(&mut tcploop(&[
            "connect",
            "40006",
            "--no-hold",
            "--graceful-close",
        ]));
        assert!(graceful.status.success());
        let after_fin = bind_errno("127.0.0.1:40006");
        let v = serde_json::json!({
            "while_held": while_held,
            "ss": ss,
            "exit": status.code(),
            "rest": rest,
            "after_rst": after_rst,
            "after_fin": after_fin,
            "graceful_text": stdout(&graceful),
        });
        std::fs::write(out, v.to_string()).unwrap();
    }
}

#[test]
fn held_loop_steals_the_port_and_release_frees_it() {
    let Some(text) = hold_and_release::run(&Sandbox::range(NARROW)) else {
        return;
    };
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["while_held"], libc::EADDRINUSE, "{v}");
    let ss = v["ss"].as_str().unwrap();
    assert!(
        ss.lines()
            .any(|l| l.contains("127.0.0.1:40004") && l.matches("127.0.0.1:40004").count() == 2),
        "ss does not show the loop: {ss}"
    );
    assert_eq!(v["exit"], 130, "Ctrl-C exits 130: {v}");
    assert!(v["rest"].to_string().contains("Released with RST"), "{v}");
    assert_eq!(v["after_rst"], serde_json::Value::Null, "{v}");
    // the control: a graceful close leaves the port blocked in TIME-WAIT
    assert_eq!(v["after_fin"], libc::EADDRINUSE, "{v}");
    assert!(v["graceful_text"].as_str().unwrap().contains("TIME-WAIT"));
}

#[test]
fn a_real_listener_is_not_a_loop() {
    if crate::common::no_sandboxes() {
        return;
    }
    let o = output(Sandbox::range(NARROW).command().args([
        "python3",
        "-c",
        &format!(
            "import socket,subprocess,sys\n\
             s=socket.socket(); s.bind(('127.0.0.1',40004)); s.listen()\n\
             r=subprocess.run([{:?},'connect','40004','--force','--json','--no-hold'])\n\
             sys.exit(r.returncode)",
            bin().to_str().unwrap()
        ),
    ]));
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    let lines = json_lines(&o);
    assert_eq!(of_type(&lines, "check")[0]["verdict"], "listening");
    let r = &of_type(&lines, "result")[0];
    assert_eq!(r["outcome"], "listener");
    assert_ne!(r["local"], r["peer"]);
}

#[test]
fn limits_end_the_run_without_a_loop() {
    if crate::common::no_sandboxes() {
        return;
    }
    let o = output(&mut sandboxed(
        NARROW,
        &[
            "connect",
            "40005",
            "--force",
            "--max-tries",
            "2000",
            "--json",
        ],
    ));
    assert_eq!(o.status.code(), Some(1));
    let r = &of_type(&json_lines(&o), "result")[0];
    assert_eq!(r["outcome"], "gave-up");
    assert_eq!(r["tries"], 2000);
    let o = output(&mut sandboxed(
        NARROW,
        &[
            "connect",
            "40005",
            "--force",
            "--max-tries",
            "0",
            "--timeout",
            "300ms",
            "--json",
        ],
    ));
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(of_type(&json_lines(&o), "result")[0]["outcome"], "gave-up");
}

#[test]
fn ctrl_c_stops_cleanly_with_exit_130() {
    if crate::common::no_sandboxes() {
        return;
    }
    let child = sandboxed(
        NARROW,
        &[
            "connect",
            "40005",
            "--force",
            "--max-tries",
            "0",
            "--timeout",
            "60s",
        ],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    std::thread::sleep(Duration::from_millis(400));
    // the sandbox execs tcploop in place: the child's pid is tcploop's
    signal(child.id(), libc::SIGINT);
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(130), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(text.contains("Interrupted after "), "{text}");
    assert!(!stderr(&o).contains("panicked"));
}

#[test]
fn off_a_terminal_it_prints_the_article_dots() {
    if crate::common::no_sandboxes() {
        return;
    }
    let o = output(&mut sandboxed(
        NARROW,
        &["connect", "40005", "--force", "--max-tries", "5000"],
    ));
    let text = stdout(&o);
    assert!(text.contains("Trying to connect....."), "{text}");
    assert!(text.contains("Gave up after 5,000 tries"), "{text}");
}

#[test]
fn article_port_33333_is_refused_with_a_port_that_works() {
    if crate::common::no_sandboxes() {
        return;
    }
    let o = output(&mut Sandbox::default().tcploop(&["connect", "33333"]));
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(text.contains("33333 is odd"), "{text}");
    assert!(
        text.contains("Port 33332 can: tcploop connect 33332"),
        "{text}"
    );
}

#[test]
fn works_as_an_unprivileged_user() {
    if crate::common::no_sandboxes() {
        return;
    }
    let mut c = sandboxed(NARROW, &["connect", "40002", "--json", "--no-hold"]);
    let o = output(as_nobody(&mut c));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(
        of_type(&json_lines(&o), "result")[0]["outcome"],
        "self-connect"
    );
}

#[test]
fn every_command_has_help_and_completions_work() {
    for cmd in [
        "connect",
        "ports",
        "check",
        "scan",
        "kill",
        "demo",
        "audit",
        "watch",
        "free-port",
        "run",
        "sandbox",
        "completions",
    ] {
        let o = output(&mut tcploop(&[cmd, "--help"]));
        assert_eq!(o.status.code(), Some(0), "{cmd} --help");
        assert!(stdout(&o).contains("Usage: tcploop"), "{cmd} --help");
    }
    let o = output(&mut tcploop(&["completions", "bash"]));
    assert!(stdout(&o).contains("free-port"));
    let o = output(&mut tcploop(&["completions", "man"]));
    assert!(stdout(&o).starts_with(".ie"), "{}", stdout(&o));
    // no argument at all: the help, and exit 2 as for any usage error
    let o = output(&mut tcploop(&[]));
    assert_eq!(o.status.code(), Some(2));
}

/// A held loop destroyed by someone else (`tcploop kill`): connect says so,
/// stops holding, and claims no release.
#[test]
fn a_held_loop_destroyed_by_someone_else_is_said_and_not_released() {
    let Some(text) = destroyed_while_held::run(&Sandbox::range(NARROW)) else {
        return;
    };
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["exit"], 0, "{v}");
    let text = v["text"].as_str().unwrap();
    assert!(text.contains("destroyed while held"), "{text}");
    assert!(!text.contains("Released with RST"), "{text}");
    let r = &v["json"];
    assert_eq!(r["destroyed_while_held"], true, "{v}");
    assert_eq!(r["released"], serde_json::Value::Null, "{v}");
}

scenario! {
    fn destroyed_while_held(out) {
        let run_and_kill = |json: bool| {
            let mut args = vec!["connect", "40004", "--hold", "60s"];
            if json {
                args.push("--json");
            }
            let child = tcploop(&args).stdout(Stdio::piped()).spawn().unwrap();
            // wait (bounded) until the loop exists, then destroy it
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let o = output(&mut tcploop(&["scan", "--port", "40004", "--json"]));
                if o.status.code() == Some(1) {
                    break;
                }
                assert!(Instant::now() < deadline, "no loop to destroy");
                std::thread::sleep(Duration::from_millis(50));
            }
            let k = output(&mut tcploop(&["kill", "--port", "40004", "--yes"]));
            assert!(k.status.success(), "{}", stdout(&k));
            let o = child.wait_with_output().unwrap();
            (
                o.status.code(),
                String::from_utf8_lossy(&o.stdout).into_owned(),
            )
        };
        let (exit, text) = run_and_kill(false);
        let (_, json) = run_and_kill(true);
        let result = json
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .find(|l| l["type"] == "result")
            .unwrap();
        let v = serde_json::json!({"exit": exit, "text": text, "json": result["data"]});
        std::fs::write(out, v.to_string()).unwrap();
    }
}
