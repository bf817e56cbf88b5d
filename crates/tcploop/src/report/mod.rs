//! Output shared by every command.
//!
//! Machine output is JSON Lines: one object a line, each
//! `{"type": "<kind>", "data": {...}}` (the envelope of ripgrep's `--json`).
//! The `data` types are serialize-only wire types, kept apart from the
//! engine's own types so that the schema changes only on purpose. Each
//! command documents its line types in its module.

pub mod audit;
pub mod check;
pub mod completions;
pub mod connect;
pub mod demo;
pub mod doctor;
pub mod free_port;
pub mod kill;
pub mod ports;
pub mod predict;
pub mod run;
pub mod scan;
pub mod shield;
pub mod shield_daemon;
pub mod trace;
pub mod watch;

use std::io::{self, Write};

use serde::Serialize;

/// Human text or JSON Lines: the one choice a command's `--json` makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Text for people, system-given strings escaped ([`escape`]).
    Human,
    /// JSON Lines, `{"type", "data"}`.
    Json,
}

impl Format {
    /// `--json` given or not.
    pub fn json_if(json: bool) -> Format {
        if json {
            Format::Json
        } else {
            Format::Human
        }
    }
}

/// One JSON Lines record: `{"type": ty, "data": data}`.
#[derive(Debug, Serialize)]
pub struct Line<'a, T: Serialize> {
    /// The kind of record.
    #[serde(rename = "type")]
    pub ty: &'a str,
    /// Its content.
    pub data: &'a T,
}

/// Writes one JSON Lines record and a newline.
pub fn json_line<T: Serialize>(out: &mut dyn Write, ty: &str, data: &T) -> io::Result<()> {
    serde_json::to_writer(&mut *out, &Line { ty, data })?;
    out.write_all(b"\n")
}

/// Makes text that comes from the system (process names, command lines,
/// namespace names, paths) safe to print to a terminal: every control
/// character (C0 such as newline and ESC, DEL, C1) and every bidirectional
/// override is shown as an escape (`\x1b`, `\n`, `\u{202e}`), and a
/// backslash as `\\`, so that the text can neither move the cursor, clear
/// the screen, nor start a fake line. Human text only: JSON output carries
/// the exact bytes (JSON escapes them itself).
pub fn escape(s: &str) -> std::borrow::Cow<'_, str> {
    fn unsafe_char(c: char) -> bool {
        c == '\\'
            || c.is_control()
            || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    }
    if !s.chars().any(unsafe_char) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x80 && unsafe_char(c) => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c if unsafe_char(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

/// A time as the JSON lines carry it: RFC 3339, UTC, whole seconds
/// (`2026-12-01T02:03:01Z`).
pub fn time(t: std::time::SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Formats a socket address as `127.0.0.1:40004` or `[::1]:40004`.
pub fn addr(a: std::net::SocketAddr) -> String {
    a.to_string()
}

/// `12345` as `12,345`.
pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A duration for people: `840 µs`, `12.3 ms`, `1.52 s`.
pub fn duration(d: std::time::Duration) -> String {
    let s = d.as_secs_f64();
    if s < 1e-3 {
        format!("{:.0} µs", s * 1e6)
    } else if s < 1.0 {
        format!("{:.1} ms", s * 1e3)
    } else {
        format!("{s:.2} s")
    }
}

/// `1 try`, `2 tries`: a count with its noun, in English.
pub fn count(n: u64, one: &str, many: &str) -> String {
    format!("{} {}", thousands(n), if n == 1 { one } else { many })
}

#[cfg(test)]
mod tests {
    #[test]
    fn thousands() {
        assert_eq!(super::thousands(0), "0");
        assert_eq!(super::thousands(999), "999");
        assert_eq!(super::thousands(1000), "1,000");
        assert_eq!(super::thousands(1234567), "1,234,567");
    }

    #[test]
    fn escape_shows_control_characters_and_keeps_the_rest() {
        use super::escape;
        assert_eq!(escape("python3"), "python3");
        assert_eq!(escape("naïve 名前"), "naïve 名前");
        assert_eq!(escape("\x1b[2J\x1b[31mX\nY"), "\\x1b[2J\\x1b[31mX\\nY");
        assert_eq!(escape("a\x07b\x7fc\u{9b}d"), "a\\x07b\\x7fc\\u{9b}d");
        assert_eq!(escape("\u{202e}txt"), "\\u{202e}txt");
        assert_eq!(escape("back\\slash\t\r"), "back\\\\slash\\t\\r");
        for c in (0u32..0x20).chain(0x7f..0xa0) {
            let s = char::from_u32(c).unwrap().to_string();
            assert!(escape(&s).chars().all(|c| !c.is_control()), "{c:#x}");
        }
    }

    #[test]
    fn durations_and_counts() {
        use std::time::Duration;
        assert_eq!(super::duration(Duration::from_micros(840)), "840 µs");
        assert_eq!(super::duration(Duration::from_micros(12_340)), "12.3 ms");
        assert_eq!(super::duration(Duration::from_millis(1520)), "1.52 s");
        assert_eq!(super::count(1, "try", "tries"), "1 try");
        assert_eq!(super::count(1200, "try", "tries"), "1,200 tries");
    }
}
