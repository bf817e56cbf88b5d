//! `--persist`: the applied reservation merged into an `/etc/sysctl.d`
//! file, so that it survives a reboot.
//!
//! The file may be the administrator's own: every other line is kept byte
//! for byte, the line that sets the key (the last one: it is the one that
//! takes effect) gets the union of its value and the live value, and the
//! file is replaced through [`crate::safefile`] (no symlink followed, a
//! temporary file, mode 0644, fsync, rename). Merging is pure
//! ([`merged_sysctl_d`]) and tested on literal files.

use std::path::Path;

use super::{ApplyError, Fix, SYSCTL_KEY};
use crate::ports::PortSet;

/// The largest sysctl.d file `persist` reads: 1 MiB.
pub const SYSCTL_FILE_LIMIT: u64 = 1024 * 1024;

/// What [`persist`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Persisted {
    /// Whether the file was written (false: it already said this).
    pub written: bool,
    /// The value the file now sets.
    pub value: PortSet,
    /// The value the file set before (`None`: no such line, or no file).
    pub previous: Option<PortSet>,
}

/// Whether a sysctl.d line sets the reserved ports: `key = value`, the key
/// with dots or slashes, optionally prefixed with `-` (ignore errors).
/// Returns the value.
fn key_value(line: &str) -> Option<&str> {
    let t = line.trim_start();
    if t.starts_with('#') || t.starts_with(';') {
        return None;
    }
    let (k, v) = t.split_once('=')?;
    let k = k.trim().trim_start_matches('-').replace('/', ".");
    (k == SYSCTL_KEY).then(|| v.trim())
}

/// The new text of a sysctl.d file that sets the reserved ports to
/// `live ∪ the file's own value`: every other line kept byte for byte; the
/// last line setting the key (the one that takes effect) gets the merged
/// value; with no such line, one is appended. `old` is `None` for a new
/// file. Returns the text and the value, and the file's previous value.
pub fn merged_sysctl_d(
    path: &Path,
    old: Option<&str>,
    live: &PortSet,
) -> Result<(String, PortSet, Option<PortSet>), ApplyError> {
    let Some(old) = old else {
        let value = live.clone();
        return Ok((
            Fix::new(&value, &PortSet::default()).sysctl_d(),
            value,
            None,
        ));
    };
    let lines: Vec<&str> = old.split_inclusive('\n').collect();
    let mut last = None;
    let mut previous: Option<PortSet> = None;
    for (i, l) in lines.iter().enumerate() {
        if let Some(v) = key_value(l) {
            let set = PortSet::parse(v).map_err(|_| ApplyError::FileValue {
                path: path.to_owned(),
                line: i + 1,
                value: v.to_string(),
            })?;
            // sysctl applies the lines in order: the last one wins
            previous = Some(set);
            last = Some(i);
        }
    }
    let value = previous
        .as_ref()
        .map_or_else(|| live.clone(), |p| p.union(live));
    let mut text = String::with_capacity(old.len() + 64);
    match last {
        Some(n) => {
            for (i, l) in lines.iter().enumerate() {
                if i == n {
                    let indent = &l[..l.len() - l.trim_start().len()];
                    let dash = if l.trim_start().starts_with('-') {
                        "-"
                    } else {
                        ""
                    };
                    let nl = if l.ends_with('\n') { "\n" } else { "" };
                    text.push_str(&format!("{indent}{dash}{SYSCTL_KEY} = {value}{nl}"));
                } else {
                    text.push_str(l);
                }
            }
        }
        None => {
            text.push_str(old);
            if !old.is_empty() && !old.ends_with('\n') {
                text.push('\n');
            }
            if !value.is_empty() {
                text.push_str(&format!(
                    "# Added by `tcploop audit --persist`: reserved ports are never handed out as source ports.\n{SYSCTL_KEY} = {value}\n"
                ));
            }
        }
    }
    Ok((text, value, previous))
}

/// Makes the sysctl.d file `path` set the reserved ports to at least
/// `live` at every boot, merging with what it says now (see
/// [`merged_sysctl_d`]). Refuses (and leaves alone) a path that is a
/// symlink, a directory, a FIFO or a device, and a file larger than
/// [`SYSCTL_FILE_LIMIT`]; writes through [`crate::safefile`] (temporary
/// file, mode 0644, fsync, rename). Writes nothing when the file already
/// says this.
pub fn persist(path: &Path, live: &PortSet) -> Result<Persisted, ApplyError> {
    let old = crate::safefile::read_to_string(path, SYSCTL_FILE_LIMIT)?;
    let (text, value, previous) = merged_sysctl_d(path, old.as_deref(), live)?;
    if old.as_deref() == Some(text.as_str()) {
        return Ok(Persisted {
            written: false,
            value,
            previous,
        });
    }
    crate::safefile::write(path, text.as_bytes(), 0o644)?;
    Ok(Persisted {
        written: true,
        value,
        previous,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn persisting_merges_with_the_file_and_keeps_every_other_line() {
        let live = PortSet::parse("40004,50000").unwrap();
        let p = Path::new("/etc/sysctl.d/99-x.conf");
        let old = "# mine\nnet.core.somaxconn = 4096\n net.ipv4.ip_local_reserved_ports=8080, 9000-9010\nvm.swappiness=10";
        let (text, value, prev) = merged_sysctl_d(p, Some(old), &live).unwrap();
        assert_eq!(prev.unwrap().to_string(), "8080,9000-9010");
        assert_eq!(value.to_string(), "8080,9000-9010,40004,50000");
        assert_eq!(
            text,
            "# mine\nnet.core.somaxconn = 4096\n net.ipv4.ip_local_reserved_ports = 8080,9000-9010,40004,50000\nvm.swappiness=10"
        );
        // the last of two lines is the one that takes effect and is merged
        let old = "net/ipv4/ip_local_reserved_ports = 1\n-net.ipv4.ip_local_reserved_ports = 2\n";
        let (text, value, _) = merged_sysctl_d(p, Some(old), &live).unwrap();
        assert_eq!(value.to_string(), "2,40004,50000");
        assert_eq!(
            text,
            "net/ipv4/ip_local_reserved_ports = 1\n-net.ipv4.ip_local_reserved_ports = 2,40004,50000\n"
        );
        // no such line: appended, the rest untouched
        let (text, _, prev) = merged_sysctl_d(p, Some("kernel.x = 1"), &live).unwrap();
        assert!(prev.is_none());
        assert!(text.starts_with("kernel.x = 1\n#"), "{text}");
        assert!(
            text.ends_with("\nnet.ipv4.ip_local_reserved_ports = 40004,50000\n"),
            "{text}"
        );
        // a value that is not a port list: refused
        let e =
            merged_sysctl_d(p, Some("net.ipv4.ip_local_reserved_ports = x\n"), &live).unwrap_err();
        assert!(e.to_string().contains("line 1"), "{e}");
    }
}
