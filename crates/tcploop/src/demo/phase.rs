//! One phase of the demo, from the ports it holds to the story of its
//! packets: hold the ports asked (with `bind()` alone, so that `connect()`
//! never picks them), predict, then run the reproducer inside a capture on
//! `lo` and prove the loop ([`crate::repro::prove`]), and tell what the
//! packets show ([`super::story`]).

use std::net::SocketAddr;
use std::time::Duration;

use super::segment::{self, Segment};
use super::session::{self, Captured};
use super::story::{self, Role, Story};
use crate::predict::{self, Client, Prediction, Verdict};
use crate::repro::{self, Outcome, Progress, Proof, ReproError, SocketMode};
use crate::survey::Survey;
use crate::sys::packet::CaptureError;

/// What one phase does.
#[derive(Debug, Clone)]
pub struct PhaseConfig {
    /// The port the client connects to (on 127.0.0.1 or ::1).
    pub target: SocketAddr,
    /// Ports of the target's address held by `bind()` during the phase.
    pub hold: Vec<u16>,
    /// Tries at most (a 10 s time limit applies as well).
    pub max_tries: u64,
    /// Try only when the predictor says a loop is possible (else the
    /// report has the prediction and no tries).
    pub only_if_possible: bool,
}

/// What one phase found.
#[derive(Debug)]
pub struct PhaseReport {
    /// The verdict on the target, taken once the ports were held.
    pub prediction: Prediction,
    /// Whether the reproducer ran at all (see [`PhaseConfig::only_if_possible`]).
    pub tried: bool,
    /// Whether the client connected to itself.
    pub looped: bool,
    /// Tries made.
    pub tries: u64,
    /// How long they took.
    pub elapsed: Duration,
    /// The loop's proof (echo, stolen, freed), when one was found.
    pub proof: Option<Proof>,
    /// Every frame seen on `lo`, and the kernel's counters.
    pub captured: Captured,
    /// The frames decoded as TCP segments.
    pub segments: Vec<Segment>,
    /// The refused tries and the loop, told from the segments.
    pub story: Story,
    /// What each segment was part of.
    pub roles: Vec<Role>,
}

impl PhaseReport {
    /// The source ports the client used, sorted, each once.
    pub fn source_ports(&self) -> Vec<u16> {
        let mut ports: Vec<u16> = self.story.refused.iter().map(|r| r.port).collect();
        if let Some(l) = &self.story.looped {
            ports.push(l.socket.port());
        }
        ports.sort_unstable();
        ports.dedup();
        ports
    }
}

/// Why a phase could not run.
#[derive(Debug, thiserror::Error)]
pub enum PhaseError {
    /// The ports to hold could not be bound.
    #[error("holding the ports with bind()")]
    Hold(#[source] std::io::Error),
    /// The port facts could not be read.
    #[error("reading the sandbox's port facts")]
    Facts(#[source] crate::ports::FactsError),
    /// The capture on `lo` failed.
    #[error("capturing on lo")]
    Capture(#[source] CaptureError),
    /// The reproducer failed.
    #[error(transparent)]
    Repro(#[from] ReproError),
    /// A real listener answered.
    #[error("something answered on {0} inside the sandbox: not a loop")]
    Listener(SocketAddr),
}

/// The verdict on a plain `connect()` to `target` in this namespace now.
pub fn predict_here(target: SocketAddr) -> Result<Prediction, crate::ports::FactsError> {
    let survey = Survey::take()?;
    let host = survey.host(target.ip(), 0);
    let sit = survey.situation(&host, Client::Connect);
    Ok(predict::predict(&sit, target.port()))
}

/// Runs one phase (see the module's text).
pub fn run_phase(cfg: &PhaseConfig) -> Result<PhaseReport, PhaseError> {
    let target = cfg.target;
    let holders = session::hold(target.ip(), cfg.hold.iter().copied()).map_err(PhaseError::Hold)?;
    let prediction = predict_here(target).map_err(PhaseError::Facts)?;
    let mut report = PhaseReport {
        prediction,
        tried: false,
        looped: false,
        tries: 0,
        elapsed: Duration::ZERO,
        proof: None,
        captured: Captured::default(),
        segments: vec![],
        story: Story::default(),
        roles: vec![],
    };
    if cfg.only_if_possible && report.prediction.verdict != Verdict::Possible {
        return Ok(report);
    }
    let rcfg = repro::Config {
        target,
        mode: SocketMode::Reuse,
        jobs: 1,
        max_tries: Some(cfg.max_tries),
        timeout: Some(Duration::from_secs(10)),
        reuseaddr: false,
        sample_port: false,
    };
    let (work, cap) = session::capture_while(|| -> Result<_, PhaseError> {
        let rep = repro::run(&rcfg, &Progress::default())?;
        let (looped, proof) = match rep.outcome {
            Outcome::SelfConnect(sock) => {
                let proof =
                    repro::prove(sock, target, repro::Hold::No, true, &|| false, &mut |_| {
                        Ok(())
                    })
                    .ok();
                (true, proof)
            }
            Outcome::Listener(sock) => {
                repro::release(sock, true);
                return Err(PhaseError::Listener(target));
            }
            _ => (false, None),
        };
        Ok((looped, proof, rep.tries, rep.elapsed))
    })
    .map_err(PhaseError::Capture)?;
    drop(holders);
    let (looped, proof, tries, elapsed) = work?;
    let segments: Vec<Segment> = cap
        .frames
        .iter()
        .filter_map(|f| segment::decode(&f.data, f.ts))
        .collect();
    let (story, roles) = story::tell(&segments, target);
    report.tried = true;
    report.looped = looped;
    report.proof = proof;
    report.tries = tries;
    report.elapsed = elapsed;
    report.captured = cap;
    report.segments = segments;
    report.story = story;
    report.roles = roles;
    Ok(report)
}
