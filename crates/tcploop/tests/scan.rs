//! Integration tests of `tcploop scan` and `tcploop kill`.
//!
//! Loops are made deterministically inside throwaway namespaces:
//! - "plain" loops the way they happen in real life, a plain `connect()`
//!   that picks the destination port as its source port: the scenario sets
//!   `ip_local_port_range` to `P P+1`, which leaves `connect()` exactly one
//!   candidate port, P (plain connect uses only ports of `low`'s parity);
//! - "bound" loops: a socket bound to 127.0.0.1:P, then connected to it.
//!
//! Ordinary connections use a range (41000-49999) apart from the loop ports
//! (40100-40118), so that after a kill each loop port can be bound.

use std::collections::BTreeSet;
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::common::{self, set_range, Sandbox};

const V4: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const V6: IpAddr = IpAddr::V6(Ipv6Addr::LOCALHOST);

fn raise_nofile() {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut l = getrlimit(Resource::Nofile);
    l.current = l.maximum;
    setrlimit(Resource::Nofile, l).expect("raise RLIMIT_NOFILE");
}

/// A loop made by a plain connect(): the range leaves it one port, P.
fn plain_loop(ip: IpAddr, port: u16, restore: (u16, u16)) -> TcpStream {
    set_range(port, port + 1);
    let s = TcpStream::connect((ip, port)).expect("self-connect");
    set_range(restore.0, restore.1);
    assert_eq!(s.local_addr().unwrap(), s.peer_addr().unwrap());
    s
}

/// A loop made by bind(P) then connect(P).
fn bound_loop(ip: IpAddr, port: u16) -> TcpStream {
    use socket2::{Domain, Socket, Type};
    let a = SocketAddr::new(ip, port);
    let s = Socket::new(Domain::for_address(a), Type::STREAM, None).unwrap();
    if ip.is_ipv6() {
        s.set_only_v6(true).unwrap();
    }
    s.bind(&a.into()).unwrap();
    s.connect(&a.into())
        .expect("self-connect of a bound socket");
    let s: TcpStream = s.into();
    assert_eq!(s.local_addr().unwrap(), s.peer_addr().unwrap());
    s
}

/// Alive: a non-blocking read finds nothing to read and no error.
fn alive(s: &TcpStream) -> bool {
    s.set_nonblocking(true).unwrap();
    let mut b = [0u8; 1];
    let r = (&*s).read(&mut b);
    s.set_nonblocking(false).unwrap();
    matches!(r, Err(e) if e.kind() == ErrorKind::WouldBlock)
}

fn run(args: &[&str]) -> (i32, Vec<Value>, String) {
    let o = common::output(&mut common::tcploop(args));
    (
        o.status.code().unwrap_or(-1),
        common::json_lines(&o),
        common::stderr(&o),
    )
}

fn summary(lines: &[Value]) -> Value {
    let s = common::of_type(lines, "summary");
    assert_eq!(s.len(), 1, "{lines:?}");
    s[0].clone()
}

/// (local, state, inode, owners) of each loop line: what both sources must agree on.
fn loop_keys(socks: &[Value]) -> BTreeSet<String> {
    socks
        .iter()
        .map(|s| {
            format!(
                "{} {} {} {}",
                s["local"], s["state"], s["inode"], s["owners"]
            )
        })
        .collect()
}

#[test]
fn ten_loops_hidden_among_thousands_are_found_and_killed_exactly() {
    let Some(out) = scenario_hidden_loops::run(&Sandbox::range("41000-49999")) else {
        return;
    };
    assert!(out.starts_with("ok"), "{out}");
}

scenario! {
    fn scenario_hidden_loops(out) {
        raise_nofile();
        let range = (41000, 49999);
        set_range(range.0, range.1);
        let me = std::process::id();

        // thousands of ordinary loopback connections, IPv4 and IPv6
        let mut ordinary = vec![];
        for ip in [V4, V6] {
            let l = TcpListener::bind((ip, 50000)).unwrap();
            for _ in 0..1500 {
                let c = TcpStream::connect((ip, 50000)).unwrap();
                let (a, _) = l.accept().unwrap();
                ordinary.push((c, a));
            }
            ordinary.push((
                TcpStream::connect((ip, 50000)).unwrap(),
                l.accept().unwrap().0,
            ));
        }
        // 10 loops: 3 plain and 2 bound per family
        let mut loops: Vec<(TcpStream, bool)> = vec![];
        for (ip, base) in [(V4, 40100), (V6, 40110)] {
            for i in 0..3 {
                loops.push((plain_loop(ip, base + 2 * i, range), true));
            }
            for i in 3..5 {
                loops.push((bound_loop(ip, base + 2 * i), false));
            }
        }
        let expected: BTreeSet<String> = loops
            .iter()
            .map(|(s, _)| s.local_addr().unwrap().to_string())
            .collect();
        assert_eq!(expected.len(), 10);

        // scan: exactly the 10, each owned by this process through its fd
        let (code, lines, err) = run(&["scan", "--json"]);
        assert_eq!(code, 1, "{err}");
        let socks = common::of_type(&lines, "socket");
        let found: BTreeSet<String> = socks
            .iter()
            .map(|s| s["local"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(found, expected, "exactly the 10 loops");
        assert_eq!(socks.len(), 10);
        for s in &socks {
            assert_eq!(s["local"], s["peer"]);
            assert_eq!(s["state"], "ESTABLISHED");
            let (stream, _) = loops
                .iter()
                .find(|(l, _)| l.local_addr().unwrap().to_string() == s["local"])
                .unwrap();
            assert_eq!(
                s["owners"],
                serde_json::json!([{"pid": me, "comm": s["owners"][0]["comm"], "fd": stream.as_raw_fd(),
                    "container": s["owners"][0]["container"]}]),
                "{s}"
            );
            assert_eq!(s["owner_status"], "found");
            assert!(s["cookie"].as_u64().is_some());
            assert!(s["consequence"]
                .as_str()
                .unwrap()
                .contains("gets EADDRINUSE"));
        }
        let sum = summary(&lines);
        assert_eq!(sum["loops_found"], 10);
        assert_eq!(sum["owners_unknown"], 0);
        assert_eq!(sum["source"], "netlink");
        assert!(sum["sockets_seen"].as_u64().unwrap() >= 6004, "{sum}");

        // the /proc source gives the same answer
        let (code, plines, err) = run(&["scan", "--source", "proc", "--json"]);
        assert_eq!(code, 1, "{err}");
        let psocks = common::of_type(&plines, "socket");
        assert_eq!(loop_keys(&psocks), loop_keys(&socks));
        assert_eq!(summary(&plines)["source"], "proc");
        assert!(psocks.iter().all(|s| s["cookie"].is_null()));

        // --port narrows
        let (code, l, _) = run(&["scan", "--json", "--port", "40112"]);
        assert_eq!(code, 1);
        assert_eq!(common::of_type(&l, "socket").len(), 1);
        assert_eq!(common::of_type(&l, "socket")[0]["local"], "[::1]:40112");

        // kill without --yes: a dry run that touches nothing
        let (code, l, err) = run(&["kill", "--json"]);
        assert_eq!(code, 1, "{err}");
        let k = common::of_type(&l, "kill");
        assert_eq!(k.len(), 10);
        assert!(k.iter().all(|k| k["action"] == "would-destroy"));
        assert!(
            loops.iter().all(|(s, _)| alive(s)),
            "the dry run destroyed something"
        );

        // kill --yes: exactly those 10
        let (code, l, err) = run(&["kill", "--yes", "--json"]);
        assert_eq!(code, 0, "{err}");
        let k = common::of_type(&l, "kill");
        assert_eq!(k.len(), 10);
        for line in &k {
            assert_eq!(line["action"], "destroyed", "{line}");
            let plain = loops
                .iter()
                .find(|(s, _)| s.local_addr().unwrap().to_string() == line["local"])
                .unwrap()
                .1;
            // a plain loop frees its port at once; a bound one when its owner closes it
            let want = if plain {
                "free"
            } else {
                "held-until-owner-closes"
            };
            assert_eq!(line["port_state"], want, "{line}");
        }
        assert_eq!(summary(&l)["destroyed"], 10);
        assert_eq!(summary(&l)["ports_free"], 6);

        // the owners see ECONNABORTED
        for (s, _) in &loops {
            let mut b = [0u8; 1];
            let e = (&*s)
                .read(&mut b)
                .expect_err("a destroyed loop reads an error");
            assert_eq!(e.kind(), ErrorKind::ConnectionAborted, "{e}");
        }
        // the ordinary connections are untouched, and still carry data
        for (c, a) in &ordinary {
            assert!(alive(c) && alive(a));
        }
        for (c, a) in ordinary.iter_mut().step_by(100) {
            c.write_all(b"x").unwrap();
            let mut b = [0u8; 1];
            a.read_exact(&mut b).unwrap();
            assert_eq!(&b, b"x");
        }
        // a server can bind each port (a bound loop's once its owner closed it)
        let addrs: Vec<SocketAddr> = loops.iter().map(|(s, _)| s.local_addr().unwrap()).collect();
        drop(loops);
        for a in &addrs {
            TcpListener::bind(a).unwrap_or_else(|e| panic!("bind {a} after kill: {e}"));
        }
        let (code, l, _) = run(&["scan", "--json"]);
        assert_eq!(code, 0);
        assert_eq!(summary(&l)["loops_found"], 0);
        std::fs::write(
            out,
            format!("ok: {} ordinary connections\n", ordinary.len()),
        )
        .unwrap();
    }
}

/// The JSON Lines schema of README's scan section, field for field: a
/// field added, renamed or removed fails here.
mod wire {
    #![allow(dead_code)]
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Netns {
        inode: u64,
        pid: Option<u32>,
        comm: Option<String>,
        name: Option<String>,
        container: Option<Container>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Owner {
        pid: u32,
        comm: String,
        fd: i32,
        container: Option<Container>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Container {
        pub runtime: String,
        pub id: String,
        pub name: Option<String>,
        pub pod_uid: Option<String>,
        pub pod: Option<String>,
        pub namespace: Option<String>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Socket {
        netns: Netns,
        family: String,
        state: String,
        local: String,
        peer: String,
        port: u16,
        uid: u32,
        inode: u32,
        cookie: Option<u64>,
        time_wait_left_ms: Option<u32>,
        owners: Vec<Owner>,
        owner_status: String,
        consequence: String,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Skipped {
        netns: Netns,
        reason: String,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Summary {
        source: String,
        fallback: Option<String>,
        owners_source: Option<String>,
        owners_fallback: Option<String>,
        sockets_seen: u64,
        loops_found: u64,
        owners_unknown: u64,
        processes_unreadable: u64,
        namespaces_scanned: u64,
        namespaces_skipped: Vec<Skipped>,
        netns_unreadable_pids: u64,
        namespaces_vanished: u64,
        shield_off: Vec<serde_json::Value>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Kill {
        #[serde(flatten)]
        socket: Socket,
        action: String,
        port_state: Option<String>,
        port_detail: Option<String>,
        loops_again: Option<bool>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct KillSummary {
        dry_run: bool,
        loops_found: u64,
        destroyed: u64,
        gone: u64,
        not_a_loop: u64,
        still_there: u64,
        already_aborted: u64,
        ports_free: u64,
        ports_held: u64,
        ports_unchecked: u64,
        error: Option<String>,
    }

    /// Every line of a scan (`kill`: false) or kill output parses.
    pub fn check(lines: &[serde_json::Value], kill: bool) {
        for l in lines {
            let d = l["data"].clone();
            let r = match (l["type"].as_str(), kill) {
                (Some("socket"), false) => serde_json::from_value::<Socket>(d).map(drop),
                (Some("summary"), false) => serde_json::from_value::<Summary>(d).map(drop),
                (Some("kill"), true) => serde_json::from_value::<Kill>(d).map(drop),
                (Some("summary"), true) => serde_json::from_value::<KillSummary>(d).map(drop),
                _ => panic!("unexpected line {l}"),
            };
            r.unwrap_or_else(|e| panic!("{e}: {l}"));
        }
    }
}

#[test]
fn time_wait_loops_are_reported_with_their_time_left_and_can_be_killed() {
    let Some(out) = scenario_time_wait::run(&Sandbox::range("40000-40009")) else {
        return;
    };
    assert!(out.starts_with("ok"), "{out}");
}

scenario! {
    fn scenario_time_wait(out) {
        // closed gracefully: the P<->P 4-tuple waits out TIME-WAIT
        drop(bound_loop(V4, 40100));
        let (code, l, err) = run(&["scan", "--json"]);
        assert_eq!(code, 1, "{err}");
        wire::check(&l, false);
        let s = &common::of_type(&l, "socket")[0];
        assert_eq!(s["state"], "TIME-WAIT");
        assert_eq!(s["owner_status"], "none");
        assert_eq!(s["owners"], serde_json::json!([]));
        let left = s["time_wait_left_ms"].as_u64().unwrap();
        assert!(left > 0 && left <= 60_000, "{left}");
        assert_eq!(summary(&l)["owners_unknown"], 0);
        assert!(
            TcpListener::bind((V4, 40100)).is_err(),
            "TIME-WAIT blocks the port"
        );
        let o = common::output(&mut common::tcploop(&["scan"]));
        let text = common::stdout(&o);
        assert!(
            text.contains("TIME-WAIT") && text.contains("at most"),
            "{text}"
        );
        let (code, l, err) = run(&["kill", "--json"]);
        assert_eq!(code, 1, "{err}");
        wire::check(&l, true);
        let (code, l, err) = run(&["kill", "--yes", "--json"]);
        assert_eq!(code, 0, "{err}");
        wire::check(&l, true);
        assert_eq!(common::of_type(&l, "kill")[0]["port_state"], "free");
        TcpListener::bind((V4, 40100)).expect("bind after killing the TIME-WAIT loop");
        std::fs::write(out, "ok\n").unwrap();
    }
}

#[test]
fn a_scan_racing_with_churn_finds_only_the_real_loop() {
    let Some(out) = scenario_churn::run(&Sandbox::range("41000-49999")) else {
        return;
    };
    assert!(out.starts_with("ok"), "{out}");
}

scenario! {
    fn scenario_churn(out) {
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        use std::sync::Arc;
        let real = bound_loop(V4, 40100);
        let stop = Arc::new(AtomicBool::new(false));
        let churned = Arc::new(AtomicU64::new(0));
        let mut threads = vec![];
        for ip in [V4, V6] {
            let (stop, churned) = (stop.clone(), churned.clone());
            threads.push(std::thread::spawn(move || {
                let l = TcpListener::bind((ip, 50000)).unwrap();
                while !stop.load(Ordering::Relaxed) {
                    // connections open and close (some leave TIME-WAIT behind)
                    let batch: Vec<_> = (0..50)
                        .map(|_| {
                            let c = TcpStream::connect((ip, 50000)).unwrap();
                            (c, l.accept().unwrap().0)
                        })
                        .collect();
                    churned.fetch_add(batch.len() as u64, Ordering::Relaxed);
                    drop(batch);
                }
            }));
        }
        // processes come and go during the owner walk (forked by a shell, not
        // by this process: a child of ours holds our fds until it execs)
        let mut forker = Command::new("sh")
            .args(["-c", "while :; do /bin/true; done"])
            .spawn()
            .unwrap();
        // A table read while it changes may show a socket twice or miss one
        // (netlink dumps and /proc files resume by position): no false loop,
        // no failure, no duplicate, and the real loop seen nearly every time.
        let mut seen = 0;
        for i in 0..20 {
            let src = if i % 2 == 0 { "netlink" } else { "proc" };
            let (code, l, err) = run(&["scan", "--json", "--source", src]);
            assert!(code == 0 || code == 1, "scan {i} ({src}): {err}");
            let socks = common::of_type(&l, "socket");
            assert!(socks.len() <= 1, "scan {i} ({src}): {socks:?}");
            for s in &socks {
                assert_eq!(s["local"], "127.0.0.1:40100");
                assert_eq!(s["owners"][0]["pid"], std::process::id());
                seen += 1;
            }
        }
        assert!(
            seen >= 10,
            "the real loop was seen in only {seen} of 20 scans"
        );
        stop.store(true, Ordering::Relaxed);
        forker.kill().unwrap();
        forker.wait().unwrap();
        for t in threads {
            t.join().unwrap();
        }
        assert!(alive(&real));
        std::fs::write(
            out,
            format!(
                "ok: {} connections churned\n",
                churned.load(Ordering::Relaxed)
            ),
        )
        .unwrap();
    }
}

#[test]
fn unprivileged_scan_works_but_kill_fails_clearly_with_exit_2() {
    if let Some(out) = scenario_unprivileged::run(&Sandbox::range("40000-40009").netns_only()) {
        assert!(out.starts_with("ok"), "{out}");
    }
}

scenario! {
    fn scenario_unprivileged(out) {
        let loops = [bound_loop(V4, 40100), bound_loop(V6, 40102)];
        let nobody = |args: &[&str]| {
            let o = common::output(common::as_nobody(&mut common::tcploop(args)));
            (o.status.code().unwrap_or(-1), o)
        };
        // the dump needs no privilege; root's fd tables are closed to nobody
        let (code, o) = nobody(&["scan", "--json"]);
        assert_eq!(code, 1, "{}", common::stderr(&o));
        let l = common::json_lines(&o);
        let socks = common::of_type(&l, "socket");
        assert_eq!(socks.len(), 2);
        assert!(socks.iter().all(|s| s["owner_status"] == "unknown"));
        let sum = summary(&l);
        assert_eq!(sum["owners_unknown"], 2);
        assert!(sum["processes_unreadable"].as_u64().unwrap() >= 1, "{sum}");
        // BPF is not allowed: auto falls back to the /proc walk, and says why
        assert_eq!(sum["owners_source"], "proc", "{sum}");
        let why = sum["owners_fallback"].as_str().unwrap_or_default();
        assert!(why.contains("permission denied"), "{sum}");
        let (_, o) = nobody(&["scan", "--verbose"]);
        let text = common::stdout(&o);
        assert!(
            text.contains("owners: /proc/PID/fd walk") && text.contains("BPF not used: "),
            "{text}"
        );
        // forcing it: exit 2, one line that says what is missing
        let (code, o) = nobody(&["scan", "--owners", "bpf"]);
        let err = common::stderr(&o);
        assert_eq!(code, 2, "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.contains("--owners bpf") && err.contains("needs root"),
            "{err}"
        );
        assert!(common::stdout(&o).is_empty());
        // the /proc walk forced: the same answer as auto, and no fallback to explain
        let (code, o) = nobody(&["scan", "--json", "--owners", "proc"]);
        assert_eq!(code, 1);
        let lp = common::json_lines(&o);
        assert_eq!(
            loop_keys(&common::of_type(&lp, "socket")),
            loop_keys(&socks)
        );
        assert_eq!(summary(&lp)["owners_fallback"], Value::Null);
        let (_, o) = nobody(&["scan"]);
        let text = common::stdout(&o);
        assert!(
            text.contains("owners unknown for 2 socket(s)") && text.contains("run as root"),
            "{text}"
        );
        // kill: the dry run works, the real one says what is missing, exit 2
        let (code, _) = nobody(&["kill"]);
        assert_eq!(code, 1);
        let (code, o) = nobody(&["kill", "--yes"]);
        let err = common::stderr(&o);
        assert_eq!(code, 2, "{err}");
        assert!(
            err.contains("CAP_NET_ADMIN") && err.contains("EPERM"),
            "{err}"
        );
        assert!(loops.iter().all(alive), "nobody destroyed a loop");
        // root (of this namespace) can
        let (code, _, err) = run(&["kill", "--yes", "--json"]);
        assert_eq!(code, 0, "{err}");
        std::fs::write(out, "ok\n").unwrap();
    }
}

#[test]
fn all_netns_finds_a_loop_in_another_namespace_with_its_process() {
    if common::skip_unless(common::is_root(), "scan --all-netns", "root") {
        return;
    }
    // a python3 program in its own sandbox holds a loop until its stdin closes
    let script = "import socket,sys\n\
        s=socket.socket(); s.bind(('127.0.0.1',40100)); s.connect(('127.0.0.1',40100))\n\
        print('ready', s.fileno(), flush=True); sys.stdin.read()";
    let mut child = Sandbox::default()
        .command()
        .args(["python3", "-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    {
        use std::io::BufRead;
        let mut r = std::io::BufReader::new(child.stdout.as_mut().unwrap());
        r.read_line(&mut line).unwrap();
    }
    let fd: i64 = line.trim().strip_prefix("ready ").unwrap().parse().unwrap();
    let pid = child.id();
    let link = std::fs::read_link(format!("/proc/{pid}/ns/net")).unwrap();
    let ino: u64 = link.to_str().unwrap()[5..]
        .trim_end_matches(']')
        .parse()
        .unwrap();

    // the host's namespaces are only read; only the loop of ours is checked
    let (code, l, err) = run(&["scan", "--all-netns", "--json", "--port", "40100"]);
    let ours: Vec<Value> = common::of_type(&l, "socket")
        .into_iter()
        .filter(|s| s["netns"]["inode"] == ino)
        .collect();
    assert_eq!(code, 1, "{err}");
    assert_eq!(ours.len(), 1, "{l:?}");
    let s = &ours[0];
    assert_eq!(s["netns"]["pid"], pid);
    assert_eq!(s["netns"]["comm"], "python3");
    assert_eq!(
        s["owners"],
        // (its container: whatever the test runs in; tests/deploy.rs checks it)
        serde_json::json!([{"pid": pid, "comm": "python3", "fd": fd, "container": s["owners"][0]["container"]}])
    );
    assert!(summary(&l)["namespaces_scanned"].as_u64().unwrap() >= 2);

    // without the rights: nothing fails, what was not seen is said
    let o = common::output(common::as_nobody(&mut common::tcploop(&[
        "scan",
        "--all-netns",
    ])));
    let text = common::stdout(&o);
    assert_ne!(o.status.code(), Some(2), "{}", common::stderr(&o));
    assert!(
        text.contains("could not be read (permission denied"),
        "{text}"
    );
    assert!(!text.contains(&format!("net:[{ino}]")), "{text}");

    drop(child.stdin.take());
    child.wait().unwrap();
}

#[test]
fn no_loop_means_exit_0_and_kill_has_nothing_to_do() {
    if crate::common::no_sandboxes() {
        return;
    }
    let o = common::output(&mut common::sandboxed("40000-40009", &["scan"]));
    assert_eq!(o.status.code(), Some(0), "{}", common::stderr(&o));
    assert!(common::stdout(&o).contains("No self-connected socket"));
    let o = common::output(&mut common::sandboxed("40000-40009", &["kill", "--yes"]));
    assert_eq!(o.status.code(), Some(0), "{}", common::stderr(&o));
    assert!(common::stdout(&o).contains("nothing to destroy"));
    let o = common::output(&mut common::sandboxed(
        "40000-40009",
        &["scan", "--json", "--source", "proc"],
    ));
    let l = common::json_lines(&o);
    assert_eq!(summary(&l)["loops_found"], 0);
}

#[test]
fn bad_input_is_a_one_line_error_and_exit_2() {
    for args in [
        &["scan", "--port", "0"][..],
        &["scan", "--port", "70000"],
        &["scan", "--port", "http"],
        &["scan", "--source", "ebpf"],
        &["scan", "--owners", "ebpf"],
        &["scan", "--owners", "bpf", "--no-owners"],
        &["kill", "--port", "-1"],
        &["kill", "--bogus"],
    ] {
        let o = common::output(&mut common::tcploop(args));
        let err = common::stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.starts_with("error:"), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

/// A process holding `conns` loopback connections to its own listener and
/// bound loops on `loops` (`v4:PORT` or `v6:PORT`), printing
/// `{"pid", "loops": {PORT: fd}, "child"}` when ready and holding them until
/// its stdin closes. With `share` (a port), it forks after making the loops:
/// the child keeps only that loop, the same socket through the same fd.
const HOLDER: &str = include_str!("fixtures/scan_holder.py");

/// Short-lived processes, each with a few hundred sockets: they exit while
/// scans walk the process table. Started by a shell, so that no fork of the
/// test process (which holds loops until it execs) is ever seen.
const EXITERS: &str = r#"while :; do python3 -c 'import socket
l = socket.socket(); l.bind(("127.0.0.1", 0)); l.listen(512)
cs = [socket.create_connection(l.getsockname()) for _ in range(200)]'; done"#;

#[test]
fn owner_sources_agree_on_loops_hidden_among_thousands_in_several_processes() {
    // BPF needs the initial user namespace: a plain network namespace, root
    if common::skip_unless(
        common::bpf_plausible(),
        "owner_sources_agree",
        "root and a kernel with BTF (the BPF owner source)",
    ) {
        return;
    }
    if let Some(out) = scenario_owner_sources::run(&Sandbox::range("41000-49999").netns_only()) {
        assert!(out.starts_with("ok"), "{out}");
    }
}

scenario! {
    fn scenario_owner_sources(out) {
        use std::collections::BTreeMap;
        use std::io::BufRead;
        raise_nofile();
        let range = (41000, 49999);
        set_range(range.0, range.1);
        let me = std::process::id();
        // this process: thousands of connections and 4 loops (2 plain, 2 bound)
        let mut ordinary = vec![];
        let l = TcpListener::bind((V4, 50000)).unwrap();
        for _ in 0..3000 {
            let c = TcpStream::connect((V4, 50000)).unwrap();
            ordinary.push((c, l.accept().unwrap().0));
        }
        let mine = [
            plain_loop(V4, 40100, range),
            plain_loop(V6, 40102, range),
            bound_loop(V4, 40104),
            bound_loop(V6, 40106),
        ];
        // expected owners: local address -> [(pid, fd)]
        let mut expected: BTreeMap<String, Vec<(u64, i64)>> = BTreeMap::new();
        for s in &mine {
            expected.insert(
                s.local_addr().unwrap().to_string(),
                vec![(u64::from(me), i64::from(s.as_raw_fd()))],
            );
        }
        // two more processes with 2,000 sockets and 3 loops each; the second
        // forks, and its child shares one of the loops
        let mut holders = vec![];
        for (lport, loops, share) in [
            (50001, "v4:40110,v6:40112,v4:40114", "-"),
            (50002, "v4:40120,v6:40122,v6:40124", "40122"),
        ] {
            let mut child = Command::new("python3")
                .args(["-c", HOLDER, &lport.to_string(), "1000", loops, share])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .expect("python3 is needed by this test");
            let mut line = String::new();
            std::io::BufReader::new(child.stdout.as_mut().unwrap())
                .read_line(&mut line)
                .unwrap();
            let ready: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
            let pid = ready["pid"].as_u64().unwrap();
            for (port, fd) in ready["loops"].as_object().unwrap() {
                let ip = if loops.contains(&format!("v4:{port}")) {
                    "127.0.0.1".to_string()
                } else {
                    "[::1]".to_string()
                };
                let mut owners = vec![(pid, fd.as_i64().unwrap())];
                if port == share {
                    owners.push((ready["child"].as_u64().unwrap(), fd.as_i64().unwrap()));
                }
                expected.insert(format!("{ip}:{port}"), owners);
            }
            holders.push(child);
        }
        assert_eq!(expected.len(), 10);
        // owners come sorted by pid (a forked child's pid can be the lower one)
        expected.values_mut().for_each(|v| v.sort_unstable());
        // processes exiting all the time while the scans run
        let exiters = common::Reaped(Command::new("sh").args(["-c", EXITERS]).spawn().unwrap());

        let mut by_source: Vec<(String, BTreeSet<String>)> = vec![];
        for round in 0..3 {
            for src in ["proc", "bpf"] {
                let (code, l, err) = run(&["scan", "--json", "--owners", src]);
                assert_eq!(code, 1, "{src} round {round}: {err}");
                wire::check(&l, false);
                let socks = common::of_type(&l, "socket");
                let found: BTreeMap<String, Vec<(u64, i64)>> = socks
                    .iter()
                    .map(|s| {
                        let owners = s["owners"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .map(|o| (o["pid"].as_u64().unwrap(), o["fd"].as_i64().unwrap()))
                            .collect();
                        (s["local"].as_str().unwrap().to_string(), owners)
                    })
                    .collect();
                assert_eq!(found, expected, "{src} round {round}");
                assert_eq!(socks.len(), 10, "{src}: one line a loop");
                let sum = summary(&l);
                assert_eq!(sum["owners_source"], src, "{sum}");
                assert_eq!(sum["owners_fallback"], Value::Null, "{sum}");
                assert_eq!(sum["owners_unknown"], 0, "{sum}");
                assert!(sum["sockets_seen"].as_u64().unwrap() >= 10_000, "{sum}");
                by_source.push((src.to_string(), loop_keys(&socks)));
            }
        }
        // the whole lines agree, command names included
        for (src, keys) in &by_source {
            assert_eq!(keys, &by_source[0].1, "{src} differs from proc");
        }
        // the iterator's other program, which tests the loop condition in the
        // kernel (the benchmark's alternative), finds the same owners by itself
        let (_, l, _) = run(&["scan", "--json"]);
        let by_inode: BTreeMap<u64, String> = common::of_type(&l, "socket")
            .iter()
            .map(|s| {
                (
                    s["inode"].as_u64().unwrap(),
                    s["local"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        let it = tcploop::sys::bpf::owners::OwnerIter::load_with_loop_test().unwrap();
        let mut in_kernel: BTreeMap<String, Vec<(u64, i64)>> = BTreeMap::new();
        for r in it.loops().unwrap().records {
            // host-wide: other namespaces' loops are not ours
            if let Some(local) = by_inode.get(&r.inode) {
                in_kernel
                    .entry(local.clone())
                    .or_default()
                    .push((u64::from(r.pid), i64::from(r.fd)));
            }
        }
        in_kernel.values_mut().for_each(|v| v.sort_unstable());
        assert_eq!(in_kernel, expected, "the loop-condition pass");
        // auto picks the kernel's walk here, and says so
        let (_, l, _) = run(&["scan", "--json"]);
        assert_eq!(summary(&l)["owners_source"], "bpf");
        let o = common::output(&mut common::tcploop(&["scan", "--verbose"]));
        let text = common::stdout(&o);
        assert!(
            text.contains("owners: in-kernel BPF task_file iterator"),
            "{text}"
        );
        assert!(text.contains("python3 (pid"), "{text}");

        drop(exiters);
        for mut h in holders {
            drop(h.stdin.take());
            h.wait().unwrap();
        }
        std::fs::write(
            out,
            format!("ok: {} ordinary connections here\n", ordinary.len()),
        )
        .unwrap();
    }
}

/// In a PID namespace of its own (and a network namespace, `unshare -pfn
/// --mount-proc`), a process is numbered differently than on the host: the
/// kernel's walk must give the numbers the reader sees, as `/proc` does.
#[test]
fn owners_are_numbered_in_the_readers_pid_namespace() {
    if common::skip_unless(
        common::bpf_plausible(),
        "owners_in_a_pid_namespace",
        "root and a kernel with BTF (the BPF owner source)",
    ) {
        return;
    }
    let script = r#"
import json, os, socket, subprocess, sys
s = socket.socket(); s.bind(("127.0.0.1", 40100)); s.connect(("127.0.0.1", 40100))
out = {"pid": os.getpid(), "fd": s.fileno()}
for src in ("bpf", "proc"):
    r = subprocess.run([sys.argv[1], "scan", "--json", "--owners", src], capture_output=True, text=True)
    lines = [json.loads(l) for l in r.stdout.splitlines()]
    out[src] = [l["data"] for l in lines]
    out[src + "_stderr"] = r.stderr
print(json.dumps(out))
"#;
    let o = common::output(
        Command::new("unshare")
            .args(["-p", "-f", "--mount-proc", "-n", "sh", "-c"])
            .arg("ip link set lo up && exec python3 -c \"$0\" \"$1\"")
            .arg(script)
            .arg(common::bin()),
    );
    assert!(o.status.success(), "{}", common::stderr(&o));
    let v: Value = serde_json::from_str(common::stdout(&o).trim()).unwrap();
    let pid = v["pid"].as_u64().unwrap();
    assert!(pid < 100, "numbered in the new namespace: {pid}");
    for src in ["bpf", "proc"] {
        let lines = v[src].as_array().unwrap();
        assert_eq!(lines.len(), 2, "{src}: {v}");
        assert_eq!(
            lines[0]["owners"],
            // (its container: whatever the test runs in; tests/container.rs checks it)
            serde_json::json!([{"pid": pid, "comm": "python3", "fd": v["fd"],
                "container": lines[0]["owners"][0]["container"]}]),
            "{src}: {v}"
        );
        assert_eq!(lines[1]["owners_source"], src, "{v}");
    }
}
