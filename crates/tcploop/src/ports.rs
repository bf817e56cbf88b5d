//! Ephemeral-port facts of a network namespace: the range `connect()` draws
//! source ports from, the reserved ports it never draws, the kernel release
//! whose algorithm applies, and what that means for each parity.
//!
//! How Linux (4.6 and later) picks the source port of `connect()`
//! (`__inet_hash_connect()` in net/ipv4/inet_hashtables.c): it scans the
//! range `low..=high` in steps of 2, starting from a hashed, perturbed offset
//! forced to the parity of `low`, and only when every port of that parity is
//! unusable does it try the other parity. With the default range 32768-60999
//! plain clients use even ports: the article's port 33333 is odd and never
//! loops. The range's size is rounded down to even (`remaining &= ~1`), so in
//! an odd-sized range the top port is never picked. `bind(addr, 0)` does the
//! opposite and prefers the other parity. A socket with `IP_LOCAL_PORT_RANGE`
//! (Linux 6.8+) has no parity preference at all.
//!
//! Parsing is pure; [`EphemeralFacts::read`] is the one place that reads.

use std::fmt;
use std::ops::RangeInclusive;

use crate::sys::procsys;

/// `ip_local_port_range`: `low..=high`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    /// First port.
    pub low: u16,
    /// Last port.
    pub high: u16,
}

/// A port parity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parity {
    /// Even ports.
    Even,
    /// Odd ports.
    Odd,
}

impl Parity {
    /// The parity of `port`.
    pub fn of(port: u16) -> Parity {
        if port % 2 == 0 {
            Parity::Even
        } else {
            Parity::Odd
        }
    }
    /// The other parity.
    pub fn other(self) -> Parity {
        match self {
            Parity::Even => Parity::Odd,
            Parity::Odd => Parity::Even,
        }
    }
    /// "even" or "odd".
    pub fn as_str(self) -> &'static str {
        match self {
            Parity::Even => "even",
            Parity::Odd => "odd",
        }
    }
}

impl fmt::Display for Parity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PortRange {
    /// Parses `ip_local_port_range` ("32768\t60999\n").
    pub fn parse(text: &str) -> Result<PortRange, String> {
        let mut it = text.split_whitespace().map(|w| w.parse::<u16>());
        match (it.next(), it.next(), it.next()) {
            (Some(Ok(low)), Some(Ok(high)), None) if low <= high => Ok(PortRange { low, high }),
            _ => Err(format!("not a port range: {:?}", text.trim())),
        }
    }
    /// Number of ports in the range.
    pub fn len(&self) -> u32 {
        u32::from(self.high) - u32::from(self.low) + 1
    }
    /// Always false: a range has at least one port.
    pub fn is_empty(&self) -> bool {
        false
    }
    /// `low <= port <= high`.
    pub fn contains(&self, port: u16) -> bool {
        (self.low..=self.high).contains(&port)
    }
    /// The parity plain `connect()` tries first: that of `low`.
    pub fn connect_parity(&self) -> Parity {
        Parity::of(self.low)
    }
    /// The last port plain `connect()` can pick: the size is rounded down
    /// to even, so an odd-sized range never gives out `high`.
    pub fn connect_high(&self) -> u16 {
        let n = self.len() & !1;
        if n == 0 {
            self.low
        } else {
            (u32::from(self.low) + n - 1) as u16
        }
    }
    /// Ports plain `connect()` can ever pick (both parities).
    pub fn connect_candidates(&self) -> RangeInclusive<u16> {
        self.low..=self.connect_high()
    }
}

/// `LO-HI`, the form a user types (`40000-40009`); the kernel's own file
/// form (`"32768\t60999"`) is [`PortRange::parse`]. Serves as a clap value
/// parser.
impl std::str::FromStr for PortRange {
    type Err = String;
    fn from_str(s: &str) -> Result<PortRange, String> {
        let (a, b) = s
            .split_once('-')
            .ok_or_else(|| format!("{s:?} is not a port range LO-HI"))?;
        let low = parse_port(a)?;
        let high = parse_port(b)?;
        if low > high {
            return Err(format!("backwards port range {s:?}"));
        }
        Ok(PortRange { low, high })
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.low, self.high)
    }
}

/// A set of ports as sorted, merged, disjoint inclusive ranges, the form of
/// `ip_local_reserved_ports` ("8080,9000-9010").
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PortSet(Vec<(u16, u16)>);

/// [`PortSet::parse`] (`8080,9000-9010`), as a clap value parser.
impl std::str::FromStr for PortSet {
    type Err = String;
    fn from_str(s: &str) -> Result<PortSet, String> {
        PortSet::parse(s)
    }
}

impl PortSet {
    /// Parses a list such as `8080,9000-9010` (empty text: empty set).
    /// Spaces around items are allowed.
    pub fn parse(text: &str) -> Result<PortSet, String> {
        let mut v = Vec::new();
        for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (a, b) = match item.split_once('-') {
                Some((a, b)) if !a.trim().is_empty() => (parse_port(a)?, parse_port(b)?),
                _ => {
                    let p = parse_port(item)?;
                    (p, p)
                }
            };
            if a > b {
                return Err(format!("backwards port range {item:?}"));
            }
            v.push((a, b));
        }
        Ok(PortSet::from_ranges(v))
    }
    /// Builds a set from any ranges, sorting and merging them.
    pub fn from_ranges(mut v: Vec<(u16, u16)>) -> PortSet {
        v.sort_unstable();
        let mut out: Vec<(u16, u16)> = Vec::with_capacity(v.len());
        for (a, b) in v {
            match out.last_mut() {
                Some(last) if u32::from(a) <= u32::from(last.1) + 1 => last.1 = last.1.max(b),
                _ => out.push((a, b)),
            }
        }
        PortSet(out)
    }
    /// The set of the given ports.
    pub fn from_ports(ports: impl IntoIterator<Item = u16>) -> PortSet {
        PortSet::from_ranges(ports.into_iter().map(|p| (p, p)).collect())
    }
    /// Whether `port` is in the set.
    pub fn contains(&self, port: u16) -> bool {
        let i = self.0.partition_point(|&(_, b)| b < port);
        self.0.get(i).is_some_and(|&(a, _)| a <= port)
    }
    /// The union of two sets.
    pub fn union(&self, other: &PortSet) -> PortSet {
        PortSet::from_ranges(self.0.iter().chain(&other.0).copied().collect())
    }
    /// The merged ranges.
    pub fn ranges(&self) -> &[(u16, u16)] {
        &self.0
    }
    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    /// Every port of the set, in order.
    pub fn iter(&self) -> impl Iterator<Item = u16> + '_ {
        self.0.iter().flat_map(|&(a, b)| a..=b)
    }
}

impl fmt::Display for PortSet {
    /// The kernel's own notation: `8080,9000-9010`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, &(a, b)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            if a == b {
                write!(f, "{a}")?;
            } else {
                write!(f, "{a}-{b}")?;
            }
        }
        Ok(())
    }
}

/// Parses a TCP port 1-65535 with a one-line error naming the input.
pub fn parse_port(s: &str) -> Result<u16, String> {
    let t = s.trim();
    match t.parse::<i64>() {
        Ok(p @ 1..=65535) => Ok(p as u16),
        Ok(_) => Err(format!("port {t} is out of range (1-65535)")),
        Err(_) if t.is_empty() => Err("empty port".to_string()),
        Err(_) => Err(format!("{t:?} is not a port number (1-65535)")),
    }
}

/// A kernel version, as far as it matters here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct KernelVersion(pub u32, pub u32, pub u32);

impl KernelVersion {
    /// Parses a release string such as `6.18.44-fc-v782`.
    pub fn parse(release: &str) -> Option<KernelVersion> {
        let mut nums = release
            .trim()
            .split(|c: char| !c.is_ascii_digit())
            .map(|s| s.parse::<u32>().ok());
        let major = nums.next()??;
        let minor = nums.next()??;
        let patch = nums.next().flatten().unwrap_or(0);
        Some(KernelVersion(major, minor, patch))
    }
    /// `connect()` prefers the parity of `low` (4.6, commit 1580ab63fc9a).
    pub fn has_parity_split(self) -> bool {
        self >= KernelVersion(4, 6, 0)
    }
    /// Per-destination random walk of the source port (5.12; +2..+16 since 5.18).
    pub fn has_perturb_walk(self) -> bool {
        self >= KernelVersion(5, 12, 0)
    }
    /// `IP_LOCAL_PORT_RANGE` exists (6.3).
    pub fn has_local_port_range_opt(self) -> bool {
        self >= KernelVersion(6, 3, 0)
    }
    /// `IP_LOCAL_PORT_RANGE` turns the parity split off (6.8).
    pub fn local_range_disables_parity(self) -> bool {
        self >= KernelVersion(6, 8, 0)
    }
    /// sock_diag dumps sockets that are only bound (6.8, TCP_BOUND_INACTIVE).
    pub fn dumps_bound_sockets(self) -> bool {
        self >= KernelVersion(6, 8, 0)
    }
}

impl fmt::Display for KernelVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

/// The ephemeral-port facts of the caller's network namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EphemeralFacts {
    /// `ip_local_port_range`.
    pub range: PortRange,
    /// `ip_local_reserved_ports`.
    pub reserved: PortSet,
    /// The kernel release text.
    pub release: String,
    /// The parsed kernel version (None if unparseable).
    pub kernel: Option<KernelVersion>,
}

/// Why facts could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FactsError {
    /// A `/proc` file could not be read.
    #[error(transparent)]
    Proc(#[from] procsys::ProcError),
    /// A `/proc` file said something unexpected.
    #[error("{path}: {msg}")]
    Parse {
        /// The file.
        path: &'static str,
        /// What was wrong.
        msg: String,
    },
}

impl EphemeralFacts {
    /// Reads the facts of the caller's network namespace from `/proc/sys`.
    pub fn read() -> Result<EphemeralFacts, FactsError> {
        let range = PortRange::parse(&procsys::read(procsys::PORT_RANGE)?).map_err(|msg| {
            FactsError::Parse {
                path: procsys::PORT_RANGE,
                msg,
            }
        })?;
        let reserved = PortSet::parse(&procsys::read(procsys::RESERVED_PORTS)?).map_err(|msg| {
            FactsError::Parse {
                path: procsys::RESERVED_PORTS,
                msg,
            }
        })?;
        let release = procsys::read(procsys::OSRELEASE)?.trim().to_string();
        let kernel = KernelVersion::parse(&release);
        Ok(EphemeralFacts {
            range,
            reserved,
            release,
            kernel,
        })
    }

    /// Ports plain `connect()` may pick, of one parity, not reserved.
    pub fn connect_candidates(&self, parity: Parity) -> impl Iterator<Item = u16> + '_ {
        self.range
            .connect_candidates()
            .filter(move |&p| Parity::of(p) == parity && !self.reserved.contains(p))
    }
}

#[cfg(test)]
impl EphemeralFacts {
    /// Facts for tests: range `low..=high`, reserved ports in the kernel's
    /// notation, kernel 6.18.44.
    pub(crate) fn fixture(low: u16, high: u16, reserved: &str) -> EphemeralFacts {
        EphemeralFacts {
            range: PortRange { low, high },
            reserved: PortSet::parse(reserved).expect("fixture reserved ports"),
            release: "6.18.44".into(),
            kernel: Some(KernelVersion(6, 18, 44)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_kernel_files() {
        let r = PortRange::parse("32768\t60999\n").unwrap();
        assert_eq!((r.low, r.high, r.len()), (32768, 60999, 28232));
        assert_eq!(r.connect_parity(), Parity::Even);
        assert!(PortRange::parse("60999 32768").is_err());
        assert!(PortRange::parse("1 2 3").is_err());
        let s = PortSet::parse("40002-40004,8080, 40000,40001\n").unwrap();
        assert_eq!(s.to_string(), "8080,40000-40004");
        assert!(s.contains(40003) && s.contains(8080) && !s.contains(40005));
        assert!(PortSet::parse("").unwrap().is_empty());
        assert!(PortSet::parse("9-3").is_err());
        assert!(PortSet::parse("70000").is_err());
    }

    #[test]
    fn odd_sized_range_never_gives_its_top_port() {
        let r = PortRange {
            low: 40000,
            high: 40010,
        };
        assert_eq!(r.connect_high(), 40009);
        let r = PortRange {
            low: 40000,
            high: 40009,
        };
        assert_eq!(r.connect_high(), 40009);
    }

    #[test]
    fn ports_are_validated() {
        assert_eq!(parse_port("40004"), Ok(40004));
        for bad in ["0", "65536", "-1", "abc", "", " "] {
            assert!(parse_port(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn kernel_versions() {
        assert_eq!(
            KernelVersion::parse("6.18.44-fc-v782"),
            Some(KernelVersion(6, 18, 44))
        );
        assert_eq!(KernelVersion::parse("4.19"), Some(KernelVersion(4, 19, 0)));
        assert_eq!(KernelVersion::parse("garbage"), None);
        assert!(!KernelVersion(4, 5, 9).has_parity_split());
        assert!(KernelVersion(6, 18, 0).dumps_bound_sockets());
    }
}
