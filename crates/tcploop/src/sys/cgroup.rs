//! `/proc/PID/cgroup` (`cgroups(7)`), and the container runtimes' state
//! files that name a container: the raw reads behind
//! [`crate::container`], which parses what they return.

use std::io::{self, Read};
use std::path::Path;

/// The largest state file read (a container's OCI `config.json` is a few
/// tens of KiB; anything far larger is not one).
const STATE_FILE_MAX: u64 = 4 << 20;

/// The text of `/proc/PID/cgroup`: one line a hierarchy,
/// `ID:CONTROLLERS:PATH` (`0::PATH` for the cgroup v2 hierarchy). Readable
/// by anyone for any process. `NotFound` once the process has exited.
pub fn proc_cgroup(pid: u32) -> io::Result<String> {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
}

/// A runtime's state file, if it exists and is readable (`None` when it is
/// absent: not this runtime, or not mounted into a container running
/// tcploop). Files larger than 4 MiB are refused as not state files.
pub fn state_file(path: &Path) -> io::Result<Option<Vec<u8>>> {
    let f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut buf = vec![];
    f.take(STATE_FILE_MAX + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 > STATE_FILE_MAX {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} is larger than 4 MiB", path.display()),
        ));
    }
    Ok(Some(buf))
}
