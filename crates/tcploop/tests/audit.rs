//! Integration tests of `tcploop audit`, each in a namespace of its own.

use std::net::{SocketAddr, TcpListener, TcpStream};

use crate::common::{self, json_lines, of_type, output, sandboxed, scenario, scenario_out, stdout};

/// Plain `connect()`s to 127.0.0.1:port, `tries` times (a client that keeps
/// reconnecting to a service that is down); returns how many looped.
fn hammer(port: u16, tries: u32) -> u32 {
    let dest: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut loops = 0;
    for _ in 0..tries {
        if let Ok(s) = TcpStream::connect(dest) {
            if s.local_addr().ok() == Some(dest) {
                loops += 1;
            }
        }
    }
    loops
}

fn audit_json(args: &[&str]) -> (Vec<serde_json::Value>, Option<i32>) {
    let o = output(&mut common::tcploop(args));
    (json_lines(&o), o.status.code())
}

#[test]
fn a_listener_on_an_exposed_port_is_reported_with_its_pid() {
    assert_eq!(
        scenario("40000-40009", None, "audit::scenario_listener_reported"),
        "ok"
    );
}

#[test]
#[ignore = "runs inside a sandbox, from a_listener_on_an_exposed_port_is_reported_with_its_pid"]
fn scenario_listener_reported() {
    let Some(out) = scenario_out() else { return };
    let _l = TcpListener::bind("0.0.0.0:40004").unwrap();
    let _odd = TcpListener::bind("[::1]:40007").unwrap();
    let _outside = TcpListener::bind("127.0.0.1:39000").unwrap();
    let (lines, code) = audit_json(&["audit", "--json", "--ports", "40002"]);
    assert_eq!(code, Some(1), "exposed ports: exit 1");
    let ports = of_type(&lines, "port");
    let nums: Vec<u64> = ports.iter().map(|p| p["port"].as_u64().unwrap()).collect();
    assert_eq!(nums, [40002, 40004, 40007], "{lines:?}");
    let p = &ports[1];
    assert_eq!(p["status"], "exposed");
    assert_eq!(p["when_down"]["verdict"], "possible");
    // while it is down: the even candidates 40000..40008, all 5 free
    assert_eq!(p["when_down"]["expected_tries"], 5.0);
    let owners = &p["listening"][0]["owners"];
    assert!(
        owners
            .as_array()
            .unwrap()
            .iter()
            .any(|o| o["pid"] == std::process::id()),
        "our pid {} among the owners: {owners}",
        std::process::id()
    );
    assert_eq!(ports[0]["configured"], true);
    assert_eq!(ports[0]["listening"].as_array().unwrap().len(), 0);
    assert_eq!(ports[2]["when_down"]["verdict"], "impossible", "odd port");
    let fix = &of_type(&lines, "fix")[0];
    assert_eq!(fix["value"], "40002,40004,40007");
    std::fs::write(out, "ok").unwrap();
}

#[test]
fn apply_reserves_the_port_and_then_clients_never_loop_while_a_control_port_does() {
    assert_eq!(
        scenario("40000-40009", Some("50000"), "audit::scenario_apply"),
        "ok"
    );
}

#[test]
#[ignore = "runs inside a sandbox, from apply_reserves_the_port_..."]
fn scenario_apply() {
    let Some(out) = scenario_out() else { return };
    let service = TcpListener::bind("127.0.0.1:40004").unwrap();
    let file = out.with_extension("conf");
    let file_s = file.to_str().unwrap();
    let (lines, code) = audit_json(&[
        "audit",
        "--json",
        "--apply",
        "--persist",
        "--sysctl-file",
        file_s,
    ]);
    assert_eq!(code, Some(0), "fixed: nothing exposed any more: {lines:?}");
    let applied = &of_type(&lines, "applied")[0];
    assert_eq!(
        applied["value"], "40004,50000",
        "the existing 50000 is kept"
    );
    assert_eq!(applied["file_written"], true);
    let reserved = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_reserved_ports").unwrap();
    assert_eq!(reserved.trim(), "40004,50000");
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(
        text.contains("\nnet.ipv4.ip_local_reserved_ports = 40004,50000\n"),
        "{text}"
    );
    // the port lines after the fix: the predictor says impossible
    let after: Vec<_> = of_type(&lines, "port")
        .into_iter()
        .filter(|p| p["status"] == "reserved")
        .collect();
    assert_eq!(after.len(), 1);
    assert_eq!(after[0]["when_down"]["verdict"], "impossible");

    // idempotent: again, nothing changes and the file is not rewritten
    let (lines, code) = audit_json(&[
        "audit",
        "--json",
        "--apply",
        "--persist",
        "--sysctl-file",
        file_s,
    ]);
    assert_eq!(code, Some(0));
    assert_eq!(of_type(&lines, "fix")[0]["needed"], false);
    assert_eq!(of_type(&lines, "applied")[0]["file_written"], false);
    assert_eq!(
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_reserved_ports")
            .unwrap()
            .trim(),
        "40004,50000"
    );

    // The service goes down; its clients keep reconnecting. The reserved
    // port never loops; the control port 40006, same parity, unreserved,
    // loops (4 even candidates left: about 1 in 4 tries).
    drop(service);
    let reserved_loops = hammer(40004, 2000);
    let control_loops = hammer(40006, 2000);
    assert_eq!(reserved_loops, 0, "a reserved port looped");
    assert!(
        control_loops > 0,
        "the control port never looped: the test proves nothing"
    );
    std::fs::remove_file(&file).unwrap();
    std::fs::write(out, "ok").unwrap();
}

#[test]
fn the_sysctl_d_text_is_what_sysctl_p_accepts() {
    // In a sandbox with 50000 reserved: emit the file for 40004, load it
    // with the real sysctl, read the kernel's value back.
    let dir = std::env::temp_dir().join(format!("tcploop-audit-sysctl-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("60-tcploop.conf");
    let script = format!(
        "set -e; {bin} audit --emit-sysctl --ports 40004 > {f}; sysctl -p {f}; \
         echo reserved=$(cat /proc/sys/net/ipv4/ip_local_reserved_ports)",
        bin = common::bin().display(),
        f = f.display()
    );
    let o = output(
        std::process::Command::new(common::bin())
            .args([
                "sandbox",
                "--range",
                "40000-40009",
                "--reserve",
                "50000",
                "--",
                "sh",
                "-c",
            ])
            .arg(&script),
    );
    let text = stdout(&o);
    assert!(o.status.success(), "{text}{}", common::stderr(&o));
    assert!(
        text.contains("net.ipv4.ip_local_reserved_ports = 40004,50000\n"),
        "{text}"
    );
    assert!(text.contains("reserved=40004,50000\n"), "{text}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn nothing_exposed_exits_0_and_bad_input_exits_2() {
    let o = output(&mut sandboxed("40000-40009", &["audit", "--json"]));
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    let lines = json_lines(&o);
    assert_eq!(of_type(&lines, "summary")[0]["exposed"], 0);
    assert_eq!(of_type(&lines, "fix")[0]["needed"], false);
    for bad in [
        &["audit", "--ports", "70000"][..],
        &["audit", "--ports", "x"],
        &["audit", "--persist"],
    ] {
        let o = output(&mut sandboxed("40000-40009", bad));
        assert_eq!(o.status.code(), Some(2), "{bad:?}");
        let err = common::stderr(&o);
        assert!(!err.contains("panicked"), "{err}");
    }
    // --ports-file: a missing file is a one-line error
    let o = output(&mut sandboxed(
        "40000-40009",
        &["audit", "--ports-file", "/nonexistent/ports"],
    ));
    assert_eq!(o.status.code(), Some(2));
    assert!(common::stderr(&o).contains("/nonexistent/ports"));
}
