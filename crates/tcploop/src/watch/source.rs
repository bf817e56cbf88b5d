//! Where a watch's loops come from, as one abstraction: a [`Source`] is
//! asked for its next [`Input`] (scan now, kernel events, or stop), and
//! the loop ([`super::watcher`]) does the rest the same way whichever it is.
//!
//! - [`Ticker`] polls: a scan at start, then one every interval (no drift:
//!   ticks are counted from the start), until `--count` scans or SIGINT or
//!   SIGTERM, read from a signalfd, so that a stop interrupts the wait at
//!   once.
//! - [`KernelSource`] reports each loop as it forms (the BPF program of
//!   [`crate::trace`]): one scan at start (loops older than the program),
//!   then batches of events as the kernel sends them, waiting no longer
//!   than the next `--kill-after` deadline; a batch that says events were
//!   lost is followed by a scan (the loop does that).
//!
//! [`open`] chooses between them, as `--source` asks and the kernel allows.

use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use crate::model::{Owner, Socket};
use crate::scan::NetnsLabel;
use crate::sys::poll;
use crate::sys::signal::SignalFd;
use crate::trace::{self, EventKind, Events, NetnsScope, TraceError};

use super::{SourceChoice, SourceKind, SourceReason, WatchConfig, WatchError};

/// A loop that formed, as the kernel reported it.
#[derive(Debug, Clone, PartialEq)]
pub struct Formed {
    /// The loop's socket, as the socket tables would show it.
    pub socket: Socket,
    /// The process that made it (fd -1: not known).
    pub owner: Owner,
    /// Its namespace, when not the watcher's own (`--all-netns`).
    pub netns: Option<NetnsLabel>,
}

/// A loop formed or ended, as the kernel reported it.
#[derive(Debug, Clone, PartialEq)]
pub enum KernelEvent {
    /// A loop formed.
    Loop(Box<Formed>),
    /// A loop's socket left ESTABLISHED.
    End {
        /// Its socket cookie.
        cookie: u64,
        /// Its lifetime by the kernel's clock, when the program saw it form.
        lived: Option<Duration>,
    },
}

/// What a source has for the watch next.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// Scan the socket tables now (a poll tick, or the start of a watch on
    /// kernel events).
    Scan,
    /// Kernel events, in order (possibly none: the wait reached its
    /// deadline), and the events lost since the last batch (loops, ends).
    Events(Vec<KernelEvent>, Option<(u64, u64)>),
    /// Stop the watch (a signal, or `--count` scans done).
    Stop,
}

/// Where a watch's loops come from.
pub trait Source {
    /// Waits for what comes next; `wake` is when a loop becomes due for
    /// `--kill-after` (a source that waits for events returns by then; a
    /// polling one kills at its scans only).
    fn next(&mut self, wake: Option<Instant>) -> Result<Input, WatchError>;
}

/// Whether a signal stops a watch.
fn stops(signal: i32) -> bool {
    signal == libc::SIGINT || signal == libc::SIGTERM
}

/// Polling: a scan now, then one every `interval`, `count` scans at most.
#[derive(Debug)]
pub struct Ticker {
    interval: Duration,
    count: Option<u64>,
    signals: SignalFd,
    ticks: u64,
    next: Option<Instant>,
}

impl Ticker {
    /// Blocks SIGINT, SIGTERM and SIGCHLD, to read them from a signalfd:
    /// call it before starting any thread.
    pub fn new(interval: Duration, count: Option<u64>) -> Result<Ticker, WatchError> {
        Ok(Ticker {
            interval,
            count,
            signals: SignalFd::new().map_err(|source| WatchError::Signals {
                what: "signalfd",
                source,
            })?,
            ticks: 0,
            next: None,
        })
    }

    /// Whether a stop signal is pending, waiting for one until `until`.
    fn stopped_by(&self, until: Instant) -> Result<bool, WatchError> {
        let err = |what| move |source| WatchError::Signals { what, source };
        loop {
            let left = until.saturating_duration_since(Instant::now());
            let ready = poll::readable(&[self.signals.as_fd()], Some(left)).map_err(err("poll"))?;
            if ready[0] {
                while let Some(s) = self.signals.take().map_err(err("reading signals"))? {
                    if stops(s) {
                        return Ok(true);
                    }
                }
            }
            if Instant::now() >= until {
                return Ok(false);
            }
        }
    }
}

impl Source for Ticker {
    fn next(&mut self, _wake: Option<Instant>) -> Result<Input, WatchError> {
        if self.count.is_some_and(|n| self.ticks >= n) {
            return Ok(Input::Stop);
        }
        let now = Instant::now();
        let at = match self.next {
            // the next tick, or now if the last scan overran it
            Some(t) => (t + self.interval).max(now),
            None => now,
        };
        if self.stopped_by(at)? {
            return Ok(Input::Stop);
        }
        self.next = Some(at);
        self.ticks += 1;
        Ok(Input::Scan)
    }
}

/// Kernel events: a scan first, then each batch the kernel sends.
#[derive(Debug)]
pub struct KernelSource {
    events: Events,
    own: u64,
    scanned: bool,
    stop: bool,
}

impl KernelSource {
    /// A source over attached events; `own` is the watcher's namespace inode.
    pub fn new(events: Events) -> KernelSource {
        KernelSource {
            own: u64::from(events.own_netns),
            events,
            scanned: false,
            stop: false,
        }
    }

    /// One kernel event as the watch needs it: the owner confirmed
    /// ([`trace::owner_of`]), its container, its namespace.
    fn event(&self, e: &trace::LoopEvent) -> KernelEvent {
        match e.kind {
            EventKind::Loop => {
                let seen = trace::owner_of(e, self.events.wall(e.monotonic_ns));
                let t = super::tracked_from_event(&seen, Instant::now());
                KernelEvent::Loop(Box::new(Formed {
                    socket: t.sock,
                    owner: t.owners.into_iter().next().expect("one owner an event"),
                    netns: super::event_netns(&seen, self.own),
                }))
            }
            EventKind::End => KernelEvent::End {
                cookie: e.cookie,
                lived: (e.started_ns != 0)
                    .then(|| Duration::from_nanos(e.monotonic_ns.saturating_sub(e.started_ns))),
            },
        }
    }
}

impl Source for KernelSource {
    fn next(&mut self, wake: Option<Instant>) -> Result<Input, WatchError> {
        if !self.scanned {
            self.scanned = true;
            return Ok(Input::Scan);
        }
        if self.stop {
            return Ok(Input::Stop);
        }
        let now = Instant::now();
        let batch = self
            .events
            .next(wake.map(|w| w.saturating_duration_since(now)))
            .map_err(WatchError::Events)?;
        // the batch is handled first, then the watch stops
        self.stop = batch.signals.iter().any(|&s| stops(s));
        let events = batch.events.iter().map(|e| self.event(e)).collect();
        Ok(Input::Events(events, batch.lost))
    }
}

/// Opens the source `cfg.source` asks for (`auto`: kernel events where the
/// kernel and the privileges allow, else polling), and says which and why.
/// Both block SIGINT and SIGTERM to read them from a file descriptor: call
/// it before any thread starts.
pub fn open(cfg: &WatchConfig) -> Result<(Box<dyn Source>, SourceKind, SourceReason), WatchError> {
    let scope = if cfg.all_netns {
        NetnsScope::All
    } else {
        NetnsScope::Current
    };
    let events = |e: Events| -> Box<dyn Source> { Box::new(KernelSource::new(e)) };
    let poll = |reason| -> Result<_, WatchError> {
        let t = Ticker::new(cfg.interval, cfg.count)?;
        Ok((Box::new(t) as Box<dyn Source>, SourceKind::Poll, reason))
    };
    match cfg.source {
        SourceChoice::Poll => poll(SourceReason::Asked(SourceKind::Poll)),
        // --count counts scans, which only polling does
        SourceChoice::Auto if cfg.count.is_some() => poll(SourceReason::CountNeedsPoll),
        SourceChoice::Ebpf if cfg.count.is_some() => Err(WatchError::CountWithEvents),
        SourceChoice::Ebpf => match Events::open(scope, cfg.ring_bytes) {
            Ok(e) => Ok((
                events(e),
                SourceKind::Ebpf,
                SourceReason::Asked(SourceKind::Ebpf),
            )),
            Err(TraceError::Refused(r)) => Err(WatchError::EbpfRefused(r)),
            Err(e) => Err(WatchError::Events(e)),
        },
        SourceChoice::Auto => match Events::open(scope, cfg.ring_bytes) {
            Ok(e) => Ok((events(e), SourceKind::Ebpf, SourceReason::EventsAvailable)),
            Err(TraceError::Refused(r)) => poll(SourceReason::EventsRefused(r)),
            Err(e) => Err(WatchError::Events(e)),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ticker_scans_count_times_then_stops() {
        // (the stop signals are blocked in this test's thread only)
        let mut t = Ticker::new(Duration::from_millis(1), Some(3)).unwrap();
        let inputs: Vec<Input> = (0..5).map(|_| t.next(None).unwrap()).collect();
        assert_eq!(
            inputs,
            [
                Input::Scan,
                Input::Scan,
                Input::Scan,
                Input::Stop,
                Input::Stop
            ]
        );
    }
}
