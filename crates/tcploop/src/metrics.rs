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
//! | `tcploop_loops{port,command}` | gauge | self-connected sockets present now, by port and owning command (`unknown` when no owner could be read); a series that was seen stays, at 0, after its loops go away |
//! | `tcploop_loops_present` | gauge | all self-connected sockets present now |
//! | `tcploop_loops_seen_total{port,command}` | counter | loops that appeared since the start |
//! | `tcploop_exposed_listeners` | gauge | listening ports inside the ephemeral range and not reserved (clients of those services may loop while they are down) |
//! | `tcploop_sockets` | gauge | TCP sockets seen by the last scan |
//! | `tcploop_scan_duration_seconds` | gauge | how long the last scan took |
//! | `tcploop_scans_total` | counter | scans done |
//! | `tcploop_scan_errors_total` | counter | scans that failed (logged, not fatal) |
//! | `tcploop_kills_total` | counter | loops destroyed by `--kill-after` |
//! | `tcploop_kill_errors_total` | counter | destroys that failed |
//! | `tcploop_build_info{version,arch}` | gauge | always 1; the labels say which build runs (for dashboards and upgrades across a fleet) |
//!
//! An alert rule as simple as `tcploop_loops_present > 0` fires within one
//! scan interval plus one scrape interval of a loop appearing.

use std::collections::HashSet;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// The labels of the per-loop series.
#[derive(Debug, Clone, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct LoopLabels {
    /// The looped port.
    pub port: u16,
    /// The owning command (`comm`), or `unknown`.
    pub command: String,
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
    /// How long the scan took.
    pub duration: Duration,
}

/// The metrics of a watch.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    loops: Family<LoopLabels, Gauge>,
    known: Mutex<HashSet<LoopLabels>>,
    loops_present: Gauge,
    loops_seen: Family<LoopLabels, Counter>,
    exposed_listeners: Gauge,
    sockets: Gauge,
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
        let mut registry = Registry::with_prefix("tcploop");
        let loops = Family::<LoopLabels, Gauge>::default();
        let loops_present = Gauge::default();
        let loops_seen = Family::<LoopLabels, Counter>::default();
        let exposed_listeners = Gauge::default();
        let sockets = Gauge::default();
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
        Metrics {
            registry,
            loops,
            known: Mutex::new(HashSet::new()),
            loops_present,
            loops_seen,
            exposed_listeners,
            sockets,
            scan_duration,
            scans,
            scan_errors,
            kills,
            kill_errors,
        }
    }

    /// Records a successful scan: every loop series is set to its count now
    /// (series seen before and absent now drop to 0).
    pub fn record_scan(&self, s: &ScanSample) {
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        let mut counts: std::collections::HashMap<&LoopLabels, i64> = Default::default();
        for l in &s.loops {
            *counts.entry(l).or_default() += 1;
        }
        for l in known.iter() {
            if !counts.contains_key(l) {
                self.loops.get_or_create(l).set(0);
            }
        }
        for (l, n) in &counts {
            self.loops.get_or_create(l).set(*n);
            known.insert((*l).clone());
        }
        for l in &s.appeared {
            self.loops_seen.get_or_create(l).inc();
        }
        self.loops_present.set(s.loops.len() as i64);
        self.exposed_listeners.set(s.exposed_listeners as i64);
        self.sockets.set(s.sockets as i64);
        self.scan_duration.set(s.duration.as_secs_f64());
        self.scans.inc();
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

/// Writes `text` to `path` atomically: a temporary file in the same
/// directory, then `rename(2)`, so node_exporter's textfile collector never
/// reads half a file.
pub fn write_textfile(path: &std::path::Path, text: &str) -> io::Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp{}", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    let res = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res
}

/// The page served at `/metrics`, replaced after each scan.
pub type Page = Arc<Mutex<String>>;

/// Serves `GET /metrics` (and `HEAD`) on `listener` from `page` (OpenMetrics
/// text, as [`Metrics::render`] makes it), one
/// connection at a time, on a thread of its own, until the process exits.
///
/// Written by hand on `std::net::TcpListener`, about fifty lines: Prometheus
/// only needs a GET answered with a body, and no small synchronous HTTP
/// server crate is well kept (tiny_http, and rouille built on it, have had no
/// release since 2022; hyper and axum need an async runtime this tool has no
/// other use for). A request whose `Accept` header names
/// `application/openmetrics-text` (Prometheus sends that) gets the page as
/// is; any other gets [`to_prometheus_text`]. Each connection gets one answer and is closed, with 5 s
/// read and write time-outs, so a stuck client cannot hold the server.
pub fn serve(listener: TcpListener, page: Page) -> io::Result<SocketAddr> {
    let addr = listener.local_addr()?;
    std::thread::Builder::new()
        .name("metrics-http".into())
        .spawn(move || {
            for conn in listener.incoming() {
                match conn {
                    Ok(stream) => {
                        let _ = answer(stream, &page);
                    }
                    // EMFILE and friends: back off instead of spinning.
                    Err(_) => std::thread::sleep(Duration::from_millis(100)),
                }
            }
        })?;
    Ok(addr)
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
    let (Some(method), Some(target), Some(version)) = (it.next(), it.next(), it.next()) else {
        return Route::BadRequest;
    };
    if !version.starts_with("HTTP/1.") {
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

fn answer(stream: TcpStream, page: &Page) -> io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream.try_clone()?).take(16 * 1024);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    // Of the headers, only Accept matters: Prometheus asks for OpenMetrics,
    // curl and most other clients get the classic text format.
    let mut openmetrics = false;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" || line == "\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("accept") {
                openmetrics |= value.contains("application/openmetrics-text");
            }
        }
    }
    let (status, ctype, body, head) = match route(&request_line) {
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
            "text/plain; charset=utf-8",
            "tcploop watch: metrics at /metrics\n".to_string(),
            false,
        ),
        Route::NotFound => (
            "404 Not Found",
            "text/plain; charset=utf-8",
            "not found; metrics are at /metrics\n".into(),
            false,
        ),
        Route::BadMethod => (
            "405 Method Not Allowed",
            "text/plain; charset=utf-8",
            "only GET and HEAD\n".into(),
            false,
        ),
        Route::BadRequest => (
            "400 Bad Request",
            "text/plain; charset=utf-8",
            "bad request\n".into(),
            false,
        ),
    };
    let mut w = stream;
    write!(
        w,
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    if !head {
        w.write_all(body.as_bytes())?;
    }
    w.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(port: u16, command: &str) -> LoopLabels {
        LoopLabels {
            port,
            command: command.into(),
        }
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
            duration: Duration::from_millis(3),
        });
        let text = m.render();
        assert!(
            text.contains("tcploop_loops{port=\"40004\",command=\"python3\"} 1\n"),
            "{text}"
        );
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
