//! `/proc/sys` values longer than one small read: every command sees the
//! whole reserved-ports list (it used to be cut after 32 bytes).

use std::net::TcpListener;

use crate::common::{self, json_lines, of_type, output, Sandbox};

/// 100 reserved ports, 599 bytes: 40100,40102,...,40298.
fn long_reserved() -> String {
    (40100..=40298)
        .step_by(2)
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

#[test]
fn a_reserved_ports_value_of_several_hundred_bytes_is_seen_whole_by_every_command() {
    let reserved = long_reserved();
    assert!(reserved.len() > 500, "the value must be long: {reserved}");
    scenario_long_reserved_ports::run_ok(&Sandbox::range("40000-40999").reserve(&reserved));
}

scenario! {
    fn scenario_long_reserved_ports(out) {
        let reserved = long_reserved();
        let run = |args: &[&str]| {
            let o = output(&mut common::tcploop(args));
            (json_lines(&o), o.status.code())
        };
        // the last reserved port and a control port, in the range, not reserved
        let _last = TcpListener::bind("127.0.0.1:40298").unwrap();
        let _control = TcpListener::bind("127.0.0.1:40400").unwrap();

        // ports: the whole list
        let (lines, _) = run(&["ports", "--json"]);
        assert_eq!(of_type(&lines, "ports")[0]["reserved"], reserved.as_str());

        // check: a reserved port near the end cannot loop; the control can
        let (lines, code) = run(&["check", "--json", "40296"]);
        assert_eq!(
            of_type(&lines, "check")[0]["verdict"],
            "impossible",
            "{lines:?}"
        );
        assert_eq!(code, Some(0));
        let (lines, _) = run(&["check", "--json", "40402"]);
        assert_eq!(
            of_type(&lines, "check")[0]["verdict"],
            "possible",
            "control: {lines:?}"
        );

        // audit: 40298 is reserved, only the control is exposed, and the fix
        // keeps all 100 reservations
        let (lines, code) = run(&["audit", "--json"]);
        assert_eq!(code, Some(1));
        let ports = of_type(&lines, "port");
        let status = |p: u64| {
            ports
                .iter()
                .find(|l| l["port"] == p)
                .map(|l| l["status"].as_str().unwrap().to_string())
        };
        assert_eq!(status(40400).as_deref(), Some("exposed"), "{ports:?}");
        assert_ne!(status(40298).as_deref(), Some("exposed"), "{ports:?}");
        let fix = &of_type(&lines, "fix")[0];
        assert_eq!(fix["current"], reserved.as_str());
        assert_eq!(fix["add"], "40400");
        assert_eq!(of_type(&lines, "summary")[0]["exposed"], 1);

        // watch: one exposed listener (the control), not two
        let prom = out.with_extension("prom");
        let o = output(&mut common::tcploop(&[
            "watch",
            "--count",
            "1",
            "--interval",
            "10ms",
            "--textfile",
            prom.to_str().unwrap(),
        ]));
        assert_eq!(o.status.code(), Some(0), "{}", common::stderr(&o));
        let text = std::fs::read_to_string(&prom).unwrap();
        assert!(
            text.lines().any(|l| l == "tcploop_exposed_listeners 1"),
            "{text}"
        );
        std::fs::remove_file(&prom).unwrap();

        // free-port: every reserved port is a candidate, and only those in the range
        let (lines, _) = run(&["free-port", "--json", "--count", "3"]);
        let sum = &of_type(&lines, "summary")[0];
        assert_eq!(sum["reserved"], reserved.as_str());
        let outside = (40000 - 1024) + (65535 - 40999);
        assert_eq!(sum["candidates"], outside + 100, "{sum}");
        for p in of_type(&lines, "free_port") {
            let n = p["port"].as_u64().unwrap();
            let want = if (40000..=40999).contains(&n) {
                "reserved"
            } else if n < 40000 {
                "below_range"
            } else {
                "above_range"
            };
            assert_eq!(p["why"], want, "{p}");
        }
        std::fs::write(out, "ok").unwrap();
    }
}

/// Every odd port from 40001 up, 76,607 bytes: longer than a page, so it
/// is written in several `write()`s (sandbox --reserve, audit --apply) and
/// must be read in one large `read()` (`cat`, with its 128 KiB reads,
/// would do; `wc -c`, with 16 KiB reads, sees 16,384 bytes).
fn odd_ports() -> String {
    (40001..=65535)
        .step_by(2)
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

#[test]
fn a_reserved_ports_value_longer_than_a_page_is_written_and_read_whole() {
    if crate::common::no_sandboxes() {
        return;
    }
    let all = odd_ports();
    assert!(all.len() > 70_000);
    let o = output(
        &mut Sandbox::range("40000-40009")
            .reserve(&all)
            .tcploop(&["audit", "--json", "--ports", "40004", "--apply"]),
    );
    assert_eq!(o.status.code(), Some(0), "{}", common::stderr(&o));
    let lines = json_lines(&o);
    let applied = &of_type(&lines, "applied")[0];
    assert_eq!(applied["previous"], all.as_str());
    let want = all.replacen("40003,40005", "40003-40005", 1);
    assert_eq!(applied["value"], want.as_str());
}
