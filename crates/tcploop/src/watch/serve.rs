//! Where a watch's metrics go: the `/metrics` page, served by
//! [`metrics::serve`] (one thread a client, bounded in number, time and
//! size: a slow client never delays a scrape nor the watch), and the
//! node_exporter textfile, replaced whole ([`metrics::write_textfile`]).
//! The watch updates the [`Metrics`] and calls [`Publisher::publish`] after
//! each change.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::metrics::{self, Metrics, Page};

use super::WatchError;

/// A watch's metrics and where they are published.
#[derive(Debug)]
pub struct Publisher {
    metrics: Metrics,
    textfile: Option<PathBuf>,
    /// The page the server answers with, and its address.
    served: Option<(Page, SocketAddr)>,
}

impl Publisher {
    /// Metrics published nowhere yet, to `textfile` if given (written on
    /// each [`Publisher::publish`]), not checked.
    pub fn new(textfile: Option<PathBuf>) -> Publisher {
        Publisher {
            metrics: Metrics::new(),
            textfile,
            served: None,
        }
    }

    /// [`Publisher::new`], after checking that `textfile` can be written
    /// (its directory exists and is writable, the file is absent or a
    /// regular one): fail at start, not on every scan.
    pub fn check(textfile: Option<&Path>) -> Result<Publisher, WatchError> {
        if let Some(p) = textfile {
            crate::safefile::check_writable(p).map_err(|source| WatchError::Textfile {
                path: p.to_path_buf(),
                source,
            })?;
        }
        Ok(Publisher::new(textfile.map(Path::to_path_buf)))
    }

    /// Serves `GET /metrics` on `addr`, if given, from a thread of its own.
    pub fn serve(mut self, addr: Option<&str>) -> Result<Publisher, WatchError> {
        if let Some(addr) = addr {
            let listener = TcpListener::bind(addr).map_err(|source| WatchError::Listen {
                addr: addr.to_string(),
                source,
            })?;
            let page: Page = Arc::new(Mutex::new(self.metrics.render()));
            let bound = metrics::serve(listener, page.clone()).map_err(WatchError::Serve)?;
            self.served = Some((page, bound));
        }
        Ok(self)
    }

    /// The address the metrics are served on.
    pub fn address(&self) -> Option<SocketAddr> {
        self.served.as_ref().map(|(_, a)| *a)
    }

    /// The metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Renders the metrics to the page and the textfile; says what failed
    /// writing the textfile (the watch goes on).
    pub fn publish(&self) -> Option<String> {
        if self.served.is_none() && self.textfile.is_none() {
            return None;
        }
        let text = self.metrics.render();
        let failed = self.textfile.as_ref().and_then(|p| {
            metrics::write_textfile(p, &metrics::to_prometheus_text(&text))
                .err()
                .map(|e| format!("writing {}: {e}", p.display()))
        });
        if let Some((page, _)) = &self.served {
            *page.lock().unwrap_or_else(|e| e.into_inner()) = text;
        }
        failed
    }
}
