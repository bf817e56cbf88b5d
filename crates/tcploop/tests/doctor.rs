//! Integration tests of `tcploop doctor`: one per way a port can be taken
//! from a server, each in a throwaway namespace (range 40000-40009, so that
//! a plain `connect()` to 40004 loops within a few tries), each checked
//! against a real server: `redis-server` binding `*:40004` fails with
//! "bind: Address already in use" before, and starts after `--fix` where
//! the fix applies. The holders are real programs too: a `redis-cli` that a
//! shell restarts (a retrying client), `python3` clients, listeners and
//! bind-only sockets.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::*;

const PORT: &str = "40004";
const RANGE: &str = "40000-40009";

/// Polls `f` every 20 ms until it holds or `limit` passes.
fn wait_for(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let t = Instant::now();
    while t.elapsed() < limit {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    f()
}

/// `ss -Htan sport = :PORT`, as (state, local, peer): an observer
/// independent of tcploop.
fn ss(port: &str) -> Vec<(String, String, String)> {
    let o = output(Command::new("ss").args(["-Htan", &format!("sport = :{port}")]));
    stdout(&o)
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 5).then(|| (f[0].to_string(), f[3].to_string(), f[4].to_string()))
        })
        .collect()
}

/// Live self-connected sockets on `port`, as `ss` sees them.
fn ss_loops(port: &str) -> usize {
    ss(port)
        .iter()
        .filter(|(st, l, p)| l == p && st != "TIME-WAIT")
        .count()
}

fn listening(port: &str) -> bool {
    ss(port).iter().any(|(st, _, _)| st == "LISTEN")
}

/// A process started in its own process group, killed (the group, by its
/// id) when dropped.
struct Group(Child);

impl Group {
    fn spawn(c: &mut Command) -> Group {
        c.process_group(0);
        Group(
            c.spawn()
                .unwrap_or_else(|e| panic!("cannot run {c:?}: {e}")),
        )
    }
    fn alive(&mut self) -> bool {
        self.0.try_wait().unwrap().is_none()
    }
    fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        let pgid = self.0.id() as i32;
        // the group is ours: the process and what it started
        signal_group(pgid);
        let _ = self.0.wait();
    }
}

#[allow(unsafe_code)]
fn signal_group(pgid: i32) {
    // SAFETY: kill(2) on our own process group; no memory involved.
    unsafe {
        libc::kill(-pgid, libc::SIGKILL);
    }
}

/// What happened to a real `redis-server --port PORT` (it binds `*:PORT`,
/// IPv4 and IPv6, with SO_REUSEADDR).
enum Redis {
    /// It listens; the server is kept running.
    Started(Group),
    /// It exited; its log.
    Failed(String),
}

fn redis(port: &str) -> Redis {
    let mut g = Group::spawn(
        Command::new("redis-server")
            .args([
                "--port",
                port,
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    // its log, line by line, from a reader thread
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let stdout = g.0.stdout.take().unwrap();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for l in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    let mut log = String::new();
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(10) {
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(l) => {
                log.push_str(&l);
                log.push('\n');
                if l.contains("Ready to accept connections") {
                    return Redis::Started(g);
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                let _ = g.0.wait();
                return Redis::Failed(log);
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
        }
    }
    panic!("redis-server neither started nor failed in 10 s: {log}");
}

/// Asserts that redis-server cannot bind the port, with the message users
/// search for.
fn redis_fails(port: &str, when: &str) {
    match redis(port) {
        Redis::Started(_) => panic!("{when}: redis-server could bind {port}"),
        Redis::Failed(log) => assert!(
            log.contains(&format!(
                "Could not create server TCP listening socket *:{port}: bind: Address already in use"
            )),
            "{when}: {log}"
        ),
    }
}

fn redis_starts(port: &str, when: &str) -> Group {
    match redis(port) {
        Redis::Started(g) => g,
        Redis::Failed(log) => panic!("{when}: redis-server failed: {log}"),
    }
}

/// `tcploop doctor ARGS --json`: exit code, holder lines, diagnosis lines,
/// fix lines.
struct Doc {
    code: i32,
    holders: Vec<Value>,
    diagnoses: Vec<Value>,
    fixes: Vec<Value>,
}

fn doctor(args: &[&str]) -> Doc {
    let mut all = vec!["doctor", PORT, "--json", "--service", "redis"];
    all.extend_from_slice(args);
    let o = output(&mut tcploop(&all));
    let lines = json_lines(&o);
    lines.iter().for_each(schema::check);
    Doc {
        code: o.status.code().unwrap_or(-1),
        holders: of_type(&lines, "holder"),
        diagnoses: of_type(&lines, "diagnosis"),
        fixes: of_type(&lines, "fix"),
    }
}

fn actions(d: &Value) -> Vec<String> {
    d["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["action"].as_str().unwrap().to_string())
        .collect()
}

/// A client that reconnects forever: a shell restarting `redis-cli`, which
/// pings every 0.2 s once connected. Each try writes its number to `count`.
fn retrying_client(count: &Path) -> Group {
    let script = format!(
        "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); echo $i > {}; \
         redis-cli -p {PORT} -i 0.2 -r -1 ping >/dev/null 2>&1; done",
        count.display()
    );
    Group::spawn(
        Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::null()),
    )
}

fn tries(count: &Path) -> u64 {
    std::fs::read_to_string(count)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// How long the server must keep its port while the client retries.
const HOLD: Duration = Duration::from_secs(3);

scenario! {
    /// Inside the sandbox: set up one cause, check the diagnosis and the fix.
    fn doctor_case(out) {
        let case = std::env::var("TCPLOOP_CASE").unwrap();
        let dir = temp_dir("doctor");
        let count = dir.join("tries");
        match case.as_str() {
            "free" => {
                let d = doctor(&[]);
                assert_eq!(d.code, 0);
                let dg = &d.diagnoses[0];
                assert_eq!(dg["verdict"], "free", "{dg}");
                assert_eq!(dg["bind"], "ok");
                assert_eq!(dg["exposed"], true);
                assert_eq!(dg["when_down"]["verdict"], "possible");
                assert_eq!(actions(dg), ["reserve"]);
                let mut r = redis_starts(PORT, "free port");
                // the service itself, already running
                let d = doctor(&[]);
                assert_eq!(d.code, 1);
                assert_eq!(d.diagnoses[0]["verdict"], "listening");
                assert!(
                    d.holders.iter().any(|h| h["is_service"] == true),
                    "{:?}",
                    d.holders
                );
                assert!(r.alive());
            }
            "loop" | "loop-kill-only" => {
                let mut client = retrying_client(&count);
                assert!(
                    wait_for(Duration::from_secs(10), || ss_loops(PORT) == 1),
                    "the retrying client never looped"
                );
                let d = doctor(&[]);
                assert_eq!(d.code, 1);
                let dg = &d.diagnoses[0];
                assert_eq!(dg["verdict"], "stolen-by-loop", "{dg}");
                assert_eq!(dg["bind"], "eaddrinuse");
                assert_eq!(dg["bind_reuseaddr"], "eaddrinuse");
                assert_eq!(actions(dg), ["reserve", "kill-loops", "start-server"]);
                let h = &d.holders[0];
                assert_eq!(h["kind"], "self-connected");
                assert_eq!(h["owners"][0]["command"], "redis-cli", "{h}");
                // read from redis-cli itself: it did not set SO_REUSEADDR, so
                // even a server that does gets EADDRINUSE (redis-server, below)
                assert_eq!(h["reuseaddr"], false, "{h}");
                assert_eq!(h["bind_reuseaddr"], "eaddrinuse", "{h}");
                assert!(dg["summary"].as_str().unwrap().contains("redis-cli (pid "));
                redis_fails(PORT, "while the client is looped");
                if case == "loop-kill-only" {
                    // the control: a kill alone does not last
                    let k = output(&mut tcploop(&["kill", "--port", PORT, "--yes"]));
                    assert!(k.status.success(), "{}", stderr(&k));
                    assert!(
                        wait_for(Duration::from_secs(15), || ss_loops(PORT) == 1),
                        "the client did not loop again after a kill alone ({} tries)",
                        tries(&count)
                    );
                    redis_fails(PORT, "after a kill alone");
                } else {
                    let f = doctor(&["--fix"]);
                    assert_eq!(f.code, 0, "{:?}", f.diagnoses);
                    let fx = &f.fixes[0];
                    assert!(fx["reserved"].as_str().unwrap().contains(PORT), "{fx}");
                    assert_eq!(fx["killed"][0]["outcome"], "destroyed", "{fx}");
                    assert_eq!(fx["bind"], "ok");
                    assert_eq!(fx["bind_reuseaddr"], "ok");
                    assert_eq!(f.diagnoses[1]["after_fix"], true);
                    assert_eq!(f.diagnoses[1]["verdict"], "free");
                    // the client keeps retrying: 100 more tries, where a loop
                    // would come every 5 or so without the reservation
                    let t0 = tries(&count);
                    assert!(
                        wait_for(Duration::from_secs(20), || tries(&count) >= t0 + 100),
                        "the client stopped retrying"
                    );
                    assert_eq!(ss_loops(PORT), 0, "the client looped again");
                    let mut r = redis_starts(PORT, "after --fix");
                    let t1 = tries(&count);
                    std::thread::sleep(HOLD);
                    assert!(r.alive() && listening(PORT), "redis-server lost its port");
                    assert_eq!(ss_loops(PORT), 0);
                    let ping = output(Command::new("redis-cli").args(["-p", PORT, "ping"]));
                    assert_eq!(stdout(&ping).trim(), "PONG");
                    // the retrying client now talks to the real server
                    assert!(
                        ss(PORT)
                            .iter()
                            .any(|(st, l, p)| st == "ESTAB" && l == "127.0.0.1:40004" && l != p),
                        "{:?}",
                        ss(PORT)
                    );
                    assert!(tries(&count) >= t1, "{t1}");
                    assert!(client.alive());
                }
            }
            "time-wait" => {
                // a python3 client that closes normally once it got through: a
                // loop closed gracefully leaves TIME-WAIT behind
                let py = "import socket\n\
                    for i in range(3000):\n\
                    \x20   s = socket.socket()\n\
                    \x20   try:\n\
                    \x20       s.connect(('127.0.0.1', 40004))\n\
                    \x20   except OSError:\n\
                    \x20       s.close(); continue\n\
                    \x20   s.close(); break\n";
                let o = output(Command::new("python3").args(["-c", py]));
                assert!(o.status.success(), "{}", stderr(&o));
                let d = doctor(&[]);
                assert_eq!(d.code, 1);
                let dg = &d.diagnoses[0];
                assert_eq!(dg["verdict"], "time-wait", "{dg}");
                let h = &d.holders[0];
                assert_eq!(h["kind"], "self-connected-time-wait", "{h}");
                assert!(h["time_wait_left_ms"].as_u64().unwrap() > 30_000, "{h}");
                assert_eq!(actions(dg), ["reserve", "kill-loops", "start-server"]);
                redis_fails(PORT, "TIME-WAIT of a closed loop");
                let f = doctor(&["--fix"]);
                assert_eq!(f.code, 0);
                assert_eq!(f.fixes[0]["killed"][0]["state"], "TIME-WAIT");
                assert_eq!(f.fixes[0]["killed"][0]["outcome"], "destroyed");
                let _r = redis_starts(PORT, "after --fix of a TIME-WAIT loop");
            }
            "source-port" => {
                // a client of another server got 40004 as its source port: the
                // range is narrowed to 40004-40005 while it connects
                let _server = redis_starts("50000", "the other server");
                set_range(40004, 40005);
                let mut client = Group::spawn(
                    Command::new("redis-cli")
                        .args(["-p", "50000", "-i", "0.2", "-r", "-1", "ping"])
                        .stdout(Stdio::null()),
                );
                let connected = wait_for(Duration::from_secs(10), || {
                    ss(PORT).iter().any(|(_, _, p)| p == "127.0.0.1:50000")
                });
                set_range(40000, 40009);
                assert!(connected, "redis-cli did not connect from 40004");
                let d = doctor(&[]);
                assert_eq!(d.code, 1);
                let dg = &d.diagnoses[0];
                assert_eq!(dg["verdict"], "stolen-by-source-port", "{dg}");
                let h = &d.holders[0];
                assert_eq!(h["kind"], "source-port");
                assert_eq!(h["sockets"], 1);
                assert_eq!(h["peers"][0], "127.0.0.1:50000");
                assert_eq!(h["owners"][0]["command"], "redis-cli");
                assert_eq!(actions(dg), ["reserve", "restart-holder", "start-server"]);
                redis_fails(PORT, "source port of a connection");
                let f = doctor(&["--fix"]);
                assert_eq!(f.code, 1, "the connection still holds it");
                assert!(f.fixes[0]["reserved"].as_str().unwrap().contains(PORT));
                assert_eq!(f.fixes[0]["killed"], serde_json::json!([]));
                assert_eq!(f.fixes[0]["bind"], "eaddrinuse");
                // the ordinary connection was not touched
                assert!(client.alive());
                assert!(ss(PORT)
                    .iter()
                    .any(|(st, _, p)| st == "ESTAB" && p == "127.0.0.1:50000"));
                redis_fails(PORT, "after --fix: source-port holders are waited for");
                // the client ends: its side of the connection waits out TIME-WAIT
                // on 40004, which still refuses the bind (redis-cli had no
                // SO_REUSEADDR)
                drop(client);
                assert!(wait_for(Duration::from_secs(5), || ss(PORT)
                    .iter()
                    .any(|(st, _, _)| st == "TIME-WAIT")));
                let d = doctor(&[]);
                assert_eq!(d.code, 1);
                let dg = &d.diagnoses[0];
                assert_eq!(dg["verdict"], "time-wait", "{dg}");
                assert_eq!(d.holders[0]["kind"], "time-wait");
                assert_eq!(
                    actions(dg),
                    ["wait", "start-server"],
                    "reserved already: {dg}"
                );
                assert!(dg["steps"][0]["text"]
                    .as_str()
                    .unwrap()
                    .contains("s more at most"));
                redis_fails(PORT, "TIME-WAIT of a closed connection");
            }
            "bind-only" => {
                let mut py = Group::spawn(
                    Command::new("python3")
                        .args([
                            "-c",
                            "import socket,time\ns=socket.socket()\ns.bind(('127.0.0.1',40004))\n\
                             print('bound',flush=True)\ntime.sleep(60)",
                        ])
                        .stdout(Stdio::piped()),
                );
                let mut line = [0u8; 5];
                py.0.stdout.as_mut().unwrap().read_exact(&mut line).unwrap();
                let d = doctor(&[]);
                assert_eq!(d.code, 1);
                assert_eq!(d.diagnoses[0]["verdict"], "bind-held", "{:?}", d.diagnoses);
                assert_eq!(d.holders[0]["kind"], "bind-only");
                assert_eq!(d.holders[0]["owners"][0]["pid"], py.pid());
                assert_eq!(actions(&d.diagnoses[0]), ["restart-holder"]);
                redis_fails(PORT, "bind-only socket");
                let before = reserved_now();
                let f = doctor(&["--fix"]);
                assert_eq!(f.code, 1);
                assert_eq!(f.fixes[0]["reserved"], Value::Null);
                assert_eq!(f.fixes[0]["killed"], serde_json::json!([]));
                assert_eq!(reserved_now(), before);
                assert!(py.alive());
                assert_eq!(f.diagnoses[1]["verdict"], "bind-held");
            }
            "bind-only-reuseaddr" => {
                // the holder set SO_REUSEADDR: read from its process, the effect
                // is exact, and redis-server (which sets it too) can bind
                let mut py = Group::spawn(
                    Command::new("python3")
                        .args([
                            "-c",
                            "import socket,time\ns=socket.socket()\n\
                             s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
                             s.bind(('127.0.0.1',40004))\nprint('bound',flush=True)\ntime.sleep(60)",
                        ])
                        .stdout(Stdio::piped()),
                );
                let mut line = [0u8; 5];
                py.0.stdout.as_mut().unwrap().read_exact(&mut line).unwrap();
                let d = doctor(&[]);
                assert_eq!(d.code, 1);
                let dg = &d.diagnoses[0];
                assert_eq!(dg["verdict"], "bind-held", "{dg}");
                assert_eq!(dg["bind"], "eaddrinuse");
                assert_eq!(dg["bind_reuseaddr"], "ok");
                let h = &d.holders[0];
                assert_eq!(h["reuseaddr"], true, "{h}");
                assert_eq!(h["bind"], "eaddrinuse");
                assert_eq!(h["bind_reuseaddr"], "ok", "{h}");
                assert_eq!(actions(dg)[0], "start-server", "{dg}");
                let _r = redis_starts(PORT, "beside a SO_REUSEADDR bind-only socket");
                assert!(py.alive());
            }
            "foreign-listener" => {
                let mut py = Group::spawn(
                    Command::new("python3")
                        .args(["-m", "http.server", PORT, "--bind", "127.0.0.1"])
                        .stdout(Stdio::null())
                        .stderr(Stdio::null()),
                );
                assert!(wait_for(Duration::from_secs(10), || listening(PORT)));
                let d = doctor(&[]);
                assert_eq!(d.code, 1);
                let dg = &d.diagnoses[0];
                assert_eq!(dg["verdict"], "listening", "{dg}");
                let h = &d.holders[0];
                assert_eq!(h["owners"][0]["command"], "python3");
                assert_eq!(h["is_service"], false);
                assert_eq!(actions(dg), ["nothing"]);
                assert!(dg["steps"][0]["text"]
                    .as_str()
                    .unwrap()
                    .contains("tcploop cannot help"));
                redis_fails(PORT, "foreign listener");
                let before = reserved_now();
                let f = doctor(&["--fix"]);
                assert_eq!(f.code, 1);
                assert_eq!(f.fixes[0]["reserved"], Value::Null, "no action taken");
                assert_eq!(f.fixes[0]["killed"], serde_json::json!([]));
                assert_eq!(reserved_now(), before);
                assert!(py.alive() && listening(PORT));
            }
            "reuseport" => {
                let py = "import socket,time\nss=[]\nfor i in range(2):\n\
                    \x20   s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)\n\
                    \x20   s.bind(('127.0.0.1',40004)); s.listen(); ss.append(s)\n\
                    print('ok',flush=True)\ntime.sleep(60)";
                let mut g = Group::spawn(
                    Command::new("python3")
                        .args(["-c", py])
                        .stdout(Stdio::piped()),
                );
                let mut line = [0u8; 2];
                g.0.stdout.as_mut().unwrap().read_exact(&mut line).unwrap();
                let d = doctor(&["--host", "127.0.0.1"]);
                assert_eq!(d.code, 1);
                assert_eq!(d.diagnoses[0]["verdict"], "listening");
                let h = &d.holders[0];
                assert_eq!(h["reuseport_group"], true, "{h}");
                assert_eq!(h["reuseport"], true, "{h}");
                assert_eq!(h["sockets"], 2);
                assert_eq!(h["bind"], "eaddrinuse-unless-reuseport");
                redis_fails(PORT, "reuseport group");
            }
            "all-netns" => {
                // a loop in a namespace nested in this one (a container's)
                let py = "import socket,time\n\
                    for i in range(3000):\n\
                    \x20   s = socket.socket()\n\
                    \x20   try:\n\
                    \x20       s.connect(('127.0.0.1', 40004))\n\
                    \x20   except OSError:\n\
                    \x20       s.close(); continue\n\
                    \x20   print('looped', flush=True); break\n\
                    time.sleep(60)\n";
                let script = format!(
                    "ip link set lo up && echo '40000 40009' > {RANGE_FILE} && exec python3 -c \"{py}\""
                );
                let mut inner = Group::spawn(
                    Command::new("unshare")
                        .args(["-n", "sh", "-c", &script])
                        .stdout(Stdio::piped()),
                );
                let mut line = [0u8; 6];
                inner
                    .0
                    .stdout
                    .as_mut()
                    .unwrap()
                    .read_exact(&mut line)
                    .unwrap();
                assert_eq!(&line, b"looped");
                let here = doctor(&[]);
                assert_eq!(here.code, 0, "nothing on the port in this namespace");
                let all = doctor(&["--all-netns"]);
                assert_eq!(all.code, 1);
                let own = all.diagnoses[0]["netns"].clone();
                assert_eq!(all.diagnoses[0]["verdict"], "free", "{:?}", all.diagnoses);
                let nested: Vec<&Value> = all.diagnoses.iter().filter(|d| d["netns"] != own).collect();
                assert_eq!(nested.len(), 1, "{:?}", all.diagnoses);
                assert_eq!(nested[0]["verdict"], "stolen-by-loop");
                let h = all
                    .holders
                    .iter()
                    .find(|h| h["netns"] == nested[0]["netns"])
                    .unwrap();
                assert_eq!(h["owners"][0]["command"], "python3", "{h}");
                let f = doctor(&["--all-netns", "--fix"]);
                assert_eq!(f.code, 0, "{:?}", f.diagnoses);
                let fx = f
                    .fixes
                    .iter()
                    .find(|x| x["netns"] == nested[0]["netns"])
                    .unwrap();
                assert_eq!(fx["killed"][0]["outcome"], "destroyed", "{fx}");
                assert_eq!(fx["bind"], "ok");
                assert!(inner.alive());
            }
            other => panic!("unknown case {other}"),
        }
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::write(out, "ok").unwrap();
    }
}

fn case(name: &str) {
    let ok = is_root() && which("redis-server") && which("python3");
    if skip_unless(
        ok,
        &format!("doctor {name}"),
        "root, redis-server and python3",
    ) {
        return;
    }
    doctor_case::run_ok(&Sandbox::range(RANGE).envs(&[("TCPLOOP_CASE", name)]));
}

fn which(prog: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(prog).is_file()))
}

#[test]
fn a_free_port_is_free_and_the_running_service_is_itself() {
    case("free");
}

#[test]
fn a_retrying_client_looped_on_the_port_is_fixed_for_good_by_reserve_then_kill() {
    case("loop");
}

#[test]
fn a_kill_alone_does_not_last_against_a_retrying_client() {
    case("loop-kill-only");
}

#[test]
fn a_closed_loops_time_wait_is_destroyed_and_the_server_starts() {
    case("time-wait");
}

#[test]
fn source_port_holders_are_named_and_never_killed() {
    case("source-port");
}

#[test]
fn a_bind_only_socket_is_named_and_left_alone() {
    case("bind-only");
}

#[test]
fn a_holder_that_set_so_reuseaddr_lets_a_reuseaddr_server_bind_and_doctor_says_so() {
    case("bind-only-reuseaddr");
}

#[test]
fn a_foreign_listener_is_named_and_no_action_is_taken() {
    case("foreign-listener");
}

#[test]
fn all_netns_finds_and_fixes_a_loop_in_a_nested_namespace() {
    case("all-netns");
}

#[test]
fn a_reuseport_group_is_one_holder() {
    case("reuseport");
}

#[test]
fn text_output_of_a_free_port_says_how_to_keep_it_free() {
    if crate::common::no_sandboxes() {
        return;
    }
    let o = output(&mut sandboxed(RANGE, &["doctor", PORT]));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let t = stdout(&o);
    assert!(t.starts_with("Port 40004 FREE"), "{t}");
    assert!(
        t.contains("tcploop audit --ports 40004 --apply --persist"),
        "{t}"
    );
}

/// Without privilege over the namespace, `--fix` can do nothing: it says
/// what it needs and exits 2, and the loop is left as it was. A plain
/// network namespace (owned by the host's user namespace) in which the
/// loop is made as root and `doctor --fix` runs as uid 65534.
#[test]
fn fix_without_privilege_says_what_it_needs_and_exits_2() {
    if skip_unless(
        is_root() && which("python3"),
        "doctor fix_without_privilege",
        "root and python3",
    ) {
        return;
    }
    let dir = temp_dir("doctor-unpriv");
    let mark = dir.join("looped");
    let py = format!(
        "import socket,time\n\
         for i in range(3000):\n\
         \x20   s = socket.socket()\n\
         \x20   try:\n\
         \x20       s.connect(('127.0.0.1', 40004))\n\
         \x20   except OSError:\n\
         \x20       s.close(); continue\n\
         \x20   open('{}', 'w').close(); break\n\
         time.sleep(30)\n",
        mark.display()
    );
    let script = format!(
        "ip link set lo up && echo '40000 40009' > {RANGE_FILE} && \
         {{ python3 -c \"$0\" & p=$!; }} && n=0; \
         while [ ! -e {mark} ] && [ $n -lt 200 ]; do sleep 0.05; n=$((n+1)); done; \
         setpriv --reuid 65534 --regid 65534 --clear-groups {bin} doctor {PORT} --fix; echo \"rc=$?\"; \
         ss -Htan \"sport = :{PORT}\"; kill $p",
        mark = mark.display(),
        bin = bin().display()
    );
    let o = output(Command::new("unshare").args(["-n", "sh", "-c", &script, &py]));
    let out = stdout(&o);
    let err = stderr(&o);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(out.contains("STOLEN BY A LOOP"), "{out}\n{err}");
    assert!(out.contains("rc=2"), "{out}\n{err}");
    assert!(out.contains("needs root"), "{out}\n{err}");
    assert!(err.contains("a step of the fix failed"), "{err}");
    // the loop is still there
    assert!(
        out.lines()
            .any(|l| l.starts_with("ESTAB") && l.matches("127.0.0.1:40004").count() == 2),
        "{out}"
    );
}

#[test]
fn bad_input_is_a_one_line_error_and_exit_2() {
    if crate::common::no_sandboxes() {
        return;
    }
    for args in [
        &["doctor"][..],
        &["doctor", "0"],
        &["doctor", "65536"],
        &["doctor", "80", "--host", "nope"],
        &["doctor", "40004", "--host", "192.0.2.1"],
        &["doctor", "--service", "no-such-service-anywhere"],
    ] {
        let o = output(&mut sandboxed(RANGE, args));
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        let e = stderr(&o);
        assert!(!e.contains("panicked"), "{args:?}: {e}");
        if e.starts_with("tcploop: error:") {
            assert_eq!(e.trim().lines().count(), 1, "{args:?}: {e}");
        }
    }
}

/// The JSON Lines contract of `doctor`: every line's `data` deserializes
/// into these, with no unknown field (the README's JSON section and the
/// rustdoc of src/report/doctor.rs).
mod schema {
    #![allow(dead_code)]
    use serde::Deserialize;

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Owner {
        pid: u32,
        command: String,
        fd: i32,
        container: Option<String>,
    }
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Holder {
        netns: u64,
        after_fix: bool,
        kind: String,
        local: String,
        states: Vec<String>,
        sockets: u64,
        conflicts: bool,
        bind: String,
        bind_reuseaddr: String,
        reuseport_group: bool,
        reuseaddr: Option<bool>,
        reuseport: Option<bool>,
        is_service: bool,
        owners: Vec<Owner>,
        owners_unknown: u64,
        peers: Vec<String>,
        peers_total: u64,
        time_wait_left_ms: Option<u32>,
    }
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct WhenDown {
        host: String,
        verdict: String,
        reasons: Vec<String>,
        expected_tries: Option<f64>,
    }
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Step {
        action: String,
        text: String,
        command: Option<String>,
        automatic: bool,
    }
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Diagnosis {
        netns: u64,
        netns_label: String,
        after_fix: bool,
        port: u16,
        server: String,
        verdict: String,
        summary: String,
        invisible_holder: bool,
        bind: String,
        bind_reuseaddr: String,
        range: String,
        in_range: bool,
        reserved: bool,
        exposed: bool,
        shielded: Option<String>,
        when_down: WhenDown,
        steps: Vec<Step>,
        sockets_seen: u64,
        processes_unreadable: u64,
    }
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Killed {
        local: String,
        state: String,
        outcome: String,
    }
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Fix {
        netns: u64,
        reserved: Option<String>,
        reserve_error: Option<String>,
        killed: Vec<Killed>,
        bind: String,
        bind_reuseaddr: String,
    }
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Skipped {
        netns: u64,
        netns_label: String,
        reason: String,
    }

    use crate::common::conforms as parse;

    /// Checks one line against its type's schema.
    pub fn check(line: &serde_json::Value) {
        let d = &line["data"];
        match line["type"].as_str().unwrap_or("") {
            "holder" => parse::<Holder>("holder", d),
            "diagnosis" => parse::<Diagnosis>("diagnosis", d),
            "fix" => parse::<Fix>("fix", d),
            "skipped" => parse::<Skipped>("skipped", d),
            other => panic!("unknown line type {other:?}: {line}"),
        }
    }
}
