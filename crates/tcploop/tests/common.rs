//! Helpers shared by the integration tests.
//!
//! Two layers. Tests that need no privilege (usage errors, `--help`, JSON
//! shape) run anywhere. Tests that need a throwaway network namespace make
//! it in one of two ways, both described by a [`Sandbox`] (port range,
//! reserved ports, environment, `--netns-only`):
//! - [`Sandbox::command`] (and [`sandboxed`], [`Sandbox::tcploop`],
//!   [`Sandbox::sh`]): `tcploop sandbox ... -- PROGRAM`, the binary as a
//!   user runs it; such a test first asks [`no_sandboxes`];
//! - [`scenario!`]: re-runs *this test binary* inside a sandbox, for one
//!   `#[ignore]`d child test that sets up sockets and then runs real
//!   connects; the child writes its findings to the file named by
//!   `TCPLOOP_SCENARIO_OUT`. The libtest harness is threaded, so a test
//!   cannot enter a namespace itself; its re-executed child starts inside
//!   one.
//!
//! Either way the sandbox is probed once per test binary
//! ([`sandboxes_work`]); where it cannot be made the test skips loudly, or
//! fails under `TCPLOOP_REQUIRE_PRIVILEGED` ([`skip_unless`]).
#![allow(dead_code)]

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

/// The `tcploop` binary under test.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_tcploop"))
}

/// `tcploop ARGS`.
pub fn tcploop(args: &[&str]) -> Command {
    let mut c = Command::new(bin());
    c.args(args);
    c
}

/// `tcploop sandbox --range RANGE -- tcploop ARGS` (see [`Sandbox`] for
/// the other options).
pub fn sandboxed(range: &str, args: &[&str]) -> Command {
    Sandbox::range(range).tcploop(args)
}

/// Runs a command, returning its output; panics with stderr if it could
/// not start.
pub fn output(c: &mut Command) -> Output {
    c.output()
        .unwrap_or_else(|e| panic!("cannot run {c:?}: {e}"))
}

/// Stdout as text.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Stderr as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The JSON Lines of an output, parsed.
pub fn json_lines(o: &Output) -> Vec<serde_json::Value> {
    stdout(o)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l:?}: {e}")))
        .collect()
}

/// The `data` of the lines of one `type`.
pub fn of_type(lines: &[serde_json::Value], ty: &str) -> Vec<serde_json::Value> {
    lines
        .iter()
        .filter(|l| l["type"] == ty)
        .map(|l| l["data"].clone())
        .collect()
}

/// Panics unless `data`, the `data` of a JSON line of type `ty`,
/// deserializes into `T`: a struct with `#[serde(deny_unknown_fields)]`
/// that writes the line's schema down.
pub fn conforms<T: serde::de::DeserializeOwned>(ty: &str, data: &serde_json::Value) {
    if let Err(e) = serde_json::from_value::<T>(data.clone()) {
        panic!("{ty} line does not match its schema: {e}: {data}");
    }
}

const SCENARIO_ENV: &str = "TCPLOOP_SCENARIO_OUT";

/// Inside a scenario child: where to write findings. `None` in a normal run
/// (the scenario test then does nothing).
pub fn scenario_out() -> Option<PathBuf> {
    std::env::var_os(SCENARIO_ENV).map(PathBuf::from)
}

/// Where and how a sandbox is made: `tcploop sandbox [--netns-only]
/// [--range RANGE] [--reserve LIST]`, with extra environment variables for
/// what runs inside.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sandbox<'a> {
    /// `ip_local_port_range` inside; empty (as in `Sandbox::default()`):
    /// the kernel's default range.
    pub range: &'a str,
    /// `ip_local_reserved_ports` inside.
    pub reserve: Option<&'a str>,
    /// Environment variables for the child.
    pub envs: &'a [(&'a str, &'a str)],
    /// A plain network namespace (root) instead of user+net: the child keeps
    /// the initial namespace's capabilities, which BPF needs.
    pub netns_only: bool,
}

impl<'a> Sandbox<'a> {
    /// A user+net sandbox with port range `range`.
    pub fn range(range: &'a str) -> Sandbox<'a> {
        Sandbox {
            range,
            ..Sandbox::default()
        }
    }

    /// With `ip_local_reserved_ports` set to `list` inside.
    pub fn reserve(self, list: &'a str) -> Sandbox<'a> {
        Sandbox {
            reserve: Some(list),
            ..self
        }
    }

    /// With environment variables `envs` for the child.
    pub fn envs(self, envs: &'a [(&'a str, &'a str)]) -> Sandbox<'a> {
        Sandbox { envs, ..self }
    }

    /// In a plain network namespace (`--netns-only`, root).
    pub fn netns_only(self) -> Sandbox<'a> {
        Sandbox {
            netns_only: true,
            ..self
        }
    }

    /// `tcploop sandbox [--netns-only] [--range RANGE] [--reserve LIST] --`
    /// with the environment variables set: the program to run inside comes
    /// next.
    pub fn command(&self) -> Command {
        let mut c = Command::new(bin());
        c.arg("sandbox");
        if self.netns_only {
            c.arg("--netns-only");
        }
        if !self.range.is_empty() {
            c.args(["--range", self.range]);
        }
        if let Some(r) = self.reserve {
            c.args(["--reserve", r]);
        }
        c.arg("--").envs(self.envs.iter().copied());
        c
    }

    /// `tcploop ARGS` inside.
    pub fn tcploop(&self, args: &[&str]) -> Command {
        let mut c = self.command();
        c.arg(bin()).args(args);
        c
    }

    /// `sh -c SCRIPT` inside.
    pub fn sh(&self, script: &str) -> Command {
        let mut c = self.command();
        c.args(["sh", "-c", script]);
        c
    }
}

/// Whether this machine can make the sandboxes scenarios run in, probed
/// once per test binary and kind: `tcploop sandbox [--netns-only] --range
/// 40000-40009 -- true` (a plain network namespace needs root; a user+net
/// one, user namespaces).
pub fn sandboxes_work(netns_only: bool) -> bool {
    use std::sync::OnceLock;
    static USER_NET: OnceLock<bool> = OnceLock::new();
    static NETNS_ONLY: OnceLock<bool> = OnceLock::new();
    let probe = || {
        let sandbox = Sandbox {
            netns_only,
            ..Sandbox::range("40000-40009")
        };
        sandbox
            .command()
            .arg("true")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if netns_only {
        *NETNS_ONLY.get_or_init(probe)
    } else {
        *USER_NET.get_or_init(probe)
    }
}

/// For a test that runs `tcploop sandbox` itself: `true` (the test returns
/// at once) where user and network namespaces cannot be made here, after a
/// loud skip (a failure under [`REQUIRE_ENV`]); the probe runs once per
/// test binary. The test is named by its thread, which the harness names
/// after it.
pub fn no_sandboxes() -> bool {
    let thread = std::thread::current();
    skip_unless(
        sandboxes_work(false),
        thread.name().unwrap_or("a sandbox test"),
        "user and network namespaces (tcploop sandbox)",
    )
}

/// A test whose body runs inside a throwaway namespace, the one way to
/// write one. The libtest harness is threaded, so a test cannot enter a
/// namespace itself: `scenario!` writes the `#[ignore]`d child test (the
/// body, which writes its findings to the path bound to `$out`) and, beside
/// it, a module of the same name whose `run(&Sandbox)` re-runs this test
/// binary inside a sandbox on that child alone and returns what it wrote,
/// or `None` (after a loud skip, a failure under `TCPLOOP_REQUIRE_PRIVILEGED`)
/// where such sandboxes cannot be made. A child that panics fails its
/// parent with the child's output.
///
/// ```ignore
/// scenario! {
///     /// What it does inside.
///     fn held_loop(out) { std::fs::write(out, "ok").unwrap(); }
/// }
///
/// #[test]
/// fn a_held_loop_is_seen() {
///     let Some(text) = held_loop::run(&Sandbox::range("40000-40009").reserve("40004"))
///     else {
///         return;
///     };
///     assert_eq!(text, "ok");
///     // or, the same: held_loop::run_ok(&Sandbox::range(...));
/// }
/// ```
macro_rules! scenario {
    ($(#[$m:meta])* fn $name:ident($out:ident) $body:block) => {
        $(#[$m])*
        #[test]
        #[ignore = "a scenario: its parent test runs it inside a sandbox"]
        fn $name() {
            let Some($out) = $crate::common::scenario_out() else {
                return;
            };
            $body
        }

        mod $name {
            /// Runs the scenario inside a sandbox; `None`: skipped.
            pub fn run(sandbox: &$crate::common::Sandbox<'_>) -> Option<String> {
                $crate::common::run_scenario(sandbox, module_path!())
            }

            /// Runs the scenario inside a sandbox and checks that it wrote
            /// `ok` (nothing to check after a skip).
            #[allow(dead_code)]
            pub fn run_ok(sandbox: &$crate::common::Sandbox<'_>) {
                if let Some(text) = run(sandbox) {
                    assert_eq!(text, "ok", "{}", module_path!());
                }
            }
        }
    };
}

/// Runs the scenario at `module_path` (`integration::check::mean_tries`:
/// the child test is `check::mean_tries`) inside `sandbox`; see
/// [`scenario!`].
pub fn run_scenario(sandbox: &Sandbox<'_>, module_path: &str) -> Option<String> {
    let name = module_path
        .split_once("::")
        .map_or(module_path, |(_, rest)| rest);
    let what = if sandbox.netns_only {
        "root (tcploop sandbox --netns-only: a plain network namespace)"
    } else {
        "user and network namespaces (tcploop sandbox)"
    };
    if skip_unless(sandboxes_work(sandbox.netns_only), name, what) {
        return None;
    }
    static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let file = std::env::temp_dir().join(format!(
        "tcploop-scenario-{}-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        name.replace("::", "-")
    ));
    let _ = std::fs::remove_file(&file);
    let mut c = sandbox.command();
    c.arg(std::env::current_exe().expect("test binary path"))
        .args([
            name,
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(SCENARIO_ENV, &file);
    let o = output(&mut c);
    assert!(
        o.status.success(),
        "scenario {name} failed: {}\n{}",
        stdout(&o),
        stderr(&o)
    );
    let text = std::fs::read_to_string(&file)
        .unwrap_or_else(|e| panic!("scenario {name} wrote nothing ({e}): {}", stdout(&o)));
    let _ = std::fs::remove_file(&file);
    Some(text)
}

/// The ephemeral port range of the current network namespace.
pub const RANGE_FILE: &str = "/proc/sys/net/ipv4/ip_local_port_range";
/// The reserved ports of the current network namespace.
pub const RESERVED_FILE: &str = "/proc/sys/net/ipv4/ip_local_reserved_ports";

/// Sets the ephemeral port range to `lo`-`hi`: inside a sandbox only (a
/// scenario's child), never on the host.
pub fn set_range(lo: u16, hi: u16) {
    std::fs::write(RANGE_FILE, format!("{lo} {hi}")).expect("write ip_local_port_range");
}

/// The reserved ports, read whole: one read with a large buffer, because
/// /proc/sys answers EOF to a second read (a value can be longer than a
/// page).
pub fn reserved_now() -> String {
    let mut f = std::fs::File::open(RESERVED_FILE).unwrap();
    let mut buf = vec![0u8; 1 << 19];
    let n = std::io::Read::read(&mut f, &mut buf).unwrap();
    String::from_utf8_lossy(&buf[..n]).trim().to_string()
}

/// A fresh scratch directory `tcploop-<PID>-<NAME>` in the temporary
/// directory (emptied if an earlier run of this process id left it).
pub fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tcploop-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A real Prometheus server (Debian package `prometheus`) on
/// 127.0.0.1:9090 with configuration `config` (YAML), its data under `dir`,
/// killed when dropped; and the address of its web API.
pub fn prometheus(dir: &Path, config: &str) -> (Reaped, &'static str) {
    let web = "127.0.0.1:9090";
    let file = dir.join("prometheus.yml");
    std::fs::write(&file, config).unwrap();
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", file.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address={web}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("prometheus (Debian package prometheus) must be installed");
    (Reaped(child), web)
}

/// `curl -sS --max-time 5 ARGS`: the body, or `None` where curl failed.
pub fn curl(args: &[&str]) -> Option<String> {
    let o = output(
        Command::new("curl")
            .args(["-sS", "--max-time", "5"])
            .args(args),
    );
    o.status.success().then(|| stdout(&o))
}

/// A Prometheus API call; its `data`, once `status` is `success`.
pub fn prom_api(web: &str, path: &str, query: Option<&str>) -> Option<serde_json::Value> {
    let url = format!("http://{web}{path}");
    let q = query.map(|q| format!("query={q}"));
    let mut args = vec![url.as_str()];
    if let Some(q) = &q {
        args.extend(["--data-urlencode", q.as_str()]);
    }
    let text = curl(&args)?;
    // A Prometheus still starting answers 503 "Service Unavailable" in
    // plain text: not yet an answer (the caller polls, bounded).
    let v: serde_json::Value = match serde_json::from_str(&text) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("Prometheus: {path}: not JSON ({e}): {text}");
            return None;
        }
    };
    if v["status"] != "success" {
        eprintln!("Prometheus: {path} {query:?}: {v}");
    }
    (v["status"] == "success").then(|| v["data"].clone())
}

/// Polls until `f` answers (bounded: 30 s, then a panic with `what`).
pub fn until<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(std::time::Instant::now() < deadline, "never: {what}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// Runs `f` as uid/gid 65534 (nobody), for the unprivileged paths.
pub fn as_nobody(c: &mut Command) -> &mut Command {
    use std::os::unix::process::CommandExt;
    c.uid(65534).gid(65534)
}

/// Sends `sig` (e.g. `libc::SIGINT`) to process `pid`.
#[allow(unsafe_code)]
pub fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) with a pid and a signal number; no memory involved.
    let r = unsafe { libc::kill(pid as i32, sig) };
    assert_eq!(
        r,
        0,
        "kill({pid}, {sig}): {}",
        std::io::Error::last_os_error()
    );
}

/// The environment variable that turns a privilege skip into a failure. CI
/// sets it (`.ci/run`): there every privileged test must really run.
pub const REQUIRE_ENV: &str = "TCPLOOP_REQUIRE_PRIVILEGED";

/// Whether this process is root (euid 0).
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Whether BPF programs can plausibly be loaded here: root and a kernel with
/// BTF. The real load may still be refused; tests that need it call
/// [`skip_unless`] with the result of the real probe.
pub fn bpf_plausible() -> bool {
    is_root() && std::path::Path::new("/sys/kernel/btf/vmlinux").exists()
}

/// Skips loudly: returns `true` (the caller returns at once) when `ok` is
/// false, after printing `SKIPPED <test>: <what>` to stderr; panics instead
/// when [`REQUIRE_ENV`] is set, so that CI cannot pass by skipping.
pub fn skip_unless(ok: bool, test: &str, what: &str) -> bool {
    if ok {
        return false;
    }
    if std::env::var_os(REQUIRE_ENV).is_some() {
        panic!("{test} needs {what}, and {REQUIRE_ENV} is set: privileged tests must run here");
    }
    // Straight to the process's stderr: the test harness captures
    // `eprintln!` of a passing test, and a skip must be seen.
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: needs {what}");
    true
}

/// A child process killed and reaped when the test ends, however it ends
/// (an assertion that fails must not leave a server or a client running).
pub struct Reaped(pub std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Where the cgroup v2 hierarchy is mounted (`/sys/fs/cgroup` on a v2
/// host, `/sys/fs/cgroup/unified` on a hybrid one), from mountinfo.
pub fn cgroup2_mount() -> Option<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    text.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        if !right.starts_with("cgroup2 ") {
            return None;
        }
        left.split(' ').nth(4).map(PathBuf::from)
    })
}

/// A cgroup v2 directory made for one test, removed when dropped (however
/// the test ends); the processes the test moved in have exited by then.
pub struct Cgroup(pub PathBuf);

impl Cgroup {
    /// `tcploop-test-<PID>-<NAME>` under the v2 mount; `None` where there
    /// is no v2 hierarchy or the directory cannot be made.
    pub fn new(name: &str) -> Option<Cgroup> {
        let d = cgroup2_mount()?.join(format!("tcploop-test-{}-{name}", std::process::id()));
        std::fs::create_dir(&d).ok()?;
        Some(Cgroup(d))
    }

    /// Makes `docker-<ID>.scope` under the v2 mount: a test-unique id
    /// (from the pid and `salt`), and the cgroup.
    pub fn docker(mount: &Path, salt: u64) -> (Cgroup, String) {
        let id = format!(
            "{:016x}",
            (std::process::id() as u64 + salt).wrapping_mul(0x9e37_79b9_7f4a_7c15)
        )
        .repeat(4);
        let cg = Cgroup(mount.join(format!("docker-{id}.scope")));
        std::fs::create_dir(&cg.0).unwrap();
        (cg, id)
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// Makes a loop to ip:port (bounded), as a plain client would.
pub fn make_loop(ip: &str, port: u16) -> std::net::TcpStream {
    let dest = std::net::SocketAddr::new(ip.parse().unwrap(), port);
    for _ in 0..5000 {
        if let Ok(s) = std::net::TcpStream::connect(dest) {
            if s.local_addr().unwrap() == dest {
                return s;
            }
        }
    }
    panic!("no loop to {dest} in 5000 tries");
}

/// `tcploop ARGS` (an `audit --json` or `watch --json`): its lines, each
/// checked against [`schema`], its exit code and its stderr.
pub(crate) fn audit_json(args: &[&str]) -> (Vec<serde_json::Value>, Option<i32>, String) {
    let o = output(&mut tcploop(args));
    let lines = json_lines(&o);
    lines.iter().for_each(crate::schema::check);
    (lines, o.status.code(), stderr(&o))
}

/// `tcploop watch ARGS` in the background (killed if the test fails
/// half-way, else it would outlive the scenario and hold its output pipes
/// open); its JSON lines arrive on the channel.
pub(crate) fn spawn_watch(args: &[&str]) -> (Reaped, Receiver<serde_json::Value>) {
    let mut child = tcploop(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start tcploop watch");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let v: serde_json::Value =
                serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad JSON {line:?}: {e}"));
            crate::schema::check(&v);
            if tx.send(v).is_err() {
                break;
            }
        }
    });
    (Reaped(child), rx)
}

/// The next event of type `ty` (others are skipped), within 20 s.
pub(crate) fn wait_for(rx: &Receiver<serde_json::Value>, ty: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(v) if v["type"] == ty => return v["data"].clone(),
            Ok(_) => {}
            Err(e) => panic!("no {ty} event from watch: {e}"),
        }
    }
}
