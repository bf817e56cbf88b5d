//! Exit codes, the same meaning across commands.

use std::process::ExitCode;

/// The documented exit codes (see `tcploop --help` and the README).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// 0: success; nothing found or nothing possible (check, scan, audit); loop
    /// reproduced (connect, demo).
    Ok = 0,
    /// 1: the thing looked for is there (check: a port can loop; scan: loops
    /// found; audit: exposed ports) or, for connect, not reproduced.
    Found = 1,
    /// 2: bad usage or input, or an error.
    Error = 2,
    /// 3: connect: a real listener answered, so it was no loop.
    Listener = 3,
    /// 130: interrupted by Ctrl-C (128 + SIGINT).
    Interrupted = 130,
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> ExitCode {
        ExitCode::from(e as u8)
    }
}

#[cfg(test)]
mod tests {
    use super::Exit;

    #[test]
    fn codes_are_the_documented_ones() {
        assert_eq!(Exit::Ok as u8, 0);
        assert_eq!(Exit::Found as u8, 1);
        assert_eq!(Exit::Error as u8, 2);
        assert_eq!(Exit::Listener as u8, 3);
        assert_eq!(Exit::Interrupted as u8, 130);
    }
}
