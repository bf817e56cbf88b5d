//! Integration tests of `tcploop run`: the preload guard in real programs
//! the project did not write (python3, curl, node, java, and a C client
//! compiled here), inside sandboxes with the 10-port range 40000-40009 where
//! a connect() to the even port 40004 loops within a few tries.
//!
//! Each program test has a control (the same program without `tcploop run`
//! does connect to itself) and the guarded run: thousands of attempts, in
//! one process, none connected to itself, every one refused, the guard's log
//! showing it did prevent loops, and then a real server binds the port at
//! once (the loops left nothing behind) and the program connects to it
//! normally. In the control, that server cannot bind: the loop, closed,
//! holds the port in TIME_WAIT (the stolen port of the article). A program that is not installed is skipped loudly.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use crate::common::{self, Sandbox};

const RANGE: &str = "40000-40009";
const PORT: &str = "40004";
/// Attempts of the control (a loop comes within a few).
const CONTROL: u32 = 200;
/// Attempts of each guarded run.
const GUARDED: u32 = 10_000;
/// The bound on one program run.
const LIMIT: Duration = Duration::from_secs(240);

/// The preload library under test. Built once per test run with
/// `cargo build -p tcploop-preload` into a target directory of its own
/// (beside the one under test: the running `cargo test` holds that one's
/// lock), so the tests never use a stale library. `TCPLOOP_PRELOAD`
/// overrides.
fn preload_lib() -> PathBuf {
    static LIB: OnceLock<PathBuf> = OnceLock::new();
    LIB.get_or_init(|| {
        if let Some(p) = std::env::var_os("TCPLOOP_PRELOAD") {
            return PathBuf::from(p);
        }
        let target = common::bin()
            .parent()
            .and_then(Path::parent)
            .expect("the tcploop binary lies in <target>/<profile>/")
            .join("preload-test");
        let o = common::output(
            Command::new(env!("CARGO"))
                .args(["build", "--quiet", "-p", "tcploop-preload", "--target-dir"])
                .arg(&target)
                .current_dir(env!("CARGO_MANIFEST_DIR")),
        );
        assert!(
            o.status.success(),
            "cargo build -p tcploop-preload failed:\n{}",
            common::stderr(&o)
        );
        let lib = target.join("debug/libtcploop_preload.so");
        assert!(lib.is_file(), "{} was not built", lib.display());
        lib
    })
    .clone()
}

/// A scratch directory for this test process.
fn scratch() -> PathBuf {
    let d = std::env::temp_dir().join(format!("tcploop-run-tests-{}", std::process::id()));
    std::fs::create_dir_all(&d).expect("scratch dir");
    d
}

/// Whether `prog` is on PATH; says so loudly when it is not.
fn have(prog: &str, test: &str) -> bool {
    let ok = tcploop::preload::resolve_command(prog.as_ref(), std::env::var_os("PATH").as_deref())
        .is_some();
    if !ok {
        eprintln!(
            "SKIPPED {test}: `{prog}` is not installed (apt-get install it to run this test)"
        );
    }
    ok
}

/// Runs `c`, killing it after [`LIMIT`].
fn bounded(mut c: Command) -> Output {
    c.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = c
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {c:?}: {e}"));
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(LIMIT) {
        Ok(o) => o.expect("wait"),
        Err(_) => {
            common::signal(pid, libc::SIGKILL);
            panic!("{c:?} ran longer than {LIMIT:?}");
        }
    }
}

/// `tcploop sandbox --range RANGE -- [tcploop run --log --] PROGRAM...`.
fn in_sandbox(guarded: bool, program: &[OsString]) -> Command {
    let mut c = Sandbox::range(RANGE).command();
    if guarded {
        c.arg(common::bin()).args(["run", "--log", "--"]);
    }
    c.args(program).env("TCPLOOP_PRELOAD", preload_lib());
    c
}

/// What a client program reports (one JSON line on stdout).
#[derive(Debug)]
struct Tally {
    attempts: u64,
    loops: u64,
    refused: u64,
    other: u64,
    /// `true`, or the error binding the real server.
    bound: serde_json::Value,
    served: bool,
}

fn tally(o: &Output) -> Tally {
    let text = common::stdout(o);
    let line = text
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| {
            panic!(
                "no JSON tally (exit {:?}):\n{text}\n{}",
                o.status,
                common::stderr(o)
            )
        });
    let v: serde_json::Value = serde_json::from_str(line).expect("tally JSON");
    let n = |k: &str| v[k].as_u64().unwrap_or_else(|| panic!("{k} in {line}"));
    Tally {
        attempts: n("attempts"),
        loops: n("loops"),
        refused: n("refused"),
        other: n("other"),
        bound: v["bound"].clone(),
        served: v["served"] == true,
    }
}

/// The guard's log lines in stderr.
fn prevented(o: &Output) -> Vec<String> {
    common::stderr(o)
        .lines()
        .filter(|l| l.contains("prevented a TCP loop"))
        .map(str::to_owned)
        .collect()
}

/// The control and the guarded run of one client. `args(n)` is the client
/// command for `n` attempts; `via`: the interposed call that must have
/// caught the loops (when the program's path is known exactly).
fn prove(name: &str, args: impl Fn(u32) -> Vec<OsString>, via: Option<&str>) {
    if common::no_sandboxes() {
        return;
    }
    let control = bounded(in_sandbox(false, &args(CONTROL)));
    let c = tally(&control);
    assert!(
        c.loops >= 1,
        "{name} control: no loop in {CONTROL} attempts, so the test proves nothing: {c:?}\n{}",
        common::stderr(&control)
    );
    assert!(prevented(&control).is_empty());
    assert_ne!(
        c.bound,
        serde_json::Value::Bool(true),
        "{name} control: the loop, closed, leaves its port in TIME_WAIT, so the real server \
         cannot bind it: {c:?}"
    );

    let guarded = bounded(in_sandbox(true, &args(GUARDED)));
    let g = tally(&guarded);
    let log = prevented(&guarded);
    let err = common::stderr(&guarded);
    assert_eq!(g.attempts, u64::from(GUARDED), "{name}: {g:?}");
    assert_eq!(
        g.loops, 0,
        "{name} connected to itself under tcploop run: {g:?}\n{err}"
    );
    assert_eq!(
        (g.refused, g.other),
        (g.attempts, 0),
        "{name}: every attempt must be refused: {g:?}\n{err}"
    );
    assert!(
        !log.is_empty(),
        "{name}: the guard logged no prevented loop, so none happened to prevent: {g:?}\n{err}"
    );
    if let Some(via) = via {
        assert!(
            log.iter().all(|l| l.ends_with(via)),
            "{name}: loops must be caught in {via}:\n{}",
            log.join("\n")
        );
    }
    assert_eq!(
        (&g.bound, g.served),
        (&serde_json::Value::Bool(true), true),
        "{name}: after the attempts, the real server must bind the port at once and the \
         program must reach it: {g:?}\n{err}"
    );
    eprintln!(
        "{name}: control looped {} time(s) in {CONTROL}; guarded: 0 loops in {} attempts, {} \
         prevented",
        c.loops,
        g.attempts,
        log.len()
    );
}

// ---------------------------------------------------------------------------
// Python

const PYTHON_CLIENT: &str = include_str!("fixtures/run_client.py");

fn python(mode: &'static str) -> impl Fn(u32) -> Vec<OsString> {
    move |n| {
        ["python3", "-c", PYTHON_CLIENT, mode, &n.to_string(), PORT]
            .map(OsString::from)
            .to_vec()
    }
}

#[test]
fn python_blocking_connect_never_loops() {
    if have("python3", "python_blocking_connect_never_loops") {
        prove("python3 (blocking)", python("blocking"), Some("connect()"));
    }
}

#[test]
fn python_ipv6_connect_never_loops() {
    if have("python3", "python_ipv6_connect_never_loops") {
        prove("python3 (IPv6, ::1)", python("ipv6"), Some("connect()"));
    }
}

#[test]
fn python_tcp_fast_open_sendto_never_loops() {
    if have("python3", "python_tcp_fast_open_sendto_never_loops") {
        prove(
            "python3 (sendto MSG_FASTOPEN)",
            python("fastopen-sendto"),
            Some("sendto/sendmsg(MSG_FASTOPEN)"),
        );
    }
}

#[test]
fn python_tcp_fastopen_connect_never_loops() {
    if have("python3", "python_tcp_fastopen_connect_never_loops") {
        prove(
            "python3 (TCP_FASTOPEN_CONNECT)",
            python("fastopen-connect"),
            Some("connect()"),
        );
    }
}

#[test]
fn python_connect_with_timeout_never_loops() {
    if have("python3", "python_connect_with_timeout_never_loops") {
        prove(
            "python3 (settimeout)",
            python("timeout"),
            Some("getsockopt(SO_ERROR)"),
        );
    }
}

// ---------------------------------------------------------------------------
// C

const C_CLIENT: &str = include_str!("fixtures/run_client.c");

/// The C client, compiled once with the system's `cc`.
fn c_client() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| cc("client", C_CLIENT, &["-pthread"]))
        .clone()
}

/// Compiles `src` with `cc -O2 FLAGS` into the scratch directory.
fn cc(name: &str, src: &str, flags: &[&str]) -> PathBuf {
    let dir = scratch();
    let c = dir.join(format!("{name}.c"));
    let bin = dir.join(name);
    std::fs::write(&c, src).expect("write C source");
    let o = common::output(
        Command::new("cc")
            .args(["-O2", "-o"])
            .arg(&bin)
            .arg(&c)
            .args(flags),
    );
    assert!(o.status.success(), "cc {name}: {}", common::stderr(&o));
    bin
}

fn c(mode: &'static str) -> impl Fn(u32) -> Vec<OsString> {
    move |n| {
        vec![
            c_client().into_os_string(),
            mode.into(),
            n.to_string().into(),
            PORT.into(),
        ]
    }
}

#[test]
fn c_blocking_connect_never_loops() {
    if have("cc", "c_blocking_connect_never_loops") {
        prove("C (blocking)", c("blocking"), Some("connect()"));
    }
}

#[test]
fn c_client_with_four_threads_never_loops() {
    if have("cc", "c_client_with_four_threads_never_loops") {
        prove("C (4 threads, blocking)", c("threads"), Some("connect()"));
    }
}

/// A program that closed its stderr gets fd 2 for its next socket: the
/// guard's log line must not go into that socket (a write to the reset
/// socket would raise SIGPIPE and kill the program).
#[test]
fn c_client_without_stderr_is_not_hurt_by_the_log() {
    if crate::common::no_sandboxes() {
        return;
    }
    if !have("cc", "c_client_without_stderr_is_not_hurt_by_the_log") {
        return;
    }
    let control = tally(&bounded(in_sandbox(false, &c("nostderr")(CONTROL))));
    assert!(control.loops >= 1, "control: {control:?}");
    let o = bounded(in_sandbox(true, &c("nostderr")(GUARDED)));
    assert!(o.status.success(), "{:?}\n{}", o.status, common::stderr(&o));
    let g = tally(&o);
    assert_eq!(
        (g.loops, g.refused, g.other),
        (0, u64::from(GUARDED), 0),
        "{g:?}"
    );
    assert_eq!(g.bound, serde_json::Value::Bool(true), "{g:?}");
}

#[test]
fn c_nonblocking_connect_with_so_error_never_loops() {
    if have("cc", "c_nonblocking_connect_with_so_error_never_loops") {
        prove(
            "C (non-blocking, poll, SO_ERROR)",
            c("nonblocking"),
            Some("getsockopt(SO_ERROR)"),
        );
    }
}

/// `SO_ERROR` asked through a `dup()` of the socket: the guard has no
/// pending port for that descriptor and checks it in full.
#[test]
fn c_nonblocking_connect_checked_through_a_dup_never_loops() {
    if have(
        "cc",
        "c_nonblocking_connect_checked_through_a_dup_never_loops",
    ) {
        prove(
            "C (non-blocking, SO_ERROR through a dup)",
            c("dup"),
            Some("getsockopt(SO_ERROR)"),
        );
    }
}

#[test]
fn c_nonblocking_connect_called_again_never_loops() {
    if have("cc", "c_nonblocking_connect_called_again_never_loops") {
        prove(
            "C (non-blocking, poll, connect again)",
            c("again"),
            Some("connect()"),
        );
    }
}

// ---------------------------------------------------------------------------
// curl: one process, one transfer per URL of a [1-N] glob, each a new
// connection; `-w` prints both ends of each.

const CURL_SCRIPT: &str = include_str!("fixtures/run_curl.sh");

#[test]
fn curl_never_loops() {
    if crate::common::no_sandboxes() {
        return;
    }
    if !(have("curl", "curl_never_loops") && have("python3", "curl_never_loops")) {
        return;
    }
    let dir = scratch().join("curl");
    std::fs::create_dir_all(&dir).unwrap();
    let script = dir.join("curl.sh");
    std::fs::write(&script, CURL_SCRIPT).unwrap();
    let run = |guard: bool| {
        let mut c = Sandbox::range(RANGE).command();
        c.arg("sh")
            .arg(&script)
            .args([
                if guard { GUARDED } else { CONTROL }.to_string(),
                PORT.into(),
            ])
            .arg(common::bin())
            .arg(if guard { "1" } else { "0" })
            .current_dir(&dir)
            .env("TCPLOOP_PRELOAD", preload_lib());
        bounded(c)
    };
    let control = tally(&run(false));
    assert!(control.loops >= 1, "curl control: no loop: {control:?}");
    assert_ne!(control.bound, serde_json::Value::Bool(true), "{control:?}");
    let o = run(true);
    let g = tally(&o);
    let log = prevented(&o);
    assert_eq!(
        (g.attempts, g.loops, g.refused, g.other),
        (u64::from(GUARDED), 0, u64::from(GUARDED), 0),
        "curl under tcploop run: {g:?}\n{}",
        common::stderr(&o)
    );
    assert!(!log.is_empty(), "no prevented loop logged: {g:?}");
    assert!(log.iter().all(|l| l.ends_with("getsockopt(SO_ERROR)")));
    assert_eq!(
        (&g.bound, g.served),
        (&serde_json::Value::Bool(true), true),
        "{g:?}"
    );
    eprintln!(
        "curl: control looped {} time(s); guarded: 0 loops in {} transfers, {} prevented",
        control.loops,
        g.attempts,
        log.len()
    );
}

// ---------------------------------------------------------------------------
// Node (libuv: non-blocking connect, epoll, SO_ERROR)

const NODE_CLIENT: &str = include_str!("fixtures/run_client.js");

#[test]
fn node_never_loops() {
    if have("node", "node_never_loops") {
        prove(
            "node",
            |n| {
                ["node", "-e", NODE_CLIENT, "node", &n.to_string(), PORT]
                    .map(OsString::from)
                    .to_vec()
            },
            Some("getsockopt(SO_ERROR)"),
        );
    }
}

// ---------------------------------------------------------------------------
// Java (java.net.Socket, JDK 17: NioSocketImpl), run from source

const JAVA_CLIENT: &str = include_str!("fixtures/Client.java");

fn java(mode: &'static str) -> impl Fn(u32) -> Vec<OsString> {
    static SRC: OnceLock<PathBuf> = OnceLock::new();
    let src = SRC
        .get_or_init(|| {
            let p = scratch().join("Client.java");
            std::fs::write(&p, JAVA_CLIENT).expect("write Client.java");
            p
        })
        .clone();
    move |n| {
        vec![
            "java".into(),
            src.clone().into_os_string(),
            mode.into(),
            n.to_string().into(),
            PORT.into(),
        ]
    }
}

#[test]
fn java_blocking_socket_never_loops() {
    if have("java", "java_blocking_socket_never_loops") {
        prove("java (Socket.connect)", java("blocking"), None);
    }
}

#[test]
fn java_socket_with_timeout_never_loops() {
    if have("java", "java_socket_with_timeout_never_loops") {
        prove(
            "java (Socket.connect with timeout)",
            java("timeout"),
            Some("getsockopt(SO_ERROR)"),
        );
    }
}

// ---------------------------------------------------------------------------
// The command itself

/// `tcploop run ARGS` outside any sandbox (nothing here opens a socket).
fn run(args: &[&str]) -> Command {
    let mut c = common::tcploop(&["run"]);
    c.args(args).env("TCPLOOP_PRELOAD", preload_lib());
    c
}

#[test]
fn exit_status_passes_through() {
    let o = common::output(&mut run(&["--", "sh", "-c", "exit 7"]));
    assert_eq!(o.status.code(), Some(7), "{}", common::stderr(&o));
    assert_eq!(common::stderr(&o), "", "a dynamic program gets no warning");
}

#[test]
fn ld_preload_is_set_and_an_existing_value_kept() {
    let lib = preload_lib().canonicalize().unwrap();
    let o = common::output(&mut run(&["--", "sh", "-c", "printf %s \"$LD_PRELOAD\""]));
    assert_eq!(common::stdout(&o), lib.display().to_string());
    let o = common::output(
        run(&[
            "--log",
            "sh",
            "-c",
            "printf '%s|%s' \"$LD_PRELOAD\" \"$TCPLOOP_LOG\"",
        ])
        .env("LD_PRELOAD", "/nonexistent/other.so"),
    );
    assert_eq!(
        common::stdout(&o),
        format!("{}:/nonexistent/other.so|1", lib.display())
    );
}

#[test]
fn missing_library_is_a_clear_error() {
    let o = common::output(run(&["--", "true"]).env("TCPLOOP_PRELOAD", "/nonexistent/lib.so"));
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(
        common::stderr(&o),
        "tcploop: error: TCPLOOP_PRELOAD=/nonexistent/lib.so does not exist\n"
    );
    // A tcploop installed alone (as `cargo install` does) says how to get it.
    let dir = scratch().join("alone");
    std::fs::create_dir_all(&dir).unwrap();
    let alone = dir.join("tcploop");
    std::fs::copy(common::bin(), &alone).unwrap();
    let o = common::output(
        Command::new(&alone)
            .args(["run", "--", "true"])
            .env_remove("TCPLOOP_PRELOAD"),
    );
    assert_eq!(o.status.code(), Some(2));
    let err = common::stderr(&o);
    assert!(
        err.contains("cannot find the preload guard library libtcploop_preload.so"),
        "{err}"
    );
    assert!(
        err.contains("cargo build --release -p tcploop-preload"),
        "{err}"
    );
}

#[test]
fn unknown_command_is_a_clear_error() {
    let o = common::output(&mut run(&["--", "no-such-command-tcploop"]));
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(
        common::stderr(&o),
        "tcploop: error: no-such-command-tcploop: command not found\n"
    );
}

const EXIT3: &str = include_str!("fixtures/exit3.c");

/// A static executable that exits 3, built once, or `None` (said loudly)
/// when this system cannot link statically (no libc.a).
fn static_binary() -> Option<PathBuf> {
    static BIN: OnceLock<Option<PathBuf>> = OnceLock::new();
    let bin = BIN.get_or_init(|| {
        if !have("cc", "static programs") {
            return None;
        }
        let dir = scratch();
        let c = dir.join("exit3.c");
        let bin = dir.join("exit3-static");
        std::fs::write(&c, EXIT3).unwrap();
        let o = common::output(
            Command::new("cc")
                .arg("-static")
                .arg("-o")
                .arg(&bin)
                .arg(&c),
        );
        if o.status.success() {
            Some(bin)
        } else {
            None
        }
    });
    if bin.is_none() {
        eprintln!("SKIPPED: `cc -static` cannot link here (libc.a missing?)");
    }
    bin.clone()
}

#[test]
fn static_programs_are_named_and_still_run() {
    let Some(bin) = static_binary() else { return };
    let o = common::output(&mut run(&["--", bin.to_str().unwrap()]));
    assert_eq!(
        o.status.code(),
        Some(3),
        "the program still runs: {}",
        common::stderr(&o)
    );
    let err = common::stderr(&o);
    assert!(
        err.starts_with("tcploop run: warning: ") && err.contains("is statically linked"),
        "{err}"
    );
    assert!(err.contains("UNPROTECTED"), "{err}");
}

#[test]
fn strict_refuses_to_run_an_unprotected_program() {
    let Some(bin) = static_binary() else { return };
    let o = common::output(&mut run(&["--strict", "--", bin.to_str().unwrap()]));
    assert_eq!(
        o.status.code(),
        Some(2),
        "refused, not run (it would exit 3)"
    );
    assert!(common::stderr(&o).contains("--strict: not running"));
}

#[test]
fn scripts_are_followed_to_their_interpreter() {
    let Some(bin) = static_binary() else { return };
    let script = scratch().join("script");
    std::fs::write(&script, format!("#!{}\n", bin.display())).unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let o = common::output(&mut run(&["--", script.to_str().unwrap()]));
    assert_eq!(o.status.code(), Some(3));
    let err = common::stderr(&o);
    assert!(
        err.contains(&format!(
            "{} is a script run by {}",
            script.display(),
            bin.display()
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!("{} is statically linked", bin.display())),
        "{err}"
    );
}

#[test]
fn go_programs_are_named() {
    if !have("cc", "go_programs_are_named") {
        return;
    }
    // What the Go linker leaves in every binary: a .go.buildinfo section.
    let fake_go = cc(
        "fake-go",
        "__attribute__((section(\".go.buildinfo\"), used)) static const char b[32] = \
         \"\\xff Go buildinf:\";\nint main(void) { return 0; }\n",
        &[],
    );
    let o = common::output(&mut run(&["--", fake_go.to_str().unwrap()]));
    assert_eq!(o.status.code(), Some(0));
    let err = common::stderr(&o);
    assert!(err.contains("is a Go program"), "{err}");
    assert!(err.contains("gives up after 3 tries"), "{err}");
}
