//! The whole demo, phase after phase: the target checked against the
//! range, the sandbox entered, one phase (`loop`) or the parity lesson's
//! two (`parity`, then `held`), the files written. Each step goes to the
//! caller as a [`Step`] as soon as it is done (the command renders them).

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::phase::{run_phase, PhaseConfig, PhaseError, PhaseReport};
use super::session::Frame;
use super::story::Loop;
use super::{pcap, svg};
use crate::ports::{Parity, PortRange};
use crate::safefile::{self, SafeFileError};
use crate::sandbox::{Entered, Isolation, Sandbox, SandboxError};

/// What `tcploop demo` is asked to do.
#[derive(Debug, Clone)]
pub struct DemoConfig {
    /// The sandbox's `ip_local_port_range`.
    pub range: PortRange,
    /// The target port (default: [`default_target`]).
    pub port: Option<u16>,
    /// `::1` instead of `127.0.0.1`.
    pub ipv6: bool,
    /// The parity lesson.
    pub odd: bool,
    /// With `odd`: the tries that show the odd port does not loop.
    pub tries: u64,
    /// The try limit of a phase meant to loop.
    pub max_tries: u64,
    /// Write the captured frames here (pcap).
    pub pcap: Option<PathBuf>,
    /// Draw the first loop here (SVG).
    pub svg: Option<PathBuf>,
    /// A plain network namespace (root) instead of user+net.
    pub netns_only: bool,
}

/// Which phase a [`Step::Phase`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PhaseName {
    /// The one phase of a plain demo.
    Loop,
    /// The lesson's first: the preferred parity's ports free.
    Parity,
    /// The lesson's second: every port of the preferred parity held.
    Held,
}

impl PhaseName {
    /// `loop`, `parity`, `held` (the JSON lines' `phase`).
    pub fn name(self) -> &'static str {
        match self {
            PhaseName::Loop => "loop",
            PhaseName::Parity => "parity",
            PhaseName::Held => "held",
        }
    }
}

/// One step of the demo, in order.
#[derive(Debug)]
pub enum Step<'a> {
    /// In the sandbox, before any try.
    Entered {
        /// Which sandbox.
        entered: Entered,
        /// The address the client connects to.
        target: SocketAddr,
        /// The parity lesson.
        odd: bool,
    },
    /// A phase is done (a `Loop` phase not tried: the port cannot loop,
    /// and the demo ends there).
    Phase {
        /// Which.
        name: PhaseName,
        /// What it did.
        cfg: &'a PhaseConfig,
        /// What it found.
        report: &'a PhaseReport,
    },
    /// The files written, and the time taken.
    Done {
        /// `--pcap`: the file and its frame count.
        pcap: Option<(&'a Path, usize)>,
        /// `--svg`: the file, when a loop was drawn.
        svg: Option<&'a Path>,
        /// Since the start, namespace set-up included.
        elapsed: Duration,
    },
}

/// Why the demo could not run.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The range has fewer than two ports connect() can use.
    #[error("the range {0} is too narrow: connect() needs at least two ports")]
    Narrow(PortRange),
    /// The target is outside the range.
    #[error("port {0} is outside the range {1}: choose a port inside it (or another --range)")]
    Outside(u16, PortRange),
    /// `--odd` with a port of the parity connect() tries first.
    #[error(
        "--odd needs a target of the parity connect() does not try first: {} here, since \
         the range starts at {}; {port} is {}", .range.connect_parity().other(), .range.low,
         .range.connect_parity()
    )]
    Parity {
        /// The target.
        port: u16,
        /// The range.
        range: PortRange,
    },
    /// `--netns-only` without root.
    #[error(
        "--netns-only needs root (a plain network namespace needs CAP_SYS_ADMIN); \
         without it the demo uses a user+net namespace, which needs no privilege"
    )]
    NotRoot,
    /// No user namespace, and not root.
    #[error("the demo runs in a throwaway namespace, and {0}")]
    NoUserNs(SandboxError),
    /// The sandbox could not be set up.
    #[error("entering the demo's sandbox")]
    Sandbox(#[source] SandboxError),
    /// A phase failed.
    #[error(transparent)]
    Phase(#[from] PhaseError),
    /// An output file cannot be (or was not) written.
    #[error(transparent)]
    File(#[from] SafeFileError),
    /// The capture could not be encoded.
    #[error("writing {}", .0.display())]
    Pcap(PathBuf, #[source] io::Error),
    /// The caller's report failed.
    #[error("writing the report")]
    Report(#[source] io::Error),
}

/// The middle candidate of the parity connect() uses (or, for `odd`, of the
/// other parity).
pub fn default_target(range: PortRange, odd: bool) -> u16 {
    let par = if odd {
        range.connect_parity().other()
    } else {
        range.connect_parity()
    };
    let c: Vec<u16> = range
        .connect_candidates()
        .filter(|&p| Parity::of(p) == par)
        .collect();
    c.get(c.len() / 2).copied().unwrap_or(range.low)
}

/// The target, checked against the range (and the lesson); the output
/// files checked writable, so that errors come before any work.
fn target(cfg: &DemoConfig) -> Result<SocketAddr, DemoError> {
    let range = cfg.range;
    if range.connect_high() <= range.low {
        return Err(DemoError::Narrow(range));
    }
    let ip: IpAddr = if cfg.ipv6 {
        Ipv6Addr::LOCALHOST.into()
    } else {
        Ipv4Addr::LOCALHOST.into()
    };
    let port = cfg.port.unwrap_or_else(|| default_target(range, cfg.odd));
    if !range.contains(port) {
        return Err(DemoError::Outside(port, range));
    }
    if cfg.odd && Parity::of(port) == range.connect_parity() {
        return Err(DemoError::Parity { port, range });
    }
    // Written at the end through safefile (never through a symlink,
    // atomically).
    for p in [&cfg.pcap, &cfg.svg].into_iter().flatten() {
        safefile::check_writable(p)?;
    }
    if cfg.netns_only && !crate::sandbox::is_root() {
        return Err(DemoError::NotRoot);
    }
    Ok(SocketAddr::new(ip, port))
}

/// Runs the demo (see the module's text), handing each step to `on`.
/// Call it before any thread exists: the process enters its sandbox.
/// Returns whether the last phase looped.
pub fn run(
    cfg: &DemoConfig,
    on: &mut dyn FnMut(Step<'_>) -> io::Result<()>,
) -> Result<bool, DemoError> {
    let start = Instant::now();
    let target = target(cfg)?;
    let sandbox = Sandbox {
        range: Some(cfg.range),
        reserved: None,
        isolation: if cfg.netns_only {
            Isolation::NetNsOnly
        } else {
            Isolation::Auto
        },
    };
    let entered = match sandbox.enter() {
        Ok(e) => e,
        Err(e @ SandboxError::NoUserNs(_)) => return Err(DemoError::NoUserNs(e)),
        Err(e) => return Err(DemoError::Sandbox(e)),
    };
    let odd = cfg.odd;
    on(Step::Entered {
        entered,
        target,
        odd,
    })
    .map_err(DemoError::Report)?;
    let mut kept = Kept::default();
    let mut phase = |name, pcfg: PhaseConfig| -> Result<bool, DemoError> {
        let report = run_phase(&pcfg)?;
        on(Step::Phase {
            name,
            cfg: &pcfg,
            report: &report,
        })
        .map_err(DemoError::Report)?;
        Ok(kept.keep(report))
    };
    let looped = if odd {
        // The parity lesson: the odd target with even ports free (no loop
        // within `tries`), then with every even port held by bind() (a loop).
        let free = PhaseConfig {
            target,
            hold: vec![],
            max_tries: cfg.tries,
            only_if_possible: false,
        };
        phase(PhaseName::Parity, free)?;
        let pref = cfg.range.connect_parity();
        let held = PhaseConfig {
            target,
            hold: (cfg.range.connect_candidates())
                .filter(|&p| Parity::of(p) == pref)
                .collect(),
            max_tries: cfg.max_tries,
            only_if_possible: false,
        };
        phase(PhaseName::Held, held)?
    } else {
        let one = PhaseConfig {
            target,
            hold: vec![],
            max_tries: cfg.max_tries,
            only_if_possible: true,
        };
        let looped = phase(PhaseName::Loop, one)?;
        if !kept.tried {
            return Ok(false);
        }
        looped
    };
    let svg = kept.write_files(cfg)?;
    on(Step::Done {
        pcap: cfg.pcap.as_deref().map(|p| (p, kept.frames.len())),
        svg,
        elapsed: start.elapsed(),
    })
    .map_err(DemoError::Report)?;
    Ok(looped)
}

/// What the phases leave for the files: every frame (--pcap), the first
/// loop (--svg).
#[derive(Default)]
struct Kept {
    frames: Vec<Frame>,
    first_loop: Option<Loop>,
    tried: bool,
}

impl Kept {
    /// Keeps a phase's frames and loop; whether it looped.
    fn keep(&mut self, rep: PhaseReport) -> bool {
        if self.first_loop.is_none() {
            self.first_loop = rep.story.looped.clone();
        }
        self.tried = rep.tried;
        self.frames.extend(rep.captured.frames);
        rep.looped
    }

    /// Writes `--pcap` and `--svg` (the first loop, if one was drawn)
    /// through safefile; the SVG's path when it was written.
    fn write_files<'a>(&self, cfg: &'a DemoConfig) -> Result<Option<&'a Path>, DemoError> {
        if let Some(p) = &cfg.pcap {
            let mut buf = vec![];
            let frames = self.frames.iter();
            pcap::write(
                &mut buf,
                frames.map(|f| (f.ts, f.data.as_slice(), f.wire_len)),
            )
            .map_err(|e| DemoError::Pcap(p.clone(), e))?;
            safefile::write(p, &buf, 0o644)?;
        }
        match (&cfg.svg, &self.first_loop) {
            (Some(p), Some(l)) => {
                safefile::write(p, svg::render(l).as_bytes(), 0o644)?;
                Ok(Some(p.as_path()))
            }
            _ => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_targets() {
        let r = PortRange {
            low: 40000,
            high: 40009,
        };
        assert_eq!(default_target(r, false), 40004);
        assert_eq!(default_target(r, true), 40005);
        let odd_low = PortRange {
            low: 40001,
            high: 40010,
        };
        assert_eq!(Parity::of(default_target(odd_low, false)), Parity::Odd);
    }

    #[test]
    fn targets_outside_the_range_or_of_the_wrong_parity_are_refused_before_any_work() {
        let cfg = DemoConfig {
            range: PortRange {
                low: 40000,
                high: 40009,
            },
            port: Some(50000),
            ipv6: false,
            odd: false,
            tries: 1,
            max_tries: 1,
            pcap: None,
            svg: None,
            netns_only: false,
        };
        assert_eq!(
            target(&cfg).unwrap_err().to_string(),
            "port 50000 is outside the range 40000-40009: choose a port inside it (or another --range)"
        );
        let odd = DemoConfig {
            port: Some(40004),
            odd: true,
            ..cfg.clone()
        };
        assert_eq!(
            target(&odd).unwrap_err().to_string(),
            "--odd needs a target of the parity connect() does not try first: odd here, since \
             the range starts at 40000; 40004 is even"
        );
        let narrow = DemoConfig {
            range: PortRange {
                low: 40000,
                high: 40000,
            },
            port: None,
            ..cfg.clone()
        };
        assert!(target(&narrow)
            .unwrap_err()
            .to_string()
            .contains("too narrow"));
        let v6 = DemoConfig {
            port: None,
            ipv6: true,
            ..cfg
        };
        assert_eq!(target(&v6).unwrap(), "[::1]:40004".parse().unwrap());
    }
}
