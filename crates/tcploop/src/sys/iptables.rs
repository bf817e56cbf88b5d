//! The shield without BPF programs of our own: an iptables rule pair (IPv4
//! and IPv6) in the OUTPUT chain on `lo` that answers a self-connect SYN
//! with a TCP reset, the way a closed port answers:
//!
//! ```text
//! iptables  -w -I OUTPUT 1 -o lo -p tcp --tcp-flags FIN,SYN,RST,ACK SYN \
//!     -m bpf --bytecode "<classic BPF: saddr == daddr, sport == dport>" \
//!     -m comment --comment "tcploop-shield since=<unix time>" \
//!     -j REJECT --reject-with tcp-reset
//! ip6tables ... (the same, with the IPv6 bytecode)
//! ```
//!
//! It needs CAP_NET_ADMIN over the namespace only, so it works as root of a
//! rootless container, where BPF programs are refused. The reset the kernel
//! sends (`nf_send_reset`) is RST+ACK with ack = seq + 1 and no options, so
//! a socket reusing a TIME_WAIT entry of its own tuple is refused at once as
//! well.
//!
//! # Why the `iptables` binary
//!
//! This is the one place the product runs another program, the exception
//! the design allows for this mechanism. Neither nftables nor its netlink
//! API can compare two fields of a packet (source with destination), so the
//! match has to be xtables' `bpf` match, which nftables carries as an
//! `xt` compatibility expression whose payload is the kernel's private
//! `struct xt_bpf_info` layout. Writing that by hand over netlink means
//! re-implementing iptables-nft's translation layer (and following its
//! changes); running `iptables`/`ip6tables` (the nft backend on current
//! distributions) keeps the rules exactly what an administrator would type
//! and see with `iptables -S`. Arguments are passed as a vector, never
//! through a shell.
//!
//! Our rules are found again by their comment, which starts with
//! [`COMMENT_TAG`]; `off` deletes exactly those.

use std::io;
use std::process::Command;

/// The start of the comment that marks our rules.
pub const COMMENT_TAG: &str = "tcploop-shield";

/// IPv4 or IPv6.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// `iptables`.
    V4,
    /// `ip6tables`.
    V6,
}

impl Family {
    /// The program that manages this family's rules.
    pub fn program(self) -> &'static str {
        match self {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        }
    }
}

/// Why an iptables call failed.
#[derive(Debug, thiserror::Error)]
pub enum IptablesError {
    /// The program is not installed (not in /usr/sbin, /sbin, /usr/bin, /bin or PATH).
    #[error("{0} is not installed")]
    Missing(&'static str),
    /// It could not be started.
    #[error("running {program}: {source}")]
    Spawn {
        /// The program.
        program: &'static str,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// It ran and said no.
    #[error("{program} {action} failed: {message}")]
    Failed {
        /// The program.
        program: &'static str,
        /// What we asked.
        action: &'static str,
        /// Its stderr, first line.
        message: String,
    },
}

impl IptablesError {
    /// Whether the cause is a missing permission (CAP_NET_ADMIN).
    pub fn is_permission(&self) -> bool {
        match self {
            IptablesError::Failed { message, .. } => {
                message.contains("Permission denied") || message.contains("Operation not permitted")
            }
            _ => false,
        }
    }
}

/// One classic-BPF instruction (`struct sock_filter`, `linux/filter.h`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    /// Opcode.
    pub code: u16,
    /// Jump offset if true.
    pub jt: u8,
    /// Jump offset if false.
    pub jf: u8,
    /// Constant.
    pub k: u32,
}

// Classic BPF opcodes (linux/bpf_common.h, linux/filter.h).
const LD_W_ABS: u16 = 0x20; // A = u32 at [k]
const LD_H_ABS: u16 = 0x28; // A = u16 at [k]
const LD_B_ABS: u16 = 0x30; // A = u8 at [k]
const LD_H_IND: u16 = 0x48; // A = u16 at [X + k]
const LDX_B_MSH: u16 = 0xb1; // X = 4 * ([k] & 0xf): the IPv4 header length
const LDX_MEM: u16 = 0x61; // X = M[k]
const ST: u16 = 0x02; // M[k] = A
const TAX: u16 = 0x07; // X = A
const JEQ_K: u16 = 0x15; // A == k ?
const JEQ_X: u16 = 0x1d; // A == X ?
const JSET_K: u16 = 0x45; // A & k ?
const RET_K: u16 = 0x06; // return k (non-zero: the rule matches)

/// A tiny assembler: every conditional jump goes on (true) or to the final
/// "no match" (false), which is all these programs need.
struct Prog(Vec<(Insn, bool)>);

impl Prog {
    fn op(&mut self, code: u16, k: u32) {
        self.0.push((
            Insn {
                code,
                jt: 0,
                jf: 0,
                k,
            },
            false,
        ));
    }
    /// Continue if the condition holds, otherwise no match.
    fn need(&mut self, code: u16, k: u32) {
        self.0.push((
            Insn {
                code,
                jt: 0,
                jf: 0,
                k,
            },
            true,
        ));
    }
    /// Continue if the bits are clear (`jset` inverted), otherwise no match.
    fn need_clear(&mut self, k: u32) {
        self.0.push((
            Insn {
                code: JSET_K,
                jt: 1, // patched below: to the "no match"
                jf: 0,
                k,
            },
            true,
        ));
    }
    fn finish(mut self) -> Vec<Insn> {
        self.op(RET_K, 1);
        self.op(RET_K, 0);
        let fail = self.0.len() - 1;
        self.0
            .iter()
            .enumerate()
            .map(|(i, (insn, jumps))| {
                let mut insn = *insn;
                if *jumps {
                    let off = (fail - i - 1) as u8;
                    if insn.code == JSET_K {
                        insn.jt = off;
                    } else {
                        insn.jf = off;
                    }
                }
                insn
            })
            .collect()
    }
}

/// The classic-BPF program the `bpf` match runs on each packet (starting
/// at the IP header): true when source address equals destination address
/// and source port equals destination port. The rule's `-p tcp
/// --tcp-flags FIN,SYN,RST,ACK SYN` has already picked bare SYNs.
///
/// IPv4: not a later fragment; `saddr` (offset 12) == `daddr` (16); the
/// ports at the header length (`4 * (byte 0 & 0xf)`) + 0 and + 2.
/// IPv6: the next header is TCP (6) directly (a SYN with extension headers
/// is not matched: the gap of this mechanism); the four words of `saddr`
/// (8..24) equal those of `daddr` (24..40); ports at 40 and 42.
pub fn program(family: Family) -> Vec<Insn> {
    let mut p = Prog(vec![]);
    match family {
        Family::V4 => {
            p.op(LD_H_ABS, 6);
            p.need_clear(0x1fff); // fragment offset 0
            p.op(LD_W_ABS, 16);
            p.op(TAX, 0);
            p.op(LD_W_ABS, 12);
            p.need(JEQ_X, 0);
            p.op(LDX_B_MSH, 0);
            p.op(LD_H_IND, 2);
            p.op(ST, 0);
            p.op(LD_H_IND, 0);
            p.op(LDX_MEM, 0);
            p.need(JEQ_X, 0);
        }
        Family::V6 => {
            p.op(LD_B_ABS, 6);
            p.need(JEQ_K, 6);
            for w in 0..4 {
                p.op(LD_W_ABS, 24 + 4 * w);
                p.op(TAX, 0);
                p.op(LD_W_ABS, 8 + 4 * w);
                p.need(JEQ_X, 0);
            }
            p.op(LD_H_ABS, 42);
            p.op(TAX, 0);
            p.op(LD_H_ABS, 40);
            p.need(JEQ_X, 0);
        }
    }
    p.finish()
}

/// The program in the `--bytecode` syntax of the `bpf` match (what
/// `nfbpf_compile` prints): `N,code jt jf k,code jt jf k,...`, decimal.
pub fn bytecode(family: Family) -> String {
    let prog = program(family);
    let mut s = prog.len().to_string();
    for i in prog {
        s.push_str(&format!(",{} {} {} {}", i.code, i.jt, i.jf, i.k));
    }
    s
}

/// The comment of a rule installed at `since` (seconds since the epoch).
pub fn comment(since: u64) -> String {
    format!("{COMMENT_TAG} since={since}")
}

/// The rule's arguments after `-I OUTPUT 1` / `-D OUTPUT`.
pub fn rule_args(family: Family, since: u64) -> Vec<String> {
    [
        "-o",
        "lo",
        "-p",
        "tcp",
        "-m",
        "tcp",
        "--tcp-flags",
        "FIN,SYN,RST,ACK",
        "SYN",
        "-m",
        "bpf",
        "--bytecode",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([bytecode(family)])
    .chain(["-m", "comment", "--comment"].iter().map(|s| s.to_string()))
    .chain([comment(since)])
    .chain(
        ["-j", "REJECT", "--reject-with", "tcp-reset"]
            .iter()
            .map(|s| s.to_string()),
    )
    .collect()
}

/// One of our rules, as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// Its position in OUTPUT (1-based, as `-D OUTPUT N` takes it).
    pub position: usize,
    /// When it was installed (from its comment).
    pub since: Option<u64>,
    /// Packets it matched (SYNs turned away).
    pub packets: u64,
    /// Whether it is exactly the rule this version installs (then it is
    /// deleted by its specification, otherwise by position).
    pub current: bool,
}

/// Parses `iptables -w -v -S OUTPUT` output: our rules, in order.
pub fn parse_listing(family: Family, text: &str) -> Vec<Found> {
    let mut out = vec![];
    let mut position = 0;
    for line in text.lines() {
        if !line.starts_with("-A OUTPUT ") {
            continue;
        }
        position += 1;
        let Some(at) = line.find(&format!("--comment \"{COMMENT_TAG}")) else {
            continue;
        };
        let rest = &line[at + "--comment \"".len()..];
        let comment = rest.split('"').next().unwrap_or("");
        let since = comment
            .split_whitespace()
            .find_map(|w| w.strip_prefix("since="))
            .and_then(|v| v.parse().ok());
        let packets = line
            .split(" -c ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let current = line.contains(&format!("--bytecode \"{}\"", bytecode(family)));
        out.push(Found {
            position,
            since,
            packets,
            current,
        });
    }
    out
}

/// The program, from the system's directories first (a root tool does not
/// let `PATH` pick what it runs as root), then `PATH`.
fn find_program(name: &'static str) -> Result<std::path::PathBuf, IptablesError> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
        .into_iter()
        .map(std::path::PathBuf::from)
        .chain(std::env::split_paths(&path))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or(IptablesError::Missing(name))
}

fn run(family: Family, action: &'static str, args: &[String]) -> Result<String, IptablesError> {
    let program = family.program();
    let exe = find_program(program)?;
    let o = Command::new(exe)
        .args(args)
        .env("LC_ALL", "C")
        .output()
        .map_err(|source| IptablesError::Spawn { program, source })?;
    if !o.status.success() {
        let err = String::from_utf8_lossy(&o.stderr);
        return Err(IptablesError::Failed {
            program,
            action,
            message: err
                .lines()
                .next()
                .unwrap_or("no message")
                .trim()
                .to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

/// Our rules in this namespace's OUTPUT chain.
pub fn list(family: Family) -> Result<Vec<Found>, IptablesError> {
    let text = run(
        family,
        "listing OUTPUT",
        &args(&["-w", "-v", "-S", "OUTPUT"]),
    )?;
    Ok(parse_listing(family, &text))
}

/// Inserts our rule first in OUTPUT.
pub fn insert(family: Family, since: u64) -> Result<(), IptablesError> {
    let mut a = args(&["-w", "-I", "OUTPUT", "1"]);
    a.extend(rule_args(family, since));
    run(family, "inserting the rule", &a).map(drop)
}

/// Deletes one of our rules: by its specification when it is this
/// version's rule (exact, whatever moved meanwhile), else by position.
pub fn delete(family: Family, found: &Found) -> Result<(), IptablesError> {
    let a = match (found.current, found.since) {
        (true, Some(since)) => {
            let mut a = args(&["-w", "-D", "OUTPUT"]);
            a.extend(rule_args(family, since));
            a
        }
        _ => args(&["-w", "-D", "OUTPUT", &found.position.to_string()]),
    };
    run(family, "deleting the rule", &a).map(drop)
}

fn args(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

/// Holds an exclusive `flock(2)` on this network namespace's nsfs inode
/// while it lives, so that two `shield on` in one namespace do not both
/// insert (iptables' own lock covers one call, not our list-then-insert).
/// Every process of a namespace opens the same inode, and opening it
/// creates nothing.
#[derive(Debug)]
pub struct NetnsLock(#[allow(dead_code)] std::os::fd::OwnedFd);

/// Takes the lock; `None` if the kernel does not allow it (then the calls
/// go unlocked, as iptables itself does).
pub fn lock_netns() -> Option<NetnsLock> {
    use rustix::fs::{flock, open, FlockOperation, Mode, OFlags};
    let fd = open(
        "/proc/thread-self/ns/net",
        OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .ok()?;
    flock(&fd, FlockOperation::LockExclusive).ok()?;
    Some(NetnsLock(fd))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ipv4_program_compares_addresses_and_ports() {
        // Hand-checked against linux/filter.h; jumps land on "ret #0" (13).
        assert_eq!(
            bytecode(Family::V4),
            "14,40 0 0 6,69 11 0 8191,32 0 0 16,7 0 0 0,32 0 0 12,29 0 7 0,\
             177 0 0 0,72 0 0 2,2 0 0 0,72 0 0 0,97 0 0 0,29 0 1 0,6 0 0 1,6 0 0 0"
        );
    }

    #[test]
    fn the_ipv6_program_checks_four_words_and_the_ports() {
        let p = program(Family::V6);
        assert_eq!(p.len(), 24);
        assert_eq!(
            p[0],
            Insn {
                code: 0x30,
                jt: 0,
                jf: 0,
                k: 6
            }
        );
        assert_eq!(p[1].jf as usize, 23 - 1 - 1);
        assert_eq!(
            p[p.len() - 2],
            Insn {
                code: 6,
                jt: 0,
                jf: 0,
                k: 1
            }
        );
        // Every conditional jump ends on the last instruction, "ret #0".
        for (i, insn) in p.iter().enumerate() {
            if insn.code == JEQ_X || insn.code == JEQ_K {
                assert_eq!(i + 1 + insn.jf as usize, p.len() - 1, "insn {i}");
            }
        }
    }

    /// Runs a classic-BPF program over a packet (the subset used here).
    fn interpret(p: &[Insn], pkt: &[u8]) -> u32 {
        let (mut a, mut x, mut m) = (0u32, 0u32, [0u32; 16]);
        let mut pc = 0;
        let be = |o: usize, n: usize| -> u32 {
            pkt[o..o + n]
                .iter()
                .fold(0u32, |acc, b| acc << 8 | *b as u32)
        };
        loop {
            let i = p[pc];
            pc += 1;
            match i.code {
                LD_W_ABS => a = be(i.k as usize, 4),
                LD_H_ABS => a = be(i.k as usize, 2),
                LD_B_ABS => a = be(i.k as usize, 1),
                LD_H_IND => a = be((x + i.k) as usize, 2),
                LDX_B_MSH => x = 4 * (pkt[i.k as usize] as u32 & 0xf),
                LDX_MEM => x = m[i.k as usize],
                ST => m[i.k as usize] = a,
                TAX => x = a,
                JEQ_K | JEQ_X | JSET_K => {
                    let v = if i.code == JEQ_X { x } else { i.k };
                    let t = if i.code == JSET_K { a & v != 0 } else { a == v };
                    pc += if t { i.jt } else { i.jf } as usize;
                }
                RET_K => return i.k,
                c => panic!("opcode {c:#x}"),
            }
        }
    }

    fn v4(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, ihl: u8) -> Vec<u8> {
        let mut p = vec![0u8; ihl as usize * 4 + 20];
        p[0] = 0x40 | ihl;
        p[9] = 6;
        p[12..16].copy_from_slice(&src);
        p[16..20].copy_from_slice(&dst);
        let t = ihl as usize * 4;
        p[t..t + 2].copy_from_slice(&sport.to_be_bytes());
        p[t + 2..t + 4].copy_from_slice(&dport.to_be_bytes());
        p
    }

    fn v6(src: [u8; 16], dst: [u8; 16], sport: u16, dport: u16, next: u8) -> Vec<u8> {
        let mut p = vec![0u8; 60];
        p[0] = 0x60;
        p[6] = next;
        p[8..24].copy_from_slice(&src);
        p[24..40].copy_from_slice(&dst);
        p[40..42].copy_from_slice(&sport.to_be_bytes());
        p[42..44].copy_from_slice(&dport.to_be_bytes());
        p
    }

    #[test]
    fn the_programs_match_self_connects_only() {
        let p4 = program(Family::V4);
        let lo = [127, 0, 0, 1];
        assert_eq!(interpret(&p4, &v4(lo, lo, 40004, 40004, 5)), 1);
        assert_eq!(
            interpret(&p4, &v4(lo, lo, 40004, 40004, 7)),
            1,
            "IP options"
        );
        assert_eq!(interpret(&p4, &v4(lo, lo, 40002, 40004, 5)), 0);
        assert_eq!(
            interpret(&p4, &v4(lo, [127, 0, 0, 2], 40004, 40004, 5)),
            0,
            "equal ports, different addresses"
        );
        let mut frag = v4(lo, lo, 40004, 40004, 5);
        frag[7] = 1;
        assert_eq!(interpret(&p4, &frag), 0, "a later fragment");
        let p6 = program(Family::V6);
        let one = std::net::Ipv6Addr::LOCALHOST.octets();
        let mut other = one;
        other[0] = 0xfd;
        assert_eq!(interpret(&p6, &v6(one, one, 40004, 40004, 6)), 1);
        assert_eq!(interpret(&p6, &v6(one, one, 40004, 40006, 6)), 0);
        assert_eq!(interpret(&p6, &v6(one, other, 40004, 40004, 6)), 0);
        assert_eq!(
            interpret(&p6, &v6(one, one, 40004, 40004, 0)),
            0,
            "extension headers: not matched (documented gap)"
        );
    }

    #[test]
    fn listing_finds_our_rules_with_counters_and_positions() {
        let b = bytecode(Family::V4);
        let text = format!(
            "-P OUTPUT ACCEPT -c 0 0\n\
             -A OUTPUT -o eth0 -c 5 300 -j ACCEPT\n\
             -A OUTPUT -o lo -p tcp -m tcp --tcp-flags FIN,SYN,RST,ACK SYN -m bpf --bytecode \"{b}\" \
             -m comment --comment \"tcploop-shield since=1764547200\" -c 1234 49360 -j REJECT --reject-with tcp-reset\n\
             -A OUTPUT -o lo -m bpf --bytecode \"1,6 0 0 1\" -m comment --comment \"tcploop-shield\" -c 0 0 -j REJECT\n"
        );
        let f = parse_listing(Family::V4, &text);
        assert_eq!(
            f,
            vec![
                Found {
                    position: 2,
                    since: Some(1764547200),
                    packets: 1234,
                    current: true
                },
                Found {
                    position: 3,
                    since: None,
                    packets: 0,
                    current: false
                }
            ]
        );
    }
}
