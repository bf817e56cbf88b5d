//! The addresses of this network namespace's interfaces (`getifaddrs(3)`,
//! which asks the kernel over rtnetlink). Hand-written: ~40 lines, where a
//! crate would bring the whole of `nix` or an async rtnetlink stack.

use std::ffi::CStr;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::syscall;

/// One address of one interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IfAddr {
    /// Interface name (`lo`, `veth0`).
    pub name: String,
    /// The address.
    pub addr: IpAddr,
    /// IPv6 scope id (the interface index for link-local), else 0.
    pub scope_id: u32,
    /// IFF_UP.
    pub up: bool,
}

/// Every IPv4 and IPv6 address of every interface of this namespace.
pub fn list() -> io::Result<Vec<IfAddr>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    syscall!(getifaddrs(&mut head))?;
    let mut out = Vec::new();
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: cur is a node of the list getifaddrs returned, not yet freed.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_addr.is_null() {
            continue;
        }
        // SAFETY: ifa_name is a NUL-terminated string owned by the list.
        let name = unsafe { CStr::from_ptr(ifa.ifa_name) }
            .to_string_lossy()
            .into_owned();
        let up = ifa.ifa_flags & libc::IFF_UP as u32 != 0;
        // SAFETY: ifa_addr is non-null and points at a sockaddr whose
        // sa_family says which larger struct it really is.
        let family = i32::from(unsafe { (*ifa.ifa_addr).sa_family });
        let (addr, scope_id) = match family {
            libc::AF_INET => {
                // SAFETY: family is AF_INET, so this is a sockaddr_in.
                let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
                let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
                (IpAddr::V4(ip), 0)
            }
            libc::AF_INET6 => {
                // SAFETY: family is AF_INET6, so this is a sockaddr_in6.
                let sin6 = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in6) };
                (
                    IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)),
                    sin6.sin6_scope_id,
                )
            }
            _ => continue,
        };
        out.push(IfAddr {
            name,
            addr,
            scope_id,
            up,
        });
    }
    // SAFETY: head came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    Ok(out)
}
