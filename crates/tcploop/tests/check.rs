//! `tcploop check` against reality: for each case of the decision procedure,
//! a throwaway namespace is set up (holders, reservations, addresses), the
//! predictor is asked, and then real `connect()`s are made to the same
//! destination. A `possible` verdict must end in a loop, an `impossible` one
//! must not loop in thousands of tries, `listening` must reach the listener.

use std::net::SocketAddr;
use std::process::Command;

use serde_json::Value;
use socket2::{Domain, Protocol, Socket, Type};

use crate::common::*;

/// Tries for a case that must not loop (the narrow range has 5 candidates
/// per parity, so a loop that can happen happens within a few dozen).
const NEVER_TRIES: &str = "3000";

/// A bound-only socket (bind, no listen, no connect).
fn bound(addr: &str, v6only: bool) -> Socket {
    let a: SocketAddr = addr.parse().unwrap();
    let s = Socket::new(Domain::for_address(a), Type::STREAM, Some(Protocol::TCP)).unwrap();
    if v6only {
        s.set_only_v6(true).unwrap();
    }
    s.bind(&a.into()).unwrap();
    s
}

fn listener(addr: &str) -> Socket {
    let s = bound(addr, false);
    s.listen(16).unwrap();
    s
}

fn ip(args: &str) {
    let st = Command::new("ip")
        .args(args.split_whitespace())
        .status()
        .expect("ip (iproute2) is needed by this test");
    assert!(st.success(), "ip {args}");
}

scenario! {
    /// Inside the sandbox: set up `case`, ask `check`, then really connect.
    fn predictor_case(out) {
        let case = std::env::var("TCPLOOP_CASE").unwrap();
        let mut keep: Vec<Socket> = vec![];
        let (host, port) = match case.as_str() {
            "even" => ("127.0.0.1", "40004"),
            "odd" => ("127.0.0.1", "40005"),
            "reserved" => ("127.0.0.1", "40004"),
            "top-of-odd-range" => ("127.0.0.1", "40010"),
            "bind-held" => {
                keep.push(bound("127.0.0.1:40004", false));
                ("127.0.0.1", "40004")
            }
            "bind-held-other-address" => {
                ip("addr add 127.0.0.2/8 dev lo");
                keep.push(bound("127.0.0.2:40004", false));
                ("127.0.0.1", "40004")
            }
            "bind-held-ipv6" => {
                keep.push(bound("[::1]:40004", true));
                ("127.0.0.1", "40004")
            }
            "connected-holder" => {
                // 40004 becomes the source port of a connection to a listener
                // elsewhere: that does not protect it.
                let l = listener("127.0.0.1:50000");
                let c = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).unwrap();
                c.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
                    .ok();
                drop(c);
                let mut got = false;
                for _ in 0..200 {
                    let c = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).unwrap();
                    c.connect(&"127.0.0.1:50000".parse::<SocketAddr>().unwrap().into())
                        .unwrap();
                    let p = c.local_addr().unwrap().as_socket().unwrap().port();
                    keep.push(c);
                    if p == 40004 {
                        got = true;
                        break;
                    }
                }
                assert!(got, "no connection got source port 40004");
                keep.push(l);
                ("127.0.0.1", "40004")
            }
            "listening" => {
                keep.push(listener("0.0.0.0:40004"));
                ("127.0.0.1", "40004")
            }
            "loop-holder" | "time-wait-loop-holder" => {
                // a plain connect() that loops: the range leaves it one port
                set_range(40004, 40005);
                let c = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).unwrap();
                let r = c.connect(&"127.0.0.1:40004".parse::<SocketAddr>().unwrap().into());
                set_range(40000, 40009);
                r.expect("self-connect");
                assert_eq!(c.local_addr().unwrap(), c.peer_addr().unwrap());
                if case == "loop-holder" {
                    // closed with RST once the check is made: nothing left behind
                    c.set_linger(Some(std::time::Duration::ZERO)).unwrap();
                    keep.push(c);
                } else {
                    drop(c); // a graceful close: TIME-WAIT
                }
                ("127.0.0.1", "40004")
            }
            "odd-after-exhaustion" => {
                for p in (40000..=40008).step_by(2) {
                    keep.push(bound(&format!("127.0.0.1:{p}"), false));
                }
                ("127.0.0.1", "40005")
            }
            "ipv6-even" => ("::1", "40004"),
            "ipv6-odd" => ("::1", "40005"),
            "unspecified" => ("0.0.0.0", "40006"),
            "v4-mapped" => ("::ffff:127.0.0.1", "40002"),
            "other-loopback" => ("127.0.0.2", "40004"),
            "interface" | "interface-odd" | "interface-v6" => {
                ip("link add veth0 type veth peer name veth1");
                ip("addr add 10.99.0.1/24 dev veth0");
                ip("-6 addr add fd00::1/64 dev veth0 nodad");
                ip("link set veth0 up");
                match case.as_str() {
                    "interface" => ("10.99.0.1", "40006"),
                    "interface-odd" => ("10.99.0.1", "40007"),
                    _ => ("fd00::1", "40008"),
                }
            }
            other => panic!("unknown case {other}"),
        };
        let check = output(&mut tcploop(&["check", "--json", "--host", host, port]));
        let lines = json_lines(&check);
        let c = &of_type(&lines, "check")[0];
        // the control: the same port once the holders are gone
        let mut after = Value::Null;
        if case == "loop-holder" {
            keep.clear();
            let again = output(&mut tcploop(&["check", "--json", "--host", host, port]));
            after = of_type(&json_lines(&again), "check")[0].clone();
            after["exit"] = again.status.code().into();
        }
        let conn = output(&mut tcploop(&[
            "connect",
            "--json",
            "--quiet",
            "--no-hold",
            "--force",
            "--max-tries",
            NEVER_TRIES,
            "--host",
            host,
            port,
        ]));
        let r = of_type(&json_lines(&conn), "result")[0].clone();
        let v = serde_json::json!({
            "verdict": c["verdict"],
            "reasons": c["reasons"],
            "expected_tries": c["expected_tries"],
            "check_exit": check.status.code(),
            "holders": c["holders"],
            "when_down": c["when_down"],
            "after": after,
            "me": std::process::id(),
            "outcome": r["outcome"],
            "tries": r["tries"],
            "local": r["local"],
            "connect_exit": conn.status.code(),
        });
        std::fs::write(out, v.to_string()).unwrap();
        drop(keep);
    }
}

/// The verdict and what really happened in case `name` (`None`: skipped,
/// no namespaces here).
fn case(range: &str, reserve: Option<&str>, name: &str) -> Option<Value> {
    let text = predictor_case::run(&Sandbox {
        range,
        reserve,
        envs: &[("TCPLOOP_CASE", name)],
        netns_only: false,
    })?;
    Some(serde_json::from_str(&text).unwrap())
}

/// The predictor and reality agree: possible <=> loops, listening <=> a
/// real listener answers, impossible <=> no loop in 3000 tries.
fn agrees(v: &Value) {
    match v["verdict"].as_str().unwrap() {
        "possible" => {
            assert_eq!(v["outcome"], "self-connect", "{v}");
            assert_eq!(v["check_exit"], 1, "{v}");
            assert_eq!(v["connect_exit"], 0, "{v}");
        }
        "impossible" => {
            assert_eq!(v["outcome"], "gave-up", "{v}");
            assert_eq!(v["tries"], 3000, "{v}");
            assert_eq!(v["check_exit"], 0, "{v}");
        }
        "listening" => {
            assert_eq!(v["outcome"], "listener", "{v}");
            assert_eq!(v["connect_exit"], 3, "{v}");
        }
        "stolen" => assert_eq!(v["check_exit"], 1, "{v}"),
        other => panic!("verdict {other}: {v}"),
    }
}

fn expect(v: &Value, verdict: &str, reason_contains: &str) {
    assert_eq!(v["verdict"], verdict, "{v}");
    let reasons = v["reasons"].to_string();
    assert!(
        reasons.contains(reason_contains),
        "reasons lack {reason_contains:?}: {v}"
    );
    agrees(v);
}

const NARROW: &str = "40000-40009";

#[test]
fn even_port_loops_as_predicted() {
    let Some(v) = case(NARROW, None, "even") else {
        return;
    };
    expect(&v, "possible", "even");
    assert_eq!(v["expected_tries"], 5.0);
    assert_eq!(v["local"], "127.0.0.1:40004");
}

#[test]
fn odd_port_never_loops() {
    let Some(v) = case(NARROW, None, "odd") else {
        return;
    };
    expect(&v, "impossible", "odd");
}

#[test]
fn reserved_port_never_loops() {
    let Some(v) = case(NARROW, Some("40004"), "reserved") else {
        return;
    };
    expect(&v, "impossible", "ip_local_reserved_ports");
}

#[test]
fn top_port_of_an_odd_sized_range_never_loops() {
    let Some(v) = case("40000-40010", None, "top-of-odd-range") else {
        return;
    };
    expect(&v, "impossible", "odd number of ports");
}

#[test]
fn bind_held_port_never_loops() {
    let Some(v) = case(NARROW, None, "bind-held") else {
        return;
    };
    expect(&v, "impossible", "bind()");
}

#[test]
fn port_bound_on_another_address_never_loops() {
    let Some(v) = case(NARROW, None, "bind-held-other-address") else {
        return;
    };
    expect(&v, "impossible", "127.0.0.2:40004");
}

#[test]
fn port_bound_by_ipv6_protects_ipv4() {
    let Some(v) = case(NARROW, None, "bind-held-ipv6") else {
        return;
    };
    expect(&v, "impossible", "[::1]:40004");
}

#[test]
fn a_connected_source_port_gives_no_protection_and_the_port_is_stolen_now() {
    let Some(v) = case(NARROW, None, "connected-holder") else {
        return;
    };
    // now: a server binding 127.0.0.1:40004 gets EADDRINUSE
    expect(&v, "stolen", "source port");
    assert_eq!(v["holders"][0]["kind"], "source-port", "{v}");
    assert_eq!(v["holders"][0]["peers"][0], "127.0.0.1:50000", "{v}");
    assert_eq!(v["holders"][0]["owners"][0]["pid"], v["me"], "{v}");
    // while the service is down: the connection does not protect the port,
    // and a real connect() loops, as predicted
    let down = &v["when_down"];
    assert_eq!(down["verdict"], "possible", "{v}");
    assert!(
        down["reasons"].to_string().contains("do not protect it"),
        "{v}"
    );
    assert_eq!(v["outcome"], "self-connect", "{v}");
}

/// Issue: `check` called a port held by a live loop `impossible`, exit 0,
/// while a server could not bind it.
#[test]
fn check_calls_a_port_held_by_a_loop_stolen_not_impossible() {
    let Some(v) = case(NARROW, None, "loop-holder") else {
        return;
    };
    expect(&v, "stolen", "self-connected socket 127.0.0.1:40004");
    assert_eq!(v["holders"][0]["kind"], "self-connected", "{v}");
    assert_eq!(v["holders"][0]["owners"][0]["pid"], v["me"], "{v}");
    assert!(
        v["reasons"].to_string().contains("gets EADDRINUSE now"),
        "{v}"
    );
    assert_eq!(v["when_down"]["verdict"], "possible", "{v}");
    // the control: the loop closed with RST, the port is merely possible again
    let after = &v["after"];
    assert_eq!(after["verdict"], "possible", "{v}");
    assert_eq!(after["holders"], serde_json::json!([]), "{v}");
    assert_eq!(after["when_down"], Value::Null, "{v}");
}

/// The same for a loop its owner closed: TIME-WAIT still takes the port.
#[test]
fn check_calls_a_port_held_by_a_closed_loops_time_wait_stolen() {
    let Some(v) = case(NARROW, None, "time-wait-loop-holder") else {
        return;
    };
    expect(&v, "stolen", "TIME-WAIT");
    assert_eq!(v["holders"][0]["kind"], "self-connected-time-wait", "{v}");
}

/// The control of the two above: a port held by bind() is safe from loops,
/// not stolen from anyone by a loop: `impossible`, exit 0.
#[test]
fn a_bind_held_port_is_not_called_stolen() {
    let Some(v) = case(NARROW, None, "bind-held") else {
        return;
    };
    expect(&v, "impossible", "bind() holds port 40004");
    assert_eq!(v["holders"], serde_json::json!([]), "{v}");
}

#[test]
fn listening_port_reaches_the_listener() {
    let Some(v) = case(NARROW, None, "listening") else {
        return;
    };
    expect(&v, "listening", "0.0.0.0:40004");
}

#[test]
fn odd_port_loops_once_every_even_port_is_bind_held() {
    let Some(v) = case(NARROW, None, "odd-after-exhaustion") else {
        return;
    };
    expect(&v, "possible", "falls back to odd");
    assert_eq!(v["expected_tries"], 5.0);
}

#[test]
fn ipv6_loopback_follows_the_same_parity_rule() {
    let Some(v) = case(NARROW, None, "ipv6-even") else {
        return;
    };
    expect(&v, "possible", "::1");
    let Some(v) = case(NARROW, None, "ipv6-odd") else {
        return;
    };
    expect(&v, "impossible", "odd");
}

#[test]
fn unspecified_address_means_this_host() {
    let Some(v) = case(NARROW, None, "unspecified") else {
        return;
    };
    expect(&v, "possible", "this host");
    assert_eq!(v["local"], "127.0.0.1:40006");
}

#[test]
fn v4_mapped_loopback_loops() {
    let Some(v) = case(NARROW, None, "v4-mapped") else {
        return;
    };
    expect(&v, "possible", "even");
}

#[test]
fn other_loopback_address_never_loops() {
    let Some(v) = case(NARROW, None, "other-loopback") else {
        return;
    };
    expect(&v, "impossible", "127.0.0.1");
}

#[test]
fn interface_addresses_loop_like_loopback() {
    let Some(v) = case(NARROW, None, "interface") else {
        return;
    };
    expect(&v, "possible", "veth0");
    let Some(v) = case(NARROW, None, "interface-odd") else {
        return;
    };
    expect(&v, "impossible", "odd");
    let Some(v) = case(NARROW, None, "interface-v6") else {
        return;
    };
    expect(&v, "possible", "veth0");
}

scenario! {
    /// The expected number of tries is the measured mean: 200 loops made
    /// in-process with a fresh socket per try, each reset with RST.
    fn mean_tries(out) {
        let target: SocketAddr = "127.0.0.1:40004".parse().unwrap();
        let mut total = 0u64;
        let trials = 200u64;
        for _ in 0..trials {
            for n in 1..=10_000u64 {
                let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).unwrap();
                if s.connect(&target.into()).is_ok() {
                    assert!(tcploop_guard::is_self_connected(&s).unwrap());
                    s.set_linger(Some(std::time::Duration::ZERO)).unwrap();
                    total += n;
                    break;
                }
                assert!(n < 10_000, "no loop in 10,000 tries");
            }
        }
        std::fs::write(out, format!("{}", total as f64 / trials as f64)).unwrap();
    }
}

#[test]
fn expected_tries_match_the_measured_mean() {
    if crate::common::no_sandboxes() {
        return;
    }
    let check = output(&mut sandboxed(NARROW, &["check", "--json", "40004"]));
    let expected = of_type(&json_lines(&check), "check")[0]["expected_tries"]
        .as_f64()
        .unwrap();
    let Some(text) = mean_tries::run(&Sandbox::range(NARROW)) else {
        return;
    };
    let mean: f64 = text.parse().unwrap();
    // geometric with p = 1/5: the mean of 200 trials has a standard error
    // of about 0.32; allow a wide margin, the point is the order of magnitude.
    assert!(
        (mean - expected).abs() < 2.0,
        "predicted {expected} tries, measured a mean of {mean}"
    );
}

#[test]
fn article_port_is_refused_on_the_default_range() {
    if crate::common::no_sandboxes() {
        return;
    }
    // The sandbox keeps the kernel's default range 32768-60999.
    let o = output(&mut Sandbox::default().tcploop(&["check", "33333"]));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(text.contains("127.0.0.1:33333  impossible"), "{text}");
    assert!(text.contains("33333 is odd"), "{text}");
}

#[test]
fn ranges_and_lists_of_ports_are_accepted() {
    if crate::common::no_sandboxes() {
        return;
    }
    let o = output(&mut sandboxed(
        NARROW,
        &["check", "--json", "40000-40003,40008"],
    ));
    let ports: Vec<u64> = of_type(&json_lines(&o), "check")
        .iter()
        .map(|c| c["port"].as_u64().unwrap())
        .collect();
    assert_eq!(ports, [40000, 40001, 40002, 40003, 40008]);
    assert_eq!(o.status.code(), Some(1));
}

#[test]
fn bad_input_is_a_one_line_error_and_exit_2() {
    for bad in [
        &["check", "0"][..],
        &["check", "65536"],
        &["check", "-1"],
        &["check", "abc"],
        &["check", ""],
        &["check", "9-3"],
        &["check", "40004", "--host", "no-such-host.invalid"],
        &["check", "40004", "--local-range", "x"],
        &["connect", "0"],
        &["connect", "65536"],
        &["connect", "abc"],
        &["connect", ""],
        &["connect", "40004", "--host", "no-such-host.invalid"],
        &["connect", "40004", "--timeout", "soon"],
    ] {
        let o = output(&mut tcploop(bad));
        assert_eq!(o.status.code(), Some(2), "{bad:?}: {}", stderr(&o));
        let err = stderr(&o);
        assert!(!err.contains("panicked"), "{bad:?}: {err}");
        assert!(o.stdout.is_empty(), "{bad:?}: {}", stdout(&o));
        assert!(err.trim().lines().count() <= 4, "{bad:?}: {err}");
    }
}

#[test]
fn non_local_host_is_impossible() {
    // TEST-NET-1: never contacted, the predictor stops at step A.
    let o = output(&mut tcploop(&["check", "--host", "192.0.2.1", "40004"]));
    assert_eq!(o.status.code(), Some(0));
    assert!(stdout(&o).contains("not an address of this network namespace"));
    let o = output(&mut tcploop(&["connect", "--host", "192.0.2.1", "40004"]));
    assert_eq!(o.status.code(), Some(1));
    assert!(stdout(&o).contains("Not trying"), "{}", stdout(&o));
}
