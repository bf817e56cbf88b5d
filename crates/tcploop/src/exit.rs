//! Exit codes, the same meaning across commands.

use std::process::ExitCode;

/// The documented exit codes (see `tcploop --help` and the README).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// 0: success; nothing found or nothing possible (check, scan, audit,
    /// trace); loop reproduced (connect, demo).
    Ok,
    /// 1: the thing looked for is there (check: a port can loop; scan,
    /// trace: loops found; audit: exposed ports) or, for connect, not
    /// reproduced.
    Found,
    /// 2: bad usage or input, or an error.
    Error,
    /// 3: connect: a real listener answered, so it was no loop.
    Listener,
    /// 130: interrupted by Ctrl-C (128 + SIGINT).
    Interrupted,
    /// `trace -- COMMAND`: the command's own exit status (128 + N when a
    /// signal N ended it), passed through.
    Command(u8),
}

impl Exit {
    /// The number the process exits with.
    pub fn code(self) -> u8 {
        match self {
            Exit::Ok => 0,
            Exit::Found => 1,
            Exit::Error => 2,
            Exit::Listener => 3,
            Exit::Interrupted => 130,
            Exit::Command(c) => c,
        }
    }
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> ExitCode {
        ExitCode::from(e.code())
    }
}

#[cfg(test)]
mod tests {
    use super::Exit;

    #[test]
    fn codes_are_the_documented_ones() {
        assert_eq!(Exit::Ok.code(), 0);
        assert_eq!(Exit::Found.code(), 1);
        assert_eq!(Exit::Error.code(), 2);
        assert_eq!(Exit::Listener.code(), 3);
        assert_eq!(Exit::Interrupted.code(), 130);
        assert_eq!(Exit::Command(7).code(), 7);
    }
}
