//! A TCP relay in front of a real server that a test can cut and heal: while cut, bytes stop
//! flowing in both directions and new connections are accepted but not yet connected to the
//! server, without any error on either side — what a silently dropped link (a pulled cable, a
//! firewall change) looks like to both ends before TCP gives up. Healing lets the held bytes
//! through, as retransmission would. The network-namespace version of the same cut is in
//! crates/codelab/tests/hosts (docs/reliability.md, "Several hosts").

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

/// The relay; its tasks stop when it drops.
pub struct Relay {
    address: SocketAddr,
    cut: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Relay {
    /// Listens on a free loopback port and relays each connection to `target` (`host:port`).
    pub async fn start(target: &str) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a loopback port for the relay");
        let address = listener.local_addr().expect("the relay's address");
        let (cut, watching) = watch::channel(false);
        let target = target.to_owned();
        let task = tokio::spawn(async move {
            let mut connections = JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                connections.spawn(relay(client, target.clone(), watching.clone()));
            }
        });
        Relay { address, cut, task }
    }

    /// Where clients connect instead of the server.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Stops every byte, silently.
    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    /// Lets bytes (the held ones first) through again.
    pub fn heal(&self) {
        self.cut.send_replace(false);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Waits while the link is cut.
async fn while_cut(cut: &mut watch::Receiver<bool>) {
    let _ = cut.wait_for(|cut| !cut).await;
}

async fn relay(client: TcpStream, target: String, mut cut: watch::Receiver<bool>) {
    while_cut(&mut cut).await;
    let Ok(server) = TcpStream::connect(&target).await else {
        return;
    };
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    tokio::join!(
        pump(client_read, server_write, cut.clone()),
        pump(server_read, client_write, cut)
    );
}

/// Copies `from` to `to`, holding what it read while the link is cut.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut cut: watch::Receiver<bool>,
) {
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        while_cut(&mut cut).await;
        if to.write_all(&buffer[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}
