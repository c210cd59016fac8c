//! A TCP fault proxy for the links between cluster nodes (`shared/spec/reliability.md` §4.2, §4.7): the harness's
//! analogue of Akka's `TestConductor` blackhole.
//!
//! Each node advertises (`REGENT_CLUSTER_HOST:REGENT_CLUSTER_PORT`) an address where a [`FaultProxy`] link listens,
//! and really listens on its bind address, where the link forwards. Every node has its own loopback IP and binds its
//! outbound connections to it, so a link tells which node opened a connection by its source IP.
//!
//! The link dials the node from the initiator's own IP, so the node sees its peer's address as without the proxy.
//!
//! A rule blocks the connections that one node *initiates* towards another ([`FaultProxy::block`]);
//! [`FaultProxy::partition`] blocks both directions between two sides. While a connection is blocked the proxy
//! forwards nothing, in either direction, and keeps the connection open: a new connection is accepted and held, an
//! existing one stops moving bytes. Nothing is reset and no byte is dropped, as in a real partition, where TCP keeps
//! retransmitting: after [`FaultProxy::heal`] the held bytes are delivered (unless an end gave up and closed its
//! socket meanwhile, which the proxy then passes on).
//!
//! Two more faults, for a link in front of a server such as PostgreSQL (`tests/pg_faults.rs`):
//! [`FaultProxy::hold_replies`] holds only what the server sends back (requests still reach it: it executes, and
//! commits, but nobody hears the answer), and [`FaultProxy::reset_connections`] closes every connection open
//! towards a link at once, both ends, whatever they hold: with held replies, an ambiguous commit.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

/// The initiator that matches every source in a rule ([`FaultProxy::block_all_to`]).
pub const ANY: &str = "*";

/// The blocked `(initiator, target)` pairs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rules {
    blocked: HashSet<(String, String)>,
    /// Targets whose replies are held (their requests flow).
    held_replies: HashSet<String>,
    /// Per target, how many times its connections were reset: a connection opened under an older count closes.
    resets: BTreeMap<String, u64>,
}

impl Rules {
    /// Whether connections opened by `from` towards `to` are blocked.
    pub fn blocks(&self, from: &str, to: &str) -> bool {
        self.blocked.contains(&(from.to_string(), to.to_string())) || self.blocked.contains(&(ANY.into(), to.into()))
    }

    /// Whether bytes flow on a connection opened by `from` towards `to`, the `way` given.
    fn passes(&self, from: &str, to: &str, way: Way) -> bool {
        !self.blocks(from, to) && (way == Way::Request || !self.held_replies.contains(to))
    }

    fn resets_of(&self, to: &str) -> u64 {
        self.resets.get(to).copied().unwrap_or(0)
    }
}

/// Which way a pipe copies: what the initiator sends, or what the target answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Way {
    Request,
    Reply,
}

/// The proxy: one listening link per node, one set of rules for all of them. Dropping it closes everything.
pub struct FaultProxy {
    rules: watch::Sender<Rules>,
    /// Source IP → node name, for every node that has a link.
    sources: Arc<Mutex<HashMap<IpAddr, String>>>,
    /// Connections accepted so far, by `(initiator, target)`; an unknown initiator is named by its IP.
    seen: Arc<Mutex<BTreeMap<(String, String), usize>>>,
    links: Vec<(String, SocketAddr, JoinHandle<()>)>,
}

impl Default for FaultProxy {
    fn default() -> Self {
        Self::new()
    }
}

impl FaultProxy {
    pub fn new() -> Self {
        FaultProxy {
            rules: watch::Sender::new(Rules::default()),
            sources: Arc::default(),
            seen: Arc::default(),
            links: Vec::new(),
        }
    }

    /// Names `ip` as the source of `node`'s connections (its bind address) without giving it a link.
    pub fn register_source(&self, node: &str, ip: IpAddr) {
        self.sources.lock().unwrap().insert(ip, node.to_string());
    }

    /// Starts `node`'s link: listens on `listen` (the node's advertised address; port 0 picks one) and forwards to
    /// `upstream` (its bind address); connections from `source_ip` are the node's own. Returns where it listens.
    pub async fn add_link(
        &mut self,
        node: &str,
        source_ip: IpAddr,
        listen: SocketAddr,
        upstream: SocketAddr,
    ) -> io::Result<SocketAddr> {
        let listener = TcpListener::bind(listen).await?;
        let listen = listener.local_addr()?;
        self.register_source(node, source_ip);
        let link = Link {
            target: node.to_string(),
            upstream,
            rules: self.rules.subscribe(),
            sources: self.sources.clone(),
            seen: self.seen.clone(),
        };
        let task = tokio::spawn(link.run(listener));
        self.links.push((node.to_string(), listen, task));
        Ok(listen)
    }

    /// The address `node`'s link listens on.
    pub fn listen_addr(&self, node: &str) -> Option<SocketAddr> {
        self.links.iter().find(|(name, _, _)| name == node).map(|(_, addr, _)| *addr)
    }

    /// Blocks the connections `from` opens towards `to` (one way: `to`'s connections to `from` still flow).
    pub fn block(&self, from: &str, to: &str) {
        self.rules.send_modify(|rules| {
            rules.blocked.insert((from.to_string(), to.to_string()));
        });
    }

    /// Blocks every connection towards `to`'s link, whoever opens it.
    pub fn block_all_to(&self, to: &str) {
        self.block(ANY, to);
    }

    /// Cuts every link between a node of `side_a` and a node of `side_b`, both ways.
    pub fn partition(&self, side_a: &[&str], side_b: &[&str]) {
        self.rules.send_modify(|rules| {
            for a in side_a {
                for b in side_b {
                    rules.blocked.insert((a.to_string(), b.to_string()));
                    rules.blocked.insert((b.to_string(), a.to_string()));
                }
            }
        });
    }

    /// Holds what `to` sends back on every connection towards it (what it receives still flows): `to` executes
    /// the requests, nobody hears its answers. [`heal`](Self::heal) delivers them.
    pub fn hold_replies(&self, to: &str) {
        self.rules.send_modify(|rules| {
            rules.held_replies.insert(to.to_string());
        });
    }

    /// Closes every connection open towards `to` right now, both ends, dropping the bytes held for them; later
    /// connections are not affected.
    pub fn reset_connections(&self, to: &str) {
        self.rules.send_modify(|rules| {
            *rules.resets.entry(to.to_string()).or_default() += 1;
        });
    }

    /// Lifts every rule: held connections and bytes flow again.
    pub fn heal(&self) {
        self.rules.send_modify(|rules| {
            rules.blocked.clear();
            rules.held_replies.clear();
        });
    }

    pub fn rules(&self) -> Rules {
        self.rules.borrow().clone()
    }

    /// Connections accepted so far, by `(initiator, target)`.
    pub fn connections(&self) -> BTreeMap<(String, String), usize> {
        self.seen.lock().unwrap().clone()
    }

    /// Initiators the proxy could not name: connections that did not come from a node's bind address (a node that
    /// does not bind its outbound connections defeats partitions by source).
    pub fn unknown_sources(&self) -> Vec<String> {
        let names: HashSet<String> = self.sources.lock().unwrap().values().cloned().collect();
        let mut unknown: Vec<String> =
            self.connections().into_keys().map(|(from, _)| from).filter(|from| !names.contains(from)).collect();
        unknown.dedup();
        unknown
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        for (_, _, task) in &self.links {
            task.abort();
        }
    }
}

/// One node's listening side.
struct Link {
    target: String,
    upstream: SocketAddr,
    rules: watch::Receiver<Rules>,
    sources: Arc<Mutex<HashMap<IpAddr, String>>>,
    seen: Arc<Mutex<BTreeMap<(String, String), usize>>>,
}

impl Link {
    /// Accepts until aborted; the connections die with it (their tasks live in the `JoinSet`).
    async fn run(self, listener: TcpListener) {
        let mut connections = JoinSet::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let Ok((client, peer)) = accepted else { continue };
                    let from = self.sources.lock().unwrap().get(&peer.ip()).cloned().unwrap_or_else(|| peer.ip().to_string());
                    *self.seen.lock().unwrap().entry((from.clone(), self.target.clone())).or_default() += 1;
                    let epoch = self.rules.borrow().resets_of(&self.target);
                    let route = Route { from, to: self.target.clone(), epoch };
                    connections.spawn(serve(client, peer.ip(), route, self.upstream, self.rules.clone()));
                }
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }
    }
}

/// Who opened a connection, towards whom: what the rules are checked against.
#[derive(Clone)]
struct Route {
    from: String,
    to: String,
    /// The target's reset count when the connection was accepted.
    epoch: u64,
}

/// Why a pipe stops waiting.
enum Wake {
    /// The awaited condition holds.
    Ready,
    /// The connection was reset ([`FaultProxy::reset_connections`]) or the proxy is gone: close it now.
    Close,
}

impl Route {
    /// Waits until the rules let `way` through.
    async fn open(&self, rules: &mut watch::Receiver<Rules>, way: Way) -> Wake {
        let epoch = self.epoch;
        match rules.wait_for(|r| r.resets_of(&self.to) != epoch || r.passes(&self.from, &self.to, way)).await {
            Ok(r) if r.resets_of(&self.to) == epoch => Wake::Ready,
            _ => Wake::Close,
        }
    }

    /// Waits until the rules stop `way`.
    async fn cut(&self, rules: &mut watch::Receiver<Rules>, way: Way) -> Wake {
        let epoch = self.epoch;
        match rules.wait_for(|r| r.resets_of(&self.to) != epoch || !r.passes(&self.from, &self.to, way)).await {
            Ok(r) if r.resets_of(&self.to) == epoch => Wake::Ready,
            _ => Wake::Close,
        }
    }
}

async fn serve(
    client: TcpStream,
    source: IpAddr,
    route: Route,
    upstream: SocketAddr,
    mut rules: watch::Receiver<Rules>,
) {
    // A blocked new connection is accepted and held: nothing is read from it and nothing is dialled until the heal.
    if let Wake::Close = route.open(&mut rules, Way::Request).await {
        return;
    }
    // The node behind the link is gone: close, as the peer's kernel would after a failed connect.
    let Ok(server) = dial_from(source, upstream).await else { return };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    tokio::join!(
        pipe(client_read, server_write, route.clone(), rules.clone(), Way::Request),
        pipe(server_read, client_write, route, rules, Way::Reply)
    );
}

/// Connects to `upstream` from `source` (any port), so that the node behind the link sees its peer's own address;
/// from wherever the system picks if that address cannot be bound.
async fn dial_from(source: IpAddr, upstream: SocketAddr) -> io::Result<TcpStream> {
    let socket = if source.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    if socket.bind(SocketAddr::new(source, 0)).is_err() {
        return TcpStream::connect(upstream).await;
    }
    socket.connect(upstream).await
}

/// Copies `from` to `to` while the route is open; holds (reads nothing more, keeps what it read) while it is cut.
/// A reset returns at once, dropping both halves (the sockets close when both pipes of a connection are gone).
async fn pipe(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    route: Route,
    mut rules: watch::Receiver<Rules>,
    way: Way,
) {
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        if let Wake::Close = route.open(&mut rules, way).await {
            return;
        }
        let n = tokio::select! {
            read = from.read(&mut buffer) => match read {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            },
            cut = route.cut(&mut rules, way) => match cut {
                Wake::Ready => continue,
                Wake::Close => return,
            },
        };
        // Read just before a cut: held until the heal, never dropped.
        if let Wake::Close = route.open(&mut rules, way).await {
            return;
        }
        if to.write_all(&buffer[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}
