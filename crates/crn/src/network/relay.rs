//! Forwarded ports reached from the node itself.
//!
//! The firewall's port forwards act on connections coming in from outside
//! (`prerouting`); one the host opens to its own loopback address never passes there,
//! and re-routing loopback traffic to a VM would need `route_localnet` on its TAP (which
//! also lets the VM address the host's loopback services). A small TCP relay on
//! `127.0.0.1:<host port>` carries such connections to the guest instead, so
//! `ssh -p PORT root@127.0.0.1` works on the node itself (a devnet on a laptop).

use std::net::{Ipv4Addr, SocketAddr};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

/// Relays `127.0.0.1:host_port` to a guest address while it lives; dropping it closes
/// the listener and every relayed connection.
pub struct LoopbackRelay {
    accept: JoinHandle<()>,
    port: u16,
}

impl LoopbackRelay {
    pub async fn bind(host_port: u16, target: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, host_port)).await?;
        let port = listener.local_addr()?.port();
        let accept = tokio::spawn(async move {
            // Owned by this task: aborting it aborts the connections too.
            let mut connections = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok((client, _)) => {
                            connections.spawn(relay(client, target));
                        }
                        Err(e) => {
                            tracing::warn!("relay to {target}: accept: {e}");
                            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        }
                    },
                    Some(_) = connections.join_next(), if !connections.is_empty() => {}
                }
            }
        });
        Ok(Self { accept, port })
    }

    /// The loopback port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for LoopbackRelay {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn relay(mut client: TcpStream, target: SocketAddr) {
    let _ = client.set_nodelay(true);
    match TcpStream::connect(target).await {
        Ok(mut guest) => {
            let _ = guest.set_nodelay(true);
            let _ = tokio::io::copy_bidirectional(&mut client, &mut guest).await;
        }
        // The guest is not listening yet (still booting): the client sees a close.
        Err(e) => tracing::debug!("relay to {target}: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn carries_bytes_both_ways_and_closes_with_its_handle() {
        let guest = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let target = guest.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut socket, _) = guest.accept().await.unwrap();
                tokio::spawn(async move {
                    let mut buf = [0u8; 64];
                    while let Ok(n) = socket.read(&mut buf).await {
                        if n == 0 || socket.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        let relay = LoopbackRelay::bind(0, target).await.unwrap();
        let mut client = TcpStream::connect((Ipv4Addr::LOCALHOST, relay.port()))
            .await
            .unwrap();
        client.write_all(b"SSH-2.0-test\r\n").await.unwrap();
        let mut echoed = [0u8; 14];
        client.read_exact(&mut echoed).await.unwrap();
        assert_eq!(&echoed, b"SSH-2.0-test\r\n");

        let port = relay.port();
        drop(relay);
        // The open connection ends, and nothing listens any more.
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            client.read_to_end(&mut rest),
        )
        .await;
        assert!(matches!(closed, Ok(Ok(0)) | Ok(Err(_))), "{closed:?}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(
            TcpStream::connect((Ipv4Addr::LOCALHOST, port))
                .await
                .is_err()
        );
    }
}
