//! Packet capture on one interface: an `AF_PACKET` raw socket (`packet(7)`)
//! bound to it, with kernel receive timestamps (`SO_TIMESTAMPNS`,
//! `socket(7)`).
//!
//! On `lo` every frame passes the capture point twice: once as it is sent
//! (`PACKET_OUTGOING`, from `dev_queue_xmit_nit`) and once as it is received
//! (`PACKET_HOST`). `PACKET_IGNORE_OUTGOING` (Linux 4.20+) drops the first
//! copy in the kernel, halving the work and the drops; on older kernels the
//! outgoing copies are dropped here instead, from the `sll_pkttype` of each
//! frame, so a caller always gets each frame once, at its arrival.
//!
//! Needs `CAP_NET_RAW` in the user namespace that owns the network
//! namespace: root of a sandbox has it, without any privilege on the host.
//! Frames on `lo` carry a 14-byte Ethernet header of zeros, so they are
//! `LINKTYPE_ETHERNET` frames for a pcap file as they are.

use std::ffi::CStr;
use std::io;
use std::mem::{size_of, zeroed};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::syscall;

/// `PACKET_IGNORE_OUTGOING` from `<linux/if_packet.h>` (Linux 4.20).
pub const PACKET_IGNORE_OUTGOING: libc::c_int = libc::PACKET_IGNORE_OUTGOING;

/// One captured frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// When the kernel received it (`CLOCK_REALTIME`).
    pub ts: SystemTime,
    /// The frame as captured, from its link-layer header on.
    pub data: Vec<u8>,
    /// The frame's length on the wire (more than `data.len()` if truncated).
    pub wire_len: usize,
}

/// The kernel's counters for a capture socket.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Frames the socket accepted.
    pub packets: u64,
    /// Frames dropped because the socket's receive buffer was full.
    pub drops: u64,
}

/// Why a capture could not start.
#[derive(Debug, thiserror::Error)]
#[error("packet capture on {iface}: {op}: {source}")]
pub struct CaptureError {
    /// The interface.
    pub iface: String,
    /// The failed step, as the system call's name.
    pub op: &'static str,
    /// The kernel's answer (EPERM: no CAP_NET_RAW in this namespace).
    #[source]
    pub source: io::Error,
}

/// An `AF_PACKET` socket capturing every frame of one interface.
#[derive(Debug)]
pub struct Capture {
    fd: OwnedFd,
    /// Whether the kernel drops the outgoing copies (`PACKET_IGNORE_OUTGOING`).
    pub ignores_outgoing: bool,
}

impl Capture {
    /// Opens a capture on `iface` (`socket(AF_PACKET, SOCK_RAW)`, `bind(2)`
    /// to the interface with `ETH_P_ALL`). The socket is created with
    /// protocol 0, so it receives nothing until it is bound to the one
    /// interface.
    pub fn open(iface: &CStr) -> Result<Capture, CaptureError> {
        let err = |op, source| CaptureError {
            iface: iface.to_string_lossy().into_owned(),
            op,
            source,
        };
        let raw = syscall!(socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            0
        ))
        .map_err(|e| err("socket(AF_PACKET, SOCK_RAW)", e))?;
        // SAFETY: raw is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: iface is a NUL-terminated string.
        let index = unsafe { libc::if_nametoindex(iface.as_ptr()) };
        if index == 0 {
            return Err(err("if_nametoindex", io::Error::last_os_error()));
        }
        let ignores_outgoing =
            setsockopt_int(&fd, libc::SOL_PACKET, PACKET_IGNORE_OUTGOING, 1).is_ok();
        setsockopt_int(&fd, libc::SOL_SOCKET, libc::SO_TIMESTAMPNS, 1)
            .map_err(|e| err("setsockopt(SO_TIMESTAMPNS)", e))?;
        // A larger buffer rides out bursts while the reader thread is off
        // the CPU; the kernel caps it at net.core.rmem_max.
        let _ = setsockopt_int(&fd, libc::SOL_SOCKET, libc::SO_RCVBUF, 4 << 20);
        // SAFETY: sockaddr_ll is plain data; all-zero is a valid value.
        let mut sll: libc::sockaddr_ll = unsafe { zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
        sll.sll_ifindex = index as i32;
        syscall!(bind(
            fd.as_raw_fd(),
            (&sll as *const libc::sockaddr_ll).cast(),
            size_of::<libc::sockaddr_ll>() as libc::socklen_t
        ))
        .map_err(|e| err("bind(ETH_P_ALL)", e))?;
        Ok(Capture {
            fd,
            ignores_outgoing,
        })
    }

    /// Waits up to `timeout` for the next frame that arrived on the
    /// interface (`poll(2)`, then `recvmsg(2)` with the `SCM_TIMESTAMPNS`
    /// control message). `Ok(None)` when none came in time. Frames longer
    /// than `buf` are truncated to it (`wire_len` keeps the real length).
    pub fn next(&self, buf: &mut [u8], timeout: Duration) -> io::Result<Option<Frame>> {
        loop {
            let mut pfd = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
            // SAFETY: pfd is a valid pollfd for the duration of the call.
            match syscall!(poll(&mut pfd, 1, ms)) {
                Ok(0) => return Ok(None),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            match self.recv(buf)? {
                Some(f) => return Ok(Some(f)),
                // an outgoing copy, skipped: look again
                None => continue,
            }
        }
    }

    /// One `recvmsg(2)`; `None` for an outgoing copy.
    fn recv(&self, buf: &mut [u8]) -> io::Result<Option<Frame>> {
        // SAFETY: sockaddr_ll is plain data; all-zero is a valid value.
        let mut from: libc::sockaddr_ll = unsafe { zeroed() };
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // Room for one cmsg carrying a struct timespec, u64-aligned.
        let mut control = [0u64; 8];
        // SAFETY: msghdr is plain data; all-zero is a valid value.
        let mut msg: libc::msghdr = unsafe { zeroed() };
        msg.msg_name = (&mut from as *mut libc::sockaddr_ll).cast();
        msg.msg_namelen = size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = size_of::<[u64; 8]>();
        // SAFETY: msg points at live buffers of the stated sizes; MSG_TRUNC
        // makes the kernel return the frame's real length.
        let n = syscall!(recvmsg(
            self.fd.as_raw_fd(),
            &mut msg,
            libc::MSG_TRUNC | libc::MSG_DONTWAIT
        ))? as usize;
        if !self.ignores_outgoing && from.sll_pkttype == libc::PACKET_OUTGOING {
            return Ok(None);
        }
        let mut ts = None;
        // SAFETY: msg was filled by recvmsg; the CMSG_* macros walk the
        // control buffer within msg_controllen.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&msg);
            while !c.is_null() {
                if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_TIMESTAMPNS {
                    let t: libc::timespec = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                    ts = Some(UNIX_EPOCH + Duration::new(t.tv_sec as u64, t.tv_nsec as u32));
                }
                c = libc::CMSG_NXTHDR(&msg, c);
            }
        }
        Ok(Some(Frame {
            ts: ts.unwrap_or_else(SystemTime::now),
            data: buf[..n.min(buf.len())].to_vec(),
            wire_len: n,
        }))
    }

    /// The kernel's counters since the capture opened or since the last
    /// call (`getsockopt(PACKET_STATISTICS)` resets them).
    pub fn stats(&self) -> io::Result<Stats> {
        let mut st = libc::tpacket_stats {
            tp_packets: 0,
            tp_drops: 0,
        };
        let mut len = size_of::<libc::tpacket_stats>() as libc::socklen_t;
        syscall!(getsockopt(
            self.fd.as_raw_fd(),
            libc::SOL_PACKET,
            libc::PACKET_STATISTICS,
            (&mut st as *mut libc::tpacket_stats).cast(),
            &mut len
        ))?;
        // tp_packets counts the dropped frames too
        Ok(Stats {
            packets: u64::from(st.tp_packets.saturating_sub(st.tp_drops)),
            drops: u64::from(st.tp_drops),
        })
    }
}

fn setsockopt_int(
    fd: &OwnedFd,
    level: libc::c_int,
    opt: libc::c_int,
    v: libc::c_int,
) -> io::Result<()> {
    syscall!(setsockopt(
        fd.as_raw_fd(),
        level,
        opt,
        (&v as *const libc::c_int).cast(),
        size_of::<libc::c_int>() as libc::socklen_t
    ))
    .map(|_| ())
}
