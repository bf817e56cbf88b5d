//! `tcploop trace`: loops reported by the kernel as they form. Every test
//! runs in network namespaces it makes (`sandbox --netns-only`: without a
//! user namespace, so that root keeps the capabilities BPF needs), while
//! other programs on the host may be making loops of their own in theirs:
//! the namespace filter is tested against real traffic.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::process::{Child, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use crate::common::{self, json_lines, of_type, output, stderr, tcploop, Sandbox};

const RANGE: &str = "40000-40009";
const PORT: u16 = 40004;

/// Whether BPF loads here: one real attach, in a namespace of our own.
fn bpf_works() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| {
        if !common::bpf_plausible() {
            return false;
        }
        let o = output(
            &mut Sandbox::default()
                .netns_only()
                .tcploop(&["trace", "--duration", "0"]),
        );
        if !o.status.success() {
            eprintln!("BPF probe: {}", stderr(&o));
        }
        o.status.success()
    })
}

fn skip(test: &str) -> bool {
    common::skip_unless(
        bpf_works(),
        test,
        "root and a kernel that loads tp_btf programs (BTF)",
    )
}

/// Makes `n` loops to 127.0.0.1:`port` from this process, each closed with
/// RST the moment it is seen (`SO_LINGER` 0): loops that live microseconds.
/// Returns how many connects it took.
fn make_loops(n: usize, port: u16) -> u64 {
    let to: SocketAddr = ([127, 0, 0, 1], port).into();
    let (mut made, mut tries) = (0, 0u64);
    while made < n {
        tries += 1;
        assert!(tries < 100_000, "no loop in {tries} connects");
        let Ok(s) = TcpStream::connect(to) else {
            continue;
        };
        if s.local_addr().ok() == s.peer_addr().ok() {
            socket2::SockRef::from(&s)
                .set_linger(Some(Duration::ZERO))
                .unwrap();
            made += 1;
        }
    }
    tries
}

fn own_netns() -> u64 {
    std::fs::metadata("/proc/self/ns/net").unwrap().ino()
}

/// Starts `tcploop ARGS` and returns once it says it is tracing (its first
/// stderr line), with the rest of its stderr drained on a thread.
fn start(args: &[&str]) -> Child {
    let mut c = tcploop(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(c.stderr.take().unwrap());
    let mut line = String::new();
    err.read_line(&mut line).unwrap();
    assert!(
        line.contains("tracing loops") || line.contains("watching"),
        "{args:?} did not start: {line}"
    );
    std::thread::spawn(move || {
        let mut rest = String::new();
        let _ = std::io::Read::read_to_string(&mut err, &mut rest);
        if !rest.trim().is_empty() {
            eprintln!("stderr: {rest}");
        }
    });
    c
}

/// SIGINT, then the JSON lines it printed.
fn stop(c: Child) -> Vec<serde_json::Value> {
    common::signal(c.id(), libc::SIGINT);
    let o = c.wait_with_output().unwrap();
    json_lines(&o)
}

/// Loops and the second namespace's loops, seen from two tracers at once.
#[test]
fn trace_reports_each_loop_once_and_only_from_its_namespace() {
    if skip("trace_reports_each_loop_once_and_only_from_its_namespace") {
        return;
    }
    let Some(text) = scenario_two_namespaces::run(&Sandbox::range(RANGE).netns_only()) else {
        return;
    };
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let n = v["n"].as_u64().unwrap();
    let me = v["pid"].as_u64().unwrap();
    let netns = v["netns"].as_u64().unwrap();
    let other_pid = v["other_pid"].as_u64().unwrap();

    // --netns current: exactly the n loops, ours, nothing else
    let current: Vec<serde_json::Value> = serde_json::from_value(v["current"].clone()).unwrap();
    let loops = of_type(&current, "loop");
    assert_eq!(loops.len() as u64, n, "{current:#?}");
    for l in &loops {
        assert_eq!(l["pid"], me, "{l}");
        assert_eq!(l["port"], PORT, "{l}");
        assert_eq!(l["netns"], netns, "{l}");
        assert_eq!(l["address"], format!("127.0.0.1:{PORT}"));
        assert_eq!(l["owner_from"], "event");
    }
    let mut cookies: Vec<u64> = loops
        .iter()
        .map(|l| l["cookie"].as_u64().unwrap())
        .collect();
    cookies.dedup();
    assert_eq!(cookies.len() as u64, n, "one report a loop");
    let ends = of_type(&current, "loop-end");
    assert_eq!(ends.len() as u64, n, "each RST-closed loop ends");
    assert!(ends.iter().all(|e| e["state"] == "CLOSE"));
    let summary = &of_type(&current, "summary")[0];
    assert_eq!(summary["loops"], n);
    assert_eq!(summary["lost_loops"], 0);

    // --netns all: ours and the second namespace's (and maybe others')
    let all: Vec<serde_json::Value> = serde_json::from_value(v["all"].clone()).unwrap();
    let all_loops = of_type(&all, "loop");
    let ours = all_loops.iter().filter(|l| l["netns"] == netns).count() as u64;
    assert_eq!(ours, n);
    let theirs: Vec<&serde_json::Value> =
        all_loops.iter().filter(|l| l["pid"] == other_pid).collect();
    assert!(
        !theirs.is_empty(),
        "--netns all missed the second namespace: {all:#?}"
    );
    assert!(theirs.iter().all(|l| l["netns"] != netns));
    // the control: the current-namespace tracer saw none of them
    assert!(loops.iter().all(|l| l["pid"] != other_pid));
}

scenario! {
    fn scenario_two_namespaces(out) {
        let n = 20;
        let current = start(&["trace", "--json"]);
        let all = start(&["trace", "--json", "--netns", "all"]);
        // a loop in a second namespace (a user+net sandbox of its own)
        // (the sandbox enters it and execs connect: one pid throughout)
        let other = Sandbox::range(RANGE)
            .tcploop(&["connect", &PORT.to_string(), "--json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let other_pid = other.id();
        let o = other.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        assert_eq!(
            of_type(&json_lines(&o), "result")[0]["outcome"],
            "self-connect"
        );
        make_loops(n, PORT);
        let v = serde_json::json!({
            "n": n,
            "pid": std::process::id(),
            "netns": own_netns(),
            "other_pid": other_pid,
            "current": stop(current),
            "all": stop(all),
        });
        std::fs::write(out, v.to_string()).unwrap();
    }
}

/// Children of a Python program, forked, each make loops and exit; the
/// program exits 3. `trace -- python3 ...` names the children, and exits 3.
const FORKING_CLIENT: &str = include_str!("fixtures/trace_forking_client.py");

#[test]
fn trace_command_names_the_loops_of_its_children_and_exits_with_its_status() {
    if skip("trace_command_names_the_loops_of_its_children_and_exits_with_its_status") {
        return;
    }
    let kids_file = std::env::temp_dir().join(format!("tcploop-trace-kids-{}", std::process::id()));
    let o = output(
        Sandbox::range(RANGE)
            .netns_only()
            .tcploop(&["trace", "--json", "--", "python3", "-c", FORKING_CLIENT])
            .arg(&kids_file)
            .arg(PORT.to_string()),
    );
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    let kids: Vec<u64> = std::fs::read_to_string(&kids_file)
        .unwrap()
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    let _ = std::fs::remove_file(&kids_file);
    let lines = json_lines(&o);
    let loops = of_type(&lines, "loop");
    assert_eq!(loops.len(), 4, "{lines:#?}");
    for k in &kids {
        let of_kid = loops.iter().filter(|l| l["pid"] == *k).count();
        assert_eq!(of_kid, 2, "child {k}: {lines:#?}");
        assert!(loops.iter().all(|l| l["command"] == "python3"));
    }
    let summary = &of_type(&lines, "summary")[0];
    assert_eq!(summary["stopped_by"], "command");
    assert_eq!(summary["command_status"], 3);
}

#[test]
fn trace_as_nobody_says_what_is_missing_and_exits_2() {
    if crate::common::no_sandboxes() {
        return;
    }
    // as uid 65534 in the host's user namespace, and inside an unprivileged
    // user namespace of its own: both refused, one line each
    for inner in [false, true] {
        let mut c = if inner {
            Sandbox::default().tcploop(&["trace"])
        } else {
            tcploop(&["trace"])
        };
        let o = output(common::as_nobody(&mut c));
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        let err = stderr(&o);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains("permission denied"), "{err}");
        assert!(err.contains("watch --source poll"), "{err}");
        if inner {
            assert!(err.contains("user namespace"), "{err}");
        }
        assert!(o.stdout.is_empty());
    }
}

/// A reader that stops reading: the ring buffer (4 KiB: 30 events) fills,
/// the program counts what it drops, and the reader reports it as lost.
#[test]
fn a_full_ring_buffer_is_reported_as_lost() {
    if skip("a_full_ring_buffer_is_reported_as_lost") {
        return;
    }
    let Some(text) = scenario_overflow::run(&Sandbox::range(RANGE).netns_only()) else {
        return;
    };
    let lines: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
    let summary = &of_type(&lines, "summary")[0];
    let loops = of_type(&lines, "loop").len() as u64;
    let lost: u64 = of_type(&lines, "lost")
        .iter()
        .map(|l| l["loops"].as_u64().unwrap())
        .sum();
    assert!(lost > 0, "{lines:#?}");
    assert!(loops < 100);
    assert_eq!(
        loops + lost,
        100,
        "every loop is either reported or counted lost"
    );
    assert_eq!(summary["lost_loops"], lost);
}

scenario! {
    fn scenario_overflow(out) {
        let t = start(&["trace", "--json", "--ring-bytes", "4096"]);
        common::signal(t.id(), libc::SIGSTOP);
        make_loops(100, PORT);
        common::signal(t.id(), libc::SIGCONT);
        let lines = stop(t);
        std::fs::write(out, serde_json::Value::from(lines).to_string()).unwrap();
    }
}

/// A watch whose JSON lines arrive on a channel (each checked against the
/// schema), once it has started.
struct Watch {
    child: Child,
    rx: std::sync::mpsc::Receiver<serde_json::Value>,
    lines: Vec<serde_json::Value>,
}

impl Watch {
    fn start(args: &[&str]) -> Watch {
        Watch::spawn(&mut tcploop(args))
    }

    fn spawn(c: &mut std::process::Command) -> Watch {
        let mut child = c.stdout(Stdio::piped()).spawn().unwrap();
        let out = BufReader::new(child.stdout.take().unwrap());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in out.lines().map_while(Result::ok) {
                let v: serde_json::Value = serde_json::from_str(&line).unwrap();
                crate::schema::check(&v);
                if tx.send(v).is_err() {
                    break;
                }
            }
        });
        let mut w = Watch {
            child,
            rx,
            lines: vec![],
        };
        w.wait_for("watch_started");
        w
    }

    fn wait_for(&mut self, ty: &str) -> serde_json::Value {
        loop {
            // a guard against a hang, not a measure: generous
            let v = self
                .rx
                .recv_timeout(Duration::from_secs(60))
                .unwrap_or_else(|e| panic!("no {ty} line ({e}): {:#?}", self.lines));
            self.lines.push(v.clone());
            if v["type"] == ty {
                return v["data"].clone();
            }
        }
    }

    /// SIGINT, then every line it printed.
    fn stop(mut self) -> Vec<serde_json::Value> {
        common::signal(self.child.id(), libc::SIGINT);
        self.wait_for("watch_stopped");
        assert_eq!(self.child.wait().unwrap().code(), Some(0));
        std::mem::take(&mut self.lines)
    }
}

impl Drop for Watch {
    /// After a failed assertion too: no watch outlives its test.
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[test]
fn watch_on_events_counts_the_loops_that_polling_misses() {
    if skip("watch_on_events_counts_the_loops_that_polling_misses") {
        return;
    }
    let Some(text) = scenario_watch_sources::run(&Sandbox::range(RANGE).netns_only()) else {
        return;
    };
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let n = v["n"].as_u64().unwrap();
    let events: Vec<serde_json::Value> = serde_json::from_value(v["ebpf"].clone()).unwrap();
    let polled: Vec<serde_json::Value> = serde_json::from_value(v["poll"].clone()).unwrap();
    assert_eq!(of_type(&events, "watch_started")[0]["source"], "ebpf");
    assert_eq!(of_type(&polled, "watch_started")[0]["source"], "poll");
    let appeared = of_type(&events, "loop_appeared");
    assert_eq!(appeared.len() as u64, n, "{events:#?}");
    assert!(appeared
        .iter()
        .all(|a| a["owners"][0]["pid"] == v["pid"] && a["local"] == format!("127.0.0.1:{PORT}")));
    assert_eq!(of_type(&events, "loop_gone").len() as u64, n);
    assert_eq!(of_type(&events, "watch_stopped")[0]["loops_seen"], n);
    // the control: a scan every second does not see loops that live microseconds
    let missed = of_type(&polled, "watch_stopped")[0]["loops_seen"]
        .as_u64()
        .unwrap();
    assert!(missed < n, "polling saw {missed} of {n}");
    // the metrics file was written on the events, not on a timer
    let prom = v["textfile"].as_str().unwrap();
    // (the command is the thread's name: the test's, cut to 15 bytes)
    let seen = prom
        .lines()
        .find(|l| l.starts_with(&format!("tcploop_loops_seen_total{{port=\"{PORT}\",")))
        .unwrap_or_else(|| panic!("{prom}"));
    assert!(seen.ends_with(&format!("}} {n}")), "{prom}");
    assert!(prom.contains("\ntcploop_loops_present 0\n"), "{prom}");
}

scenario! {
    fn scenario_watch_sources(out) {
        let textfile = out.with_extension("prom");
        let n = 20;
        let ebpf = Watch::start(&[
            "watch",
            "--json",
            "--source",
            "ebpf",
            "--textfile",
            textfile.to_str().unwrap(),
        ]);
        let poll = Watch::start(&["watch", "--json", "--source", "poll", "--interval", "1s"]);
        make_loops(n, PORT);
        let mut ebpf = ebpf;
        for _ in 0..n {
            ebpf.wait_for("loop_gone");
        }
        let ebpf = ebpf.stop();
        let prom = std::fs::read_to_string(&textfile).unwrap();
        let _ = std::fs::remove_file(&textfile);
        let v = serde_json::json!({
            "n": n,
            "pid": std::process::id(),
            "ebpf": ebpf,
            "poll": poll.stop(),
            "textfile": prom,
        });
        std::fs::write(out, v.to_string()).unwrap();
    }
}

#[test]
fn watch_catches_up_with_a_scan_after_lost_events() {
    if skip("watch_catches_up_with_a_scan_after_lost_events") {
        return;
    }
    let Some(text) = scenario_watch_overflow::run(&Sandbox::range(RANGE).netns_only()) else {
        return;
    };
    let lines: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
    let lost_at = lines
        .iter()
        .position(|l| l["type"] == "events_lost")
        .unwrap_or_else(|| panic!("no events_lost: {lines:#?}"));
    assert!(lines[lost_at]["data"]["loops"].as_u64().unwrap() > 0);
    // the two loops still held were made last, when the ring was full: only
    // the catch-up scan can report them (with their fd, which events lack)
    for port in [40006, 40008] {
        let found = lines[lost_at..].iter().any(|l| {
            l["type"] == "loop_appeared"
                && l["data"]["local"] == format!("127.0.0.1:{port}")
                && l["data"]["owners"][0]["fd"].as_i64().unwrap() >= 0
        });
        assert!(found, "port {port} not caught up: {lines:#?}");
    }
    let stopped = &of_type(&lines, "watch_stopped")[0];
    assert_eq!(stopped["scans"], 2, "one scan at start, one after the loss");
}

scenario! {
    fn scenario_watch_overflow(out) {
        let mut w = Watch::start(&[
            "watch",
            "--json",
            "--source",
            "ebpf",
            "--ring-bytes",
            "4096",
        ]);
        // once a loop's end is reported, the watch is past its first scan and
        // reading events: stop it there
        make_loops(1, PORT);
        w.wait_for("loop_gone");
        common::signal(w.child.id(), libc::SIGSTOP);
        make_loops(100, PORT);
        let held: Vec<TcpStream> = [40006, 40008]
            .into_iter()
            .map(|p| common::make_loop("127.0.0.1", p))
            .collect();
        common::signal(w.child.id(), libc::SIGCONT);
        w.wait_for("events_lost");
        for _ in 0..2 {
            loop {
                let a = w.wait_for("loop_appeared");
                if a["owners"][0]["fd"].as_i64().unwrap() >= 0 {
                    break;
                }
            }
        }
        let lines = w.stop();
        drop(held);
        std::fs::write(out, serde_json::Value::from(lines).to_string()).unwrap();
    }
}

#[test]
fn watch_without_privileges_polls_and_says_why() {
    if crate::common::no_sandboxes() {
        return;
    }
    // auto: falls back to polling, and says why (as uid 65534, in a user
    // namespace of its own)
    let mut c = common::sandboxed(RANGE, &["watch", "--json", "--interval", "10ms"]);
    let w = Watch::spawn(common::as_nobody(&mut c));
    let lines = w.stop();
    let started = &of_type(&lines, "watch_started")[0];
    assert_eq!(started["source"], "poll");
    let why = started["source_reason"].as_str().unwrap();
    assert!(why.starts_with("eBPF unavailable: "), "{why}");
    assert!(why.contains("permission denied"), "{why}");
    // the same in text: one line says which and why
    let mut c = common::sandboxed(RANGE, &["watch", "--interval", "10ms"]);
    let mut child = common::as_nobody(&mut c)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    let mut second = String::new();
    out.read_line(&mut first).unwrap();
    out.read_line(&mut second).unwrap();
    common::signal(child.id(), libc::SIGINT);
    assert_eq!(child.wait().unwrap().code(), Some(0));
    assert!(first.contains("watching for loops every"), "{first}");
    assert!(
        second.contains("source: poll: eBPF unavailable: "),
        "{second}"
    );
    // ebpf, asked for explicitly: an error, exit 2, one line
    let o = output(common::as_nobody(&mut common::sandboxed(
        RANGE,
        &["watch", "--source", "ebpf"],
    )));
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(stderr(&o).lines().count(), 1, "{}", stderr(&o));
    assert!(stderr(&o).contains("permission denied"), "{}", stderr(&o));
    assert!(stderr(&o).contains("--source poll"));
}

#[test]
fn trace_kill_destroys_a_loop_by_its_cookie() {
    if skip("trace_kill_destroys_a_loop_by_its_cookie") {
        return;
    }
    let Some(text) = scenario_kill::run(&Sandbox::range(RANGE).netns_only()) else {
        return;
    };
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    // the control: traced without --kill, the loop lives on
    assert_eq!(v["control"], "alive", "{v}");
    let lines: Vec<serde_json::Value> = serde_json::from_value(v["killed"].clone()).unwrap();
    let kill = &of_type(&lines, "kill")[0];
    assert_eq!(kill["result"], "destroyed", "{lines:#?}");
    assert_eq!(kill["cookie"], of_type(&lines, "loop")[0]["cookie"]);
    assert_eq!(of_type(&lines, "summary")[0]["killed"], 1);
    // its owner learns it: from connect() itself, or its next read
    assert_eq!(v["read"], "ConnectionAborted", "{v}");
}

scenario! {
    fn scenario_kill(out) {
        use std::io::Read;
        let run = |kill: bool, port: u16| {
            let mut args = vec!["trace", "--json", "--count", "1"];
            if kill {
                args.push("--kill");
            }
            let t = start(&args);
            // the destroy may land while connect() still waits for its
            // handshake to finish (the event comes at SYN-RECV): then connect()
            // itself fails with ECONNABORTED; else the next read does
            let to: SocketAddr = ([127, 0, 0, 1], port).into();
            let mut tries = 0;
            let held = loop {
                tries += 1;
                assert!(tries < 100_000, "no loop on {port}");
                match TcpStream::connect(to) {
                    // a loop's local address is the target; compare with it,
                    // not with peer_addr(), which fails once the loop is destroyed
                    Ok(s) if s.local_addr().ok() == Some(to) => break Ok(s),
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionAborted => break Err(e),
                    _ => {}
                }
            };
            let o = t.wait_with_output().unwrap();
            assert_eq!(o.status.code(), Some(1), "loops seen: exit 1");
            let read = match held {
                Err(e) => format!("{:?}", e.kind()),
                Ok(s) => {
                    s.set_nonblocking(true).unwrap();
                    match (&s).read(&mut [0u8; 16]) {
                        Ok(n) => format!("read {n}"),
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => "alive".to_string(),
                        Err(e) => format!("{:?}", e.kind()),
                    }
                }
            };
            (json_lines(&o), read)
        };
        let (_, control) = run(false, 40006);
        let (killed, read) = run(true, 40008);
        let v = serde_json::json!({ "control": control, "killed": killed, "read": read });
        std::fs::write(out, v.to_string()).unwrap();
    }
}
