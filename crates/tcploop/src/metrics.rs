//! Prometheus metrics of `tcploop watch`, and the small HTTP responder that
//! serves them.
//!
//! The metrics are kept and encoded by `prometheus-client` (the Prometheus
//! organisation's crate) in the OpenMetrics text format, which Prometheus
//! asks for when it scrapes; [`to_prometheus_text`] derives the classic text
//! format from it, for node_exporter's textfile collector, `promtool check
//! metrics` and any client that does not ask for OpenMetrics:
//!
//! | metric | type | meaning |
//! | --- | --- | --- |
//! | `tcploop_loops{port,command,netns,container,pod}` | gauge | self-connected sockets present now, by port and owning command (`unknown` when no owner could be read), namespace (`--all-netns`, outside the watcher's own), the owner's container and pod (see [`LoopLabels`]); a series that was seen stays, at 0, after its loops go away, for an hour; at most [`MAX_LOOP_SERIES`] series |
//! | `tcploop_loops_present` | gauge | all self-connected sockets present now |
//! | `tcploop_loops_seen_total{port,command}` | counter | loops that appeared since the start (with eBPF events, every loop that formed, also those gone before any scan could see them; dropped with its `tcploop_loops` series) |
//! | `tcploop_loop_series_overflow_total` | counter | loops that appeared while [`MAX_LOOP_SERIES`] series existed, so got no series of their own (still counted in `tcploop_loops_present`) |
//! | `tcploop_exposed_listeners` | gauge | listening ports inside the ephemeral range and not reserved (clients of those services may loop while they are down) |
//! | `tcploop_sockets` | gauge | TCP sockets seen by the last scan |
//! | `tcploop_scan_duration_seconds` | gauge | how long the last scan took |
//! | `tcploop_scans_total` | counter | scans done |
//! | `tcploop_scan_errors_total` | counter | scans that failed (logged, not fatal) |
//! | `tcploop_kills_total` | counter | loops destroyed by `--kill-after` |
//! | `tcploop_kill_errors_total` | counter | destroys that failed |
//! | `tcploop_namespaces` | gauge | network namespaces the last scan looked at (1 without `--all-netns`; with it, idle ones included) |
//! | `tcploop_namespaces_skipped` | gauge | namespaces the last scan could not enter (`--all-netns` without the privileges): their loops go unseen |
//! | `tcploop_build_info{version,arch}` | gauge | always 1; the labels say which build runs (for dashboards and upgrades across a fleet) |
//!
//! An alert rule as simple as `tcploop_loops_present > 0` fires within one
//! scan interval plus one scrape interval of a loop appearing.

use std::collections::HashSet;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// The labels of the per-loop series. `netns`, `container` and `pod` are
/// left out of a series when empty (the loop is in the watcher's own
/// namespace, its owner in no container, or in no pod), as Prometheus
/// treats an empty label as no label.
///
/// Their values are bounded: `netns` is a namespace inode (one a live
/// namespace), `container` is `runtime/name` (the container's name, or
/// the first 12 digits of its id: one a container), `pod` is
/// `namespace/name` or the pod UID; and the family holds at most
/// [`MAX_LOOP_SERIES`] series, dropping those at 0 for an hour.
#[derive(Debug, Clone, Default, Hash, PartialEq, Eq, PartialOrd, Ord)]
pub struct LoopLabels {
    /// The looped port.
    pub port: u16,
    /// The owning command (`comm`), or `unknown`.
    pub command: String,
    /// The loop's network namespace inode, when it is not the watcher's own.
    pub netns: String,
    /// The owner's container or systemd service
    /// ([`crate::container::Container::label`]), if any.
    pub container: String,
    /// The owner's Kubernetes pod ([`crate::container::Container::pod_label`]), if any.
    pub pod: String,
}

impl EncodeLabelSet for LoopLabels {
    fn encode(
        &self,
        encoder: &mut prometheus_client::encoding::LabelSetEncoder,
    ) -> Result<(), std::fmt::Error> {
        let mut v: Vec<(&str, String)> = vec![
            ("port", self.port.to_string()),
            ("command", self.command.clone()),
        ];
        for (k, val) in [
            ("netns", &self.netns),
            ("container", &self.container),
            ("pod", &self.pod),
        ] {
            if !val.is_empty() {
                v.push((k, val.clone()));
            }
        }
        v.encode(encoder)
    }
}

/// The labels of `tcploop_build_info`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    /// The crate version (`CARGO_PKG_VERSION`).
    version: &'static str,
    /// The CPU architecture it was built for (`std::env::consts::ARCH`).
    arch: &'static str,
}

/// What one scan found, as the metrics need it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ScanSample {
    /// One entry per self-connected socket present.
    pub loops: Vec<LoopLabels>,
    /// Loops that appeared in this scan (each counted once).
    pub appeared: Vec<LoopLabels>,
    /// Listening ports exposed in the ephemeral range.
    pub exposed_listeners: u64,
    /// Sockets seen.
    pub sockets: u64,
    /// Network namespaces scanned (1 without `--all-netns`).
    pub namespaces: u64,
    /// Network namespaces that could not be scanned (`--all-netns`).
    pub namespaces_skipped: u64,
    /// How long the scan took.
    pub duration: Duration,
}

/// The most `tcploop_loops{port,command}` series kept at once: a host whose
/// loops come from ever new ports or commands would otherwise grow the page
/// (and Prometheus's series count) without bound.
pub const MAX_LOOP_SERIES: usize = 500;

/// How long a `tcploop_loops` series stays at 0 before it is dropped.
pub const RETIRE_AFTER: Duration = Duration::from_secs(3600);

/// The metrics of a watch.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    loops: Family<LoopLabels, Gauge>,
    /// Each series, and when it last had a loop.
    known: Mutex<std::collections::HashMap<LoopLabels, Instant>>,
    series_limit: usize,
    series_overflow: Counter,
    loops_present: Gauge,
    loops_seen: Family<LoopLabels, Counter>,
    exposed_listeners: Gauge,
    sockets: Gauge,
    namespaces: Gauge,
    namespaces_skipped: Gauge,
    scan_duration: Gauge<f64, AtomicU64>,
    scans: Counter,
    scan_errors: Counter,
    kills: Counter,
    kill_errors: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// A registry with every metric at zero.
    pub fn new() -> Metrics {
        Metrics::with_series_limit(MAX_LOOP_SERIES)
    }

    /// [`Metrics::new`] with another cap on the `tcploop_loops` series.
    pub fn with_series_limit(series_limit: usize) -> Metrics {
        let mut registry = Registry::with_prefix("tcploop");
        let loops = Family::<LoopLabels, Gauge>::default();
        let loops_present = Gauge::default();
        let loops_seen = Family::<LoopLabels, Counter>::default();
        let exposed_listeners = Gauge::default();
        let sockets = Gauge::default();
        let namespaces = Gauge::default();
        let namespaces_skipped = Gauge::default();
        let scan_duration = Gauge::<f64, AtomicU64>::default();
        let scans = Counter::default();
        let scan_errors = Counter::default();
        let kills = Counter::default();
        let kill_errors = Counter::default();
        let build_info = Family::<BuildLabels, Gauge>::default();
        build_info
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
                arch: std::env::consts::ARCH,
            })
            .set(1);
        registry.register(
            "build_info",
            "Always 1: the version and architecture of the running tcploop",
            build_info,
        );
        let series_overflow = Counter::default();
        registry.register(
            "loops",
            "Self-connected TCP sockets present now, by port and owning command",
            loops.clone(),
        );
        registry.register(
            "loops_present",
            "All self-connected TCP sockets present now",
            loops_present.clone(),
        );
        registry.register(
            "loops_seen",
            "Self-connected TCP sockets that appeared since the watch started",
            loops_seen.clone(),
        );
        registry.register(
            "exposed_listeners",
            "Listening ports inside the ephemeral range and not reserved",
            exposed_listeners.clone(),
        );
        registry.register(
            "sockets",
            "TCP sockets seen by the last scan",
            sockets.clone(),
        );
        registry.register(
            "namespaces",
            "Network namespaces scanned by the last scan",
            namespaces.clone(),
        );
        registry.register(
            "namespaces_skipped",
            "Network namespaces the last scan could not enter (their loops go unseen)",
            namespaces_skipped.clone(),
        );
        registry.register(
            "scan_duration_seconds",
            "Duration of the last scan in seconds",
            scan_duration.clone(),
        );
        registry.register("scans", "Scans done", scans.clone());
        registry.register(
            "scan_errors",
            "Scans that failed (logged, not fatal)",
            scan_errors.clone(),
        );
        registry.register(
            "kills",
            "Self-connected sockets destroyed by --kill-after",
            kills.clone(),
        );
        registry.register(
            "kill_errors",
            "Destroys of self-connected sockets that failed",
            kill_errors.clone(),
        );
        registry.register(
            "loop_series_overflow",
            "Loops that appeared while the cap on tcploop_loops series was reached",
            series_overflow.clone(),
        );
        Metrics {
            registry,
            loops,
            known: Mutex::new(Default::default()),
            series_limit,
            series_overflow,
            loops_present,
            loops_seen,
            exposed_listeners,
            sockets,
            namespaces,
            namespaces_skipped,
            scan_duration,
            scans,
            scan_errors,
            kills,
            kill_errors,
        }
    }

    /// Records a successful scan: every loop series is set to its count now
    /// (series seen before and absent now drop to 0, and are dropped after
    /// [`RETIRE_AFTER`] at 0).
    pub fn record_scan(&self, s: &ScanSample) {
        self.record_scan_at(s, Instant::now());
    }

    /// [`Metrics::record_scan`] at a given time (tests).
    pub fn record_scan_at(&self, s: &ScanSample, now: Instant) {
        self.record_loops_at(&s.loops, &s.appeared, now);
        self.exposed_listeners.set(s.exposed_listeners as i64);
        self.sockets.set(s.sockets as i64);
        self.namespaces.set(s.namespaces as i64);
        self.namespaces_skipped.set(s.namespaces_skipped as i64);
        self.scan_duration.set(s.duration.as_secs_f64());
        self.scans.inc();
    }

    /// Records the loops present now and those that just appeared, without
    /// a scan: `watch` on kernel events calls it on every event.
    pub fn record_loops(&self, present: &[LoopLabels], appeared: &[LoopLabels]) {
        self.record_loops_at(present, appeared, Instant::now());
    }

    fn record_loops_at(&self, present: &[LoopLabels], appeared: &[LoopLabels], now: Instant) {
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        let mut counts: std::collections::HashMap<&LoopLabels, i64> = Default::default();
        for l in present {
            *counts.entry(l).or_default() += 1;
        }
        known.retain(|l, last| {
            let keep =
                counts.contains_key(l) || now.saturating_duration_since(*last) < RETIRE_AFTER;
            if !keep {
                self.loops.remove(l);
                self.loops_seen.remove(l);
            }
            keep
        });
        for l in known.keys() {
            if !counts.contains_key(l) {
                self.loops.get_or_create(l).set(0);
            }
        }
        for (l, n) in &counts {
            if !known.contains_key(*l) && known.len() >= self.series_limit {
                continue;
            }
            self.loops.get_or_create(l).set(*n);
            known.insert((*l).clone(), now);
        }
        // a loop reported by a kernel event may be gone already: it still
        // gets its series (at 0), so that it is counted as seen
        for l in appeared {
            if !known.contains_key(l) && known.len() < self.series_limit {
                self.loops.get_or_create(l).set(0);
                known.insert(l.clone(), now);
            }
        }
        for l in appeared {
            if known.contains_key(l) {
                self.loops_seen.get_or_create(l).inc();
            } else {
                self.series_overflow.inc();
            }
        }
        self.loops_present.set(present.len() as i64);
    }

    /// Records a failed scan.
    pub fn record_scan_error(&self) {
        self.scans.inc();
        self.scan_errors.inc();
    }

    /// Records a destroy attempt.
    pub fn record_kill(&self, ok: bool) {
        if ok {
            self.kills.inc();
        } else {
            self.kill_errors.inc();
        }
    }

    /// The OpenMetrics text exposition (ends with `# EOF`).
    pub fn render(&self) -> String {
        let mut s = String::with_capacity(2048);
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut s, &self.registry);
        s
    }
}

/// The content type of [`Metrics::render`]'s text (OpenMetrics).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The content type of [`to_prometheus_text`]'s text (the classic format).
pub const CONTENT_TYPE_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Turns the OpenMetrics exposition into the classic Prometheus text format
/// (0.0.4), which node_exporter's textfile collector and `promtool check
/// metrics` read. `prometheus-client` only writes OpenMetrics, and the two
/// differ, for what this module registers, in two points only: a counter
/// family is named without `_total` in OpenMetrics (`# TYPE x counter`,
/// sample `x_total`) and with it in the classic format; OpenMetrics ends
/// with `# EOF` (and may carry `# UNIT` lines), the classic format has
/// neither. Samples pass through unchanged.
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let counters: HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|r| r.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|p| line.strip_prefix(p).map(|rest| (p, rest)));
        match meta {
            Some((prefix, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                out.push_str(prefix);
                out.push_str(name);
                if counters.contains(name) {
                    out.push_str("_total");
                }
                out.push(' ');
                out.push_str(tail);
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// Writes `text` to `path` atomically, mode 0644, through
/// [`crate::safefile`]: a temporary file with a random name created with
/// `O_EXCL | O_NOFOLLOW` in the same directory, then `rename(2)`, so
/// node_exporter's textfile collector never reads half a file and a symlink
/// planted in a shared directory is never followed.
pub fn write_textfile(
    path: &std::path::Path,
    text: &str,
) -> Result<(), crate::safefile::SafeFileError> {
    crate::safefile::write(path, text.as_bytes(), 0o644)
}

/// The page served at `/metrics`, replaced after each scan.
pub type Page = Arc<Mutex<String>>;

/// How long one client has for its whole request (request line and
/// headers), however slowly it sends them.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(5);
/// The largest request head (request line and headers) read: 8 KiB.
pub const MAX_REQUEST_HEAD: usize = 8 * 1024;
/// The most connections served at once, each on a thread of its own; one
/// more is answered `503` at once and closed.
pub const MAX_CONNECTIONS: usize = 32;

/// Serves `GET /metrics` (and `HEAD`) on `listener` from `page` (OpenMetrics
/// text, as [`Metrics::render`] makes it), until the process exits.
///
/// Written by hand on `std::net::TcpListener`, about a hundred lines:
/// Prometheus only needs a GET answered with a body, and no small
/// synchronous HTTP server crate is well kept (tiny_http, and rouille built
/// on it, have had no release since 2022; hyper and axum need an async
/// runtime this tool has no other use for). A request whose `Accept` header
/// names `application/openmetrics-text` (Prometheus sends that) gets the
/// page as is; any other gets [`to_prometheus_text`].
///
/// No client can block the others: each connection is served on a thread of
/// its own, at most [`MAX_CONNECTIONS`] at once (beyond that, `503` and
/// close); a request must arrive whole within [`REQUEST_DEADLINE`] (a
/// slowloris client sending one byte every few seconds is cut off then) and
/// within [`MAX_REQUEST_HEAD`] bytes (`431` otherwise). A method other than
/// GET and HEAD gets `405` with `Allow: GET, HEAD`; a malformed request line
/// gets `400`. Each connection gets one answer and is closed.
pub fn serve(listener: TcpListener, page: Page) -> io::Result<SocketAddr> {
    let addr = listener.local_addr()?;
    let active = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    std::thread::Builder::new()
        .name("metrics-http".into())
        .spawn(move || {
            for conn in listener.incoming() {
                let stream = match conn {
                    Ok(s) => s,
                    // EMFILE and friends: back off instead of spinning.
                    Err(_) => {
                        std::thread::sleep(Duration::from_millis(100));
                        continue;
                    }
                };
                use std::sync::atomic::Ordering::SeqCst;
                if active.fetch_add(1, SeqCst) >= MAX_CONNECTIONS {
                    active.fetch_sub(1, SeqCst);
                    let _ = busy(stream);
                    continue;
                }
                let (page, active2) = (page.clone(), active.clone());
                let spawned = std::thread::Builder::new()
                    .name("metrics-conn".into())
                    .spawn(move || {
                        let _ = answer(stream, &page);
                        active2.fetch_sub(1, SeqCst);
                    });
                if spawned.is_err() {
                    active.fetch_sub(1, SeqCst);
                }
            }
        })?;
    Ok(addr)
}

/// `503` to a connection over the cap, without reading its request.
fn busy(mut stream: TcpStream) -> io::Result<()> {
    stream.set_write_timeout(Some(Duration::from_secs(1)))?;
    stream.write_all(
        b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nRetry-After: 1\r\nConnection: close\r\n\r\n",
    )
}

/// What to answer to a request line.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    Metrics { head: bool },
    Root,
    NotFound,
    BadMethod,
    BadRequest,
}

fn route(request_line: &str) -> Route {
    let mut it = request_line.split_whitespace();
    let (Some(method), Some(target), Some(version), None) =
        (it.next(), it.next(), it.next(), it.next())
    else {
        return Route::BadRequest;
    };
    if !matches!(version, "HTTP/1.0" | "HTTP/1.1") || !target.starts_with('/') {
        return Route::BadRequest;
    }
    if !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Route::BadRequest;
    }
    let head = match method {
        "GET" => false,
        "HEAD" => true,
        _ => return Route::BadMethod,
    };
    let path = target.split('?').next().unwrap_or(target);
    match path {
        "/metrics" => Route::Metrics { head },
        "/" => Route::Root,
        _ => Route::NotFound,
    }
}

/// How reading a request head ended.
#[derive(Debug, PartialEq, Eq)]
enum Head {
    /// The whole head (request line and headers).
    Complete(String),
    /// Larger than [`MAX_REQUEST_HEAD`].
    TooLarge,
    /// Not whole by the deadline, or the client closed first.
    Incomplete,
}

/// Reads the request head by the deadline: the read timeout is what is left
/// of it before each read, so a client that trickles bytes gets no more
/// time than one that sends nothing.
fn read_head(stream: &mut TcpStream, deadline: std::time::Instant) -> io::Result<Head> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Ok(Head::Incomplete);
        }
        stream.set_read_timeout(Some(left))?;
        let n = match stream.read(&mut chunk) {
            Ok(0) => return Ok(Head::Incomplete),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Ok(Head::Incomplete)
            }
            Err(e) => return Err(e),
        };
        buf.extend_from_slice(&chunk[..n]);
        let end = buf
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map(|p| p + 4)
            .or_else(|| buf.windows(2).position(|w| w == b"\n\n").map(|p| p + 2));
        if let Some(end) = end {
            if end > MAX_REQUEST_HEAD {
                return Ok(Head::TooLarge);
            }
            buf.truncate(end);
            return Ok(Head::Complete(String::from_utf8_lossy(&buf).into_owned()));
        }
        if buf.len() > MAX_REQUEST_HEAD {
            return Ok(Head::TooLarge);
        }
    }
}

fn answer(mut stream: TcpStream, page: &Page) -> io::Result<()> {
    let deadline = std::time::Instant::now() + REQUEST_DEADLINE;
    stream.set_write_timeout(Some(REQUEST_DEADLINE))?;
    let text = |s: &'static str| s.to_string();
    let plain = "text/plain; charset=utf-8";
    let (status, ctype, body, head) = match read_head(&mut stream, deadline)? {
        Head::Incomplete => return Ok(()),
        Head::TooLarge => (
            "431 Request Header Fields Too Large",
            plain,
            text("request head too large\n"),
            false,
        ),
        Head::Complete(req) => {
            let mut lines = req.lines();
            let request_line = lines.next().unwrap_or("");
            // Of the headers, only Accept matters: Prometheus asks for
            // OpenMetrics, curl and most other clients get the classic format.
            let openmetrics = lines.any(|line| {
                line.split_once(':').is_some_and(|(name, value)| {
                    name.eq_ignore_ascii_case("accept")
                        && value.contains("application/openmetrics-text")
                })
            });
            match route(request_line) {
                Route::Metrics { head } => {
                    let body = page.lock().unwrap_or_else(|e| e.into_inner()).clone();
                    if openmetrics {
                        ("200 OK", CONTENT_TYPE, body, head)
                    } else {
                        ("200 OK", CONTENT_TYPE_TEXT, to_prometheus_text(&body), head)
                    }
                }
                Route::Root => (
                    "200 OK",
                    plain,
                    text("tcploop watch: metrics at /metrics\n"),
                    false,
                ),
                Route::NotFound => (
                    "404 Not Found",
                    plain,
                    text("not found; metrics are at /metrics\n"),
                    false,
                ),
                Route::BadMethod => (
                    "405 Method Not Allowed",
                    plain,
                    text("only GET and HEAD\n"),
                    false,
                ),
                Route::BadRequest => ("400 Bad Request", plain, text("bad request\n"), false),
            }
        }
    };
    let allow = if status.starts_with("405") {
        "Allow: GET, HEAD\r\n"
    } else {
        ""
    };
    let mut w = stream;
    write!(
        w,
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n{allow}Connection: close\r\n\r\n",
        body.len()
    )?;
    if !head {
        w.write_all(body.as_bytes())?;
    }
    w.flush()?;
    // A lingering close: stop sending, then read what the client may still
    // send (briefly, bounded), so that closing with unread bytes does not
    // reset the connection before the client has read the answer.
    w.shutdown(std::net::Shutdown::Write)?;
    let until = deadline.min(std::time::Instant::now() + Duration::from_secs(1));
    let mut sink = [0u8; 4096];
    let mut drained = 0;
    while drained < 64 * 1024 {
        let left = until.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            break;
        }
        w.set_read_timeout(Some(left))?;
        match w.read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(n) => drained += n,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(port: u16, command: &str) -> LoopLabels {
        LoopLabels {
            port,
            command: command.into(),
            ..Default::default()
        }
    }

    #[test]
    fn container_and_pod_labels_appear_only_when_known() {
        let m = Metrics::new();
        let mut c = l(40004, "curl");
        c.container = "containerd/api".into();
        c.pod = "shop/api-0".into();
        c.netns = "4026532281".into();
        m.record_scan(&ScanSample {
            loops: vec![c.clone(), l(40006, "redis-cli")],
            appeared: vec![c],
            ..Default::default()
        });
        let text = m.render();
        assert!(
            text.contains(
                "tcploop_loops{port=\"40004\",command=\"curl\",netns=\"4026532281\",container=\"containerd/api\",pod=\"shop/api-0\"} 1\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("tcploop_loops{port=\"40006\",command=\"redis-cli\"} 1\n"),
            "{text}"
        );
    }

    #[test]
    fn a_loop_series_goes_to_one_then_back_to_zero() {
        let m = Metrics::new();
        let text = m.render();
        assert!(text.contains("tcploop_loops_present 0\n"), "{text}");
        assert!(text.ends_with("# EOF\n"));
        let build = format!(
            "tcploop_build_info{{version=\"{}\",arch=\"{}\"}} 1\n",
            env!("CARGO_PKG_VERSION"),
            std::env::consts::ARCH
        );
        assert!(text.contains(&build), "{text}");
        m.record_scan(&ScanSample {
            loops: vec![l(40004, "python3")],
            appeared: vec![l(40004, "python3")],
            exposed_listeners: 2,
            sockets: 10,
            namespaces: 3,
            namespaces_skipped: 1,
            duration: Duration::from_millis(3),
        });
        let text = m.render();
        assert!(
            text.contains("tcploop_loops{port=\"40004\",command=\"python3\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("tcploop_namespaces 3\n"), "{text}");
        assert!(text.contains("tcploop_namespaces_skipped 1\n"), "{text}");
        assert!(text.contains("tcploop_loops_present 1\n"));
        assert!(text.contains("tcploop_exposed_listeners 2\n"));
        assert!(text.contains("tcploop_loops_seen_total{port=\"40004\",command=\"python3\"} 1\n"));
        m.record_scan(&ScanSample::default());
        m.record_scan_error();
        let text = m.render();
        assert!(
            text.contains("tcploop_loops{port=\"40004\",command=\"python3\"} 0\n"),
            "{text}"
        );
        assert!(text.contains("tcploop_scans_total 3\n"), "{text}");
        assert!(text.contains("tcploop_scan_errors_total 1\n"), "{text}");
    }

    #[test]
    fn loop_series_are_capped_and_the_overflow_counted_then_retired_after_an_hour() {
        let m = Metrics::with_series_limit(2);
        let t0 = Instant::now();
        let three = vec![l(40000, "a"), l(40002, "b"), l(40004, "c")];
        m.record_scan_at(
            &ScanSample {
                loops: three.clone(),
                appeared: three,
                ..ScanSample::default()
            },
            t0,
        );
        let text = m.render();
        let series = text
            .lines()
            .filter(|x| x.starts_with("tcploop_loops{"))
            .count();
        assert_eq!(series, 2, "{text}");
        assert!(text.contains("tcploop_loops_present 3\n"), "{text}");
        assert!(
            text.contains("tcploop_loop_series_overflow_total 1\n"),
            "{text}"
        );
        // at 0 for less than an hour: kept
        m.record_scan_at(&ScanSample::default(), t0 + Duration::from_secs(3599));
        let text = m.render();
        assert_eq!(text.matches("tcploop_loops{").count(), 2, "{text}");
        // an hour at 0: dropped, and a new loop gets a series again
        let d = vec![l(40006, "d")];
        m.record_scan_at(
            &ScanSample {
                loops: d.clone(),
                appeared: d,
                ..ScanSample::default()
            },
            t0 + Duration::from_secs(3600),
        );
        let text = m.render();
        assert_eq!(text.matches("tcploop_loops{").count(), 1, "{text}");
        assert!(
            text.contains("tcploop_loops{port=\"40006\",command=\"d\"} 1\n"),
            "{text}"
        );
        assert!(!text.contains("command=\"a\""), "{text}");
        assert!(
            text.contains("tcploop_loop_series_overflow_total 1\n"),
            "{text}"
        );
    }

    #[test]
    fn routes() {
        assert_eq!(
            route("GET /metrics HTTP/1.1\r\n"),
            Route::Metrics { head: false }
        );
        assert_eq!(
            route("HEAD /metrics?x=1 HTTP/1.0\r\n"),
            Route::Metrics { head: true }
        );
        assert_eq!(route("GET /nope HTTP/1.1"), Route::NotFound);
        assert_eq!(route("POST /metrics HTTP/1.1"), Route::BadMethod);
        assert_eq!(route("garbage"), Route::BadRequest);
        assert_eq!(route("GET /metrics HTTP/1.1 extra"), Route::BadRequest);
        assert_eq!(route("GET metrics HTTP/1.1"), Route::BadRequest);
        assert_eq!(route("get /metrics HTTP/1.1"), Route::BadRequest);
        assert_eq!(route("GET /metrics HTTP/2.0"), Route::BadRequest);
        assert_eq!(route("DELETE /metrics HTTP/1.1"), Route::BadMethod);
        assert_eq!(route(""), Route::BadRequest);
    }

    #[test]
    fn serves_the_page_over_loopback() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let page: Page = Arc::new(Mutex::new("tcploop_loops_present 0\n# EOF\n".into()));
        let addr = serve(listener, page.clone()).unwrap();
        let get = |req: &str| {
            let mut s = TcpStream::connect(addr).unwrap();
            s.write_all(req.as_bytes()).unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).unwrap();
            out
        };
        let r = get("GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: application/openmetrics-text;version=1.0.0\r\n\r\n");
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
        assert!(r.contains("application/openmetrics-text"));
        assert!(
            r.ends_with("\r\n\r\ntcploop_loops_present 0\n# EOF\n"),
            "{r}"
        );
        let r = get("GET /metrics HTTP/1.1\r\nAccept: */*\r\n\r\n");
        assert!(r.contains("text/plain; version=0.0.4"), "{r}");
        assert!(r.ends_with("\r\n\r\ntcploop_loops_present 0\n"), "{r}");
        *page.lock().unwrap() = "x 1\n".into();
        assert!(get("GET /metrics HTTP/1.1\r\n\r\n").ends_with("\r\n\r\nx 1\n"));
        assert!(get("GET /other HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404"));
        let r = get("POST /metrics HTTP/1.1\r\n\r\n");
        assert!(r.starts_with("HTTP/1.1 405"), "{r}");
        assert!(r.contains("\r\nAllow: GET, HEAD\r\n"), "{r}");
        assert!(get("\x16\x03\x01 hello\r\n\r\n").starts_with("HTTP/1.1 400"));
        let big = format!("GET /metrics HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(9000));
        assert!(get(&big).starts_with("HTTP/1.1 431"));
    }

    #[test]
    fn textfile_is_replaced_whole() {
        let dir = std::env::temp_dir().join(format!("tcploop-textfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("tcploop.prom");
        write_textfile(&p, "a 1\n").unwrap();
        write_textfile(&p, "b 2\n").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "b 2\n");
        let names: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
        assert_eq!(names.len(), 1, "temporary file left behind");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn classic_text_names_counters_with_total_and_drops_eof() {
        let om = "# HELP tcploop_scans Scans done.\n# TYPE tcploop_scans counter\ntcploop_scans_total 3\n\
                  # HELP tcploop_sockets TCP sockets.\n# TYPE tcploop_sockets gauge\ntcploop_sockets 7\n# EOF\n";
        assert_eq!(
            to_prometheus_text(om),
            "# HELP tcploop_scans_total Scans done.\n# TYPE tcploop_scans_total counter\ntcploop_scans_total 3\n\
             # HELP tcploop_sockets TCP sockets.\n# TYPE tcploop_sockets gauge\ntcploop_sockets 7\n"
        );
    }
}
