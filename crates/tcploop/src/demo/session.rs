//! The live part of the demo: a capture running beside the reproducer, and
//! the checks that prove a socket is connected to itself.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};

use crate::sys::packet::{Capture, CaptureError, Frame, Stats};

/// How long the capture keeps reading once the work is done: frames on `lo`
/// are queued to the capture socket before the sending system call returns,
/// so a short quiet spell means everything is in.
pub const DRAIN: Duration = Duration::from_millis(5);

/// What a capture collected.
#[derive(Debug, Default)]
pub struct Captured {
    /// The frames, in arrival order (each once).
    pub frames: Vec<Frame>,
    /// The kernel's counters (drops: frames lost to a full buffer).
    pub stats: Stats,
    /// Whether the kernel dropped the outgoing copies itself.
    pub ignores_outgoing: bool,
}

/// Opens a capture on `lo`, runs `work` while a thread reads every frame,
/// then drains and returns what `work` returned and what was captured.
///
/// The capture socket is open before `work` starts, so no frame of it is
/// missed.
pub fn capture_while<T: Send>(
    work: impl FnOnce() -> T + Send,
) -> Result<(T, Captured), CaptureError> {
    let cap = Capture::open(c"lo")?;
    let ignores_outgoing = cap.ignores_outgoing;
    let done = AtomicBool::new(false);
    let (value, read) = std::thread::scope(|s| {
        let reader = s.spawn(|| read_until(&cap, &done));
        let value = work();
        done.store(true, Ordering::SeqCst);
        let read = reader.join().expect("capture thread");
        (value, read)
    });
    let (frames, error) = read;
    if let Some(source) = error {
        return Err(CaptureError {
            iface: "lo".into(),
            op: "recvmsg",
            source,
        });
    }
    let stats = cap.stats().unwrap_or_default();
    Ok((
        value,
        Captured {
            frames,
            stats,
            ignores_outgoing,
        },
    ))
}

fn read_until(cap: &Capture, done: &AtomicBool) -> (Vec<Frame>, Option<io::Error>) {
    let mut frames = vec![];
    let mut buf = vec![0u8; 65_536 + 64];
    loop {
        let finishing = done.load(Ordering::SeqCst);
        let wait = if finishing {
            DRAIN
        } else {
            Duration::from_millis(2)
        };
        match cap.next(&mut buf, wait) {
            Ok(Some(mut f)) => {
                // Frames arrive in order; their CLOCK_REALTIME stamps can
                // step back (an NTP step): never let them go backwards.
                if let Some(prev) = frames.last().map(|p: &Frame| p.ts) {
                    f.ts = f.ts.max(prev);
                }
                frames.push(f)
            }
            Ok(None) if finishing => return (frames, None),
            Ok(None) => {}
            Err(e) => return (frames, Some(e)),
        }
    }
}

/// Writes a few bytes on `sock` and reads them back: a socket connected to
/// itself receives what it sends. Returns what came back.
pub fn echo(sock: &Socket, msg: &[u8]) -> io::Result<Vec<u8>> {
    let mut s: &Socket = sock;
    s.write_all(msg)?;
    sock.set_read_timeout(Some(Duration::from_secs(1)))?;
    let mut buf = vec![0u8; msg.len()];
    let r = s.read_exact(&mut buf);
    sock.set_read_timeout(None)?;
    r.map(|()| buf)
}

/// What a server gets when it binds `addr` now (with SO_REUSEADDR, as
/// servers do): `Ok(())` if the port is free. The socket is closed at once.
pub fn try_bind(addr: SocketAddr) -> io::Result<()> {
    match crate::sys::diag::bind_probe(addr, true)? {
        true => Ok(()),
        false => Err(io::Error::from_raw_os_error(libc::EADDRINUSE)),
    }
}

/// Holds `ports` of `ip` with `bind()` alone (no listen): `connect()` never
/// picks a port held so. The ports are held until the sockets are dropped.
pub fn hold(ip: std::net::IpAddr, ports: impl IntoIterator<Item = u16>) -> io::Result<Vec<Socket>> {
    ports
        .into_iter()
        .map(|p| {
            let addr = SocketAddr::new(ip, p);
            let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
            s.bind(&addr.into())
                .map_err(|e| io::Error::new(e.kind(), format!("bind {addr}: {e}")))?;
            Ok(s)
        })
        .collect()
}
