//! Integration tests of `tcploop shield`.
//!
//! Every test runs in network namespaces it makes (`tcploop sandbox`, with
//! the 10-port range 40000-40009, where a plain connect() to 40004 loops in
//! about one try in five), never on the host's `lo`. Each case first runs a
//! control without the shield that must loop, then the same client with the
//! shield, 20,000 fresh-socket tries that must all end in ECONNREFUSED.
//!
//! The client is `tests/fixtures/shield_try.c`, compiled here with `cc`: blocking,
//! non-blocking, io_uring (liburing), TCP Fast Open, bind-then-connect, a
//! real listener, and a statically linked build. Every try is bounded to
//! 1 s (SO_SNDTIMEO, poll, io_uring timeout) and counted as `other` if it
//! runs out, so a hang shows as a failure, not as a slow test.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::OnceLock;

use serde_json::Value;

use crate::common::{self, Sandbox};

const SRC: &str = include_str!("fixtures/shield_try.c");
const RANGE: &str = "40000-40009";
const TRIES: u64 = 20_000;

struct Clients {
    dynamic: PathBuf,
    static_: PathBuf,
}

/// The client, built once: dynamic with liburing, and static without it.
fn clients() -> &'static Clients {
    static C: OnceLock<Clients> = OnceLock::new();
    C.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("tcploop-shield-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let c = dir.join("shield_try.c");
        std::fs::write(&c, SRC).unwrap();
        let build = |out: &str, flags: &[&str]| {
            let bin = dir.join(out);
            let o = common::output(
                Command::new("cc")
                    .args(["-O2", "-Wall", "-o"])
                    .arg(&bin)
                    .arg(&c)
                    .args(flags),
            );
            assert!(o.status.success(), "cc {out}: {}", common::stderr(&o));
            bin
        };
        Clients {
            dynamic: build("shield_try", &["-luring"]),
            static_: build("shield_try_static", &["-static", "-DNO_URING"]),
        }
    })
}

/// Runs `script` with `sh -eu` in a sandbox: `netns_only` (root, where BPF
/// loads) or a user+net namespace (where BPF is refused). The script sees
/// `$T` (the client), `$S` (its static build), `$B` (tcploop) and `$R`
/// (the range file).
fn sandbox_sh(netns_only: bool, script: &str) -> Output {
    let cl = clients();
    let sandbox = Sandbox {
        netns_only,
        ..Sandbox::range(RANGE)
    };
    let mut c = sandbox.command();
    c.args(["sh", "-euc", script])
        .env("T", &cl.dynamic)
        .env("S", &cl.static_)
        .env("B", common::bin())
        .env("R", "/proc/sys/net/ipv4/ip_local_port_range");
    common::output(&mut c)
}

/// One counted run of the client, from its `case=NAME mode=... loops=...` line.
#[derive(Debug, Default)]
struct Run {
    case: String,
    loops: u64,
    refused: u64,
    ok: u64,
    other: u64,
    first_errno: u64,
}

fn runs(o: &Output) -> Vec<Run> {
    common::stdout(o)
        .lines()
        .filter(|l| l.starts_with("case="))
        .map(|l| {
            let mut r = Run::default();
            for kv in l.split_whitespace() {
                let (k, v) = kv.split_once('=').unwrap();
                let n = || v.parse().unwrap();
                match k {
                    "case" => r.case = v.into(),
                    "loops" => r.loops = n(),
                    "refused" => r.refused = n(),
                    "ok" => r.ok = n(),
                    "other" => r.other = n(),
                    "first_errno" => r.first_errno = n(),
                    _ => {}
                }
            }
            r
        })
        .collect()
}

/// Script lines that add a veth with an address of each family (the
/// addresses of an interface are local: connects to them go over `lo`).
const VETH: &str = "ip link add v0 type veth peer name v1
ip addr add 10.99.0.1/24 dev v0
ip -6 addr add fd00::1/64 dev v0 nodad
ip link set v0 up
echo 5 > /proc/sys/net/ipv4/tcp_fastopen
";

/// The cases: (name, client invocation with `$N` tries).
const CASES: &[(&str, &str)] = &[
    ("v4", "$T block 127.0.0.1 40004 $N"),
    ("v6", "$T block ::1 40004 $N"),
    ("v4mapped", "$T block ::ffff:127.0.0.1 40004 $N"),
    ("veth_v4", "$T block 10.99.0.1 40004 $N"),
    ("veth_v6", "$T block fd00::1 40004 $N"),
    ("nonblock", "$T nonblock 127.0.0.1 40004 $N"),
    ("io_uring", "$T uring ::1 40004 $N"),
    ("tfo", "$T tfo 127.0.0.1 40004 $N"),
    ("static", "$S block 127.0.0.1 40004 $N"),
];

/// The script: controls (2,000 tries each), `on_cmd`, the shielded runs,
/// and `off`.
fn cases_script(on_cmd: &str) -> String {
    let mut s = String::from(VETH);
    for (name, cmd) in CASES {
        s.push_str(&format!("printf 'case=control_{name} '; {cmd}\n").replace("$N", "2000"));
    }
    s.push_str(on_cmd);
    s.push('\n');
    for (name, cmd) in CASES {
        s.push_str(&format!(
            "printf 'case={name} '; {}\n",
            cmd.replace("$N", &TRIES.to_string())
        ));
    }
    s.push_str("$B shield off --json\n");
    s
}

fn assert_cases(o: &Output, want_mechanism: &str) {
    let text = common::stdout(o);
    assert!(o.status.success(), "{text}\n{}", common::stderr(o));
    let rs = runs(o);
    assert_eq!(rs.len(), CASES.len() * 2, "{text}");
    for r in &rs {
        if let Some(name) = r.case.strip_prefix("control_") {
            // The control: the same client without the shield loops.
            assert!(r.loops > 0, "control {name} never looped: {r:?}");
            assert_eq!(r.other, 0, "control {name}: {r:?}");
        } else {
            assert_eq!(
                (r.loops, r.refused, r.ok, r.other),
                (0, TRIES, 0, 0),
                "{} with the {want_mechanism} shield: {r:?}",
                r.case
            );
        }
    }
    let lines = json_of(&text);
    let sh = common::of_type(&lines, "shield");
    assert_eq!(sh[0]["mechanism"], want_mechanism, "{text}");
    assert_eq!(sh[0]["state"], "on", "{text}");
    let off = sh.last().unwrap();
    assert_eq!(off["action"], "removed", "{text}");
    assert_eq!(off["state"], "off", "{text}");
}

fn bpf_ok(test: &str) -> bool {
    !common::skip_unless(common::bpf_plausible(), test, "root and BPF")
}

#[test]
fn bpf_shield_refuses_every_self_connect_path() {
    if !bpf_ok("bpf_shield_refuses_every_self_connect_path") {
        return;
    }
    let o = sandbox_sh(true, &cases_script("$B shield on --json"));
    assert_cases(&o, "bpf");
}

#[test]
fn iptables_shield_refuses_every_self_connect_path() {
    if !bpf_ok("iptables_shield_refuses_every_self_connect_path") {
        return;
    }
    // A user+net namespace, as in a rootless container: BPF is refused,
    // `on` falls back to the iptables rules by itself.
    let o = sandbox_sh(false, &cases_script("$B shield on --json"));
    assert_cases(&o, "iptables");
    // `off` removes exactly its own rules: an administrator's rule stays.
    let o = sandbox_sh(
        false,
        "iptables -A OUTPUT -o lo -m comment --comment theirs -j ACCEPT
$B shield on --json; echo during; iptables -S OUTPUT; ip6tables -S OUTPUT
$B shield off >/dev/null; echo after; iptables -S OUTPUT; ip6tables -S OUTPUT",
    );
    let text = common::stdout(&o);
    let (during, after) = text.split_once("after").unwrap();
    assert_eq!(
        during.matches("tcploop-shield since=").count(),
        2,
        "one rule a family while on: {text}"
    );
    assert!(during.contains("REJECT --reject-with tcp-reset"), "{text}");
    assert_eq!(after.matches("tcploop-shield").count(), 0, "{text}");
    assert!(
        after.contains("--comment theirs"),
        "someone else's rule went: {text}"
    );
}

#[test]
fn forced_iptables_mechanism_works_where_bpf_would() {
    if !bpf_ok("forced_iptables_mechanism_works_where_bpf_would") {
        return;
    }
    let o = sandbox_sh(
        true,
        "$B shield on --mechanism iptables --json
printf 'case=v4 '; $T block 127.0.0.1 40004 20000
printf 'case=v6 '; $T block ::1 40004 20000
$B shield status --json
$B shield off --mechanism bpf --json
$B shield off --json",
    );
    let text = common::stdout(&o);
    for r in runs(&o) {
        assert_eq!((r.loops, r.refused), (0, TRIES), "{r:?}");
    }
    let lines = json_of(&text);
    let sh = common::of_type(&lines, "shield");
    assert_eq!(sh[0]["mechanism"], "iptables");
    assert_eq!(sh[1]["state"], "on");
    assert_eq!(
        sh[2]["action"], "was_off",
        "off --mechanism bpf leaves iptables: {text}"
    );
    assert_eq!(sh[2]["state"], "on", "{text}");
    assert_eq!(sh[3]["removed"], serde_json::json!(["iptables"]), "{text}");
}

#[test]
fn a_time_wait_entry_of_the_self_tuple_does_not_hang_the_next_connect() {
    if !bpf_ok("a_time_wait_entry_of_the_self_tuple_does_not_hang_the_next_connect") {
        return;
    }
    for (netns_only, mech) in [(true, "bpf"), (false, "iptables")] {
        // With the range 40004-40005 connect() can only pick 40004: the
        // loop closed gracefully leaves 127.0.0.1:40004 <-> itself in
        // TIME_WAIT. After 1 s (tcp_tw_reuse_delay) a connect() may reuse
        // that tuple, and its SYN then echoes the old timestamp: an RST
        // answer that kept the options would fail PAWS and the connect
        // would hang until ETIMEDOUT (counted as `other` here).
        let o = sandbox_sh(
            netns_only,
            "echo 40004 40005 > $R; printf 'case=tw_control '; $T timewait 127.0.0.1 40004 1; echo 40000 40009 > $R
sleep 1.1
printf 'case=control '; $T block 127.0.0.1 40004 2000
echo 40004 40005 > $R; printf 'case=tw '; $T timewait 127.0.0.1 40004 1; echo 40000 40009 > $R
ss -tan state time-wait | grep -c '127.0.0.1:40004 *127.0.0.1:40004' | sed 's/^/tw_before=/'
$B shield on >/dev/null
sleep 1.1
printf 'case=shielded '; $T block 127.0.0.1 40004 20000
ss -tan state time-wait | grep -c '127.0.0.1:40004 *127.0.0.1:40004' | sed 's/^/tw_after=/' || true
$B shield off >/dev/null",
        );
        let text = common::stdout(&o);
        let rs = runs(&o);
        assert_eq!(rs.len(), 4, "{text}\n{}", common::stderr(&o));
        assert_eq!(
            rs[0].loops, 1,
            "{mech}: the TIME_WAIT entry is made by a loop: {text}"
        );
        assert!(rs[1].loops > 0, "{mech}: control: {text}");
        assert!(text.contains("tw_before=1"), "{mech}: {text}");
        assert_eq!(
            (rs[3].loops, rs[3].refused, rs[3].other),
            (0, TRIES, 0),
            "{mech}: {text}"
        );
        // The TIME_WAIT entry was reused (and refused), not just avoided.
        assert!(
            text.contains("tw_after=0"),
            "{mech}: the tuple was never reused: {text}"
        );
    }
}

#[test]
fn real_listeners_and_equal_ports_on_other_addresses_still_work() {
    if !bpf_ok("real_listeners_and_equal_ports_on_other_addresses_still_work") {
        return;
    }
    for netns_only in [true, false] {
        let o = sandbox_sh(
            netns_only,
            "$B shield on >/dev/null
printf 'case=listener '; $T listen 127.0.0.1 40004 5000
printf 'case=listener6 '; $T listen ::1 40004 5000
printf 'case=pair '; $T pair 127.0.0.2 40004 3000 127.0.0.1
printf 'case=bound_self '; $T bound 127.0.0.1 40004 100
$B shield status --json
$B shield off >/dev/null",
        );
        let text = common::stdout(&o);
        let rs = runs(&o);
        assert_eq!(rs.len(), 4, "{text}\n{}", common::stderr(&o));
        assert_eq!((rs[0].ok, rs[0].other), (5000, 0), "{text}");
        assert_eq!((rs[1].ok, rs[1].other), (5000, 0), "{text}");
        // 127.0.0.1:40004 -> 127.0.0.2:40004: equal ports, other address.
        assert_eq!((rs[2].ok, rs[2].other), (3000, 0), "{text}");
        // A deliberate self-connect (bind P, connect P) is refused too.
        assert_eq!((rs[3].refused, rs[3].loops), (100, 0), "{text}");
    }
}

#[test]
fn on_twice_then_off_and_status_are_exact() {
    if !bpf_ok("on_twice_then_off_and_status_are_exact") {
        return;
    }
    let o = sandbox_sh(
        true,
        "set +e
$B shield status --json; echo \"exit=$?\"
$B shield on --json; echo \"exit=$?\"
$B shield on --json; echo \"exit=$?\"
printf 'case=v4 '; $T bound 127.0.0.1 40004 100
printf 'case=v6 '; $T bound ::1 40004 50
$B shield status --json; echo \"exit=$?\"
$B shield off --json; echo \"exit=$?\"
$B shield off --json; echo \"exit=$?\"
$B shield status --json; echo \"exit=$?\"
printf 'case=after_off '; $T block 127.0.0.1 40004 2000",
    );
    let text = common::stdout(&o);
    let exits: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("exit="))
        .collect();
    assert_eq!(exits, ["1", "0", "0", "0", "0", "0", "1"], "{text}");
    let lines = json_of(&text);
    let sh = common::of_type(&lines, "shield");
    assert_eq!(sh.len(), 7, "{text}");
    assert_eq!(sh[0]["state"], "off");
    assert_eq!(sh[1]["action"], "attached");
    assert_eq!(sh[1]["mechanism"], "bpf");
    assert_eq!(sh[1]["attach"], "tcx");
    assert_eq!(sh[2]["action"], "already_on", "{text}");
    assert_eq!(
        sh[2]["since"], sh[1]["since"],
        "the second on changed nothing"
    );
    assert_eq!(sh[2]["pinned"], sh[1]["pinned"]);
    // Every bind-then-connect try is one self-connect SYN turned away.
    assert_eq!(sh[3]["state"], "on");
    assert_eq!(sh[3]["refused_v4"], 100, "{text}");
    assert_eq!(sh[3]["refused_v6"], 50, "{text}");
    let pinned = sh[1]["pinned"].as_str().unwrap().to_string();
    assert!(pinned.starts_with("/sys/fs/bpf/tcploop/shield/netns-"));
    assert_eq!(sh[4]["action"], "removed");
    assert_eq!(sh[4]["removed"], serde_json::json!(["bpf"]));
    assert_eq!(sh[5]["action"], "was_off");
    assert_eq!(sh[6]["state"], "off");
    assert!(
        !std::path::Path::new(&pinned).exists(),
        "off leaves its pin directory behind: {pinned}"
    );
    let rs = runs(&o);
    assert_eq!((rs[0].refused, rs[0].loops), (100, 0));
    assert!(
        rs[2].loops > 0,
        "after off, loops are possible again: {text}"
    );
    for l in &lines {
        if l["type"] == "shield" {
            check_shield_schema(&l["data"]);
        }
    }
}

#[test]
fn the_pre_tcx_attach_path_works_and_off_removes_its_filter() {
    if !bpf_ok("the_pre_tcx_attach_path_works_and_off_removes_its_filter") {
        return;
    }
    let o = sandbox_sh(
        true,
        "$B shield on --attach tc --json
printf 'case=v4 '; $T block 127.0.0.1 40004 20000
printf 'case=v6 '; $T block ::1 40004 20000
echo filters-on; tc filter show dev lo egress
$B shield off --json
echo filters-off; tc filter show dev lo egress; echo end",
    );
    let text = common::stdout(&o);
    for r in runs(&o) {
        assert_eq!((r.loops, r.refused), (0, TRIES), "{r:?}");
    }
    let lines = json_of(&text);
    let sh = common::of_type(&lines, "shield");
    assert_eq!(sh[0]["attach"], "tc", "{text}");
    let on = &text[text.find("filters-on").unwrap()..text.find("filters-off").unwrap()];
    assert!(on.contains("shield"), "{text}");
    let off = &text[text.find("filters-off").unwrap()..];
    assert!(
        !off.contains("bpf"),
        "the cls_bpf filter stays after off: {text}"
    );
}

#[test]
fn without_bpf_or_iptables_rights_on_exits_2_and_says_what_to_do() {
    if crate::common::no_sandboxes() {
        return;
    }
    // As nobody on the host: neither mechanism can work, nothing changes.
    let o = common::output(common::as_nobody(&mut common::tcploop(&["shield", "on"])));
    assert_eq!(o.status.code(), Some(2), "{}", common::stdout(&o));
    let err = common::stderr(&o);
    assert!(err.contains("no shield mechanism works here"), "{err}");
    assert!(err.contains("audit --apply"), "{err}");
    assert!(err.contains("tcploop run"), "{err}");
    // Forcing bpf in a user namespace: refused, exit 2, the reason given.
    if common::is_root() {
        let o = sandbox_sh(false, "$B shield on --mechanism bpf");
        assert_eq!(o.status.code(), Some(2), "{}", common::stdout(&o));
        assert!(
            common::stderr(&o).contains("permission denied"),
            "{}",
            common::stderr(&o)
        );
    }
}

/// The JSON lines among a script's output.
fn json_of(text: &str) -> Vec<Value> {
    text.lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect()
}

/// The `shield` line's schema: exactly these fields.
fn check_shield_schema(d: &Value) {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct ShieldLine {
        netns: u64,
        own: bool,
        pid: Option<u32>,
        name: Option<String>,
        state: String,
        mechanism: Option<String>,
        attach: Option<String>,
        since: Option<String>,
        refused_v4: Option<u64>,
        refused_v6: Option<u64>,
        pinned: Option<String>,
        action: Option<String>,
        #[serde(default)]
        removed: Vec<String>,
        unknown: Vec<String>,
        error: Option<String>,
    }
    let _: ShieldLine = serde_json::from_value(d.clone()).unwrap();
}

#[test]
fn check_audit_and_scan_know_the_shield() {
    if !bpf_ok("check_audit_and_scan_know_the_shield") {
        return;
    }
    for (netns_only, how) in [(true, "bpf (tcx)"), (false, "iptables (rules)")] {
        let o = sandbox_sh(
            netns_only,
            "set +e
python3 -c 'import socket,time;s=socket.socket();s.bind((\"127.0.0.1\",40006));s.listen();print(\"up\",flush=True);time.sleep(60)' > /dev/null &
P=$!
for i in $(seq 50); do ss -ltn | grep -q 40006 && break; sleep 0.1; done
echo step=before
$B check 40004 --json; echo \"exit=$?\"
$B audit --json; echo \"exit=$?\"
$B scan --json; echo \"exit=$?\"
$B shield on > /dev/null
echo step=after
$B check 40004 --json; echo \"exit=$?\"
$B audit --json; echo \"exit=$?\"
$B scan --json; echo \"exit=$?\"
$B shield off > /dev/null
kill $P",
        );
        let text = common::stdout(&o);
        let (before, after) = text.split_once("step=after").expect("both steps ran");
        let exits = |t: &str| -> Vec<String> {
            t.lines()
                .filter_map(|l| l.strip_prefix("exit="))
                .map(String::from)
                .collect()
        };
        // check 1 (possible), audit 1 (exposed), scan 0 (no loop)
        assert_eq!(exits(before), ["1", "1", "0"], "{how}: {text}");
        assert_eq!(exits(after), ["0", "0", "0"], "{how}: {text}");
        let b = json_of(before);
        let a = json_of(after);
        assert_eq!(common::of_type(&b, "check")[0]["verdict"], "possible");
        let c = &common::of_type(&a, "check")[0];
        assert_eq!(c["verdict"], "prevented", "{how}: {text}");
        assert!(
            c["reasons"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r.as_str().unwrap().contains(how)),
            "{how}: the mechanism is named: {c}"
        );
        let port = |l: &[Value]| {
            common::of_type(l, "port")
                .into_iter()
                .find(|p| p["port"] == 40006)
                .unwrap()
        };
        assert_eq!(port(&b)["when_down"]["verdict"], "possible", "{text}");
        assert_eq!(port(&a)["when_down"]["verdict"], "prevented", "{text}");
        let off = |l: &[Value]| common::of_type(l, "summary").last().unwrap()["shield_off"].clone();
        assert_eq!(
            off(&b)[0]["exposed_ports"],
            serde_json::json!([40006]),
            "{text}"
        );
        assert_eq!(off(&a), serde_json::json!([]), "{text}");
    }
}

/// The daemon's test runs in fresh PID, mount and network namespaces: its
/// discovery (`/proc/*/ns/net`, `/run/netns`) then sees only the test's own
/// processes and namespaces, never the host's; `/run` and `/sys/fs/bpf`
/// are private mounts there. Its log and metrics go to that `/run`, not
/// to the host's `/tmp`, where a run beside it would overwrite them.
const DAEMON_SCRIPT: &str = r#"
mount -t tmpfs tmpfs /run
mount -t bpf bpf /sys/fs/bpf
ip link set lo up
setup() { nsenter --net="$1" sh -c 'ip link set lo up; echo 40000 40009 > /proc/sys/net/ipv4/ip_local_port_range'; }
# wait until the shield is on in namespace $1 (at most 10 s); print the ms
covered() {
  t0=$(date +%s%N); i=0
  until nsenter --net="$1" $B shield status >/dev/null 2>&1; do
    i=$((i+1)); [ $i -lt 2000 ] || { echo "never covered: $1"; return 1; }; sleep 0.005
  done
  echo "$2=$(( ($(date +%s%N) - t0) / 1000000 ))"
}
ip netns add before; setup /run/netns/before
printf 'case=control '; nsenter --net=/run/netns/before $T block 127.0.0.1 40004 2000
$B shield daemon --interval 300ms --json --prometheus --cgroup-root "$CG" > /run/daemon.log 2>&1 &
D=$!
covered /run/netns/before latency_start
printf 'case=before '; nsenter --net=/run/netns/before $T block 127.0.0.1 40004 20000
ip netns add after; covered /run/netns/after latency_inotify; setup /run/netns/after
printf 'case=after_inotify '; nsenter --net=/run/netns/after $T block ::1 40004 20000
unshare -n sh -euc 'ip link set lo up; echo 40000 40009 > /proc/sys/net/ipv4/ip_local_port_range
  t0=$(date +%s%N); until $B shield status >/dev/null 2>&1; do sleep 0.005; done
  echo "latency_sweep=$(( ($(date +%s%N) - t0) / 1000000 ))"
  printf "case=after_sweep "; $T block 127.0.0.1 40004 20000'
sleep 0.7
curl -s http://127.0.0.1:9978/metrics > /run/metrics.txt
promtool check metrics < /run/metrics.txt && echo promtool=ok
kill -TERM $D; wait $D
cat /run/metrics.txt /run/daemon.log
$B shield off --all-netns --json | sed 's/^/offall /'
set +e; $B shield status --all-netns >/dev/null; echo "status_after_off=$?"; set -e
$B shield on --all-netns --json | sed 's/^/onall /'
$B shield status --all-netns >/dev/null && echo status_after_on=0
$B shield off --all-netns >/dev/null
$B shield off --cgroup-root "$CG" >/dev/null
# a dead namespace's lo (and its link) goes in the background: off prunes it then
for i in $(seq 50); do
  [ "$(ls /sys/fs/bpf/tcploop/shield | wc -l)" = 0 ] && break
  sleep 0.1; $B shield off --all-netns >/dev/null
done
ls /sys/fs/bpf/tcploop/shield | wc -l | sed 's/^/pins_left=/'
"#;

#[test]
fn the_daemon_covers_namespaces_made_before_and_after_it_starts() {
    if !bpf_ok("the_daemon_covers_namespaces_made_before_and_after_it_starts") {
        return;
    }
    let cl = clients();
    let cg = common::Cgroup::new("daemon");
    if common::skip_unless(
        cg.is_some(),
        "shield daemon --cgroup-root",
        "a cgroup v2 mount",
    ) {
        return;
    }
    let cg = cg.unwrap();
    let o = common::output(
        Command::new("unshare")
            .args(["--pid", "--fork", "--mount-proc", "--mount", "--net"])
            .args(["sh", "-euc", DAEMON_SCRIPT])
            .env("T", &cl.dynamic)
            .env("B", common::bin())
            .env("CG", &cg.0),
    );
    let text = common::stdout(&o);
    assert!(o.status.success(), "{text}\n{}", common::stderr(&o));
    let rs = runs(&o);
    assert_eq!(rs.len(), 4, "{text}");
    assert!(rs[0].loops > 0, "control: {text}");
    for r in &rs[1..] {
        assert_eq!(
            (r.case.as_str(), r.loops, r.refused),
            (r.case.as_str(), 0, TRIES),
            "{text}"
        );
    }
    for l in ["latency_start=", "latency_inotify=", "latency_sweep="] {
        let ms = text
            .lines()
            .find_map(|x| x.strip_prefix(l))
            .unwrap_or_else(|| panic!("{l} {text}"));
        eprintln!("daemon {l}{ms} ms");
    }
    assert!(text.contains("promtool=ok"), "{text}");
    let lines = json_of(&text);
    assert_eq!(common::of_type(&lines, "daemon_started").len(), 1, "{text}");
    let c = common::of_type(&lines, "cgroup_shield");
    assert_eq!(c.len(), 1, "{text}");
    assert_eq!(c[0]["action"], "attached", "{text}");
    // own, before, after, the unnamed one
    assert!(common::of_type(&lines, "attached").len() >= 4, "{text}");
    assert_eq!(common::of_type(&lines, "attach_failed").len(), 0, "{text}");
    assert_eq!(common::of_type(&lines, "daemon_stopped").len(), 1, "{text}");
    let metric = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|r| r.trim().parse().ok()))
            .unwrap_or_else(|| panic!("{name} missing: {text}"))
    };
    assert!(
        metric("tcploop_shield_refused_total{family=\"ipv4\"}") > 0.0,
        "{text}"
    );
    assert!(
        metric("tcploop_shield_refused_total{family=\"ipv6\"}") > 0.0,
        "{text}"
    );
    assert!(metric("tcploop_shield_attached_total") >= 3.0, "{text}");
    assert_eq!(metric("tcploop_shield_namespaces_failed"), 0.0, "{text}");
    // on/off/status --all-netns over the same namespaces (own, before, after)
    let tagged = |tag: &str| -> Vec<Value> {
        text.lines()
            .filter_map(|l| l.strip_prefix(tag))
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let off = common::of_type(&tagged("offall "), "shield");
    assert_eq!(off.len(), 3, "{text}");
    assert!(off.iter().all(|l| l["action"] == "removed"), "{text}");
    assert!(text.contains("status_after_off=1"), "{text}");
    let on = common::of_type(&tagged("onall "), "shield");
    assert_eq!(on.len(), 3, "{text}");
    assert!(on.iter().all(|l| l["action"] == "attached"), "{text}");
    assert!(text.contains("status_after_on=0"), "{text}");
    assert!(
        text.contains("pins_left=0"),
        "off --all-netns leaves pins: {text}"
    );
}

#[test]
fn the_pins_of_a_namespace_that_died_are_removed_by_the_next_on() {
    if !bpf_ok("the_pins_of_a_namespace_that_died_are_removed_by_the_next_on") {
        return;
    }
    // A namespace turns the shield on and dies without `off`: its lo and
    // the tcx link go with it, the pin directory stays (defunct).
    let o = sandbox_sh(true, "$B shield on --json");
    let lines = json_of(&common::stdout(&o));
    let dir = common::of_type(&lines, "shield")[0]["pinned"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(std::path::Path::new(&dir).exists(), "{dir}");
    // The kernel tears a dead namespace down in the background (its lo, and
    // with it the link, go a moment later): `on` elsewhere, until then.
    for _ in 0..50 {
        let o = sandbox_sh(true, "$B shield on >/dev/null; $B shield off >/dev/null");
        assert!(o.status.success(), "{}", common::stderr(&o));
        if !std::path::Path::new(&dir).exists() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    panic!("the defunct {dir} is still there after 50 tries over 10 s");
}

#[test]
fn the_cgroup_hook_refuses_loopback_self_connects_and_misses_interface_addresses() {
    if !bpf_ok("the_cgroup_hook_refuses_loopback_self_connects_and_misses_interface_addresses") {
        return;
    }
    let cg = common::Cgroup::new("hook");
    if common::skip_unless(cg.is_some(), "cgroup hook", "a cgroup v2 mount") {
        return;
    }
    let cg = cg.unwrap();
    let dir = cg.0.display().to_string();
    // Only the processes of the test's cgroup are covered: the sandbox's
    // shell moves itself in first.
    let cases = [
        ("v4", "$T block 127.0.0.1 40004 $N"),
        ("v6", "$T block ::1 40004 $N"),
        ("v4mapped", "$T block ::ffff:127.0.0.1 40004 $N"),
        ("nonblock", "$T nonblock 127.0.0.1 40004 $N"),
        ("io_uring", "$T uring ::1 40004 $N"),
        ("tfo", "$T tfo 127.0.0.1 40004 $N"),
        ("static", "$S block 127.0.0.1 40004 $N"),
    ];
    let mut script = format!("echo $$ > {dir}/cgroup.procs\n{VETH}");
    for (name, cmd) in cases {
        script.push_str(&format!(
            "printf 'case=control_{name} '; {}\n",
            cmd.replace("$N", "2000")
        ));
    }
    script.push_str(&format!("$B shield on --cgroup-root {dir} --json\n"));
    for (name, cmd) in cases {
        script.push_str(&format!(
            "printf 'case={name} '; {}\n",
            cmd.replace("$N", "20000")
        ));
    }
    script.push_str(&format!(
        "printf 'case=listener '; $T listen 127.0.0.1 40004 3000
printf 'case=pair '; $T pair 127.0.0.2 40004 3000 127.0.0.1
printf 'case=gap_veth_v4 '; $T block 10.99.0.1 40004 2000
$B shield on --cgroup-root {dir} --json
$B shield status --cgroup-root {dir} --json
$B shield off --cgroup-root {dir} --json
set +e; $B shield status --cgroup-root {dir} --json; echo \"exit=$?\"
"
    ));
    let o = sandbox_sh(true, &script);
    let text = common::stdout(&o);
    assert!(o.status.success(), "{text}\n{}", common::stderr(&o));
    let rs = runs(&o);
    assert_eq!(rs.len(), cases.len() * 2 + 3, "{text}");
    for r in &rs {
        match r.case.as_str() {
            c if c.starts_with("control_") => assert!(r.loops > 0, "{r:?}"),
            "listener" | "pair" => assert_eq!((r.ok, r.other), (3000, 0), "{r:?}"),
            // The documented gap: an interface address is not a loopback
            // destination, the hook does not see it as local.
            "gap_veth_v4" => assert!(r.loops > 0, "the gap closed? {r:?}"),
            _ => assert_eq!((r.loops, r.refused, r.other), (0, TRIES, 0), "{r:?}"),
        }
    }
    let lines = json_of(&text);
    let c = common::of_type(&lines, "cgroup_shield");
    assert_eq!(c.len(), 5, "{text}");
    assert_eq!(c[0]["action"], "attached");
    assert_eq!(c[1]["action"], "already_on");
    assert_eq!(c[1]["since"], c[0]["since"]);
    assert_eq!(c[2]["state"], "on");
    // v4: 20,000 x (v4, v4mapped, nonblock, tfo, static); v6: 20,000 x (v6, io_uring)
    assert_eq!(c[2]["refused_v4"], 5 * TRIES, "{text}");
    assert_eq!(c[2]["refused_v6"], 2 * TRIES, "{text}");
    assert_eq!(c[3]["action"], "removed");
    assert_eq!(c[4]["state"], "off");
    assert!(text.contains("exit=1"), "{text}");
    let pinned = c[0]["pinned"].as_str().unwrap();
    assert!(
        !std::path::Path::new(pinned).exists(),
        "{pinned} left behind"
    );
}

#[test]
fn ipv6_extension_headers_are_walked_by_bpf_and_are_the_iptables_gap() {
    if !bpf_ok("ipv6_extension_headers_are_walked_by_bpf_and_are_the_iptables_gap") {
        return;
    }
    // The SYN carries a hop-by-hop and a destination options header
    // before TCP (IPV6_HOPOPTS, IPV6_DSTOPTS on the client socket).
    let o = sandbox_sh(
        true,
        "printf 'case=control '; $T v6ext ::1 40004 2000
$B shield on > /dev/null
printf 'case=bpf '; $T v6ext ::1 40004 20000
$B shield off > /dev/null
$B shield on --mechanism iptables > /dev/null
printf 'case=iptables '; $T v6ext ::1 40004 2000
$B shield off > /dev/null",
    );
    let text = common::stdout(&o);
    let rs = runs(&o);
    assert_eq!(rs.len(), 3, "{text}\n{}", common::stderr(&o));
    assert!(rs[0].loops > 0, "control: {text}");
    assert_eq!(
        (rs[1].loops, rs[1].refused),
        (0, TRIES),
        "bpf walks them: {text}"
    );
    // The iptables rule's classic BPF reads TCP right after the fixed IPv6
    // header: with extension headers in between it does not match (the
    // gap documented in the README and in sys/iptables.rs).
    assert!(rs[2].loops > 0, "the iptables gap closed? {text}");
}
