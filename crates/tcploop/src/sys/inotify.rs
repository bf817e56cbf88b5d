//! Watching directories for new entries (`inotify(7)`): how the shield
//! daemon hears of a namespace bind-mounted under `/run/netns` (`ip netns
//! add`, CNI plugins) or `/var/run/docker/netns` (Docker) at once, instead
//! of at its next sweep.
//!
//! inotify reports the file's creation, not the bind mount that makes it a
//! namespace a moment later, so the caller looks again shortly after an
//! event (see `tcploop::shield_daemon`).

use std::collections::BTreeMap;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustix::fs::inotify::{self, CreateFlags, WatchFlags};

/// An inotify instance watching some directories for new entries.
#[derive(Debug)]
pub struct DirWatch {
    fd: OwnedFd,
    watched: BTreeMap<PathBuf, i32>,
}

impl DirWatch {
    /// A new instance watching nothing yet.
    pub fn new() -> io::Result<DirWatch> {
        let fd = inotify::init(CreateFlags::CLOEXEC | CreateFlags::NONBLOCK)?;
        Ok(DirWatch {
            fd,
            watched: BTreeMap::new(),
        })
    }

    /// Starts watching `dir` for entries created or moved in, if it exists
    /// and is not watched yet. Returns whether a watch was added. A
    /// directory that is removed drops its watch (the kernel says
    /// IN_IGNORED); it is added again when it reappears.
    pub fn watch(&mut self, dir: &Path) -> io::Result<bool> {
        if self.watched.contains_key(dir) || !dir.is_dir() {
            return Ok(false);
        }
        let wd = inotify::add_watch(
            &self.fd,
            dir,
            WatchFlags::CREATE | WatchFlags::MOVED_TO | WatchFlags::ONLYDIR,
        )?;
        self.watched.insert(dir.to_owned(), wd);
        Ok(true)
    }

    /// The directories watched now.
    pub fn watched(&self) -> impl Iterator<Item = &Path> {
        self.watched.keys().map(PathBuf::as_path)
    }

    /// Waits up to `timeout` for an event (`poll(2)`), then drains every
    /// event queued. Returns whether anything arrived. EINTR counts as a
    /// timeout (the caller checks for a signal and calls again).
    pub fn wait(&mut self, timeout: Duration) -> io::Result<bool> {
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: pfd is a valid pollfd for the duration of the call.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::Interrupted {
                Ok(false)
            } else {
                Err(e)
            };
        }
        if n == 0 {
            return Ok(false);
        }
        let mut buf = [MaybeUninit::<u8>::uninit(); 4096];
        let mut any = false;
        let mut gone = vec![];
        let mut reader = inotify::Reader::new(self.fd.as_fd(), &mut buf);
        loop {
            match reader.next() {
                Ok(ev) => {
                    any = true;
                    if ev.events().contains(inotify::ReadFlags::IGNORED) {
                        gone.push(ev.wd());
                    }
                }
                Err(e) if e == rustix::io::Errno::AGAIN => break,
                Err(e) if e == rustix::io::Errno::INTR => continue,
                Err(e) => return Err(e.into()),
            }
        }
        self.watched.retain(|_, wd| !gone.contains(wd));
        Ok(any)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_entry_wakes_the_watch() {
        let dir = std::env::temp_dir().join(format!("tcploop-inotify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut w = DirWatch::new().unwrap();
        assert!(w.watch(&dir).unwrap());
        assert!(!w.watch(&dir).unwrap(), "watched once");
        assert!(!w.wait(Duration::from_millis(10)).unwrap());
        std::fs::write(dir.join("blue"), b"").unwrap();
        assert!(w.wait(Duration::from_secs(5)).unwrap());
        assert!(!w.wait(Duration::from_millis(10)).unwrap(), "drained");
        std::fs::remove_dir_all(&dir).unwrap();
        // the removal is seen, and the watch dropped
        let _ = w.wait(Duration::from_millis(100));
        let _ = w.wait(Duration::from_millis(100));
        assert_eq!(w.watched().count(), 0);
    }
}
