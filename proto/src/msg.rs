//! Signaling messages: what travels inside Noise message 1 (a request) and message 2 (its
//! response). Encoded with postcard inside an envelope that carries the message version and the
//! sender's timestamp (which the responder uses to reject replayed requests).

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use serde::{Deserialize, Serialize};

/// Version of the signaling messages. A peer speaking another version gets a typed error.
pub const MSG_VERSION: u16 = 2;

/// What a Noise payload holds: the version, the timestamp, then the request or response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope<T> {
    /// [`MSG_VERSION`] of the sender; read first, alone, so a mismatch is reported as such.
    pub version: u16,
    /// Unix time of the sender in microseconds, strictly increasing per sender.
    pub ts: u64,
    /// The [`Request`] or [`Response`].
    pub body: T,
}

/// What an initiator asks, in Noise message 1. Variant indexes are wire values: append only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Request {
    /// node → its DC: register (and, repeated, keep alive).
    Register(Register),
    /// node → its DC: how do I reach this peer?
    Direction(DirectionRequest),
    /// DC → the target's DC: the same question, on behalf of a node of its zone.
    PeerDirection(PeerDirectionRequest),
    /// DC → node: a peer is about to build a tunnel with you (and maybe you open it).
    Route(RouteDirection),
    /// node → node: open a tunnel.
    Tunnel(TunnelHello),
    /// DC → relay: open a session between two nodes (only the relay's configured DCs may).
    Allocate(Allocate),
    /// DC → relay: are you there, and how loaded? (The DC avoids relays that stop answering.)
    RelayPing,
    /// DC → node, from a second address of the DC: does an unsolicited packet reach you through
    /// your NAT? (It does through a cloud's 1:1 NAT, not through a home router's.)
    Probe,
    /// DC → node: these nodes (or every node of these zones) are no longer trusted: tear down
    /// their tunnels and take no new ones from them. Answered with `RouteAck`.
    Revoke(Revoke),
}

/// The answer, in Noise message 2. Variant indexes are wire values: append only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Response {
    /// To `Register`: the node's VIPs and what the DC saw of it.
    Registered(Registered),
    /// To `Direction` and `PeerDirection`: the target and how to reach it.
    Direction(DirectionAnswer),
    /// To `Route`: the node has taken note and is ready for the tunnel. To `Revoke`: done.
    RouteAck,
    /// To `Tunnel`: the responder's identity; the tunnel is installed on its side.
    Tunnel(TunnelHello),
    /// To any request that failed.
    Error(ErrorReply),
    /// To `Allocate`: the session's ids, one per side.
    Allocated(Allocated),
    /// To `RelayPing`: the relay's load.
    RelayLoad(RelayLoad),
    /// To `Probe`: the probe arrived.
    ProbeAck,
    /// To any request whose timestamp was too old (the responder restarted and the sender's
    /// clock is behind, or the sender's clock stepped back): nothing was done; send again with a
    /// timestamp of at least this value (µs).
    Stale(u64),
}

/// A node's registration (and keepalive) with its DC.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Register {
    /// The name the node registers; the DC checks it is enrolled with the handshake's key.
    pub fqdn: String,
    /// The node's own addresses with its NTM port, as its interfaces show them.
    pub addrs: Vec<SocketAddr>,
}

/// The DC's answer to a registration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Registered {
    /// The node's IPv4 VIP, if the DC has an IPv4 pool; stable across registrations.
    pub vip4: Option<Ipv4Addr>,
    /// The node's IPv6 VIP, if the DC has an IPv6 pool; stable across registrations.
    pub vip6: Option<Ipv6Addr>,
    /// The source address the DC saw.
    pub observed: SocketAddr,
    /// The node is behind a NAT that only lets in what the node opened (`observed` is not one
    /// of its addresses and no probe came through): it opens its tunnels, or is relayed.
    pub nat: bool,
    /// The node is behind a 1:1 NAT (a cloud's public address mapped to its private one): the
    /// DC's probe to `observed` came through, so peers reach it there unsolicited.
    pub one_to_one: bool,
    /// How often the node should register again to keep its NAT mapping and its entry fresh.
    pub keepalive_ms: u32,
}

/// A node as DCs describe it to each other and to its peers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// The node's name.
    pub fqdn: String,
    /// The node's static X25519 key: its tunnel handshake must be made with it.
    pub public_key: [u8; 32],
    /// The node's IPv4 VIP, if it has one.
    pub vip4: Option<Ipv4Addr>,
    /// The node's IPv6 VIP, if it has one.
    pub vip6: Option<Ipv6Addr>,
    /// Where the node can be reached: the NAT's outer address if behind NAT, else its addresses.
    pub endpoints: Vec<SocketAddr>,
    /// The node is behind a NAT: it must open its tunnels (or be opened through its mapping).
    pub nat: bool,
}

/// A node asks its DC how to reach another node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DirectionRequest {
    /// The FQDN of the node to reach, in any zone.
    pub target: String,
    /// Hole punching toward the target failed: a relay, please.
    pub relay: bool,
    /// The node has a relayed tunnel to the target: answer only if a direct path is possible
    /// now (else `NoPath`, and no relay is allocated).
    pub upgrade: bool,
}

/// A DC asks the target's DC for a direction on behalf of one of its nodes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerDirectionRequest {
    /// The requesting node as its DC knows it; its FQDN must be in the asking DC's zone.
    pub requester: NodeInfo,
    /// The FQDN of the node to reach, in the answering DC's zone.
    pub target: String,
    /// As [`DirectionRequest::relay`].
    pub relay: bool,
    /// As [`DirectionRequest::upgrade`].
    pub upgrade: bool,
}

/// How a tunnel runs. (Names in JSON are lowercase; postcard encodes the variant's index.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Path {
    /// Node to node, UDP between the two endpoints.
    Direct,
    /// Through a relay server: both nodes send to the relay, which forwards by id.
    Relay,
    /// Node to node through two NATs that filter: both were told to send at once (hole
    /// punching), so that each NAT lets the other's packets in.
    Punched,
}

/// A node's part of a relay session, from its DC: where the relay is, which id the node's
/// tunnel takes (the relay forwards by it) and the key that authenticates its binds.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct RelayTicket {
    /// The relay's address, of the node's own address family.
    pub relay: SocketAddr,
    /// The node's local id for the tunnel: its handshake's sender and its data's receiver.
    pub local_id: u32,
    /// The key of the node's binds (HMAC-SHA256), known to the relay and to this node only.
    pub bind_key: [u8; 32],
}

impl std::fmt::Debug for RelayTicket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayTicket").field("relay", &self.relay).field("local_id", &self.local_id).finish()
    }
}

/// A DC asks one of its relays for a session between two nodes.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct Allocate {
    /// The bind keys of the two sides, fresh random keys the DC gives to each node too.
    pub bind_keys: [[u8; 32]; 2],
    /// The two nodes' names, for the relay's logs.
    pub labels: [String; 2],
}

impl std::fmt::Debug for Allocate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Allocate").field("labels", &self.labels).finish()
    }
}

/// The relay's answer to an allocation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Allocated {
    /// The ids of the two sides, in the order of [`Allocate::bind_keys`]: unique at the relay.
    pub ids: [u32; 2],
}

/// The relay's answer to a ping.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RelayLoad {
    /// Sessions open now.
    pub sessions: u32,
}

/// A DC's answer to a direction request: who the target is and how to reach it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DirectionAnswer {
    /// The target, vouched for by its DC.
    pub peer: NodeInfo,
    /// Where the requester sends to reach the target.
    pub endpoint: SocketAddr,
    /// How the tunnel runs.
    pub path: Path,
    /// The requester opens the tunnel (else the target does, towards the requester).
    pub requester_initiates: bool,
    /// For a relayed path: the requester's part of the session (`endpoint` is the relay).
    pub relay: Option<RelayTicket>,
}

/// What a DC no longer vouches for (a node removed from its configuration, a peer zone no longer
/// trusted).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Revoke {
    /// Nodes (FQDNs) whose tunnels go.
    pub nodes: Vec<String>,
    /// Zones whose every node's tunnels go.
    pub zones: Vec<String>,
}

/// A DC tells the target node that a peer is about to build a tunnel with it, before it
/// answers the requester.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouteDirection {
    /// The node that will build a tunnel with the receiver, vouched for by the DCs.
    pub peer: NodeInfo,
    /// Where the receiver sends to reach that peer.
    pub endpoint: SocketAddr,
    /// How the tunnel runs.
    pub path: Path,
    /// The receiver opens the tunnel now.
    pub you_initiate: bool,
    /// For a relayed path: the receiver's part of the session (`endpoint` is the relay).
    pub relay: Option<RelayTicket>,
}

/// A node's identity in a tunnel handshake, both ways: the other side checks that `fqdn` is
/// the node its DC vouched for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TunnelHello {
    /// The sender's own FQDN.
    pub fqdn: String,
    /// The sender's own IPv4 VIP, if it has one.
    pub vip4: Option<Ipv4Addr>,
    /// The sender's own IPv6 VIP, if it has one.
    pub vip6: Option<Ipv6Addr>,
}

/// Why a request failed, for programs; the message says it for people. Variant indexes are
/// wire values: append only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorCode {
    /// The key is not enrolled for that FQDN.
    NotEnrolled,
    /// The requester or the target is not registered.
    NotRegistered,
    /// No such node in that zone.
    UnknownNode,
    /// The DC cannot find a path between the two nodes.
    NoPath,
    /// A DC or node on the way did not answer.
    Unavailable,
    /// The peer's key was not vouched for by a DC.
    NotAuthorized,
    /// The request made no sense.
    BadRequest,
    /// The request's message version is not spoken here.
    Version,
    /// The responder failed on its side (e.g. its registry could not be written).
    Internal,
    /// The responder has no room now (a relay at its session limit).
    Busy,
}

/// A failed request's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorReply {
    /// What kind of failure.
    pub code: ErrorCode,
    /// A one-line explanation for logs, naming what was refused.
    pub message: String,
}

impl std::fmt::Display for ErrorReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}: {}", self.code, self.message)
    }
}

/// Why a payload could not be decoded.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MsgError {
    /// Not a valid postcard envelope of the expected type, or trailing bytes after it.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// An envelope of another message version (answered with [`ErrorCode::Version`]).
    #[error("message version {0} is not supported (this side speaks {MSG_VERSION})")]
    Version(u16),
}

/// Encodes `body` in an envelope of [`MSG_VERSION`] with timestamp `ts` (µs since the Unix
/// epoch), ready to be a Noise payload.
pub fn encode<T: Serialize>(ts: u64, body: &T) -> Vec<u8> {
    postcard::to_allocvec(&Envelope { version: MSG_VERSION, ts, body }).expect("in-memory serialization")
}

/// Decodes an envelope holding a `T`; the version is checked before the rest is read, and no
/// bytes may follow.
pub fn decode<T: for<'de> Deserialize<'de>>(b: &[u8]) -> Result<Envelope<T>, MsgError> {
    // The version comes first and is read alone, so that a newer peer gets a version error and
    // not a garbled one.
    let (version, _) = postcard::take_from_bytes::<u16>(b).map_err(|e| MsgError::Malformed(e.to_string()))?;
    if version != MSG_VERSION {
        return Err(MsgError::Version(version));
    }
    let (env, rest) = postcard::take_from_bytes::<Envelope<T>>(b).map_err(|e| MsgError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(MsgError::Malformed(format!("{} trailing bytes", rest.len())));
    }
    Ok(env)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_version() {
        let r = Request::Register(Register { fqdn: "a.b".into(), addrs: vec!["1.2.3.4:7600".parse().unwrap()] });
        let b = encode(5, &r);
        let e: Envelope<Request> = decode(&b).unwrap();
        assert_eq!((e.ts, e.body), (5, r));
        let mut v = postcard::to_allocvec(&Envelope { version: 9u16, ts: 1, body: 0u8 }).unwrap();
        assert_eq!(decode::<Request>(&v), Err(MsgError::Version(9)));
        v.truncate(1);
        assert!(matches!(decode::<Request>(&[MSG_VERSION as u8, 0xff]), Err(MsgError::Malformed(_))));
        let mut long = b.clone();
        long.push(0);
        assert!(matches!(decode::<Request>(&long), Err(MsgError::Malformed(_))));
    }
}
