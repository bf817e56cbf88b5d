//! The TCP socket dump of `NETLINK_SOCK_DIAG` (`sock_diag(7)`), the interface
//! `ss` uses: every TCP socket of the caller's network namespace, IPv4 or
//! IPv6, in any state, with its 4-tuple, uid, inode and cookie.
//!
//! Written by hand on `libc` rather than with `netlink-packet-sock-diag`:
//! the request and the records have a fixed layout (a 72-byte request,
//! 88-byte records when no extension is asked for), the crate's state flags
//! leave out states 12 and 13 (13, `TCP_BOUND_INACTIVE`, is how Linux 6.8+
//! dumps sockets that are bound but neither listening nor connected, which
//! the predictor needs) and its example receive loop drops `NLMSG_ERROR`.
//! The parser is pure and tested on annotated byte fixtures below.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use super::syscall;
use crate::model::{Socket, TcpState};

/// `SOCK_DIAG_BY_FAMILY` (linux/sock_diag.h).
const SOCK_DIAG_BY_FAMILY: u16 = 20;
/// `SOCK_DESTROY` (linux/sock_diag.h).
pub const SOCK_DESTROY: u16 = 21;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLMSG_HDRLEN: usize = 16;
/// `inet_diag_req_v2`: family, protocol, ext, pad, states, sockid.
const REQ_LEN: usize = 8 + SOCKID_LEN;
/// `inet_diag_sockid`: sport, dport, src[4], dst[4], if, cookie[2].
const SOCKID_LEN: usize = 48;
/// `inet_diag_msg` without attributes.
const MSG_LEN: usize = 4 + SOCKID_LEN + 20;

/// A bit mask of states for the request: every state, 13 included.
pub const ALL_STATES: u32 = !0;

/// Why a dump or destroy failed.
#[derive(Debug, thiserror::Error)]
pub enum DiagError {
    /// The netlink socket could not be opened or used.
    #[error("sock_diag netlink socket: {0}")]
    Socket(#[source] io::Error),
    /// The kernel answered with an error.
    #[error("sock_diag: the kernel answered: {0}")]
    Kernel(#[source] io::Error),
    /// The kernel sent something this parser does not understand.
    #[error("sock_diag: malformed answer: {0}")]
    Malformed(&'static str),
}

/// Address family for a dump.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// IPv4 sockets.
    V4,
    /// IPv6 sockets (v4-mapped included).
    V6,
}

impl Family {
    fn raw(self) -> u8 {
        match self {
            Family::V4 => libc::AF_INET as u8,
            Family::V6 => libc::AF_INET6 as u8,
        }
    }
}

/// A `NETLINK_SOCK_DIAG` socket, bound to the caller's network namespace
/// when it is opened.
#[derive(Debug)]
pub struct DiagSocketFd {
    fd: OwnedFd,
    seq: u32,
}

impl DiagSocketFd {
    /// `socket(AF_NETLINK, SOCK_RAW, NETLINK_SOCK_DIAG)`.
    pub fn open() -> Result<Self, DiagError> {
        let fd = syscall!(socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_SOCK_DIAG
        ))
        .map_err(DiagError::Socket)?;
        // SAFETY: fd was just returned by socket() and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(DiagSocketFd { fd, seq: 0 })
    }

    fn send(&mut self, msg: &[u8]) -> Result<(), DiagError> {
        // SAFETY: sockaddr_nl is plain data; zero means "the kernel".
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        syscall!(sendto(
            self.fd.as_raw_fd(),
            msg.as_ptr().cast(),
            msg.len(),
            0,
            (&addr as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t
        ))
        .map_err(DiagError::Socket)?;
        Ok(())
    }

    fn recv(&mut self, buf: &mut [u8]) -> Result<usize, DiagError> {
        loop {
            // SAFETY: buf is valid for buf.len() bytes.
            let n =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n >= 0 {
                return Ok(n as usize);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(DiagError::Socket(e));
            }
        }
    }

    /// Dumps every TCP socket of `family` whose state is in `states` (a bit
    /// mask, `1 << state`), calling `f` for each, streaming: memory stays
    /// bounded by one receive buffer whatever the number of sockets.
    pub fn dump(
        &mut self,
        family: Family,
        states: u32,
        mut f: impl FnMut(&Socket),
    ) -> Result<(), DiagError> {
        self.seq = self.seq.wrapping_add(1);
        let req = request(
            SOCK_DIAG_BY_FAMILY,
            (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16,
            self.seq,
            family.raw(),
            states,
            &[0; SOCKID_LEN],
        );
        self.run_dump(&req, |_| {}, &mut f)
    }

    /// Sends a dump request and feeds every record to `f` until
    /// `NLMSG_DONE`; `prepare` may rewrite each received buffer before it
    /// is parsed (see `tcpdiag`).
    pub(super) fn run_dump(
        &mut self,
        req: &[u8],
        prepare: fn(&mut [u8]),
        f: &mut dyn FnMut(&Socket),
    ) -> Result<(), DiagError> {
        self.send(req)?;
        // 32 KiB: the most the kernel puts in one dump message.
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            let n = self.recv(&mut buf)?;
            if n == 0 {
                return Err(DiagError::Malformed("empty read before NLMSG_DONE"));
            }
            prepare(&mut buf[..n]);
            match parse(&buf[..n], &mut |s: &Socket| f(s))? {
                Parsed::Done => return Ok(()),
                Parsed::More => {}
                Parsed::Ack => return Err(DiagError::Malformed("ack in a dump")),
            }
        }
    }

    /// Looks up one socket by its exact 4-tuple, interface and cookie (a
    /// `SOCK_DIAG_BY_FAMILY` request without `NLM_F_DUMP`). `Ok(None)` when
    /// no such socket exists any more: the kernel answers ENOENT both when
    /// the 4-tuple is gone and when it now belongs to another socket (the
    /// cookie differs).
    pub fn get(&mut self, sock: &Socket) -> Result<Option<Socket>, DiagError> {
        self.seq = self.seq.wrapping_add(1);
        let req = request(
            SOCK_DIAG_BY_FAMILY,
            libc::NLM_F_REQUEST as u16,
            self.seq,
            sock.family,
            ALL_STATES,
            &sockid(sock),
        );
        self.send(&req)?;
        let mut buf = vec![0u8; 4096];
        let n = self.recv(&mut buf)?;
        let mut found = None;
        match parse(&buf[..n], &mut |s| found = Some(*s)) {
            Ok(_) => Ok(found),
            Err(DiagError::Kernel(e)) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `SOCK_DESTROY` for one socket, identified by its 4-tuple, interface
    /// and cookie exactly as the dump gave them. The kernel aborts it
    /// (`tcp_abort`: the owner gets ECONNABORTED). Needs CAP_NET_ADMIN over
    /// the namespace (EPERM otherwise); a socket that is gone gives ENOENT.
    pub fn destroy(&mut self, sock: &Socket) -> Result<(), DiagError> {
        self.seq = self.seq.wrapping_add(1);
        let id = sockid(sock);
        let req = request(
            SOCK_DESTROY,
            (libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16,
            self.seq,
            sock.family,
            ALL_STATES,
            &id,
        );
        self.send(&req)?;
        let mut buf = vec![0u8; 4096];
        let n = self.recv(&mut buf)?;
        match parse(&buf[..n], &mut |_| {})? {
            Parsed::Ack => Ok(()),
            _ => Err(DiagError::Malformed("no ack for SOCK_DESTROY")),
        }
    }
}

/// The dump of both families, in one call: IPv4 then IPv6.
pub fn dump_all(states: u32, mut f: impl FnMut(&Socket)) -> Result<(), DiagError> {
    let mut s = DiagSocketFd::open()?;
    s.dump(Family::V4, states, &mut f)?;
    s.dump(Family::V6, states, &mut f)
}

/// The one probe for "can a server bind this address now": a TCP socket
/// (IPv6: `IPV6_V6ONLY`), with `SO_REUSEADDR` when `reuseaddr` (as most
/// servers set it: redis, nginx, every Go or Rust server), bound to `addr`
/// and closed at once, never listening (an unconnected socket leaves no
/// TIME-WAIT behind, so the port is released the moment this returns).
/// `Ok(false)` is EADDRINUSE; any other failure (EADDRNOTAVAIL for an
/// address this namespace does not have, EACCES below 1024 without
/// CAP_NET_BIND_SERVICE) is an error. See bind(2), socket(7).
pub fn bind_probe(addr: SocketAddr, reuseaddr: bool) -> io::Result<bool> {
    // A v4-mapped address (`::ffff:127.0.0.1`, a dual-stack socket's view
    // of IPv4) cannot be bound by an IPv6-only socket (EINVAL): a server
    // would bind the IPv4 address, so check that.
    let addr = match addr {
        SocketAddr::V6(a) => match a.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), a.port()),
            None => addr,
        },
        v4 => v4,
    };
    let s = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    if reuseaddr {
        s.set_reuse_address(true)?;
    }
    let res = s.bind(&addr.into());
    // closing a bound, unconnected socket releases the port at once
    drop(s);
    match res {
        Ok(()) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::EADDRINUSE) => Ok(false),
        Err(e) => Err(e),
    }
}

fn request(ty: u16, flags: u16, seq: u32, family: u8, states: u32, id: &[u8]) -> Vec<u8> {
    let len = NLMSG_HDRLEN + REQ_LEN;
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(&(len as u32).to_ne_bytes());
    m.extend_from_slice(&ty.to_ne_bytes());
    m.extend_from_slice(&flags.to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes()); // pid: the kernel fills it in
    m.push(family);
    m.push(libc::IPPROTO_TCP as u8);
    m.push(0); // ext: no extensions asked for
    m.push(0); // pad
    m.extend_from_slice(&states.to_ne_bytes());
    m.extend_from_slice(id);
    m
}

fn sockid(s: &Socket) -> Vec<u8> {
    let mut id = Vec::with_capacity(SOCKID_LEN);
    id.extend_from_slice(&s.local.port().to_be_bytes());
    id.extend_from_slice(&s.peer.port().to_be_bytes());
    for a in [s.local.ip(), s.peer.ip()] {
        let mut raw = [0u8; 16];
        match a {
            IpAddr::V4(v4) => raw[..4].copy_from_slice(&v4.octets()),
            IpAddr::V6(v6) => raw.copy_from_slice(&v6.octets()),
        }
        id.extend_from_slice(&raw);
    }
    id.extend_from_slice(&s.ifindex.to_ne_bytes());
    id.extend_from_slice(&s.cookie[0].to_ne_bytes());
    id.extend_from_slice(&s.cookie[1].to_ne_bytes());
    id
}

/// What one buffer of netlink messages held.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// Records; more buffers follow.
    More,
    /// `NLMSG_DONE`: the dump is complete.
    Done,
    /// `NLMSG_ERROR` with code 0: the acknowledgement of a request.
    Ack,
}

fn u16_ne(b: &[u8]) -> u16 {
    u16::from_ne_bytes([b[0], b[1]])
}
fn u32_ne(b: &[u8]) -> u32 {
    u32::from_ne_bytes([b[0], b[1], b[2], b[3]])
}

/// Parses one buffer of netlink messages, calling `f` for each socket record.
/// Kernel errors (`NLMSG_ERROR` with a code, or `NLMSG_DONE` carrying one)
/// come back as [`DiagError::Kernel`].
pub fn parse(mut buf: &[u8], f: &mut impl FnMut(&Socket)) -> Result<Parsed, DiagError> {
    while buf.len() >= NLMSG_HDRLEN {
        let len = u32_ne(&buf[0..4]) as usize;
        let ty = u16_ne(&buf[4..6]);
        if len < NLMSG_HDRLEN || len > buf.len() {
            return Err(DiagError::Malformed("bad nlmsg_len"));
        }
        let payload = &buf[NLMSG_HDRLEN..len];
        match ty {
            NLMSG_DONE => {
                // Linux puts an int in DONE; nonzero is an error of the dump.
                if payload.len() >= 4 {
                    let code = u32_ne(payload) as i32;
                    if code < 0 {
                        return Err(DiagError::Kernel(io::Error::from_raw_os_error(-code)));
                    }
                }
                return Ok(Parsed::Done);
            }
            NLMSG_ERROR => {
                if payload.len() < 4 {
                    return Err(DiagError::Malformed("short NLMSG_ERROR"));
                }
                let code = u32_ne(payload) as i32;
                if code == 0 {
                    return Ok(Parsed::Ack);
                }
                return Err(DiagError::Kernel(io::Error::from_raw_os_error(-code)));
            }
            SOCK_DIAG_BY_FAMILY => f(&record(payload)?),
            _ => {} // NLMSG_NOOP and friends
        }
        let aligned = (len + 3) & !3;
        buf = &buf[aligned.min(buf.len())..];
    }
    Ok(Parsed::More)
}

fn record(p: &[u8]) -> Result<Socket, DiagError> {
    if p.len() < MSG_LEN {
        return Err(DiagError::Malformed("short inet_diag_msg"));
    }
    let family = p[0];
    let id = &p[4..4 + SOCKID_LEN];
    let sport = u16::from_be_bytes([id[0], id[1]]);
    let dport = u16::from_be_bytes([id[2], id[3]]);
    let ip = |raw: &[u8]| -> Result<IpAddr, DiagError> {
        match i32::from(family) {
            libc::AF_INET => Ok(IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]))),
            libc::AF_INET6 => {
                let mut o = [0u8; 16];
                o.copy_from_slice(&raw[..16]);
                Ok(IpAddr::V6(Ipv6Addr::from(o)))
            }
            _ => Err(DiagError::Malformed("unknown address family")),
        }
    };
    let rest = &p[4 + SOCKID_LEN..];
    Ok(Socket {
        family,
        state: TcpState::from_code(p[1]),
        local: SocketAddr::new(ip(&id[4..20])?, sport),
        peer: SocketAddr::new(ip(&id[20..36])?, dport),
        ifindex: u32_ne(&id[36..40]),
        cookie: [u32_ne(&id[40..44]), u32_ne(&id[44..48])],
        expires_ms: u32_ne(&rest[0..4]),
        uid: u32_ne(&rest[12..16]),
        inode: u32_ne(&rest[16..20]),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One `SOCK_DIAG_BY_FAMILY` record as the kernel sends it on x86-64:
    /// a self-connected IPv4 socket 127.0.0.1:40004 <-> 127.0.0.1:40004.
    fn loop_record() -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&88u32.to_ne_bytes()); // nlmsg_len: 16 + 72
        m.extend_from_slice(&20u16.to_ne_bytes()); // nlmsg_type: SOCK_DIAG_BY_FAMILY
        m.extend_from_slice(&2u16.to_ne_bytes()); // nlmsg_flags: NLM_F_MULTI
        m.extend_from_slice(&1u32.to_ne_bytes()); // nlmsg_seq
        m.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_pid
        m.extend_from_slice(&[2, 1, 0, 0]); // family AF_INET, state ESTABLISHED, timer, retrans
        m.extend_from_slice(&[0x9c, 0x44, 0x9c, 0x44]); // sport, dport: 40004 big-endian
        m.extend_from_slice(&[127, 0, 0, 1]); // src[0]
        m.extend_from_slice(&[0; 12]); // src[1..4]
        m.extend_from_slice(&[127, 0, 0, 1]); // dst[0]
        m.extend_from_slice(&[0; 12]); // dst[1..4]
        m.extend_from_slice(&0u32.to_ne_bytes()); // if
        m.extend_from_slice(&0x1234u32.to_ne_bytes()); // cookie[0]
        m.extend_from_slice(&0x1u32.to_ne_bytes()); // cookie[1]
        m.extend_from_slice(&0u32.to_ne_bytes()); // expires
        m.extend_from_slice(&0u32.to_ne_bytes()); // rqueue
        m.extend_from_slice(&0u32.to_ne_bytes()); // wqueue
        m.extend_from_slice(&65534u32.to_ne_bytes()); // uid
        m.extend_from_slice(&9771884u32.to_ne_bytes()); // inode
        m
    }

    fn done(code: i32) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&20u32.to_ne_bytes()); // nlmsg_len
        m.extend_from_slice(&3u16.to_ne_bytes()); // NLMSG_DONE
        m.extend_from_slice(&2u16.to_ne_bytes());
        m.extend_from_slice(&1u32.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(&code.to_ne_bytes());
        m
    }

    #[test]
    fn parses_a_loop_record_then_done() {
        let mut buf = loop_record();
        buf.extend(done(0));
        let mut seen = vec![];
        assert_eq!(parse(&buf, &mut |s| seen.push(*s)).unwrap(), Parsed::Done);
        assert_eq!(seen.len(), 1);
        let s = seen[0];
        assert_eq!(s.local, "127.0.0.1:40004".parse().unwrap());
        assert_eq!(s.peer, s.local);
        assert_eq!(s.state, TcpState::Established);
        assert_eq!(s.uid, 65534);
        assert_eq!(s.inode, 9771884);
        assert_eq!(s.cookie(), 0x1_0000_1234);
    }

    #[test]
    fn sockid_round_trips_through_a_destroy_request() {
        let mut seen = vec![];
        parse(&loop_record(), &mut |s| seen.push(*s)).unwrap();
        let req = request(SOCK_DESTROY, 5, 7, 2, ALL_STATES, &sockid(&seen[0]));
        assert_eq!(req.len(), 72);
        // the sockid in the request is the record's, byte for byte
        assert_eq!(&req[24..72], &loop_record()[20..68]);
    }

    #[test]
    fn kernel_errors_surface() {
        let mut err = Vec::new();
        err.extend_from_slice(&36u32.to_ne_bytes());
        err.extend_from_slice(&2u16.to_ne_bytes()); // NLMSG_ERROR
        err.extend_from_slice(&[0; 10]);
        err.extend_from_slice(&(-libc::EPERM).to_ne_bytes());
        err.extend_from_slice(&[0; 16]); // the offending header
        match parse(&err, &mut |_| {}) {
            Err(DiagError::Kernel(e)) => assert_eq!(e.raw_os_error(), Some(libc::EPERM)),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse(&done(-libc::ENOMEM), &mut |_| {}),
            Err(DiagError::Kernel(_))
        ));
    }

    #[test]
    fn truncated_input_is_malformed_not_a_panic() {
        let buf = loop_record();
        for cut in [17, 40, 87] {
            let mut short = buf[..cut].to_vec();
            short[0..4].copy_from_slice(&(cut as u32).to_ne_bytes());
            assert!(matches!(
                parse(&short, &mut |_| {}),
                Err(DiagError::Malformed(_))
            ));
        }
    }
}
