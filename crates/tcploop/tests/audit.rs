//! Integration tests of `tcploop audit`, each in a namespace of its own.

use std::net::{SocketAddr, TcpListener, TcpStream};

use crate::common::{
    self, audit_json, json_lines, make_loop, of_type, output, sandboxed, spawn_watch, stdout,
    wait_for, Sandbox,
};

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

#[test]
fn a_listener_on_an_exposed_port_is_reported_with_its_pid() {
    scenario_listener_reported::run_ok(&Sandbox::range("40000-40009"));
}

scenario! {
    fn scenario_listener_reported(out) {
        let _l = TcpListener::bind("0.0.0.0:40004").unwrap();
        let _odd = TcpListener::bind("[::1]:40007").unwrap();
        let _outside = TcpListener::bind("127.0.0.1:39000").unwrap();
        let (lines, code, _) = audit_json(&["audit", "--json", "--ports", "40002"]);
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
}

/// Issue: `audit` counted a service's own accepted connections among the
/// sockets that took its port as their source port ("socket(s) use 40004 as
/// their local port ... they do not protect it"): they are no thieves.
#[test]
fn audit_does_not_call_a_services_own_accepted_connections_source_port_holders() {
    scenario_accepted_connections::run_ok(&Sandbox::range("40000-40009"));
}

scenario! {
    fn scenario_accepted_connections(out) {
        const THIEF: &str = "use 400";
        // the service on 40004 with two clients connected to it (from 5000x:
        // the range is set apart while they connect)
        let l = TcpListener::bind("0.0.0.0:40004").unwrap();
        common::set_range(50000, 50009);
        let c1 = TcpStream::connect("127.0.0.1:40004").unwrap();
        let c2 = TcpStream::connect("127.0.0.1:40004").unwrap();
        let (a1, _) = l.accept().unwrap();
        let (a2, _) = l.accept().unwrap();
        // the control: a configured port (service down) that a connection took
        // as its source port, which is what the wording is for
        let other = TcpListener::bind("127.0.0.1:50020").unwrap();
        common::set_range(40006, 40007);
        let thief = TcpStream::connect("127.0.0.1:50020").unwrap();
        assert_eq!(thief.local_addr().unwrap().port(), 40006);
        common::set_range(40000, 40009);

        let (lines, _, _) = audit_json(&["audit", "--json", "--ports", "40006"]);
        let ports = of_type(&lines, "port");
        let p4 = ports.iter().find(|p| p["port"] == 40004).unwrap();
        let p6 = ports.iter().find(|p| p["port"] == 40006).unwrap();
        assert!(
            !p4["when_down"]["reasons"].to_string().contains(THIEF),
            "accepted connections called source-port holders: {p4}"
        );
        assert!(
            p6["when_down"]["reasons"]
                .to_string()
                .contains("use 40006 as their local port"),
            "the control lost its source-port holder: {p6}"
        );
        drop((c1, c2, a1, a2, other, thief));
        std::fs::write(out, "ok").unwrap();
    }
}

#[test]
fn apply_reserves_the_port_and_then_clients_never_loop_while_a_control_port_does() {
    scenario_apply::run_ok(&Sandbox::range("40000-40009").reserve("50000"));
}

scenario! {
    fn scenario_apply(out) {
        let service = TcpListener::bind("127.0.0.1:40004").unwrap();
        let file = out.with_extension("conf");
        let file_s = file.to_str().unwrap();
        let (lines, code, _) = audit_json(&[
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
        let reserved = common::reserved_now();
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
        let (lines, code, _) = audit_json(&[
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
            common::reserved_now(),
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
}

#[test]
fn the_sysctl_d_text_is_what_sysctl_p_accepts() {
    if crate::common::no_sandboxes() {
        return;
    }
    // In a sandbox with 50000 reserved: emit the file for 40004, load it
    // with the real sysctl, read the kernel's value back.
    let dir = common::temp_dir("audit-sysctl");
    let f = dir.join("60-tcploop.conf");
    let script = format!(
        "set -e; {bin} audit --emit-sysctl --ports 40004 > {f}; sysctl -p {f}; \
         echo reserved=$(cat /proc/sys/net/ipv4/ip_local_reserved_ports)",
        bin = common::bin().display(),
        f = f.display()
    );
    let o = output(&mut Sandbox::range("40000-40009").reserve("50000").sh(&script));
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
    if crate::common::no_sandboxes() {
        return;
    }
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

// ---- tcploop watch ----

use std::process::Stdio;
use std::time::{Duration, Instant};

/// GET /metrics with curl, optionally asking for OpenMetrics.
fn scrape(addr: &str, openmetrics: bool) -> String {
    let mut c = std::process::Command::new("curl");
    c.args(["-sS", "--max-time", "5"]);
    if openmetrics {
        c.args(["-H", "Accept: application/openmetrics-text;version=1.0.0"]);
    }
    let o = output(c.arg(format!("http://{addr}/metrics")));
    assert!(o.status.success(), "curl: {}", common::stderr(&o));
    stdout(&o)
}

/// Scrapes until the loop gauge for `port` reads `want` (bounded).
fn scrape_until(addr: &str, port: u16, want: u32) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    let prefix = format!("tcploop_loops{{port=\"{port}\",");
    loop {
        let text = scrape(addr, false);
        let value = text
            .lines()
            .find(|l| l.starts_with(&prefix))
            .and_then(|l| l.rsplit(' ').next())
            .map(str::to_string);
        if value.as_deref() == Some(&want.to_string()) {
            return text;
        }
        assert!(Instant::now() < deadline, "gauge never read {want}: {text}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `promtool check metrics` (the classic text format) on `text`.
fn promtool_check(text: &str) {
    use std::io::Write;
    let mut c = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus) must be installed");
    c.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let o = c.wait_with_output().unwrap();
    assert!(
        o.status.success(),
        "promtool check metrics: {}{}\n{text}",
        stdout(&o),
        common::stderr(&o)
    );
}

/// The OpenMetrics text through Prometheus's own OpenMetrics parser
/// (`promtool tsdb create-blocks-from openmetrics`, which needs a timestamp
/// on each sample: one is added).
fn promtool_openmetrics(text: &str, dir: &std::path::Path) {
    assert!(text.ends_with("# EOF\n"), "{text}");
    let stamped: String = text
        .lines()
        .map(|l| {
            if l.starts_with('#') {
                format!("{l}\n")
            } else {
                format!("{l} 1700000000\n")
            }
        })
        .collect();
    let f = dir.join("metrics.om");
    std::fs::write(&f, stamped).unwrap();
    let o = output(
        std::process::Command::new("promtool")
            .args(["tsdb", "create-blocks-from", "openmetrics"])
            .arg(&f)
            .arg(dir.join("blocks")),
    );
    assert!(
        o.status.success(),
        "OpenMetrics parse: {}{}\n{text}",
        stdout(&o),
        common::stderr(&o)
    );
}

#[test]
fn watch_reports_a_loop_and_its_disappearance_and_metrics_read_1_then_0() {
    scenario_watch::run_ok(&Sandbox::range("40000-40009"));
}

scenario! {
    fn scenario_watch(out) {
        let dir = out.with_extension("d");
        std::fs::create_dir_all(&dir).unwrap();
        let textfile = dir.join("tcploop.prom");
        let addr = "127.0.0.1:9977";
        // an exposed listener, for the gauge; bound before the first scan (a
        // dump is no atomic snapshot: a listener bound during it may be missed)
        let _service = TcpListener::bind("127.0.0.1:40001").unwrap();
        let (mut watch, rx) = spawn_watch(&[
            "watch",
            "--json",
            "--interval",
            "100ms",
            "--prometheus",
            addr,
            "--textfile",
            textfile.to_str().unwrap(),
        ]);
        let started = wait_for(&rx, "watch_started");
        assert_eq!(started["prometheus"], addr);

        let looped = make_loop("127.0.0.1", 40004);
        let ev = wait_for(&rx, "loop_appeared");
        assert_eq!(ev["local"], "127.0.0.1:40004");
        assert!(
            ev["owners"]
                .as_array()
                .unwrap()
                .iter()
                .any(|o| o["pid"] == std::process::id()),
            "{ev}"
        );
        let text = scrape_until(addr, 40004, 1);
        assert!(text.contains("\ntcploop_loops_present 1\n"), "{text}");
        assert!(text.contains("\ntcploop_exposed_listeners 1\n"), "{text}");
        promtool_check(&text);
        promtool_openmetrics(&scrape(addr, true), &dir);
        promtool_check(&std::fs::read_to_string(&textfile).unwrap());

        // kill it the way `tcploop kill` does
        let report = tcploop::scan::scan(&tcploop::scan::ScanOptions::default()).unwrap();
        assert_eq!(report.loops.len(), 1);
        let killed = tcploop::scan::kill(&report.loops[0]).unwrap();
        assert!(
            matches!(killed, tcploop::scan::Killed::Destroyed { .. }),
            "{killed:?}"
        );
        let ev = wait_for(&rx, "loop_gone");
        assert_eq!(ev["local"], "127.0.0.1:40004");
        let text = scrape_until(addr, 40004, 0);
        assert!(text.contains("\ntcploop_loops_present 0\n"), "{text}");
        assert!(
            text.contains("tcploop_loops_seen_total{port=\"40004\","),
            "{text}"
        );
        promtool_check(&text);
        drop(looped);

        // SIGTERM: a clean stop, exit 0, a last line
        let st = output(std::process::Command::new("kill").args(["-TERM", &watch.0.id().to_string()]));
        assert!(st.status.success());
        let stopped = wait_for(&rx, "watch_stopped");
        assert!(stopped["scans"].as_u64().unwrap() >= 2);
        assert_eq!(stopped["loops_seen"], 1);
        assert_eq!(watch.0.wait().unwrap().code(), Some(0));
        std::fs::remove_dir_all(&dir).unwrap();
        std::fs::write(out, "ok").unwrap();
    }
}

#[test]
fn watch_kill_after_destroys_a_loop_that_persists() {
    scenario_watch_kill_after::run_ok(&Sandbox::range("40000-40009"));
}

scenario! {
    fn scenario_watch_kill_after(out) {
        use std::io::Read;
        let (watch, rx) = spawn_watch(&[
            "watch",
            "--json",
            "--interval",
            "100ms",
            "--kill-after",
            "300ms",
        ]);
        wait_for(&rx, "watch_started");
        // IPv6: the watch dumps both families in one request
        let mut looped = make_loop("::1", 40006);
        wait_for(&rx, "loop_appeared");
        let ev = wait_for(&rx, "loop_killed");
        assert_eq!(ev["local"], "[::1]:40006");
        assert!(ev["seen_s"].as_f64().unwrap() >= 0.3, "{ev}");
        // the owner learns it: ECONNABORTED
        looped
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let err = looped.read(&mut [0u8; 8]).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ECONNABORTED), "{err}");
        drop(watch);
        std::fs::write(out, "ok").unwrap();
    }
}

#[test]
fn watch_rejects_bad_arguments() {
    if crate::common::no_sandboxes() {
        return;
    }
    for bad in [
        &["watch", "--interval", "0s", "--count", "1"][..],
        &["watch", "--interval", "soon"],
        &["watch", "--prometheus", "not-an-address", "--count", "1"],
    ] {
        let o = output(&mut sandboxed("40000-40009", bad));
        assert_eq!(o.status.code(), Some(2), "{bad:?}: {}", stdout(&o));
        assert!(!common::stderr(&o).contains("panicked"));
    }
    let o = output(&mut sandboxed(
        "40000-40009",
        &["watch", "--count", "2", "--interval", "50ms", "--json"],
    ));
    assert_eq!(o.status.code(), Some(0));
    let lines = json_lines(&o);
    assert_eq!(of_type(&lines, "watch_stopped")[0]["scans"], 2);
}

/// `watch --textfile` into a directory that does not exist, or that the
/// user cannot write, fails at start-up with one line and exit 2 (it used
/// to warn on every scan and exit 0). The control: a writable directory.
#[test]
fn a_textfile_in_a_missing_or_unwritable_directory_fails_at_start_up() {
    let args = |p: &str| {
        vec![
            "watch".to_string(),
            "--count".into(),
            "2".into(),
            "--interval".into(),
            "50ms".into(),
            "--json".into(),
            "--textfile".into(),
            p.into(),
        ]
    };
    let run = |c: &mut std::process::Command| {
        let o = output(c);
        (o.status.code(), json_lines(&o), common::stderr(&o))
    };
    let a = args("/nonexistent/dir/tcploop.prom");
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let (code, lines, err) = run(&mut common::tcploop(&a));
    assert_eq!(code, Some(2), "{lines:?} {err}");
    assert!(lines.is_empty(), "nothing started: {lines:?}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(err.contains("/nonexistent/dir/tcploop.prom"), "{err}");

    let dir = common::temp_dir("textfile");
    let file = dir.join("tcploop.prom");
    let a = args(file.to_str().unwrap());
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    if common::is_root() {
        // a directory only root may write: nobody cannot
        let (code, lines, err) = run(common::as_nobody(&mut common::tcploop(&a)));
        assert_eq!(code, Some(2), "{lines:?} {err}");
        assert_eq!(err.lines().count(), 1, "one line: {err}");
        assert!(err.contains("Permission denied"), "{err}");
    }
    // the control: a writable directory works and gets the file
    let (code, lines, err) = run(&mut common::tcploop(&a));
    assert_eq!(code, Some(0), "{err}");
    lines.iter().for_each(crate::schema::check);
    assert!(of_type(&lines, "output_error").is_empty(), "{lines:?}");
    assert!(std::fs::read_to_string(&file)
        .unwrap()
        .contains("tcploop_scans_total 2"));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Asks the Prometheus server at `addr` for `query`; the first sample's
/// value, if any.
/// Polls `query` until it reads `want` (bounded).
fn prom_until(web: &str, query: &str, want: &str) {
    common::until(&format!("Prometheus reads {query} = {want}"), || {
        common::prom_api(web, "/api/v1/query", Some(query))
            .filter(|d| d["result"][0]["value"][1] == want)
    });
}

#[test]
fn a_prometheus_server_scraping_watch_sees_the_loop_come_and_go() {
    scenario_prometheus_server::run_ok(&Sandbox::range("40000-40009"));
}

scenario! {
    fn scenario_prometheus_server(out) {
        let dir = common::temp_dir("prom");
        let (_watch, rx) = spawn_watch(&[
            "watch",
            "--json",
            "--interval",
            "200ms",
            "--prometheus",
            "127.0.0.1:9977",
        ]);
        wait_for(&rx, "watch_started");
        let (prometheus, web) = common::prometheus(
            &dir,
            "global:\n  scrape_interval: 500ms\n  scrape_timeout: 500ms\n\
             scrape_configs:\n  - job_name: tcploop\n    static_configs:\n      - targets: ['127.0.0.1:9977']\n",
        );
        // scraped and stored: the gauge reads 0 before any loop
        prom_until(web, "tcploop_loops_present", "0");
        let looped = make_loop("127.0.0.1", 40004);
        prom_until(web, "tcploop_loops_present", "1");
        prom_until(web, "tcploop_loops{port=\"40004\"}", "1");
        let report = tcploop::scan::scan(&tcploop::scan::ScanOptions::default()).unwrap();
        tcploop::scan::kill(&report.loops[0]).unwrap();
        prom_until(web, "tcploop_loops{port=\"40004\"}", "0");
        drop(looped);
        drop(prometheus);
        std::fs::write(out, "ok").unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
