//! The node-to-node transport: ractor_cluster's `NodeServer` (authenticated with the cluster's cookie, in
//! `Isolated` mode: we dial every peer ourselves), behind the small [`Transport`] interface the rest of the
//! cluster uses, so that another transport could replace it (`shared/spec/cluster.md` C.8).
//!
//! ractor_cluster neither detects failures nor reconnects (A.6): the cluster daemon does both, through
//! [`Transport::dial`] and [`Transport::disconnect`]. A node's name on the wire is `<node>.<incarnation>@<host>`,
//! so that a restarted node is never mistaken for its previous incarnation (the "zombie trap", A.4).
//!
//! With `cluster.tls_*` set, every link is mutual TLS ([`ClusterTls`]) and the cookie is checked inside it. The
//! TLS listener is ours, not ractor_cluster's: its listener completes each handshake before accepting the next
//! connection, so one peer that stalls its handshake would hold every other link back. Ours runs each handshake
//! in its own task with a deadline, then hands the stream to the `NodeServer`; the `NodeServer`'s own listener
//! is then bound to a spare loopback port and also demands TLS, so that no plaintext listener exists.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorRef};
use ractor_cluster::node::NodeServerSessionInformation;
use ractor_cluster::{IncomingEncryptionMode, NetworkStream, NodeEventSubscription, NodeServer, NodeServerMessage};
use tokio::net::{TcpListener, TcpSocket, lookup_host};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::tls::{ClusterTls, HANDSHAKE_TIMEOUT};

/// How long a dial may take before it counts as failed.
const DIAL_TIMEOUT: Duration = Duration::from_secs(2);

/// At most this many incoming TLS handshakes at once; more connections wait to be accepted.
const MAX_HANDSHAKES: usize = 32;

/// A session event, reported to the cluster daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkEvent {
    /// A session with the member `node.incarnation` is ready.
    Up(String),
    /// The session with that member ended.
    Down(String),
}

/// What the cluster needs of a transport.
#[async_trait::async_trait]
pub trait Transport: Send + Sync + 'static {
    /// Opens a link to `address` (`host:port`); the handshake completes in the background.
    async fn dial(&self, address: &str) -> std::io::Result<()>;
    /// The members (`node.incarnation`) with an authenticated link.
    async fn connected(&self) -> HashSet<String>;
    /// Tears the link with `member` down on both ends (the failure detector convicted it).
    async fn disconnect(&self, member: &str);
    /// The links' peer addresses, for diagnostics.
    async fn links(&self) -> Vec<(String, String)>;
}

/// ractor_cluster as the [`Transport`].
pub struct RactorTransport {
    server: ActorRef<NodeServerMessage>,
    /// Outgoing connections leave from this address (the listener's, when it is a specific one).
    source: Option<IpAddr>,
    /// Node-to-node TLS, when configured.
    tls: Option<ClusterTls>,
    /// Our TLS listener's accept loop (see the module documentation).
    listener: Option<JoinHandle<()>>,
}

impl RactorTransport {
    /// Starts the `NodeServer` on `bind`, named `member@host`, and reports session events on `events`. With
    /// `tls`, links are mutual TLS only.
    pub async fn start(
        bind: SocketAddr,
        member: &str,
        host: &str,
        cookie: &str,
        tls: Option<ClusterTls>,
        events: mpsc::UnboundedSender<LinkEvent>,
    ) -> Result<Self, ractor::SpawnErr> {
        let startup = |e: std::io::Error| ractor::SpawnErr::StartupFailed(format!("binding {bind}: {e}").into());
        // With TLS, the NodeServer's own listener is idle: a spare loopback port, TLS too (module documentation).
        let (port, listen_ip, encryption, tls_listener) = match &tls {
            None => (bind.port(), bind.ip(), None, None),
            Some(tls) => (
                0,
                IpAddr::from([127, 0, 0, 1]),
                Some(IncomingEncryptionMode::Tls(tls.acceptor.clone())),
                Some(TcpListener::bind(bind).await.map_err(startup)?),
            ),
        };
        let server = NodeServer::new(port, cookie.to_string(), member.to_string(), host.to_string(), encryption, None)
            .with_listen_addr(listen_ip);
        let (server, _) = Actor::spawn(Some(format!("regent.node-server.{member}")), server, ()).await?;
        let listener = match (tls_listener, &tls) {
            (Some(listener), Some(tls)) => Some(tokio::spawn(accept_tls(listener, tls.clone(), server.clone()))),
            _ => None,
        };
        server
            .cast(NodeServerMessage::SubscribeToEvents {
                id: "regent.cluster".into(),
                subscription: Box::new(Events { events }),
            })
            .map_err(|e| ractor::SpawnErr::StartupFailed(e.to_string().into()))?;
        let source = (!bind.ip().is_unspecified()).then_some(bind.ip());
        info!(%bind, member, tls = tls.is_some(), "node-to-node listener started");
        Ok(Self { server, source, tls, listener })
    }

    /// The `NodeServer` actor (the root of the links' actors, for the admin endpoint).
    pub fn server(&self) -> &ActorRef<NodeServerMessage> {
        &self.server
    }

    async fn sessions(&self) -> Vec<NodeServerSessionInformation> {
        match self.server.call(NodeServerMessage::GetSessions, Some(Duration::from_secs(2))).await {
            Ok(ractor::rpc::CallResult::Success(sessions)) => sessions.into_values().collect(),
            _ => Vec::new(),
        }
    }

    pub fn stop(&self) {
        if let Some(listener) = &self.listener {
            listener.abort();
        }
        self.server.stop(Some("node stopping".into()));
    }
}

impl Drop for RactorTransport {
    fn drop(&mut self) {
        if let Some(listener) = &self.listener {
            listener.abort();
        }
    }
}

/// Accepts node-to-node connections on `listener`, each TLS handshake in its own task (at most
/// [`MAX_HANDSHAKES`] at once, each within [`HANDSHAKE_TIMEOUT`]), and hands the encrypted streams to `server`.
async fn accept_tls(listener: TcpListener, tls: ClusterTls, server: ActorRef<NodeServerMessage>) {
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    loop {
        let Ok(permit) = handshakes.clone().acquire_owned().await else { return };
        let (stream, peer_addr) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                warn!(error = %e, "node-to-node listener: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let acceptor = tls.acceptor.clone();
        let server = server.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let local_addr = match stream.set_nodelay(true).and_then(|()| stream.local_addr()) {
                Ok(addr) => addr,
                Err(e) => return debug!(%peer_addr, error = %e, "node-to-node connection lost before its handshake"),
            };
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(stream)) => {
                    let stream = Box::new(NetworkStream::TlsServer { peer_addr, local_addr, stream });
                    let _ = server.cast(NodeServerMessage::ConnectionOpened { stream, is_server: true });
                }
                Ok(Err(e)) => warn!(%peer_addr, error = %e, "node-to-node TLS handshake refused"),
                Err(_) => warn!(%peer_addr, timeout = ?HANDSHAKE_TIMEOUT, "node-to-node TLS handshake timed out"),
            }
        });
    }
}

#[async_trait::async_trait]
impl Transport for RactorTransport {
    async fn dial(&self, address: &str) -> std::io::Result<()> {
        let target = lookup_host(address)
            .await?
            .find(|a| self.source.is_none_or(|s| s.is_ipv4() == a.is_ipv4()))
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, format!("{address} does not resolve")))?;
        let socket = if target.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
        if let Some(source) = self.source {
            socket.bind(SocketAddr::new(source, 0))?;
        }
        socket.set_nodelay(true)?;
        let stream = tokio::time::timeout(DIAL_TIMEOUT, socket.connect(target))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, format!("connecting to {address}")))??;
        let peer_addr = stream.peer_addr()?;
        let local_addr = stream.local_addr()?;
        let stream = match &self.tls {
            None => NetworkStream::Raw { peer_addr, local_addr, stream },
            Some(tls) => {
                let host = address.rsplit_once(':').map_or(address, |(host, _)| host);
                let handshake = tls.connector.connect(ClusterTls::server_name(host), stream);
                let stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
                    .await
                    .map_err(|_| {
                        std::io::Error::new(std::io::ErrorKind::TimedOut, format!("TLS handshake with {address}"))
                    })?
                    .map_err(|e| std::io::Error::new(e.kind(), format!("TLS handshake with {address}: {e}")))?;
                NetworkStream::TlsClient { peer_addr, local_addr, stream }
            }
        };
        self.server
            .cast(NodeServerMessage::ConnectionOpened { stream: Box::new(stream), is_server: false })
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        debug!(address, "dialled");
        Ok(())
    }

    async fn connected(&self) -> HashSet<String> {
        self.sessions().await.iter().filter_map(|s| s.peer_name.as_ref().map(|n| member_of(&n.name))).collect()
    }

    async fn disconnect(&self, member: &str) {
        for session in self.sessions().await {
            if session.peer_name.as_ref().is_some_and(|n| member_of(&n.name) == member) {
                info!(member, "tearing the link down");
                session.actor.stop(Some("failure detector".into()));
            }
        }
    }

    async fn links(&self) -> Vec<(String, String)> {
        self.sessions()
            .await
            .into_iter()
            .map(|s| (s.peer_name.map(|n| member_of(&n.name)).unwrap_or_default(), s.peer_addr))
            .collect()
    }
}

/// `node.incarnation` from a wire name `node.incarnation@host`.
fn member_of(wire_name: &str) -> String {
    wire_name.split_once('@').map_or(wire_name, |(member, _)| member).to_string()
}

/// Forwards ractor_cluster's session events (called inside the NodeServer: never block).
struct Events {
    events: mpsc::UnboundedSender<LinkEvent>,
}

impl NodeEventSubscription for Events {
    fn node_session_opened(&self, _: NodeServerSessionInformation) {}

    fn node_session_disconnected(&self, session: NodeServerSessionInformation) {
        if let Some(name) = session.peer_name {
            let _ = self.events.send(LinkEvent::Down(member_of(&name.name)));
        }
    }

    fn node_session_authenticated(&self, _: NodeServerSessionInformation) {}

    fn node_session_ready(&self, session: NodeServerSessionInformation) {
        if let Some(name) = session.peer_name {
            let _ = self.events.send(LinkEvent::Up(member_of(&name.name)));
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn members_are_named_without_their_host() {
        assert_eq!(super::member_of("n1.abc@127.0.0.1"), "n1.abc");
        assert_eq!(super::member_of("n1.abc"), "n1.abc");
    }
}
