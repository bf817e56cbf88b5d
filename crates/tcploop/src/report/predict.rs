//! The predictor's reasons in words.
//!
//! [`crate::predict`] returns each step of its decision as a [`Reason`]
//! with the facts it rests on; this module words them, once, for every
//! command that shows a prediction (`check`, `connect`, `demo`, `doctor`,
//! `audit`). JSON output carries the same sentences (`"reasons": [string]`).
//! Interface names come from the system: text output escapes them where it
//! prints a reason, as it does every system string.

use std::fmt;

use super::thousands;
use crate::predict::{Chooser, Reason};

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::LocalAddress { addr, iface } => write!(
                f,
                "{addr} is an address of this host (on {iface}): the kernel sends from it, so \
                 source == destination"
            ),
            Reason::Unspecified { addr, effective } => write!(
                f,
                "{addr} means this host: the kernel connects from and to {effective}"
            ),
            Reason::OtherLoopback { addr } => write!(
                f,
                "{addr} is not assigned to an interface: the kernel sends from 127.0.0.1 \
                 (the 127.0.0.0/8 route's preferred source), so source != destination \
                 (only a client that binds {addr} itself could loop)"
            ),
            Reason::LoopbackDown { addr } => write!(
                f,
                "no interface carries {addr} (lo is down): connect() fails with ENETUNREACH"
            ),
            Reason::Remote { addr } => write!(
                f,
                "{addr} is not an address of this network namespace: the connection's source \
                 address differs from its destination, so it cannot loop"
            ),
            Reason::KernelUnknown { release } => write!(
                f,
                "kernel release {release:?} not understood: the port-selection rules depend on it"
            ),
            Reason::Listening { listen, dest, port } => write!(
                f,
                "listening on {}: connects to {dest}:{port} reach that server; they are not loops",
                join(listen)
            ),
            Reason::ListenerHolds { port, listen } => write!(
                f,
                "a listener holds port {port} (on {}): connect() never picks a port held by \
                 bind()/listen()",
                join(listen)
            ),
            Reason::BindHolds { port, bound } => write!(
                f,
                "bind() holds port {port} (on {}): connect() never picks a port held by bind()",
                join(bound)
            ),
            Reason::AlreadyLooped { addr, port } => write!(
                f,
                "a self-connected socket already holds {addr}:{port} (the port is stolen now: \
                 see `tcploop scan`)"
            ),
            Reason::TimeWait { port, ms_left } => write!(
                f,
                "an earlier loop on {port} is in TIME-WAIT ({:.0} s left): a server's bind() of \
                 it fails until then; a new connect() may reuse the 4-tuple sooner (after about \
                 1 s on loopback with tcp_tw_reuse=2)",
                f64::from(*ms_left) / 1000.0
            ),
            Reason::ConnectedUsers { port, count } => write!(
                f,
                "{count} socket(s) use {port} as their local port; if connect() gave it to them \
                 (the usual case) they do not protect it: the port is reused when the 4-tuple \
                 differs"
            ),
            Reason::BoundInvisible => f.write_str(
                "this kernel's socket dump does not show sockets that are only bound (Linux 6.8+ \
                 does): such a holder would make the port safe",
            ),
            Reason::NoSocketDump => f.write_str(
                "the socket dump was not available: listeners and bind() holders are unknown",
            ),
            Reason::OutsideRange {
                port,
                range,
                chooser: Chooser::Connect,
            } => write!(
                f,
                "{port} is outside the ephemeral range {range}: connect() never picks it as a \
                 source port"
            ),
            Reason::OutsideRange {
                port,
                range,
                chooser: Chooser::BindZero,
            } => write!(
                f,
                "{port} is outside the ephemeral range {range}: bind(0) never picks it"
            ),
            Reason::OddTop { port, range } => write!(
                f,
                "the range {range} has an odd number of ports: connect() uses an even count and \
                 never picks its top port {port}"
            ),
            Reason::Reserved { port } => write!(
                f,
                "{port} is in ip_local_reserved_ports: the kernel never hands it out"
            ),
            Reason::SequentialScan {
                kernel,
                port,
                usable,
            } => write!(
                f,
                "kernel {kernel} (before 4.6) scans both parities sequentially: {port} is \
                 reached within one lap of {usable} ports"
            ),
            Reason::PreferredParity { port, parity, low } => write!(
                f,
                "{port} is {parity}: connect() tries {parity} ports first (the parity of the \
                 range's low end {low})"
            ),
            Reason::ParityFallback {
                port,
                parity,
                preferred,
                range,
            } => write!(
                f,
                "{port} is {parity}, but every {preferred} port of {range} is reserved or held \
                 by bind(): connect() falls back to {parity} ports"
            ),
            Reason::OtherParity {
                port,
                parity,
                preferred,
                low,
                free,
            } => write!(
                f,
                "{port} is {parity}: connect() tries {preferred} ports (the parity of the \
                 range's low end {low}) and uses {parity} ones only when all {preferred} ports \
                 are taken; {} are free (kernel 4.6+)",
                thousands(*free as u64)
            ),
            Reason::Rate { usable } => {
                let n = thousands(*usable as u64);
                write!(
                    f,
                    "{n} usable candidates of that parity: each try hits with probability about \
                     1/{n}, so about {n} tries on average"
                )
            }
            Reason::InOrder { kernel, usable } => write!(
                f,
                "{usable} usable candidates of that parity; kernel {kernel} (before 5.12) walks \
                 them in order, so the port comes round within one lap"
            ),
            Reason::BindLaterTier { parity, from, to } => write!(
                f,
                "bind(0) reaches {parity} ports in {from}-{to} only after every earlier \
                 candidate is busy, as here"
            ),
            Reason::BindFirstTier {
                parity,
                lower_half: None,
            } => write!(
                f,
                "bind(0) picks {parity} ports (opposite to connect()) first"
            ),
            Reason::BindFirstTier {
                parity,
                lower_half: Some((from, to)),
            } => write!(
                f,
                "bind(0) picks {parity} ports (opposite to connect()) in the lower half \
                 {from}-{to} first"
            ),
            Reason::RandomPick { usable } => write!(
                f,
                "{usable} usable candidates: a random one each try, so about {usable} tries on \
                 average"
            ),
            Reason::BindEarlierTier {
                free,
                parity,
                from,
                to,
                port,
            } => write!(
                f,
                "bind(0) picks among {free} free {parity} ports in {from}-{to} before it would \
                 reach {port}"
            ),
            Reason::NoLocalRangeOption { kernel } => write!(
                f,
                "kernel {kernel} has no IP_LOCAL_PORT_RANGE (6.3+): the option is ignored"
            ),
            Reason::OutsideSocketRange {
                port,
                effective,
                range,
            } => write!(
                f,
                "{port} is outside the socket's effective range {effective} (its \
                 IP_LOCAL_PORT_RANGE within {range})"
            ),
            Reason::LocalRangeKeepsParity { kernel, effective } => write!(
                f,
                "kernel {kernel} (6.3-6.7) keeps the parity rule inside the socket's range \
                 {effective}"
            ),
            Reason::LocalRangeNoParity { effective } => write!(
                f,
                "IP_LOCAL_PORT_RANGE (kernel 6.8+) removes the parity preference: every port \
                 of {effective} is a candidate"
            ),
            Reason::Candidates { usable } => {
                write!(
                    f,
                    "{usable} usable candidates: about {usable} tries on average"
                )
            }
            Reason::Shielded { how } => write!(
                f,
                "the shield is on in this namespace ({how}): the self-connect SYN is answered \
                 with a reset, so connect() fails with ECONNREFUSED instead of looping"
            ),
        }
    }
}

/// The reasons as the sentences JSON output carries.
pub fn texts(reasons: &[Reason]) -> Vec<String> {
    reasons.iter().map(ToString::to_string).collect()
}

/// Serializes a wire struct's `reasons` field (`&[Reason]`) as the
/// sentences: `#[serde(serialize_with = "super::predict::serialize")]`.
pub fn serialize<S: serde::Serializer>(reasons: &&[Reason], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(reasons.iter().map(ToString::to_string))
}

fn join(addrs: &[std::net::SocketAddr]) -> String {
    let v: Vec<String> = addrs.iter().map(ToString::to_string).collect();
    v.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::{KernelVersion, Parity, PortRange};

    #[test]
    fn sentences_carry_the_data() {
        let r = PortRange {
            low: 32768,
            high: 60999,
        };
        assert_eq!(
            Reason::OddTop {
                port: 60999,
                range: r
            }
            .to_string(),
            "the range 32768-60999 has an odd number of ports: connect() uses an even count \
             and never picks its top port 60999"
        );
        assert_eq!(
            Reason::Rate { usable: 14116 }.to_string(),
            "14,116 usable candidates of that parity: each try hits with probability about \
             1/14,116, so about 14,116 tries on average"
        );
        assert_eq!(
            Reason::OtherParity {
                port: 33333,
                parity: Parity::Odd,
                preferred: Parity::Even,
                low: 32768,
                free: 14116
            }
            .to_string(),
            "33333 is odd: connect() tries even ports (the parity of the range's low end 32768) \
             and uses odd ones only when all even ports are taken; 14,116 are free (kernel 4.6+)"
        );
        assert_eq!(
            Reason::BindFirstTier {
                parity: Parity::Odd,
                lower_half: Some((40000, 40003))
            }
            .to_string(),
            "bind(0) picks odd ports (opposite to connect()) in the lower half 40000-40003 first"
        );
        assert_eq!(
            Reason::InOrder {
                kernel: KernelVersion(5, 4, 0),
                usable: 7
            }
            .to_string(),
            "7 usable candidates of that parity; kernel 5.4.0 (before 5.12) walks them in \
             order, so the port comes round within one lap"
        );
        assert_eq!(
            texts(&[Reason::Listening {
                listen: vec![
                    "0.0.0.0:8080".parse().unwrap(),
                    "[::]:8080".parse().unwrap()
                ],
                dest: "127.0.0.1".parse().unwrap(),
                port: 8080
            }]),
            [
                "listening on 0.0.0.0:8080, [::]:8080: connects to 127.0.0.1:8080 reach that \
              server; they are not loops"
            ]
        );
    }
}
