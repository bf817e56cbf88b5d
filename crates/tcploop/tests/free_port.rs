//! Integration tests of `tcploop free-port`, and the namespace tests of the
//! `tcploop-guard` crate (a portable crate cannot enter a namespace itself,
//! so the loop it guards against is made to happen here).
//!
//! Every scenario runs in a sandbox whose ephemeral range is the 10 ports
//! 40000-40009: there a plain client loops into the closed even port 40004
//! within a few attempts (each scenario shows that first, as the control).

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use serde_json::{json, Value};
use tcploop_guard::{Guard, SelfConnectError};

use crate::common::{self, Sandbox};

const RANGE: &str = "40000-40009";
/// A closed port of the parity plain `connect()` uses in [`RANGE`].
const CLOSED: &str = "127.0.0.1:40004";

fn closed() -> SocketAddr {
    CLOSED.parse().unwrap()
}

/// Open file descriptors of this process.
fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Writes a scenario's findings to `out`, for the parent test.
fn report(out: &std::path::Path, v: &Value) {
    std::fs::write(out, v.to_string()).unwrap();
}

fn parse(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("bad scenario output {text:?}: {e}"))
}

/// Resets a looped stream (RST), so its port is not left in TIME-WAIT.
fn reset(s: &TcpStream) {
    socket2::SockRef::from(s)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
}

/// The control: plain std connects to `addr` until one loops; the attempt
/// number of the first loop, if any came within `max`.
fn plain_until_loop(addr: SocketAddr, max: u32) -> Option<u32> {
    for i in 1..=max {
        if let Ok(s) = TcpStream::connect(addr) {
            let looped = tcploop_guard::is_self_connected(&s).unwrap();
            reset(&s);
            if looped {
                return Some(i);
            }
        }
    }
    None
}

/// Outcomes of many connects, sorted the way the contract speaks of them.
#[derive(Debug, Default)]
struct Tally {
    /// Streams returned (nothing listens, so any is a loop).
    streams: u64,
    /// Streams returned that were connected to themselves.
    self_connected: u64,
    /// `ConnectionRefused` from the kernel.
    refused: u64,
    /// `ConnectionRefused` with a `SelfConnectError` inside (all attempts looped).
    gave_up: u64,
    /// Any other error (the first one kept).
    other: u64,
    first_other: Option<String>,
}

impl Tally {
    fn add<S: tcploop_guard::AsSocket>(&mut self, r: std::io::Result<S>) {
        match r {
            Ok(s) => {
                self.streams += 1;
                if tcploop_guard::is_self_connected(&s).unwrap_or(false) {
                    self.self_connected += 1;
                }
                socket2::SockRef::from(&s)
                    .set_linger(Some(Duration::ZERO))
                    .unwrap();
            }
            Err(e) if e.kind() != ErrorKind::ConnectionRefused => {
                self.other += 1;
                self.first_other.get_or_insert(e.to_string());
            }
            Err(e) if SelfConnectError::of(&e).is_some() => self.gave_up += 1,
            Err(_) => self.refused += 1,
        }
    }

    fn json(&self) -> Value {
        json!({
            "streams": self.streams, "self_connected": self.self_connected,
            "refused": self.refused, "gave_up": self.gave_up,
            "other": self.other, "first_other": self.first_other,
        })
    }
}

/// The contract on a closed port: no stream at all, every failure refused.
fn assert_contract(t: &Value, n: u64) {
    assert_eq!(t["self_connected"], 0, "{t}");
    assert_eq!(t["streams"], 0, "nothing listens, so no stream: {t}");
    assert_eq!(t["other"], 0, "every failure is ConnectionRefused: {t}");
    assert_eq!(
        t["refused"].as_u64().unwrap() + t["gave_up"].as_u64().unwrap(),
        n,
        "{t}"
    );
}

#[test]
fn guard_std_never_returns_a_loop() {
    let Some(text) = guard_std::run(&Sandbox::range(RANGE)) else {
        return;
    };
    let v = parse(&text);
    assert!(
        v["control_loop_after"].as_u64().is_some(),
        "the control: a plain client loops here: {v}"
    );
    assert_contract(&v["connect"], 100_000);
    assert_contract(&v["connect_timeout"], 10_000);
    // With no retry, the loops the guard meets surface as errors: they did
    // happen under the guard and were caught.
    let no_retry = &v["no_retry"];
    assert_contract(no_retry, 20_000);
    assert!(
        no_retry["gave_up"].as_u64().unwrap() > 0,
        "loops were caught: {v}"
    );
    assert_eq!(v["fds_before"], v["fds_after"], "no fd leaked: {v}");
    assert_eq!(v["rebind"], "ok", "the port is free right after: {v}");
}

scenario! {
    fn guard_std(out) {
        let addr = closed();
        let control = plain_until_loop(addr, 1000);
        assert!(control.is_some(), "no loop without the guard: bad sandbox?");

        let fds_before = fd_count();
        let mut connect = Tally::default();
        for _ in 0..100_000 {
            connect.add(tcploop_guard::connect(addr));
        }
        let mut timeout = Tally::default();
        for _ in 0..10_000 {
            timeout.add(tcploop_guard::connect_timeout(
                &addr,
                Duration::from_secs(5),
            ));
        }
        let mut no_retry = Tally::default();
        let guard = Guard::new().retries(0);
        for _ in 0..20_000 {
            no_retry.add(guard.connect(addr));
        }
        let fds_after = fd_count();
        let rebind = match TcpListener::bind(addr) {
            Ok(_) => "ok".to_string(),
            Err(e) => e.to_string(),
        };
        report(&out, &json!({
            "control_loop_after": control,
            "connect": connect.json(), "connect_timeout": timeout.json(), "no_retry": no_retry.json(),
            "fds_before": fds_before, "fds_after": fds_after, "rebind": rebind,
        }));
    }
}

#[test]
fn guard_tokio_never_returns_a_loop() {
    let Some(text) = guard_tokio::run(&Sandbox::range(RANGE)) else {
        return;
    };
    let v = parse(&text);
    assert!(
        v["control_loop_after"].as_u64().is_some(),
        "the control: a plain tokio client loops here: {v}"
    );
    assert_contract(&v["connect"], 10_000);
    assert_contract(&v["no_retry"], 5_000);
    assert!(
        v["no_retry"]["gave_up"].as_u64().unwrap() > 0,
        "loops were caught: {v}"
    );
    assert_eq!(v["fds_before"], v["fds_after"], "no fd leaked: {v}");
    assert_eq!(v["rebind"], "ok", "the port is free right after: {v}");
}

scenario! {
    fn guard_tokio(out) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .unwrap();
        let addr = closed();
        let v = rt.block_on(async {
            let mut control = None;
            for i in 1..=1000u32 {
                if let Ok(s) = tokio::net::TcpStream::connect(addr).await {
                    let looped = tcploop_guard::is_self_connected(&s).unwrap();
                    socket2::SockRef::from(&s)
                        .set_linger(Some(Duration::ZERO))
                        .unwrap();
                    if looped {
                        control = Some(i);
                        break;
                    }
                }
            }
            assert!(control.is_some(), "no loop without the guard: bad sandbox?");

            let fds_before = fd_count();
            let mut connect = Tally::default();
            for _ in 0..10_000 {
                connect.add(tcploop_guard::tokio::connect(addr).await);
            }
            let mut no_retry = Tally::default();
            let guard = Guard::new().retries(0);
            for _ in 0..5_000 {
                no_retry.add(guard.connect_async(addr).await);
            }
            let fds_after = fd_count();
            let rebind = match tokio::net::TcpListener::bind(addr).await {
                Ok(_) => "ok".to_string(),
                Err(e) => e.to_string(),
            };
            json!({
                "control_loop_after": control,
                "connect": connect.json(), "no_retry": no_retry.json(),
                "fds_before": fds_before, "fds_after": fds_after, "rebind": rebind,
            })
        });
        report(&out, &v);
    }
}

#[test]
fn guard_connects_to_a_live_listener_on_the_first_try() {
    let Some(text) = guard_live_listener::run(&Sandbox::range(RANGE)) else {
        return;
    };
    let v = parse(&text);
    assert_eq!(v["std"], 1000, "{v}");
    assert_eq!(v["tokio"], 1000, "{v}");
}

scenario! {
    fn guard_live_listener(out) {
        // A listener on the port the control loops into.
        let addr = closed();
        let server = TcpListener::bind(addr).unwrap();
        // No retry allowed: success means the first attempt connected.
        let guard = Guard::new().retries(0);
        let mut std_ok = 0;
        for i in 0..1000u32 {
            let mut c = guard.connect(addr).unwrap();
            let (mut s, peer) = server.accept().unwrap();
            assert_eq!(peer, c.local_addr().unwrap());
            assert_eq!(c.peer_addr().unwrap(), addr);
            c.write_all(&i.to_be_bytes()).unwrap();
            let mut buf = [0; 4];
            s.read_exact(&mut buf).unwrap();
            assert_eq!(u32::from_be_bytes(buf), i);
            std_ok += 1;
        }
        drop(server);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .unwrap();
        let tokio_ok = rt.block_on(async {
            let server = tokio::net::TcpListener::bind(addr).await.unwrap();
            let mut n = 0;
            for _ in 0..1000 {
                let c = guard.connect_async(addr).await.unwrap();
                let (_s, peer) = server.accept().await.unwrap();
                assert_eq!(peer, c.local_addr().unwrap());
                n += 1;
            }
            n
        });
        report(&out, &json!({"std": std_ok, "tokio": tokio_ok}));
    }
}

/// `free-port` inside the sandbox, as JSON lines.
fn free_port_json(range: &str, reserve: Option<&str>, args: &[&str]) -> (Vec<Value>, Value) {
    let o = common::output(&mut free_port_cmd(range, reserve, args));
    assert!(
        o.status.success(),
        "{}{}",
        common::stdout(&o),
        common::stderr(&o)
    );
    let lines = common::json_lines(&o);
    let summary = common::of_type(&lines, "summary");
    assert_eq!(summary.len(), 1, "{lines:?}");
    (common::of_type(&lines, "free_port"), summary[0].clone())
}

fn free_port_cmd(range: &str, reserve: Option<&str>, args: &[&str]) -> std::process::Command {
    let mut c = Sandbox {
        reserve,
        ..Sandbox::range(range)
    }
    .tcploop(&["free-port"]);
    c.args(args);
    c
}

#[test]
fn free_port_gives_distinct_ports_outside_the_range() {
    if crate::common::no_sandboxes() {
        return;
    }
    let (ports, summary) = free_port_json(RANGE, None, &["--count", "50", "--json"]);
    assert_eq!(ports.len(), 50);
    let mut seen = std::collections::BTreeSet::new();
    for p in &ports {
        let port = p["port"].as_u64().unwrap();
        assert!(
            (1024..=65535).contains(&port) && !(40000..=40009).contains(&port),
            "{p}"
        );
        let why = if port < 40000 {
            "below_range"
        } else {
            "above_range"
        };
        assert_eq!(p["why"], why, "{p}");
        assert_eq!(p["host"], "127.0.0.1");
        assert!(seen.insert(port), "distinct: {p}");
    }
    assert_eq!(summary["count"], 50);
    assert_eq!(summary["range"], json!({"low": 40000, "high": 40009}));
    assert_eq!(summary["dump_error"], Value::Null);
    assert_eq!(summary["candidates"], 65535 - 1024 + 1 - 10);
    // Spread at random: 50 draws from 64,502 ports are not a run of neighbours.
    let span = seen.last().unwrap() - seen.first().unwrap();
    assert!(span > 1000, "{seen:?}");
}

#[test]
fn free_port_prints_one_port_a_line() {
    if crate::common::no_sandboxes() {
        return;
    }
    let o = common::output(&mut free_port_cmd(RANGE, None, &["-n", "3"]));
    assert!(o.status.success(), "{}", common::stderr(&o));
    let ports: Vec<u16> = common::stdout(&o)
        .lines()
        .map(|l| l.parse().unwrap_or_else(|_| panic!("not a port: {l:?}")))
        .collect();
    assert_eq!(ports.len(), 3);
    // Unprivileged too (a user namespace of its own).
    let o = common::output(common::as_nobody(&mut free_port_cmd(RANGE, None, &[])));
    assert!(o.status.success(), "{}", common::stderr(&o));
    assert_eq!(common::stdout(&o).lines().count(), 1);
}

#[test]
fn free_port_uses_reserved_ports_when_the_range_covers_everything() {
    if crate::common::no_sandboxes() {
        return;
    }
    let (ports, summary) = free_port_json(
        "1024-65535",
        Some("40004-40005"),
        &["--count", "2", "--json"],
    );
    let mut got: Vec<u64> = ports.iter().map(|p| p["port"].as_u64().unwrap()).collect();
    got.sort_unstable();
    assert_eq!(got, vec![40004, 40005]);
    assert!(ports.iter().all(|p| p["why"] == "reserved"));
    assert_eq!(summary["candidates"], 2);
    // Three cannot be had: a one-line error, exit 2.
    let o = common::output(&mut free_port_cmd(
        "1024-65535",
        Some("40004-40005"),
        &["--count", "3"],
    ));
    assert_eq!(o.status.code(), Some(2));
    let err = common::stderr(&o);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("only 2 of the 3"), "{err}");
    // None at all.
    let o = common::output(&mut free_port_cmd("1024-65535", None, &[]));
    assert_eq!(o.status.code(), Some(2));
    assert!(
        common::stderr(&o).contains("ip_local_reserved_ports"),
        "{}",
        common::stderr(&o)
    );
}

#[test]
fn free_port_rejects_bad_input_with_one_line() {
    if crate::common::no_sandboxes() {
        return;
    }
    for (args, says) in [
        (&["--count", "0"][..], "--count"),
        (&["--host", "not-an-ip"][..], "--host"),
        // Not an address of the sandbox: binding fails, nothing is sent.
        (&["--host", "192.0.2.1"][..], "cannot listen on 192.0.2.1"),
    ] {
        let o = common::output(&mut free_port_cmd(RANGE, None, args));
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        let err = common::stderr(&o);
        assert!(err.contains(says), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[test]
fn free_port_skips_ports_in_use() {
    let Some(text) = free_port_in_use::run(&Sandbox {
        reserve: Some("40004-40006"),
        ..Sandbox::range("1024-65535")
    }) else {
        return;
    };
    let v = parse(&text);
    assert_eq!(v["with_listener"], json!([40004, 40006]), "{v}");
    assert_eq!(v["with_bound"], json!([40006]), "{v}");
    assert!(
        v["not_enough"]
            .as_str()
            .unwrap()
            .contains("only 1 of the 2"),
        "{v}"
    );
}

scenario! {
    fn free_port_in_use(out) {
        let host = "127.0.0.1".parse().unwrap();
        let sorted = |n| {
            let mut v: Vec<u16> = tcploop::freeport::free_ports(n, host)
                .unwrap()
                .ports
                .iter()
                .map(|p| p.port)
                .collect();
            v.sort_unstable();
            v
        };
        // A listener on another address still holds the port (one bind bucket a port).
        let _listener = TcpListener::bind("[::1]:40005")
            .or_else(|_| TcpListener::bind("127.0.0.2:40005"))
            .unwrap();
        let with_listener = sorted(2);
        // A socket that is only bound (no listen) holds it too.
        let bound = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        bound
            .bind(&"127.0.0.1:40004".parse::<SocketAddr>().unwrap().into())
            .unwrap();
        let with_bound = sorted(1);
        let not_enough = tcploop::freeport::free_ports(2, host)
            .map(|_| String::new())
            .unwrap_or_else(|e| e.to_string());
        report(&out, &json!({
            "with_listener": with_listener, "with_bound": with_bound, "not_enough": not_enough,
        }));
    }
}

#[test]
fn free_ports_never_loop() {
    let Some(text) = inside_free_ports_never_loop::run(&Sandbox::range(RANGE)) else {
        return;
    };
    let v = parse(&text);
    assert!(
        v["control_loop_after"].as_u64().is_some(),
        "the control: a plain client loops into 40004 here: {v}"
    );
    let ports = v["ports"].as_array().unwrap();
    assert_eq!(ports.len(), 10, "{v}");
    for p in ports {
        let port = p.as_u64().unwrap();
        assert!(!(40000..=40009).contains(&port), "{v}");
    }
    assert_eq!(v["unbindable"], json!([]), "{v}");
    assert_contract(&v["hammer"], 10 * 2_000);
}

scenario! {
    fn inside_free_ports_never_loop(out) {
        let control = plain_until_loop(closed(), 1000);
        // Five from the library, five from the command, as a test suite would get them.
        let lib = tcploop::freeport::free_ports(5, "127.0.0.1".parse().unwrap()).unwrap();
        let mut ports: Vec<u16> = lib.ports.iter().map(|p| p.port).collect();
        let o = common::output(&mut common::tcploop(&["free-port", "-n", "5"]));
        assert!(o.status.success(), "{}", common::stderr(&o));
        ports.extend(
            common::stdout(&o)
                .lines()
                .map(|l| l.parse::<u16>().unwrap()),
        );
        let unbindable: Vec<u16> = ports
            .iter()
            .copied()
            .filter(|&p| TcpListener::bind(("127.0.0.1", p)).is_err())
            .collect();
        // A plain, unguarded client hammering each: refused every time, never looped.
        let mut hammer = Tally::default();
        for &p in &ports {
            for _ in 0..2_000 {
                hammer.add(TcpStream::connect(("127.0.0.1", p)));
            }
        }
        report(&out, &json!({
            "control_loop_after": control, "ports": ports, "unbindable": unbindable,
            "hammer": hammer.json(),
        }));
    }
}

/// The guard crate's second pattern, first half: a port held by a bound
/// socket (no listen, as a server between its restarts) is never given to a
/// client as its source port, so a plain client never loops into it.
#[test]
fn a_port_held_bound_never_loops() {
    let Some(text) = inside_a_port_held_bound_never_loops::run(&Sandbox::range(RANGE)) else {
        return;
    };
    let v = parse(&text);
    assert!(
        v["control_loop_after"].as_u64().is_some(),
        "the control: a plain client loops into 40004 while it is unbound: {v}"
    );
    assert_contract(&v["hammer"], 20_000);
}

scenario! {
    fn inside_a_port_held_bound_never_loops(out) {
        let control = plain_until_loop(closed(), 1000);
        let held = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        held.bind(&closed().into()).unwrap();
        let mut hammer = Tally::default();
        for _ in 0..20_000 {
            hammer.add(TcpStream::connect(closed()));
        }
        drop(held);
        report(&out, &json!({ "control_loop_after": control, "hammer": hammer.json() }));
    }
}
