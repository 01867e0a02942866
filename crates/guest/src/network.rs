//! Interfaces, addresses, routes (over netlink: the minimal runtime has no `ip`), and
//! the resolver configuration.

use aleph_protocol::agent::NetworkConfig;
use anyhow::{Context, Result, anyhow, bail};
use futures::TryStreamExt;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Parses `address/prefix`.
fn parse_cidr(text: &str) -> Result<(IpAddr, u8)> {
    let (addr, prefix) = text
        .split_once('/')
        .ok_or_else(|| anyhow!("{text:?}: expected address/prefix"))?;
    let addr: IpAddr = addr
        .parse()
        .with_context(|| format!("{text:?}: bad address"))?;
    let prefix: u8 = prefix
        .parse()
        .with_context(|| format!("{text:?}: bad prefix"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    if prefix > max {
        bail!("{text:?}: prefix longer than {max}");
    }
    Ok((addr, prefix))
}

async fn link_index(handle: &rtnetlink::Handle, name: &str) -> Result<Option<u32>> {
    let mut links = handle.link().get().match_name(name.to_owned()).execute();
    match links.try_next().await {
        Ok(link) => Ok(link.map(|l| l.header.index)),
        // The kernel answers "no such device" as an error.
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
        Err(e) => Err(e.into()),
    }
}

async fn connect() -> Result<rtnetlink::Handle> {
    let (connection, handle, _) = rtnetlink::new_connection().context("opening netlink")?;
    tokio::spawn(connection);
    Ok(handle)
}

/// `lo` starts down; a binary app listens on 127.0.0.1 and the proxy reaches it there.
pub async fn loopback_up() -> Result<()> {
    let handle = connect().await?;
    let index = link_index(&handle, "lo")
        .await?
        .context("no lo interface")?;
    handle.link().set(index).up().execute().await?;
    Ok(())
}

pub async fn configure(config: &NetworkConfig) -> Result<()> {
    let handle = connect().await?;
    // The NIC's driver may still be probing right after its module loaded.
    let deadline = Instant::now() + Duration::from_secs(5);
    let index = loop {
        if let Some(index) = link_index(&handle, &config.interface).await? {
            break index;
        }
        if Instant::now() > deadline {
            bail!("interface {} did not appear", config.interface);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    for cidr in [&config.ipv4, &config.ipv6].into_iter().flatten() {
        let (addr, prefix) = parse_cidr(cidr)?;
        handle
            .address()
            .add(index, addr, prefix)
            .execute()
            .await
            .with_context(|| format!("adding {cidr} to {}", config.interface))?;
    }
    handle.link().set(index).up().execute().await?;
    if let Some(gateway) = &config.ipv4_gateway {
        let gateway = gateway
            .parse()
            .with_context(|| format!("bad IPv4 gateway {gateway:?}"))?;
        handle
            .route()
            .add()
            .v4()
            .output_interface(index)
            .gateway(gateway)
            .execute()
            .await
            .context("adding the IPv4 default route")?;
    }
    if let Some(gateway) = &config.ipv6_gateway {
        let gateway = gateway
            .parse()
            .with_context(|| format!("bad IPv6 gateway {gateway:?}"))?;
        handle
            .route()
            .add()
            .v6()
            .output_interface(index)
            .gateway(gateway)
            .execute()
            .await
            .context("adding the IPv6 default route")?;
    }
    Ok(())
}

pub fn resolv_conf(servers: &[String]) -> Result<String> {
    let mut text = String::new();
    for server in servers {
        let addr: IpAddr = server
            .parse()
            .with_context(|| format!("bad name server {server:?}"))?;
        text.push_str(&format!("nameserver {addr}\n"));
    }
    Ok(text)
}

pub fn write_resolv_conf(servers: &[String]) -> Result<()> {
    let text = resolv_conf(servers)?;
    // Debian may ship it as a link into /run; replace it, never write through it.
    let _ = std::fs::remove_file("/etc/resolv.conf");
    std::fs::write("/etc/resolv.conf", text).context("writing /etc/resolv.conf")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_parsing() {
        assert_eq!(
            parse_cidr("172.16.3.2/24").unwrap(),
            ("172.16.3.2".parse().unwrap(), 24)
        );
        assert_eq!(parse_cidr("fc00::2/64").unwrap().1, 64);
        assert!(parse_cidr("172.16.3.2").is_err());
        assert!(parse_cidr("172.16.3.2/33").is_err());
        assert!(parse_cidr("host/24").is_err());
    }

    #[test]
    fn resolv_conf_lists_servers_and_refuses_names() {
        assert_eq!(
            resolv_conf(&["9.9.9.9".into(), "2620:fe::fe".into()]).unwrap(),
            "nameserver 9.9.9.9\nnameserver 2620:fe::fe\n"
        );
        assert!(resolv_conf(&["dns.example\nnameserver 6.6.6.6".into()]).is_err());
    }
}
