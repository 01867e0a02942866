//! TAP devices: the host end of a VM's network card.
//!
//! The device is made with the TUN driver's ioctls and left persistent, so that it
//! outlives the file descriptor that made it and the hypervisor attaches to it by
//! name. Addresses and link state go through rtnetlink. Everything acts in the network
//! namespace of the calling thread: the device file and the netlink socket are opened
//! there (which is what lets tests run it inside a namespace of their own).

use super::error::{NetworkError, Result};
use futures::TryStreamExt;
use nix::libc;
use std::fs::OpenOptions;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;

/// Longest interface name the kernel takes (`IFNAMSIZ` less the final NUL).
const MAX_NAME_LEN: usize = 15;

/// The TAP name of the VM subnet whose network address is `network`: `vm` and the
/// address in hex (`vmac100700` for 172.16.7.0). Named after the address rather than a
/// position in one node's pool, so that several nodes on one host (a devnet) with
/// disjoint pools never pick the same name.
pub fn tap_name(network: Ipv4Addr) -> String {
    format!("vm{:08x}", u32::from(network))
}

/// Makes a persistent TAP device `name` (no packet information header). Attaching to
/// one that already exists is not an error: a restarted CRN finds its VMs' TAPs.
pub fn create(name: &str) -> Result<()> {
    let failed = |action, source| NetworkError::Tap {
        name: name.to_string(),
        action,
        source,
    };
    if name.is_empty() || name.len() > MAX_NAME_LEN || name.contains('\0') {
        return Err(failed(
            "check name",
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "an interface name has 1 to 15 bytes",
            ),
        ));
    }
    let tun = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .map_err(|e| failed("open /dev/net/tun", e))?;

    // SAFETY: an all-zero `ifreq` is valid; the name is copied in below, leaving at
    // least one NUL at the end since it is at most 15 bytes.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (slot, byte) in request.ifr_name.iter_mut().zip(name.bytes()) {
        *slot = byte as libc::c_char;
    }
    request.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
    // SAFETY: TUNSETIFF reads and writes one `ifreq`, which lives through the call.
    let status = unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETIFF, &mut request) };
    if status < 0 {
        return Err(failed("TUNSETIFF", std::io::Error::last_os_error()));
    }
    // SAFETY: TUNSETPERSIST takes an integer argument, no pointer.
    let status = unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETPERSIST, 1 as libc::c_int) };
    if status < 0 {
        return Err(failed("TUNSETPERSIST", std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Gives the host side of the link `name` its address (the VM's gateway) and brings it
/// up. Setting an address it already has is not an error.
pub async fn configure_host_side(name: &str, host_ip: Ipv4Addr, prefix: u8) -> Result<()> {
    let handle = connect(name)?;
    let index = link_index(&handle, name)
        .await?
        .ok_or_else(|| NetworkError::Tap {
            name: name.to_string(),
            action: "find the link",
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        })?;
    handle
        .address()
        .add(index, IpAddr::V4(host_ip), prefix)
        .replace()
        .execute()
        .await
        .map_err(|source| netlink(name, "add address", source))?;
    handle
        .link()
        .set(index)
        .up()
        .execute()
        .await
        .map_err(|source| netlink(name, "set up", source))?;
    Ok(())
}

/// Gives the host side of the link `name` its IPv6 address (the VM's IPv6 gateway).
/// Duplicate address detection is turned off on the link first: the subnet is the
/// VM's alone, and a tentative address would leave the guest without a gateway until
/// the check ends. Setting an address it already has is not an error.
pub async fn configure_host_side_v6(name: &str, host_ip: Ipv6Addr, prefix: u8) -> Result<()> {
    let accept_dad = format!("/proc/sys/net/ipv6/conf/{name}/accept_dad");
    std::fs::write(&accept_dad, "0").map_err(|source| NetworkError::Io {
        what: format!("write 0 to {accept_dad} (is IPv6 disabled on this host?)"),
        source,
    })?;
    let handle = connect(name)?;
    let index = link_index(&handle, name)
        .await?
        .ok_or_else(|| NetworkError::Tap {
            name: name.to_string(),
            action: "find the link",
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        })?;
    handle
        .address()
        .add(index, IpAddr::V6(host_ip), prefix)
        .replace()
        .execute()
        .await
        .map_err(|source| netlink(name, "add IPv6 address", source))?;
    Ok(())
}

/// Deletes the link `name`; false if there was none.
pub async fn delete(name: &str) -> Result<bool> {
    let handle = connect(name)?;
    let Some(index) = link_index(&handle, name).await? else {
        return Ok(false);
    };
    handle
        .link()
        .del(index)
        .execute()
        .await
        .map_err(|source| netlink(name, "delete", source))?;
    Ok(true)
}

/// Whether the link `name` exists.
pub async fn exists(name: &str) -> Result<bool> {
    let handle = connect(name)?;
    Ok(link_index(&handle, name).await?.is_some())
}

fn connect(name: &str) -> Result<rtnetlink::Handle> {
    let (connection, handle, _) =
        rtnetlink::new_connection().map_err(|source| NetworkError::Io {
            what: format!("open a netlink socket for {name}"),
            source,
        })?;
    // The connection task ends when the last handle is dropped.
    tokio::spawn(connection);
    Ok(handle)
}

async fn link_index(handle: &rtnetlink::Handle, name: &str) -> Result<Option<u32>> {
    let mut links = handle.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(Some(link)) => Ok(Some(link.header.index)),
        Ok(None) => Ok(None),
        Err(rtnetlink::Error::NetlinkError(message)) if message.raw_code() == -libc::ENODEV => {
            Ok(None)
        }
        Err(source) => Err(netlink(name, "look up the link", source)),
    }
}

fn netlink(name: &str, action: &'static str, source: rtnetlink::Error) -> NetworkError {
    NetworkError::Netlink {
        name: name.to_string(),
        action,
        source: Box::new(source),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tap_names_fit_the_kernel_limit() {
        assert_eq!(tap_name(Ipv4Addr::new(172, 16, 7, 0)), "vmac100700");
        assert!(tap_name(Ipv4Addr::BROADCAST).len() <= MAX_NAME_LEN);
    }

    #[test]
    fn overlong_names_are_refused_before_any_syscall() {
        assert!(matches!(
            create("a-name-that-is-far-too-long"),
            Err(NetworkError::Tap {
                action: "check name",
                ..
            })
        ));
    }
}
