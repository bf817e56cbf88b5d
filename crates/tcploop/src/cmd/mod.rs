//! One module a command: its clap arguments, their validation into a config,
//! the call into the library, and the rendering of the result. The
//! dispatch from the parsed command line is `cli::Cli::run`: `cli` imports
//! `cmd`, never the other way round. No command imports another: the
//! argument pieces several commands share live here.

use std::sync::atomic::{AtomicBool, Ordering};

pub mod audit;
pub mod check;
pub mod completions;
pub mod connect;
pub mod demo;
pub mod doctor;
pub mod free_port;
pub mod kill;
pub mod ports;
pub mod run;
pub mod sandbox;
pub mod scan;
pub mod shield;
pub mod trace;
pub mod watch;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Installs the Ctrl-C / SIGTERM handler (a thread: call it only after any
/// namespace has been entered). Later calls do nothing.
pub fn catch_interrupts() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = ctrlc::set_handler(|| INTERRUPTED.store(true, Ordering::SeqCst));
    });
}

/// Whether Ctrl-C (or SIGTERM) arrived.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// The longest duration any option takes: 365 days. Longer ones would
/// overflow the clock arithmetic (`Instant + Duration`) or mean a typo.
pub const MAX_DURATION: std::time::Duration = std::time::Duration::from_secs(365 * 24 * 3600);

/// Parses a duration such as `10s`, `500ms`, `2m`, `1h30m` (a bare number is
/// seconds), at most [`MAX_DURATION`].
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let t = s.trim();
    let too_long = || format!("{t:?} is longer than the 365 days any duration here may be");
    if let Ok(secs) = t.parse::<f64>() {
        if secs.is_finite() && secs >= 0.0 {
            return match std::time::Duration::try_from_secs_f64(secs) {
                Ok(d) if d <= MAX_DURATION => Ok(d),
                _ => Err(too_long()),
            };
        }
    }
    let d = humantime::parse_duration(t)
        .map_err(|e| format!("{t:?} is not a duration ({e}); try 10s, 500ms or 2m"))?;
    if d > MAX_DURATION {
        return Err(too_long());
    }
    Ok(d)
}

/// `--source` of `scan` and `kill`: where the socket table is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SourceArg {
    /// netlink, or /proc if netlink is unavailable
    Auto,
    /// sock_diag netlink only
    Netlink,
    /// /proc/net/tcp and /proc/net/tcp6
    Proc,
}

impl From<SourceArg> for tcploop::scan::Source {
    fn from(s: SourceArg) -> tcploop::scan::Source {
        use tcploop::scan::Source;
        match s {
            SourceArg::Auto => Source::Auto,
            SourceArg::Netlink => Source::Netlink,
            SourceArg::Proc => Source::Proc,
        }
    }
}

/// Parses a port for clap.
pub fn parse_port(s: &str) -> Result<u16, String> {
    tcploop::ports::parse_port(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_that_overflow_are_refused_not_panicked_on() {
        assert_eq!(parse_duration("1.5").unwrap().as_millis(), 1500);
        assert_eq!(parse_duration("2m").unwrap().as_secs(), 120);
        assert_eq!(parse_duration("365d").unwrap(), MAX_DURATION);
        for bad in [
            "18446744073709551615s",
            "1e30",
            "1e300",
            "366d",
            "600000000000000000000",
        ] {
            let e = parse_duration(bad).unwrap_err();
            assert!(
                e.contains("365 days") || e.contains("not a duration"),
                "{bad}: {e}"
            );
        }
        assert!(parse_duration("-1").is_err());
        assert!(parse_duration("NaN").is_err());
    }
}
