//! `tcploop demo` as a user runs it: the binary enters its own sandbox, so
//! these tests run it directly (as root, as CI does, and as uid 65534), and
//! read what it captured: its JSON Lines, the pcap file through tcpdump, the
//! SVG through python3's XML parser.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::common::*;

fn run_json(args: &[&str]) -> Vec<Value> {
    let mut c = tcploop(&["demo", "--json"]);
    c.args(args);
    let o = output(&mut c);
    assert!(
        o.status.success(),
        "demo {args:?} failed: {}\n{}",
        stdout(&o),
        stderr(&o)
    );
    json_lines(&o)
}

/// A scratch directory that uid 65534 may write to.
fn scratch(name: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let d = std::env::temp_dir().join(format!("tcploop-demo-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o777)).unwrap();
    d
}

/// Checks that the demo's events of `phase` show exactly one loop on
/// `target`: the handshake of a socket with itself, SYN, SYN-ACK, ACK, all
/// from `target` to `target`, SYN and SYN-ACK with the same ISN, and the
/// Simultaneous Open path of states.
fn assert_loop(lines: &[Value], phase: &str, target: &str) {
    let in_phase = |ty: &str| -> Vec<Value> {
        of_type(lines, ty)
            .into_iter()
            .filter(|d| d["phase"] == phase)
            .collect()
    };
    let packets = in_phase("packet");
    let looped: Vec<&Value> = packets.iter().filter(|p| p["role"] == "loop").collect();
    assert!(!looped.is_empty(), "no loop segment in {packets:#?}");
    for p in &looped {
        assert_eq!(p["src"], target, "{p}");
        assert_eq!(p["dst"], target, "{p}");
    }
    // every other segment is a refused try: a SYN to the target or its RST
    for p in packets.iter().filter(|p| p["role"] != "loop") {
        assert_eq!(p["role"], "refused", "{p}");
        assert_ne!(p["src"], p["dst"]);
        assert!(p["flags"] == "SYN" || p["flags"] == "RST-ACK", "{p}");
    }
    let flags: Vec<&str> = looped
        .iter()
        .map(|p| p["flags"].as_str().unwrap())
        .collect();
    assert_eq!(flags[..3], ["SYN", "SYN-ACK", "ACK"], "{flags:?}");
    assert_eq!(
        flags.iter().filter(|f| f.contains("SYN")).count(),
        2,
        "one SYN and one SYN-ACK, not two of each: {flags:?}"
    );
    let (syn, synack) = (looped[0], looped[1]);
    assert_eq!(syn["seq"], synack["seq"], "the same ISN");
    assert_eq!(
        synack["ack"].as_u64().unwrap(),
        (syn["seq"].as_u64().unwrap() + 1) % (1 << 32)
    );
    let states: Vec<(String, String)> = in_phase("state")
        .iter()
        .map(|s| {
            assert_eq!(s["socket"], target);
            (
                s["from"].as_str().unwrap().to_string(),
                s["to"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let path: Vec<(&str, &str)> = states
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    assert_eq!(
        path,
        [
            ("CLOSED", "SYN-SENT"),
            ("SYN-SENT", "SYN-RECEIVED"),
            ("SYN-RECEIVED", "ESTABLISHED"),
            ("ESTABLISHED", "CLOSED"),
        ]
    );
    let result = in_phase("result");
    assert_eq!(result.len(), 1);
    let r = &result[0];
    assert_eq!(r["outcome"], "self-connect");
    assert_eq!(r["target"], target);
    assert_eq!(r["same_isn"], true);
    assert_eq!(r["handshake"], serde_json::json!(["SYN", "SYN-ACK", "ACK"]));
    assert_eq!(r["echo"], true, "its own bytes came back");
    assert_eq!(r["port_stolen"], true, "a server got EADDRINUSE");
    assert_eq!(r["port_free_after"], true, "released");
    assert_eq!(r["dropped"], 0);
    assert_eq!(
        r["refused"].as_u64().unwrap() + 1,
        r["tries"].as_u64().unwrap(),
        "every refused try was captured"
    );
}

#[test]
fn ipv4_ladder_shows_exactly_the_loop() {
    if crate::common::no_sandboxes() {
        return;
    }
    let lines = run_json(&[]);
    assert_loop(&lines, "loop", "127.0.0.1:40004");
}

#[test]
fn ipv6_ladder_shows_exactly_the_loop() {
    if crate::common::no_sandboxes() {
        return;
    }
    let lines = run_json(&["-6", "40006"]);
    assert_loop(&lines, "loop", "[::1]:40006");
}

#[test]
fn human_output_draws_the_ladder() {
    if crate::common::no_sandboxes() {
        return;
    }
    let o = output(&mut tcploop(&["demo"]));
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    let ladder: Vec<&str> = text
        .lines()
        .filter(|l| l.contains('▶') && l.contains("seq="))
        .collect();
    assert!(ladder.len() >= 3, "{text}");
    for (line, (state, flags, then)) in ladder.iter().zip([
        ("SYN-SENT", "SYN ", "SYN-RECEIVED"),
        ("SYN-RECEIVED", "SYN-ACK ", "ESTABLISHED"),
        ("ESTABLISHED", "ACK ", "ESTABLISHED"),
    ]) {
        let words: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(words[2], state, "{line}");
        assert!(line.contains(&format!("── {flags}")), "{line}");
        assert_eq!(words.last().unwrap(), &then, "{line}");
    }
    let words = text.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(words.contains("SYN and SYN-ACK carry the same initial sequence number"));
    assert!(words.contains("the Simultaneous Open path"));
    assert!(words.contains("gets EADDRINUSE"));
    assert!(words.contains("read \"tcploop\" back"));
}

fn tcpdump(pcap: &Path) -> String {
    let o = Command::new("tcpdump")
        .args(["-nn", "-r"])
        .arg(pcap)
        .output()
        .expect("tcpdump is needed by this test (Debian package tcpdump; .ci/run installs it)");
    assert!(o.status.success(), "tcpdump: {}", stderr(&o));
    stdout(&o)
}

#[test]
fn pcap_file_reads_with_tcpdump() {
    if crate::common::no_sandboxes() {
        return;
    }
    let dir = scratch("pcap");
    for (args, addr) in [(vec![], "127.0.0.1.40004"), (vec!["-6"], "::1.40004")] {
        let pcap = dir.join("loop.pcap");
        let mut all = vec!["--pcap", pcap.to_str().unwrap()];
        all.extend(args);
        let lines = run_json(&all);
        let captured = of_type(&lines, "result")[0]["captured"].as_u64().unwrap();
        let text = tcpdump(&pcap);
        assert_eq!(text.lines().count() as u64, captured, "{text}");
        let looped: Vec<&str> = text
            .lines()
            .filter(|l| l.contains(&format!("{addr} > {addr}:")))
            .collect();
        assert!(looped[0].contains("Flags [S],"), "{text}");
        assert!(looped[1].contains("Flags [S.],"), "{text}");
        assert!(looped[2].contains("Flags [.],"), "{text}");
        // tcpdump prints the SYN-ACK's absolute seq: the same as the SYN's
        let seq = |l: &str| {
            l.split("seq ")
                .nth(1)
                .unwrap()
                .split(',')
                .next()
                .unwrap()
                .to_string()
        };
        assert_eq!(seq(looped[0]), seq(looped[1]), "{text}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn works_as_an_unprivileged_user() {
    if crate::common::no_sandboxes() {
        return;
    }
    let dir = scratch("nobody");
    let pcap = dir.join("loop.pcap");
    let svg = dir.join("loop.svg");
    let mut c = tcploop(&[
        "demo",
        "--json",
        "--pcap",
        pcap.to_str().unwrap(),
        "--svg",
        svg.to_str().unwrap(),
    ]);
    let o = output(as_nobody(&mut c));
    assert!(o.status.success(), "{}\n{}", stdout(&o), stderr(&o));
    let lines = json_lines(&o);
    assert_loop(&lines, "loop", "127.0.0.1:40004");
    assert_eq!(of_type(&lines, "result")[0]["namespace"], "user+net");
    assert!(tcpdump(&pcap).contains("127.0.0.1.40004 > 127.0.0.1.40004: Flags [S]"));
    assert!(std::fs::read_to_string(&svg)
        .unwrap()
        .contains("SYN-RECEIVED"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn odd_port_loops_only_once_the_even_ports_are_held() {
    if crate::common::no_sandboxes() {
        return;
    }
    let lines = run_json(&["--odd"]);
    let results = of_type(&lines, "result");
    assert_eq!(results.len(), 2);
    let (free, held) = (&results[0], &results[1]);
    // the control: even ports free, the odd target never loops
    assert_eq!(free["phase"], "parity");
    assert_eq!(free["target"], "127.0.0.1:40005");
    assert_eq!(free["verdict"], "impossible");
    assert_eq!(free["outcome"], "no-loop");
    assert_eq!(free["tries"], 2000);
    let ports: Vec<u64> = free["source_ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_u64().unwrap())
        .collect();
    assert!(!ports.is_empty());
    assert!(
        ports.iter().all(|p| p % 2 == 0),
        "only even source ports: {ports:?}"
    );
    // every even port held by bind(): the same target loops
    assert_eq!(held["phase"], "held");
    assert_eq!(
        held["held"],
        serde_json::json!([40000, 40002, 40004, 40006, 40008])
    );
    assert_eq!(held["verdict"], "possible");
    assert_loop(&lines, "held", "127.0.0.1:40005");
}

#[test]
fn svg_is_well_formed_with_one_arrow_a_segment() {
    if crate::common::no_sandboxes() {
        return;
    }
    let dir = scratch("svg");
    let svg = dir.join("loop.svg");
    let lines = run_json(&["--svg", svg.to_str().unwrap()]);
    let segments = of_type(&lines, "packet")
        .iter()
        .filter(|p| p["role"] == "loop")
        .count();
    let o = Command::new("python3")
        .args([
            "-c",
            "import sys, xml.etree.ElementTree as ET\n\
             root = ET.parse(sys.argv[1]).getroot()\n\
             ns = '{http://www.w3.org/2000/svg}'\n\
             print(len([l for l in root.iter(ns + 'line') if l.get('marker-end')]))",
        ])
        .arg(&svg)
        .output()
        .expect("python3 is needed by this test");
    assert!(o.status.success(), "not well-formed XML: {}", stderr(&o));
    assert_eq!(stdout(&o).trim(), segments.to_string());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn plain_network_namespace_as_root() {
    if skip_unless(is_root(), "demo --netns-only", "root") {
        return;
    }
    let lines = run_json(&["--netns-only"]);
    assert_eq!(of_type(&lines, "result")[0]["namespace"], "net");
    assert_loop(&lines, "loop", "127.0.0.1:40004");
}

#[test]
fn netns_only_without_root_says_why() {
    let o = output(as_nobody(&mut tcploop(&["demo", "--netns-only"])));
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("needs root"), "{}", stderr(&o));
}

#[test]
fn ports_that_cannot_loop_are_explained() {
    if crate::common::no_sandboxes() {
        return;
    }
    // odd, without --odd: the parity rule, and the way to see it
    let o = output(&mut tcploop(&["demo", "40005"]));
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert!(stdout(&o).contains("40005 is odd"), "{}", stdout(&o));
    assert!(stdout(&o).contains("tcploop demo --odd 40005"));
    // outside the range: bad input
    let o = output(&mut tcploop(&["demo", "50000"]));
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("outside the range"), "{}", stderr(&o));
    let o = output(&mut tcploop(&["demo", "--range", "40010-40000"]));
    assert_eq!(o.status.code(), Some(2));
}

/// `tcploop demo --json` inside `unshare -r` (the test's own user
/// namespace, where it is root), after `shell` ran there.
fn in_own_userns(shell: &str) -> Vec<Value> {
    let mut c = Command::new("unshare");
    c.args([
        "-r",
        "sh",
        "-c",
        &format!("{shell} exec \"$0\" demo --json"),
    ])
    .arg(bin());
    let o = c
        .output()
        .expect("unshare (util-linux) is needed by this test");
    assert!(o.status.success(), "{}\n{}", stdout(&o), stderr(&o));
    json_lines(&o)
}

#[test]
fn falls_back_to_a_network_namespace_without_user_namespaces() {
    if crate::common::no_sandboxes() {
        return;
    }
    // control: user namespaces allowed, a nested user+net namespace
    let lines = in_own_userns("");
    assert_eq!(of_type(&lines, "result")[0]["namespace"], "user+net");
    // user.max_user_namespaces is per user namespace: 0 here forbids new
    // ones below, and root of this namespace falls back to a netns alone
    let lines = in_own_userns("echo 0 > /proc/sys/user/max_user_namespaces &&");
    assert_eq!(of_type(&lines, "result")[0]["namespace"], "net");
    assert_loop(&lines, "loop", "127.0.0.1:40004");
}

#[test]
fn odd_with_an_even_target_is_bad_usage() {
    let o = output(&mut tcploop(&["demo", "--odd", "40004"]));
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stdout(&o).is_empty(),
        "nothing before the error: {}",
        stdout(&o)
    );
    assert!(
        stderr(&o).contains("--odd needs a target"),
        "{}",
        stderr(&o)
    );
}
