//! `tcploop kill` on the loops users meet: a dual-stack client's v4-mapped
//! loop, a loop that comes back because its client reconnects, and
//! `watch --kill-after` seeing the same port loop again.

use std::io::BufRead;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::common::Reaped;
use crate::common::{self, json_lines, of_type, output, stdout, Sandbox};

/// A client in python3 that connects to `port` on `host` (AF_INET6 with
/// IPV6_V6ONLY off for a `::ffff:` host) until it connects to itself, says
/// `ready`, and waits; with `rounds` > 1, it reconnects after its loop is
/// destroyed, as a client with a retry loop does. `bind` binds the port
/// explicitly first (a loop on a reserved port).
const CLIENT: &str = include_str!("fixtures/kill_client.py");

/// Starts the client; returns it and a channel of its `ready` lines.
fn client(host: &str, port: u16, rounds: u32, bind: bool) -> (Reaped, mpsc::Receiver<()>) {
    let mut c = Command::new("python3")
        .args(["-c", CLIENT, host, &port.to_string(), &rounds.to_string()])
        .arg(if bind { "bind" } else { "connect" })
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    let out = c.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for l in std::io::BufReader::new(out).lines() {
            if l.map_or(true, |l| l != "ready") || tx.send(()).is_err() {
                break;
            }
        }
    });
    (Reaped(c), rx)
}

fn ready(rx: &mpsc::Receiver<()>) {
    rx.recv_timeout(Duration::from_secs(20))
        .expect("the client made no loop");
}

#[test]
fn kill_checks_a_v4_mapped_loops_port_and_says_a_reconnecting_client_loops_again() {
    scenario_v4_mapped::run_ok(&Sandbox::range("40000-40009"));
}

scenario! {
    fn scenario_v4_mapped(out) {
        let (_c, rx) = client("::ffff:127.0.0.1", 40004, 1, false);
        ready(&rx);
        let o = output(&mut common::tcploop(&[
            "kill", "--port", "40004", "--yes", "--json",
        ]));
        assert_eq!(o.status.code(), Some(0), "{}", common::stderr(&o));
        let lines = json_lines(&o);
        let k = &of_type(&lines, "kill")[0];
        assert_eq!(k["local"], "[::ffff:127.0.0.1]:40004", "{k}");
        assert_eq!(k["action"], "destroyed");
        // it used to be "unknown": an IPv6-only bind of ::ffff:127.0.0.1 (EINVAL)
        assert_eq!(k["port_state"], "free", "{k}");
        assert_eq!(k["loops_again"], true, "{k}");
        let sum = &of_type(&lines, "summary")[0];
        assert_eq!(sum["ports_free"], 1);
        assert_eq!(sum["ports_unchecked"], 0);
        // "free" is true: a server binds it
        std::net::TcpListener::bind("127.0.0.1:40004").expect("the port is free");
        std::fs::write(out, "ok").unwrap();
    }
}

#[test]
fn kill_tells_the_order_that_works_for_a_reconnecting_client_and_not_for_a_reserved_port() {
    scenario_reconnecting::run_ok(&Sandbox::range("40000-40009"));
    // the control: the port is reserved, so reconnecting clients cannot
    // loop into it (this one binds it explicitly to make a loop at all)
    scenario_reserved::run_ok(&Sandbox::range("40000-40009").reserve("40004"));
}

scenario! {
    fn scenario_reconnecting(out) {
        let (_c, rx) = client("127.0.0.1", 40004, 2, false);
        ready(&rx);
        let o = output(&mut common::tcploop(&["kill", "--port", "40004", "--yes"]));
        let text = stdout(&o);
        assert_eq!(o.status.code(), Some(0), "{text}");
        assert!(
            text.contains("a client that reconnects will loop again"),
            "{text}"
        );
        assert!(
            text.contains("tcploop audit --ports 40004 --apply; tcploop kill --port 40004 --yes"),
            "{text}"
        );
        // and it does: the client's retry loops again
        ready(&rx);
        std::fs::write(out, "ok").unwrap();
    }
}

scenario! {
    fn scenario_reserved(out) {
        let (_c, rx) = client("127.0.0.1", 40004, 1, true);
        ready(&rx);
        let o = output(&mut common::tcploop(&[
            "kill", "--port", "40004", "--yes", "--json",
        ]));
        let lines = json_lines(&o);
        let k = &of_type(&lines, "kill")[0];
        assert_eq!(k["action"], "destroyed", "{k}");
        assert_eq!(k["loops_again"], false, "{k}");
        let o = output(&mut common::tcploop(&["kill", "--port", "40004", "--yes"]));
        assert!(!stdout(&o).contains("loop again"), "{}", stdout(&o));
        std::fs::write(out, "ok").unwrap();
    }
}

#[test]
fn watch_kill_after_notes_a_port_that_loops_again() {
    scenario_watch_repeat::run_ok(&Sandbox::range("40000-40009"));
}

scenario! {
    fn scenario_watch_repeat(out) {
        let (_c, _rx) = client("127.0.0.1", 40004, 3, false);
        let mut w = Reaped(
            common::tcploop(&[
                "watch",
                "--json",
                "--interval",
                "50ms",
                "--kill-after",
                "0s",
                "--count",
                "400",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
        );
        let lines = std::io::BufReader::new(w.0.stdout.take().unwrap()).lines();
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut killed = vec![];
        for l in lines {
            let v: serde_json::Value = serde_json::from_str(&l.unwrap()).unwrap();
            crate::schema::check(&v);
            if v["type"] == "loop_killed" {
                killed.push(v["data"].clone());
                if killed.len() == 2 {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "two kills did not come");
        }
        assert_eq!(killed[0]["kills_on_port"], 1);
        assert!(killed[0].get("advice").is_none(), "{}", killed[0]);
        assert_eq!(killed[1]["kills_on_port"], 2);
        let advice = killed[1]["advice"].as_str().unwrap();
        assert!(
            advice.contains("tcploop audit --ports 40004 --apply"),
            "{advice}"
        );
        std::fs::write(out, "ok").unwrap();
    }
}
