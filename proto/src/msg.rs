//! Signaling messages: what travels inside Noise message 1 (a request) and message 2 (its
//! response). Encoded with postcard inside an envelope that carries the message version and the
//! sender's timestamp (which the responder uses to reject replayed requests).

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use serde::{Deserialize, Serialize};

/// Version of the signaling messages. A peer speaking another version gets a typed error.
pub const MSG_VERSION: u16 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope<T> {
    pub version: u16,
    /// Unix time of the sender in microseconds, strictly increasing per sender.
    pub ts: u64,
    pub body: T,
}

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
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Response {
    Registered(Registered),
    Direction(DirectionAnswer),
    RouteAck,
    Tunnel(TunnelHello),
    Error(ErrorReply),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Register {
    pub fqdn: String,
    /// The node's own addresses with its NTM port, as its interfaces show them.
    pub addrs: Vec<SocketAddr>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Registered {
    pub vip4: Option<Ipv4Addr>,
    pub vip6: Option<Ipv6Addr>,
    /// The source address the DC saw.
    pub observed: SocketAddr,
    /// The node is behind a NAT (`observed` is not one of its addresses).
    pub nat: bool,
    /// How often the node should register again to keep its NAT mapping and its entry fresh.
    pub keepalive_ms: u32,
}

/// A node as DCs describe it to each other and to its peers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub fqdn: String,
    pub public_key: [u8; 32],
    pub vip4: Option<Ipv4Addr>,
    pub vip6: Option<Ipv6Addr>,
    /// Where the node can be reached: the NAT's outer address if behind NAT, else its addresses.
    pub endpoints: Vec<SocketAddr>,
    pub nat: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DirectionRequest {
    pub target: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerDirectionRequest {
    pub requester: NodeInfo,
    pub target: String,
}

/// How a tunnel runs. (Names in JSON are lowercase; postcard encodes the variant's index.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Path {
    Direct,
    Relay,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DirectionAnswer {
    /// The target, vouched for by its DC.
    pub peer: NodeInfo,
    /// Where the requester sends to reach the target.
    pub endpoint: SocketAddr,
    pub path: Path,
    /// The requester opens the tunnel (else the target does, towards the requester).
    pub requester_initiates: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouteDirection {
    /// The node that will build a tunnel with the receiver, vouched for by the DCs.
    pub peer: NodeInfo,
    /// Where the receiver sends to reach that peer.
    pub endpoint: SocketAddr,
    pub path: Path,
    /// The receiver opens the tunnel now.
    pub you_initiate: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TunnelHello {
    pub fqdn: String,
    pub vip4: Option<Ipv4Addr>,
    pub vip6: Option<Ipv6Addr>,
}

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
    Internal,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorReply {
    pub code: ErrorCode,
    pub message: String,
}

impl std::fmt::Display for ErrorReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}: {}", self.code, self.message)
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MsgError {
    #[error("malformed message: {0}")]
    Malformed(String),
    #[error("message version {0} is not supported (this side speaks {MSG_VERSION})")]
    Version(u16),
}

pub fn encode<T: Serialize>(ts: u64, body: &T) -> Vec<u8> {
    postcard::to_allocvec(&Envelope { version: MSG_VERSION, ts, body }).expect("in-memory serialization")
}

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
        let mut v = postcard::to_allocvec(&Envelope { version: 2u16, ts: 1, body: 0u8 }).unwrap();
        assert_eq!(decode::<Request>(&v), Err(MsgError::Version(2)));
        v.truncate(1);
        assert!(matches!(decode::<Request>(&[1, 0xff]), Err(MsgError::Malformed(_))));
        let mut long = b.clone();
        long.push(0);
        assert!(matches!(decode::<Request>(&long), Err(MsgError::Malformed(_))));
    }
}
