//! Authoritative DNS for the DC's zone: a sans-IO [`Authority`] and thin tokio UDP/TCP servers.
//!
//! Zone contents (from the config): SOA and NS at the apex, the DC's own A/AAAA, the SRV record
//! `_ntm._udp.<zone>` pointing at the DC's signaling port, and, for every enrolled node served
//! through an NPS, that NPS's A/AAAA. Other enrolled nodes exist without data (NODATA).
//!
//! Hardened as Knot and NSD are: ANY gets one RRset (RFC 8482); UDP responses are rate-limited
//! per client prefix ([`crate::rrl`]); TCP connections are capped per client and in total, with
//! an idle timeout and a bounded number of queries each; the question's spelling (0x20 case
//! randomization) is echoed byte for byte.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, NS, SOA, SRV};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

use host::loglimit::LogLimiter;

use crate::config::Config;
use crate::rrl::{Rrl, RrlConfig, Verdict};

/// TTL of node records (they follow enrollment changes quickly).
pub const NODE_TTL: u32 = 5;
/// TTL of every other record.
pub const TTL: u32 = 60;
/// Largest query accepted over UDP; bigger ones get FORMERR.
pub const MAX_UDP_QUERY: usize = 512;
/// Largest UDP response, whatever the client's EDNS buffer size says.
pub const MAX_UDP_RESPONSE: u16 = 1232;
/// Plain-DNS UDP response limit (no EDNS).
const CLASSIC_UDP_LIMIT: usize = 512;
const HEADER_LEN: usize = 12;

/// Why the zone could not be built from the configuration.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// A configured name (zone, DC name, node FQDN) is not a valid DNS name.
    #[error("invalid DNS name {name:?}: {reason}")]
    BadName {
        /// The name as configured.
        name: String,
        /// What the DNS name parser objected to.
        reason: String,
    },
}

/// Counters, for metrics.
#[derive(Debug, Default)]
pub struct DnsStats {
    /// Every message received, over UDP and TCP, answered or not.
    pub queries: AtomicU64,
    /// Messages dropped without an answer (undecodable, or not a query).
    pub malformed: AtomicU64,
    /// Queries answered REFUSED: outside the zone, not class IN, or a zone transfer.
    pub refused: AtomicU64,
    /// Queries answered NXDOMAIN: a name inside the zone that does not exist.
    pub nxdomain: AtomicU64,
    /// UDP answers sent with the TC bit because they did not fit.
    pub truncated: AtomicU64,
    /// UDP responses dropped by response rate limiting.
    pub rrl_dropped: AtomicU64,
    /// UDP responses sent truncated, without records, by response rate limiting (the slip).
    pub rrl_slipped: AtomicU64,
    /// TCP connections closed as soon as accepted: too many in total or from that client.
    pub tcp_refused: AtomicU64,
}

/// How a query arrived: it bounds the response size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// A datagram: at most 512 bytes back, or the client's EDNS size up to 1232.
    Udp,
    /// A stream with a length prefix: up to 65535 bytes back.
    Tcp,
}

/// The zone's data and the logic to answer queries about it. No I/O.
#[derive(Debug)]
pub struct Authority {
    zone: Name,
    /// The zone's records, replaced whole when the configuration is reloaded.
    data: RwLock<Arc<ZoneData>>,
    stats: DnsStats,
    rrl: RrlConfig,
}

#[derive(Debug)]
struct ZoneData {
    soa: Record,
    serial: u32,
    /// Every name that exists in the zone (lowercase), with its records; empty for names
    /// without data (enrolled nodes without NPS, empty non-terminals).
    names: HashMap<Name, Vec<Record>>,
}

fn fqdn_name(s: &str) -> Result<Name, DnsError> {
    let mut n = Name::from_ascii(s).map_err(|e| DnsError::BadName { name: s.to_string(), reason: e.to_string() })?;
    n.set_fqdn(true);
    Ok(n.to_lowercase())
}

fn addr_record(name: &Name, ttl: u32, ip: IpAddr) -> Record {
    let rdata = match ip {
        IpAddr::V4(v4) => RData::A(A(v4)),
        IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
    };
    Record::from_rdata(name.clone(), ttl, rdata)
}

impl Authority {
    /// Builds the zone from the config, with the current Unix time as SOA serial.
    pub fn from_config(cfg: &Config) -> Result<Self, DnsError> {
        let serial =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_secs() as u32);
        Self::new(cfg, serial)
    }

    /// Builds the zone from the config.
    pub fn new(cfg: &Config, serial: u32) -> Result<Self, DnsError> {
        let (zone, data) = zone_data(cfg, serial)?;
        let rrl =
            RrlConfig { responses_per_s: cfg.dns_rrl_responses_per_s, slip: cfg.dns_rrl_slip, ..RrlConfig::default() };
        Ok(Self { zone, data: RwLock::new(Arc::new(data)), stats: DnsStats::default(), rrl })
    }

    /// Serves the zone of a reloaded config from now on (its nodes and NPSes may have changed;
    /// the zone itself may not). The SOA serial moves on.
    pub fn reload(&self, cfg: &Config) -> Result<(), DnsError> {
        let old = self.zone_data();
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_secs() as u32);
        let (zone, data) = zone_data(cfg, now.max(old.serial.wrapping_add(1)))?;
        if zone != self.zone {
            return Err(DnsError::BadName {
                name: cfg.zone.clone(),
                reason: "the zone cannot change on reload".into(),
            });
        }
        *self.data.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(data);
        Ok(())
    }

    fn zone_data(&self) -> Arc<ZoneData> {
        self.data.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// The zone's apex and records for `cfg`.
fn zone_data(cfg: &Config, serial: u32) -> Result<(Name, ZoneData), DnsError> {
    let zone = fqdn_name(&cfg.zone)?;
    let dc = fqdn_name(&cfg.name)?;
    let hostmaster = fqdn_name(&format!("hostmaster.{}", cfg.zone))?;
    let soa = Record::from_rdata(
        zone.clone(),
        TTL,
        RData::SOA(SOA::new(dc.clone(), hostmaster, serial, 3600, 600, 86400, NODE_TTL)),
    );
    let mut names: HashMap<Name, Vec<Record>> = HashMap::new();
    let mut add = |owner: &Name, rec: Option<Record>| {
        let entry = names.entry(owner.clone()).or_default();
        entry.extend(rec);
    };
    add(&zone, Some(soa.clone()));
    add(&zone, Some(Record::from_rdata(zone.clone(), TTL, RData::NS(NS(dc.clone())))));
    if zone.zone_of(&dc) {
        for ip in &cfg.addresses {
            add(&dc, Some(addr_record(&dc, TTL, *ip)));
        }
    }
    let srv_name = fqdn_name(&format!("_ntm._udp.{}", cfg.zone))?;
    let srv = SRV::new(0, 0, cfg.signaling_port(), dc.clone());
    add(&srv_name, Some(Record::from_rdata(srv_name.clone(), TTL, RData::SRV(srv))));
    for node in &cfg.nodes {
        let owner = fqdn_name(&node.fqdn)?;
        if !zone.zone_of(&owner) {
            continue;
        }
        add(&owner, None);
        let nps = node.nps.as_deref().and_then(|n| cfg.nps_named(n));
        for ip in nps.map(|n| n.addresses.as_slice()).unwrap_or_default() {
            add(&owner, Some(addr_record(&owner, NODE_TTL, *ip)));
        }
    }
    // Empty non-terminals exist too (NODATA, not NXDOMAIN).
    let owners: Vec<Name> = names.keys().cloned().collect();
    for owner in owners {
        let mut n = owner.base_name();
        while n.num_labels() > zone.num_labels() {
            names.entry(n.clone()).or_default();
            n = n.base_name();
        }
    }
    Ok((zone, ZoneData { soa, serial, names }))
}

impl Authority {
    /// The zone's apex, lowercase and fully qualified.
    pub fn zone(&self) -> &Name {
        &self.zone
    }

    /// The counters of the queries answered so far, shared by the UDP and TCP servers.
    pub fn stats(&self) -> &DnsStats {
        &self.stats
    }

    /// The response rate limits of the UDP servers (`dns_rrl_*` in the config).
    pub fn rrl_config(&self) -> RrlConfig {
        self.rrl
    }

    /// Answers a query that came over a stream (TCP): the response is at most 65535 bytes.
    /// `None`: the message is not a decodable query and deserves no answer.
    pub fn answer(&self, query_bytes: &[u8]) -> Option<Vec<u8>> {
        self.respond(query_bytes, Transport::Tcp)
    }

    /// Answers a UDP datagram: oversized queries get FORMERR, responses larger than the
    /// client's buffer (512, or its EDNS size up to 1232) lose the additional section, then
    /// the answers, with the TC bit set.
    pub fn answer_udp(&self, query_bytes: &[u8]) -> Option<Vec<u8>> {
        self.respond(query_bytes, Transport::Udp)
    }

    /// Applies the response rate limits kept in `rrl` to `resp`, an answer of
    /// [`Authority::answer_udp`] for `client`: it is sent as it is, truncated (TC=1, no
    /// records) when it slips, or not at all (`None`).
    pub fn rate_limit(&self, resp: Vec<u8>, client: IpAddr, rrl: &mut Rrl, now: Instant) -> Option<Vec<u8>> {
        match rrl.check(client, now) {
            Verdict::Send => Some(resp),
            Verdict::Slip => {
                self.stats.rrl_slipped.fetch_add(1, Ordering::Relaxed);
                slipped(&resp)
            }
            Verdict::Drop => {
                self.stats.rrl_dropped.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    /// Answers over `transport`.
    pub fn respond(&self, bytes: &[u8], transport: Transport) -> Option<Vec<u8>> {
        self.stats.queries.fetch_add(1, Ordering::Relaxed);
        // Never answer responses (no loops) or fragments of a header.
        if bytes.len() < HEADER_LEN || bytes[2] & 0x80 != 0 {
            self.stats.malformed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        if transport == Transport::Udp && bytes.len() > MAX_UDP_QUERY {
            let reply = formerr(bytes);
            if reply.is_none() {
                self.stats.malformed.fetch_add(1, Ordering::Relaxed);
            }
            return reply;
        }
        let req = match Message::from_vec(bytes) {
            Ok(m) => m,
            Err(e) => {
                self.stats.malformed.fetch_add(1, Ordering::Relaxed);
                tracing::trace!(error = %e, "undecodable DNS query");
                return None;
            }
        };
        let limit = match transport {
            Transport::Tcp => usize::from(u16::MAX),
            Transport::Udp => match req.extensions() {
                Some(e) => usize::from(e.max_payload().clamp(512, MAX_UDP_RESPONSE)),
                None => CLASSIC_UDP_LIMIT,
            },
        };
        self.encode(self.answer_message(&req), limit)
    }

    /// The full response to `req`, without size limits.
    pub fn answer_message(&self, req: &Message) -> Message {
        let mut resp = Message::new();
        resp.set_id(req.id())
            .set_message_type(MessageType::Response)
            .set_op_code(req.op_code())
            .set_recursion_desired(req.recursion_desired())
            .set_checking_disabled(req.checking_disabled());
        if let Some(edns) = req.extensions() {
            let mut ours = Edns::new();
            ours.set_max_payload(MAX_UDP_RESPONSE).set_version(0);
            resp.set_edns(ours);
            if edns.version() > 0 {
                resp.set_response_code(ResponseCode::BADVERS);
                return resp;
            }
        }
        if req.op_code() != OpCode::Query {
            resp.set_response_code(ResponseCode::NotImp);
            return resp;
        }
        let [query] = req.queries() else {
            resp.set_response_code(ResponseCode::FormErr);
            return resp;
        };
        resp.add_query(query.clone());
        let mut qname = query.name().to_lowercase();
        qname.set_fqdn(true);
        let qtype = query.query_type();
        let refuse = matches!(qtype, RecordType::AXFR | RecordType::IXFR);
        if query.query_class() != DNSClass::IN || !self.zone.zone_of(&qname) || refuse {
            self.stats.refused.fetch_add(1, Ordering::Relaxed);
            resp.set_response_code(ResponseCode::Refused);
            return resp;
        }
        resp.set_authoritative(true);
        let data = self.zone_data();
        let Some(records) = data.names.get(&qname) else {
            self.stats.nxdomain.fetch_add(1, Ordering::Relaxed);
            resp.set_response_code(ResponseCode::NXDomain);
            resp.add_name_server(data.soa.clone());
            return resp;
        };
        // ANY gets one RRset, the name's first (RFC 8482), not everything: no amplification.
        let wanted = match qtype {
            RecordType::ANY => records.first().map(Record::record_type),
            t => Some(t),
        };
        let found: Vec<&Record> = records.iter().filter(|r| Some(r.record_type()) == wanted).collect();
        if found.is_empty() {
            resp.add_name_server(data.soa.clone());
            return resp;
        }
        for rec in found {
            // Owner name as asked, so 0x20 case randomization sees its own spelling.
            let mut rec = rec.clone();
            rec.set_name(query.name().clone());
            let target = match rec.data() {
                Some(RData::SRV(srv)) => Some(srv.target().to_lowercase()),
                Some(RData::NS(ns)) => Some(ns.0.to_lowercase()),
                _ => None,
            };
            resp.add_answer(rec);
            for glue in target.iter().filter_map(|t| data.names.get(t)).flatten() {
                if matches!(glue.record_type(), RecordType::A | RecordType::AAAA) {
                    resp.add_additional(glue.clone());
                }
            }
        }
        resp
    }

    /// Encodes `resp` within `limit` bytes: drops additional records first, then sets TC.
    fn encode(&self, mut resp: Message, limit: usize) -> Option<Vec<u8>> {
        let bytes = match resp.to_vec() {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "cannot encode DNS response");
                return Message::error_msg(resp.id(), resp.op_code(), ResponseCode::ServFail).to_vec().ok();
            }
        };
        if bytes.len() <= limit {
            return Some(bytes);
        }
        if !resp.additionals().is_empty() {
            resp.take_additionals();
            if let Ok(b) = resp.to_vec() {
                if b.len() <= limit {
                    return Some(b);
                }
            }
        }
        self.stats.truncated.fetch_add(1, Ordering::Relaxed);
        resp.take_answers();
        resp.take_name_servers();
        resp.take_additionals();
        resp.set_truncated(true);
        resp.to_vec().ok()
    }
}

/// `resp` (one of ours) as the slip of response rate limiting sends it: the header and the
/// question, TC set, no records, so that a genuine client asks again over TCP.
fn slipped(resp: &[u8]) -> Option<Vec<u8>> {
    let mut m = Message::from_vec(resp).ok()?;
    m.take_answers();
    m.take_name_servers();
    m.take_additionals();
    m.set_truncated(true);
    m.to_vec().ok()
}

/// A bare FORMERR for the query whose header starts `bytes` (at least 12 bytes); `None` for an
/// opcode that is not defined (it could not be echoed in a valid response).
fn formerr(bytes: &[u8]) -> Option<Vec<u8>> {
    let opcode = (bytes[2] >> 3) & 0x0f;
    if OpCode::from_u8(opcode).is_err() {
        return None;
    }
    let mut out = vec![0u8; HEADER_LEN];
    out[..2].copy_from_slice(&bytes[..2]);
    out[2] = 0x80 | (bytes[2] & 0x79); // QR, opcode and RD
    out[3] = ResponseCode::FormErr.low();
    Some(out)
}

fn transient(e: &io::Error) -> bool {
    use io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionRefused
            | ConnectionReset
            | Interrupted
            | WouldBlock
            | TimedOut
            | HostUnreachable
            | NetworkUnreachable
            | OutOfMemory
    ) || e.raw_os_error() == Some(ENOBUFS)
}

/// ENOBUFS on Linux.
const ENOBUFS: i32 = 105;

/// Serves DNS over UDP on `sock` until a non-transient socket error, rate-limiting responses
/// per client prefix as [`Authority::rrl_config`] says (one table per socket).
pub async fn serve_udp(sock: UdpSocket, authority: Arc<Authority>) -> io::Result<()> {
    let mut rrl = Rrl::new(authority.rrl_config());
    // Bigger than MAX_UDP_QUERY, so oversized queries are seen as such.
    let mut buf = vec![0u8; 4096];
    let drops = LogLimiter::new(Duration::from_secs(1));
    let errors = LogLimiter::new(Duration::from_secs(1));
    tracing::info!(addr = ?sock.local_addr().ok(), zone = %authority.zone(), "DNS over UDP");
    loop {
        let (n, peer) = match sock.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(e) if transient(&e) => {
                if let Some(suppressed) = errors.check() {
                    tracing::warn!(error = %e, suppressed, "DNS UDP receive");
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
            Err(e) => return Err(e),
        };
        let Some(resp) = authority.answer_udp(&buf[..n]) else {
            if let Some(suppressed) = drops.check() {
                tracing::warn!(%peer, len = n, suppressed, "dropped a malformed DNS datagram");
            }
            continue;
        };
        let Some(resp) = authority.rate_limit(resp, peer.ip(), &mut rrl, Instant::now()) else { continue };
        if let Err(e) = sock.send_to(&resp, peer).await {
            if let Some(suppressed) = errors.check() {
                tracing::warn!(%peer, error = %e, suppressed, "DNS UDP send");
            }
        }
    }
}

/// Limits of the TCP server. A connection over `max_connections` or `max_per_client` is closed
/// as soon as it is accepted.
#[derive(Debug, Clone, Copy)]
pub struct TcpOptions {
    /// A connection idle this long (or this slow to send a query or take an answer) is closed.
    pub idle_timeout: Duration,
    /// Connections served at once, from all clients.
    pub max_connections: usize,
    /// Connections served at once from one client: an IPv4 address, or an IPv6 /64 (one host
    /// can have a whole /64 to itself).
    pub max_per_client: usize,
    /// Queries answered on one connection; after the last answer the connection is closed.
    pub max_queries: usize,
}

/// Default [`TcpOptions::idle_timeout`].
pub const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default [`TcpOptions::max_connections`].
pub const TCP_MAX_CONNECTIONS: usize = 256;
/// Default [`TcpOptions::max_per_client`].
pub const TCP_MAX_PER_CLIENT: usize = 8;
/// Default [`TcpOptions::max_queries`].
pub const TCP_MAX_QUERIES: usize = 100;

impl Default for TcpOptions {
    fn default() -> Self {
        Self {
            idle_timeout: TCP_IDLE_TIMEOUT,
            max_connections: TCP_MAX_CONNECTIONS,
            max_per_client: TCP_MAX_PER_CLIENT,
            max_queries: TCP_MAX_QUERIES,
        }
    }
}

/// The client a TCP connection is counted against: its IPv4 address, or its IPv6 /64.
fn tcp_client(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & (u128::MAX << 64))),
        v4 => v4,
    }
}

/// The open TCP connections of each client; a client without any has no entry, so the table
/// holds at most `max_connections` entries.
#[derive(Debug)]
struct TcpClients {
    open: Mutex<OpenConnections>,
    max_total: usize,
    max_per_client: usize,
}

#[derive(Debug, Default)]
struct OpenConnections {
    total: usize,
    by_client: HashMap<IpAddr, usize>,
}

/// One connection counted in [`TcpClients`] until dropped.
#[derive(Debug)]
struct TcpSlot {
    clients: Arc<TcpClients>,
    client: IpAddr,
}

impl TcpClients {
    fn new(opts: &TcpOptions) -> Arc<Self> {
        Arc::new(Self {
            open: Mutex::new(OpenConnections::default()),
            max_total: opts.max_connections,
            max_per_client: opts.max_per_client,
        })
    }

    /// A slot for a connection from `peer`, or `None` if that would exceed a cap.
    fn acquire(self: &Arc<Self>, peer: IpAddr) -> Option<TcpSlot> {
        let client = tcp_client(peer);
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let mine = open.by_client.get(&client).copied().unwrap_or(0);
        if open.total >= self.max_total || mine >= self.max_per_client {
            return None;
        }
        open.total += 1;
        open.by_client.insert(client, mine + 1);
        Some(TcpSlot { clients: self.clone(), client })
    }
}

impl Drop for TcpSlot {
    fn drop(&mut self) {
        let mut open = self.clients.open.lock().unwrap_or_else(|e| e.into_inner());
        open.total -= 1;
        if let Some(n) = open.by_client.get_mut(&self.client) {
            *n -= 1;
            if *n == 0 {
                open.by_client.remove(&self.client);
            }
        }
    }
}

/// Serves DNS over TCP (RFC 7766: 2-byte length prefix, several queries per connection) with
/// the default [`TcpOptions`].
pub async fn serve_tcp(listener: TcpListener, authority: Arc<Authority>) -> io::Result<()> {
    serve_tcp_with(listener, authority, TcpOptions::default()).await
}

/// [`serve_tcp`] with explicit limits (the tests use short timeouts and few slots).
pub async fn serve_tcp_with(listener: TcpListener, authority: Arc<Authority>, opts: TcpOptions) -> io::Result<()> {
    let clients = TcpClients::new(&opts);
    let drops = Arc::new(LogLimiter::new(Duration::from_secs(1)));
    let errors = LogLimiter::new(Duration::from_secs(1));
    let refusals = LogLimiter::new(Duration::from_secs(1));
    tracing::info!(addr = ?listener.local_addr().ok(), zone = %authority.zone(), "DNS over TCP");
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off and keep serving.
                if let Some(suppressed) = errors.check() {
                    tracing::warn!(error = %e, suppressed, "DNS TCP accept");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(slot) = clients.acquire(peer.ip()) else {
            authority.stats.tcp_refused.fetch_add(1, Ordering::Relaxed);
            if let Some(suppressed) = refusals.check() {
                tracing::warn!(%peer, suppressed, "too many DNS TCP connections, closing");
            }
            // Dropping the stream closes it at once.
            continue;
        };
        let authority = authority.clone();
        let drops = drops.clone();
        tokio::spawn(async move {
            if let Err(e) = serve_conn(stream, peer, &authority, &drops, &opts).await {
                tracing::debug!(%peer, error = %e, "DNS TCP connection");
            }
            drop(slot);
        });
    }
}

async fn serve_conn(
    mut stream: TcpStream,
    peer: SocketAddr,
    authority: &Authority,
    drops: &LogLimiter,
    opts: &TcpOptions,
) -> io::Result<()> {
    let idle = opts.idle_timeout;
    let timed_out = || io::Error::new(io::ErrorKind::TimedOut, "idle");
    for _ in 0..opts.max_queries {
        let mut len = [0u8; 2];
        match tokio::time::timeout(idle, stream.read_exact(&mut len)).await {
            Err(_) => return Ok(()),
            Ok(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Ok(r) => r?,
        };
        // The 2-byte prefix caps a message at 64 KiB.
        let mut msg = vec![0u8; usize::from(u16::from_be_bytes(len))];
        tokio::time::timeout(idle, stream.read_exact(&mut msg)).await.map_err(|_| timed_out())??;
        let Some(resp) = authority.answer(&msg) else {
            if let Some(suppressed) = drops.check() {
                tracing::warn!(%peer, len = msg.len(), suppressed, "malformed DNS message over TCP, closing");
            }
            return Ok(());
        };
        let mut out = Vec::with_capacity(resp.len() + 2);
        out.extend_from_slice(&(resp.len() as u16).to_be_bytes());
        out.extend_from_slice(&resp);
        tokio::time::timeout(idle, stream.write_all(&out)).await.map_err(|_| timed_out())??;
    }
    // Enough queries on this one: the client opens another connection if it has more.
    let _ = tokio::time::timeout(idle, stream.shutdown()).await;
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use hickory_proto::op::Query;
    use host::config::Load as _;
    use std::net::{Ipv4Addr, Ipv6Addr};
    use std::path::Path;

    pub(crate) const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

    pub(crate) fn config_text(extra: &str) -> String {
        format!(
            r#"
zone = "home.ntm.test"
name = "dc.home.ntm.test"
private_key = "{KEY}"
listen = ["198.18.40.2:7500", "[2001:db8:40::2]:7500"]
dns_listen = []
database = "dc.sqlite"
resolver = "198.18.0.53:53"
{extra}
[pools]
ipv4 = "100.64.40.0/24"
[[nodes]]
fqdn = "rpi.home.ntm.test"
public_key = "NHGdeqw/U1FvzVTwSnDrb6B55MoPM/ALuGfHcdzbfHY="
nps = "nps"
[[nodes]]
fqdn = "tv.home.ntm.test"
public_key = "/0qb1qGR5WG9OipyoyZHS4tInm9or1Yq3ot6rjv63xo="
[[nodes]]
fqdn = "cam.lab.home.ntm.test"
public_key = "pkXKePxSfIWDi0AaLvPP4afMywYbgJGFbNmbZMriSkU="
nps = "nps"
[[nps]]
name = "nps"
addresses = ["198.18.20.2", "2001:db8:20::2"]
"#
        )
    }

    pub(crate) fn authority(extra: &str) -> Authority {
        let cfg = Config::parse(&config_text(extra), Path::new("test.toml")).unwrap();
        Authority::new(&cfg, 42).unwrap()
    }

    fn plain_query(name: &str, rtype: RecordType) -> Message {
        let mut m = Message::new();
        m.set_id(0xbeef)
            .set_message_type(MessageType::Query)
            .set_op_code(OpCode::Query)
            .set_recursion_desired(true)
            .add_query(Query::query(Name::from_ascii(name).unwrap(), rtype));
        m
    }

    fn ask_msg(auth: &Authority, q: &Message) -> Message {
        Message::from_vec(&auth.answer_udp(&q.to_vec().unwrap()).unwrap()).unwrap()
    }

    fn ask(auth: &Authority, name: &str, rtype: RecordType) -> Message {
        let r = ask_msg(auth, &plain_query(name, rtype));
        assert_eq!(r.id(), 0xbeef);
        assert_eq!(r.message_type(), MessageType::Response);
        r
    }

    fn ips(records: &[Record]) -> Vec<IpAddr> {
        records
            .iter()
            .filter_map(|r| match r.data() {
                Some(RData::A(a)) => Some(IpAddr::V4(a.0)),
                Some(RData::AAAA(a)) => Some(IpAddr::V6(a.0)),
                _ => None,
            })
            .collect()
    }

    fn is_negative(r: &Message, rcode: ResponseCode) {
        assert_eq!(r.response_code(), rcode);
        assert!(r.authoritative());
        assert!(r.answers().is_empty());
        assert_eq!(r.name_servers().len(), 1);
        assert_eq!(r.name_servers()[0].record_type(), RecordType::SOA);
    }

    #[test]
    fn apex_soa_and_ns() {
        let auth = authority("");
        let r = ask(&auth, "home.ntm.test.", RecordType::SOA);
        assert_eq!(r.response_code(), ResponseCode::NoError);
        assert!(r.authoritative() && !r.recursion_available());
        let [soa] = r.answers() else { panic!("{r:?}") };
        let Some(RData::SOA(soa_data)) = soa.data() else { panic!() };
        assert_eq!(soa_data.mname(), &Name::from_ascii("dc.home.ntm.test.").unwrap());
        assert_eq!(soa_data.serial(), 42);
        assert_eq!(soa_data.minimum(), NODE_TTL);
        assert_eq!(soa.ttl(), TTL);

        let r = ask(&auth, "home.ntm.test.", RecordType::NS);
        let [ns] = r.answers() else { panic!("{r:?}") };
        assert!(matches!(ns.data(), Some(RData::NS(n)) if n.0 == Name::from_ascii("dc.home.ntm.test.").unwrap()));
        assert_eq!(ips(r.additionals()).len(), 2, "glue");

        let r = ask(&auth, "home.ntm.test.", RecordType::A);
        is_negative(&r, ResponseCode::NoError);
    }

    #[test]
    fn dc_addresses() {
        let auth = authority("");
        let r = ask(&auth, "dc.home.ntm.test.", RecordType::A);
        assert_eq!(ips(r.answers()), [IpAddr::V4(Ipv4Addr::new(198, 18, 40, 2))]);
        assert_eq!(r.answers()[0].ttl(), TTL);
        let r = ask(&auth, "dc.home.ntm.test.", RecordType::AAAA);
        assert_eq!(ips(r.answers()), ["2001:db8:40::2".parse::<IpAddr>().unwrap()]);
    }

    #[test]
    fn any_gets_one_rrset() {
        let auth = authority("");
        // the DC has an A and an AAAA: ANY gets the first RRset only (RFC 8482)
        for t in [Transport::Udp, Transport::Tcp] {
            let q = plain_query("dc.home.ntm.test.", RecordType::ANY).to_vec().unwrap();
            let r = Message::from_vec(&auth.respond(&q, t).unwrap()).unwrap();
            assert_eq!(r.response_code(), ResponseCode::NoError);
            assert!(r.authoritative());
            assert_eq!(ips(r.answers()), [IpAddr::V4(Ipv4Addr::new(198, 18, 40, 2))], "{t:?}");
        }
        // the apex has SOA and NS: only the SOA
        let r = ask(&auth, "home.ntm.test.", RecordType::ANY);
        let [soa] = r.answers() else { panic!("{r:?}") };
        assert_eq!(soa.record_type(), RecordType::SOA);
        assert!(r.additionals().is_empty());
        // a node with two NPS addresses, one of each family
        let r = ask(&auth, "rpi.home.ntm.test.", RecordType::ANY);
        assert_eq!(ips(r.answers()), [IpAddr::V4(Ipv4Addr::new(198, 18, 20, 2))]);
        // several records of one type stay together: the whole RRset
        let auth = authority("addresses = [\"2001:db8:40::2\", \"198.18.40.2\", \"2001:db8:40::3\"]");
        let r = ask(&auth, "dc.home.ntm.test.", RecordType::ANY);
        let want: Vec<IpAddr> = vec!["2001:db8:40::2".parse().unwrap(), "2001:db8:40::3".parse().unwrap()];
        assert_eq!(ips(r.answers()), want);
        // the SRV keeps its glue; names without data and unknown names as for any type
        let r = ask(&auth, "_ntm._udp.home.ntm.test.", RecordType::ANY);
        assert_eq!(r.answers().len(), 1);
        assert_eq!(ips(r.additionals()).len(), 3);
        is_negative(&ask(&auth, "tv.home.ntm.test.", RecordType::ANY), ResponseCode::NoError);
        is_negative(&ask(&auth, "nope.home.ntm.test.", RecordType::ANY), ResponseCode::NXDomain);
    }

    /// The question section of a query or response: its bytes right after the header.
    fn question_bytes(msg: &[u8]) -> &[u8] {
        let mut i = HEADER_LEN;
        while msg[i] != 0 {
            assert!(msg[i] < 0x40, "compressed question");
            i += 1 + usize::from(msg[i]);
        }
        &msg[HEADER_LEN..i + 1 + 4]
    }

    #[test]
    fn question_case_is_echoed_byte_for_byte() {
        let auth = authority("");
        let asked = Name::from_ascii("rPi.HoMe.NtM.TeSt.").unwrap();
        let q = plain_query("rPi.HoMe.NtM.TeSt.", RecordType::A).to_vec().unwrap();
        let question = question_bytes(&q).to_vec();
        assert_eq!(&question[..5], b"\x03rPi\x04");
        for t in [Transport::Udp, Transport::Tcp] {
            let r = auth.respond(&q, t).unwrap();
            assert_eq!(question_bytes(&r), question, "{t:?}");
            // the answer's owner: the question's name, as a pointer to it or spelled the same
            let owner = &r[HEADER_LEN + question.len()..];
            let q_name = &question[..question.len() - 4];
            assert!(owner.starts_with(&[0xc0, HEADER_LEN as u8]) || owner.starts_with(q_name), "{owner:02x?}");
            let m = Message::from_vec(&r).unwrap();
            assert_eq!(ips(m.answers()), [IpAddr::V4(Ipv4Addr::new(198, 18, 20, 2))]);
            assert!(m.queries()[0].name().eq_case(&asked));
            assert!(m.answers()[0].name().eq_case(&asked));
        }
        // negative answers, refusals, ANY and the rate limiter's slips echo it too
        for (name, rtype) in [
            ("rPi.HoMe.NtM.TeSt.", RecordType::MX),
            ("NoPe.HoMe.NtM.TeSt.", RecordType::A),
            ("ExAmPlE.CoM.", RecordType::A),
            ("dC.hOmE.nTm.TeSt.", RecordType::ANY),
            ("_NtM._uDp.HoMe.NtM.TeSt.", RecordType::SRV),
        ] {
            let q = plain_query(name, rtype).to_vec().unwrap();
            let r = auth.answer_udp(&q).unwrap();
            assert_eq!(question_bytes(&r), question_bytes(&q), "{name}");
            let m = Message::from_vec(&r).unwrap();
            let asked = Name::from_ascii(name).unwrap();
            assert!(m.answers().iter().all(|a| a.name().eq_case(&asked)), "{name}");
            let tc = slipped(&r).unwrap();
            assert_eq!(question_bytes(&tc), question_bytes(&q), "{name}");
        }
    }

    #[test]
    fn rrl_slips_and_drops_udp_answers_per_prefix() {
        let auth = authority("dns_rrl_responses_per_s = 5\ndns_rrl_slip = 2");
        assert_eq!(auth.rrl_config().responses_per_s, 5);
        let mut rrl = Rrl::new(auth.rrl_config());
        let q = plain_query("RPI.home.ntm.test.", RecordType::A).to_vec().unwrap();
        let t0 = Instant::now();
        let mut ask = |client: &str, now: Instant| {
            let client: IpAddr = client.parse().unwrap();
            auth.answer_udp(&q).and_then(|r| auth.rate_limit(r, client, &mut rrl, now))
        };
        for _ in 0..5 {
            let r = Message::from_vec(&ask("192.0.2.1", t0).unwrap()).unwrap();
            assert!(!r.truncated() && r.answers().len() == 1);
        }
        // over the limit: one slips (truncated, no records, same question), one is dropped
        let tc = Message::from_vec(&ask("192.0.2.2", t0).unwrap()).unwrap();
        assert!(tc.truncated());
        assert_eq!(tc.id(), 0xbeef);
        assert_eq!(tc.message_type(), MessageType::Response);
        assert!(tc.answers().is_empty() && tc.name_servers().is_empty() && tc.additionals().is_empty());
        assert!(tc.queries()[0].name().eq_case(&Name::from_ascii("RPI.home.ntm.test.").unwrap()));
        assert_eq!(ask("192.0.2.3", t0), None);
        assert!(ask("192.0.2.4", t0).is_some_and(|r| Message::from_vec(&r).unwrap().truncated()));
        // other prefixes are not limited by this one
        for other in ["192.0.3.1", "2001:db8::1"] {
            for _ in 0..5 {
                assert!(!Message::from_vec(&ask(other, t0).unwrap()).unwrap().truncated(), "{other}");
            }
        }
        // the rate refills the bucket
        let r = ask("192.0.2.1", t0 + Duration::from_millis(200)).unwrap();
        assert!(!Message::from_vec(&r).unwrap().truncated());
        let s = auth.stats();
        assert_eq!((s.rrl_slipped.load(Ordering::Relaxed), s.rrl_dropped.load(Ordering::Relaxed)), (2, 1));
        // TCP is never limited
        for _ in 0..50 {
            assert!(!Message::from_vec(&auth.answer(&q).unwrap()).unwrap().truncated());
        }
    }

    #[test]
    fn tcp_slots_per_client_and_total() {
        let opts = TcpOptions { max_connections: 4, max_per_client: 2, ..TcpOptions::default() };
        let clients = TcpClients::new(&opts);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let a1 = clients.acquire(ip("192.0.2.1")).unwrap();
        let a2 = clients.acquire(ip("::ffff:192.0.2.1")).unwrap();
        assert!(clients.acquire(ip("192.0.2.1")).is_none(), "per client");
        // IPv6 clients are counted by /64
        let b1 = clients.acquire(ip("2001:db8::1")).unwrap();
        let _b2 = clients.acquire(ip("2001:db8::2:3")).unwrap();
        assert!(clients.acquire(ip("2001:db8::ffff")).is_none(), "per /64");
        assert!(clients.acquire(ip("192.0.2.2")).is_none(), "in total");
        drop(b1);
        let a3 = clients.acquire(ip("192.0.2.2")).unwrap();
        drop((a1, a2, a3));
        let _c = clients.acquire(ip("192.0.2.1")).unwrap();
        let open = clients.open.lock().unwrap();
        assert_eq!(open.total, 2);
        assert_eq!(open.by_client.len(), 2, "no entries left behind: {:?}", open.by_client);
    }

    #[test]
    fn srv_points_at_the_dc() {
        let auth = authority("");
        let r = ask(&auth, "_ntm._udp.home.ntm.test.", RecordType::SRV);
        assert!(r.authoritative());
        let [srv] = r.answers() else { panic!("{r:?}") };
        let Some(RData::SRV(s)) = srv.data() else { panic!() };
        assert_eq!((s.priority(), s.weight(), s.port()), (0, 0, 7500));
        assert_eq!(s.target(), &Name::from_ascii("dc.home.ntm.test.").unwrap());
        assert_eq!(ips(r.additionals()).len(), 2);
        // the empty non-terminal above it
        is_negative(&ask(&auth, "_udp.home.ntm.test.", RecordType::SRV), ResponseCode::NoError);
    }

    #[test]
    fn node_through_nps_gets_the_nps_addresses() {
        let auth = authority("");
        let r = ask(&auth, "rpi.home.ntm.test.", RecordType::A);
        assert_eq!(ips(r.answers()), [IpAddr::V4(Ipv4Addr::new(198, 18, 20, 2))]);
        assert_eq!(r.answers()[0].ttl(), NODE_TTL);
        assert!(r.authoritative());
        let r = ask(&auth, "rpi.home.ntm.test.", RecordType::AAAA);
        assert_eq!(ips(r.answers()), [IpAddr::V6("2001:db8:20::2".parse::<Ipv6Addr>().unwrap())]);
        is_negative(&ask(&auth, "rpi.home.ntm.test.", RecordType::MX), ResponseCode::NoError);
        let r = ask(&auth, "cam.lab.home.ntm.test.", RecordType::A);
        assert_eq!(r.answers().len(), 1);
        is_negative(&ask(&auth, "lab.home.ntm.test.", RecordType::A), ResponseCode::NoError);
    }

    #[test]
    fn node_without_nps_is_nodata() {
        let auth = authority("");
        is_negative(&ask(&auth, "tv.home.ntm.test.", RecordType::A), ResponseCode::NoError);
        is_negative(&ask(&auth, "tv.home.ntm.test.", RecordType::AAAA), ResponseCode::NoError);
    }

    #[test]
    fn unknown_names_are_nxdomain() {
        let auth = authority("");
        is_negative(&ask(&auth, "nope.home.ntm.test.", RecordType::A), ResponseCode::NXDomain);
        is_negative(&ask(&auth, "x.rpi.home.ntm.test.", RecordType::A), ResponseCode::NXDomain);
        assert_eq!(auth.stats().nxdomain.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn other_zones_are_refused() {
        let auth = authority("");
        for name in ["proxy.ntm.test.", "ntm.test.", "xhome.ntm.test.", "example.com.", "."] {
            let r = ask(&auth, name, RecordType::A);
            assert_eq!(r.response_code(), ResponseCode::Refused, "{name}");
            assert!(!r.authoritative());
            assert!(r.answers().is_empty());
        }
        assert_eq!(ask(&auth, "home.ntm.test.", RecordType::AXFR).response_code(), ResponseCode::Refused);
        let mut q = plain_query("rpi.home.ntm.test.", RecordType::A);
        q.queries_mut()[0].set_query_class(DNSClass::CH);
        assert_eq!(ask_msg(&auth, &q).response_code(), ResponseCode::Refused);
    }

    #[test]
    fn names_are_case_insensitive() {
        let auth = authority("");
        let r = ask(&auth, "RPI.Home.NTM.test.", RecordType::A);
        assert_eq!(ips(r.answers()), [IpAddr::V4(Ipv4Addr::new(198, 18, 20, 2))]);
        // the question and the answer keep the asker's spelling
        assert!(r.queries()[0].name().eq_case(&Name::from_ascii("RPI.Home.NTM.test.").unwrap()));
        assert!(r.answers()[0].name().eq_case(&Name::from_ascii("RPI.Home.NTM.test.").unwrap()));
        let r = ask(&auth, "_NTM._UDP.HOME.NTM.TEST.", RecordType::SRV);
        assert_eq!(r.answers().len(), 1);
    }

    #[test]
    fn edns_is_echoed_and_checked() {
        let auth = authority("");
        let q = proto::dns::query(5, "rpi.home.ntm.test", RecordType::A).unwrap();
        let r = Message::from_vec(&auth.answer_udp(&q).unwrap()).unwrap();
        assert_eq!(r.extensions().as_ref().map(|e| e.max_payload()), Some(MAX_UDP_RESPONSE));
        assert_eq!(r.answers().len(), 1);

        let mut q = plain_query("rpi.home.ntm.test.", RecordType::A);
        let mut e = Edns::new();
        e.set_version(1);
        q.set_edns(e);
        // BADVERS is 16, which hickory decodes as its alias BADSIG
        assert_eq!(u16::from(ask_msg(&auth, &q).response_code()), u16::from(ResponseCode::BADVERS));
    }

    #[test]
    fn odd_queries() {
        let auth = authority("");
        let mut q = plain_query("rpi.home.ntm.test.", RecordType::A);
        q.add_query(Query::query(Name::from_ascii("tv.home.ntm.test.").unwrap(), RecordType::A));
        assert_eq!(ask_msg(&auth, &q).response_code(), ResponseCode::FormErr);
        let mut q = plain_query("rpi.home.ntm.test.", RecordType::A);
        q.take_queries();
        assert_eq!(ask_msg(&auth, &q).response_code(), ResponseCode::FormErr);
        let mut q = plain_query("rpi.home.ntm.test.", RecordType::A);
        q.set_op_code(OpCode::Update);
        assert_eq!(ask_msg(&auth, &q).response_code(), ResponseCode::NotImp);
    }

    #[test]
    fn garbage_is_dropped_and_counted() {
        let auth = authority("");
        let mut dropped = 0;
        for bad in [&[][..], &[0u8; 5], &[0xff; 12], &[0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 0x3f]] {
            assert_eq!(auth.answer_udp(bad), None, "{bad:?}");
            dropped += 1;
        }
        // a response is never answered
        let mut resp = plain_query("rpi.home.ntm.test.", RecordType::A);
        resp.set_message_type(MessageType::Response);
        assert_eq!(auth.answer_udp(&resp.to_vec().unwrap()), None);
        dropped += 1;
        assert_eq!(auth.stats().malformed.load(Ordering::Relaxed), dropped);

        // every truncation and bit flip of a good query: no panic, answers are responses
        let good = plain_query("rpi.home.ntm.test.", RecordType::A).to_vec().unwrap();
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for i in 0..good.len() {
            let _ = auth.answer_udp(&good[..i]);
            for bit in 0..8 {
                let mut b = good.clone();
                b[i] ^= 1 << bit;
                if let Some(r) = auth.answer_udp(&b) {
                    assert!(proto::dns::parse_response(&r, u16::from_be_bytes([r[0], r[1]])).is_ok());
                }
            }
        }
        for len in 0..600 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed as u8
                })
                .collect();
            for t in [Transport::Udp, Transport::Tcp] {
                if let Some(r) = auth.respond(&bytes, t) {
                    assert!(proto::dns::parse_response(&r, u16::from_be_bytes([r[0], r[1]])).is_ok(), "{r:02x?}");
                }
            }
        }
    }

    #[test]
    fn oversized_udp_query_gets_formerr() {
        let auth = authority("");
        let mut big = plain_query("rpi.home.ntm.test.", RecordType::A).to_vec().unwrap();
        big.resize(600, 0);
        let r = auth.answer_udp(&big).unwrap();
        assert_eq!(r.len(), HEADER_LEN);
        let r = Message::from_vec(&r).unwrap();
        assert_eq!(r.id(), 0xbeef);
        assert_eq!(r.message_type(), MessageType::Response);
        assert_eq!(r.response_code(), ResponseCode::FormErr);
    }

    /// A DC with many addresses: its records do not fit in 512 bytes.
    pub(crate) fn big_extra() -> String {
        let addrs: Vec<String> = (1..=60).map(|i| format!("\"2001:db8:40::{i:x}\"")).collect();
        format!("addresses = [{}]", addrs.join(", "))
    }

    #[test]
    fn big_answers_are_truncated_over_udp_only() {
        let auth = authority(&big_extra());
        let q = plain_query("dc.home.ntm.test.", RecordType::AAAA);
        let r = ask_msg(&auth, &q);
        assert!(r.truncated());
        assert!(r.answers().is_empty());
        assert_eq!(r.queries().len(), 1);
        assert_eq!(auth.stats().truncated.load(Ordering::Relaxed), 1);
        let full = Message::from_vec(&auth.answer(&q.to_vec().unwrap()).unwrap()).unwrap();
        assert!(!full.truncated());
        assert_eq!(full.answers().len(), 60);
        // SRV: the answer fits once the glue is left out, no TC
        let r = ask(&auth, "_ntm._udp.home.ntm.test.", RecordType::SRV);
        assert!(!r.truncated());
        assert_eq!(r.answers().len(), 1);
        assert!(r.additionals().is_empty());
        // a larger EDNS buffer lets more through, up to MAX_UDP_RESPONSE
        let q = proto::dns::query(1, "dc.home.ntm.test", RecordType::AAAA).unwrap();
        let r = auth.answer_udp(&q).unwrap();
        assert!(r.len() <= usize::from(MAX_UDP_RESPONSE));
        assert!(Message::from_vec(&r).unwrap().truncated());
    }

    /// Binds UDP and TCP on the same 127.0.0.1 port and serves `auth` on both.
    pub(crate) async fn spawn_servers(auth: Authority, opts: TcpOptions) -> SocketAddr {
        spawn_shared(Arc::new(auth), opts).await
    }

    async fn spawn_shared(auth: Arc<Authority>, opts: TcpOptions) -> SocketAddr {
        for _ in 0..20 {
            let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let addr = udp.local_addr().unwrap();
            let Ok(tcp) = TcpListener::bind(addr).await else { continue };
            tokio::spawn(serve_udp(udp, auth.clone()));
            tokio::spawn(serve_tcp_with(tcp, auth, opts));
            return addr;
        }
        panic!("no free port pair");
    }

    async fn tcp_exchange(stream: &mut TcpStream, q: &[u8]) -> Message {
        stream.write_all(&(q.len() as u16).to_be_bytes()).await.unwrap();
        stream.write_all(q).await.unwrap();
        let mut len = [0u8; 2];
        stream.read_exact(&mut len).await.unwrap();
        let mut r = vec![0u8; usize::from(u16::from_be_bytes(len))];
        stream.read_exact(&mut r).await.unwrap();
        Message::from_vec(&r).unwrap()
    }

    #[tokio::test]
    async fn real_udp_and_tcp_servers() {
        let opts = TcpOptions { idle_timeout: Duration::from_millis(300), ..TcpOptions::default() };
        let addr = spawn_servers(authority(&big_extra()), opts).await;

        // UDP: garbage is ignored, the next query is answered
        let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        udp.connect(addr).await.unwrap();
        udp.send(b"garbage!").await.unwrap();
        let q = plain_query("rpi.home.ntm.test.", RecordType::A).to_vec().unwrap();
        udp.send(&q).await.unwrap();
        let mut buf = [0u8; 2048];
        let n = tokio::time::timeout(Duration::from_secs(5), udp.recv(&mut buf)).await.unwrap().unwrap();
        let r = Message::from_vec(&buf[..n]).unwrap();
        assert_eq!(ips(r.answers()), [IpAddr::V4(Ipv4Addr::new(198, 18, 20, 2))]);

        // UDP truncates, TCP carries the whole answer; two queries on one connection
        let q = plain_query("dc.home.ntm.test.", RecordType::AAAA).to_vec().unwrap();
        udp.send(&q).await.unwrap();
        let n = tokio::time::timeout(Duration::from_secs(5), udp.recv(&mut buf)).await.unwrap().unwrap();
        assert!(Message::from_vec(&buf[..n]).unwrap().truncated());
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        assert_eq!(tcp_exchange(&mut tcp, &q).await.answers().len(), 60);
        let q2 = plain_query("nope.home.ntm.test.", RecordType::A).to_vec().unwrap();
        assert_eq!(tcp_exchange(&mut tcp, &q2).await.response_code(), ResponseCode::NXDomain);

        // an idle connection is closed by the server
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut rest)).await;
        assert!(matches!(closed, Ok(Ok(0))), "{closed:?}");

        // garbage over TCP closes the connection
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(&[0, 3, 1, 2, 3]).await.unwrap();
        let closed = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut rest)).await;
        assert!(matches!(closed, Ok(Ok(0))), "{closed:?}");
    }

    async fn udp_from(src: &str, server: SocketAddr) -> UdpSocket {
        let udp = UdpSocket::bind(src).await.unwrap();
        udp.connect(server).await.unwrap();
        udp
    }

    /// The responses that arrive on `udp` until none has for `quiet`.
    async fn udp_responses(udp: &UdpSocket, quiet: Duration) -> Vec<Message> {
        let mut buf = [0u8; 2048];
        let mut out = Vec::new();
        while let Ok(n) = tokio::time::timeout(quiet, udp.recv(&mut buf)).await {
            out.push(Message::from_vec(&buf[..n.unwrap()]).unwrap());
        }
        out
    }

    #[tokio::test]
    async fn rrl_on_the_udp_server() {
        let auth = Arc::new(authority("dns_rrl_responses_per_s = 2\ndns_rrl_slip = 2"));
        let addr = spawn_shared(auth.clone(), TcpOptions::default()).await;
        let q = plain_query("rpi.home.ntm.test.", RecordType::A).to_vec().unwrap();
        let udp = udp_from("127.0.0.1:0", addr).await;
        for _ in 0..20 {
            udp.send(&q).await.unwrap();
        }
        let got = udp_responses(&udp, Duration::from_millis(300)).await;
        let full = got.iter().filter(|m| !m.truncated() && m.answers().len() == 1).count();
        let tc = got.iter().filter(|m| m.truncated() && m.answers().is_empty()).count();
        assert_eq!(full + tc, got.len());
        // 2 answers (a few more if this ran slowly), then one in two limited ones truncated
        assert!((2..=4).contains(&full), "{full} full, {tc} truncated");
        assert!(tc >= 7 && full + tc < 20, "{full} full, {tc} truncated");
        let s = auth.stats();
        assert_eq!(s.rrl_slipped.load(Ordering::Relaxed) as usize, tc);
        assert_eq!(s.rrl_dropped.load(Ordering::Relaxed) as usize, 20 - full - tc);
        // another /24 is answered in full; the client's TCP retry too
        let other = udp_from("127.0.1.1:0", addr).await;
        other.send(&q).await.unwrap();
        let got = udp_responses(&other, Duration::from_millis(300)).await;
        assert!(matches!(&got[..], [m] if !m.truncated() && m.answers().len() == 1), "{got:?}");
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        assert_eq!(tcp_exchange(&mut tcp, &q).await.answers().len(), 1);
    }

    async fn tcp_from(src: &str, server: SocketAddr) -> TcpStream {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind(format!("{src}:0").parse().unwrap()).unwrap();
        sock.connect(server).await.unwrap()
    }

    /// True if the server closes `stream` without a word within a second.
    async fn closed_at_once(stream: &mut TcpStream) -> bool {
        let mut rest = Vec::new();
        match tokio::time::timeout(Duration::from_secs(1), stream.read_to_end(&mut rest)).await {
            Ok(Ok(0)) => true,
            Ok(Err(e)) => e.kind() == io::ErrorKind::ConnectionReset,
            _ => false,
        }
    }

    #[tokio::test]
    async fn tcp_connections_are_capped() {
        let opts =
            TcpOptions { idle_timeout: Duration::from_secs(5), max_connections: 3, max_per_client: 2, max_queries: 3 };
        let auth = Arc::new(authority(""));
        let addr = spawn_shared(auth.clone(), opts).await;
        let q = plain_query("rpi.home.ntm.test.", RecordType::A).to_vec().unwrap();

        // two connections from one client are served, a third is closed at once
        let mut a1 = tcp_from("127.0.0.1", addr).await;
        let mut a2 = tcp_from("127.0.0.1", addr).await;
        assert_eq!(tcp_exchange(&mut a1, &q).await.answers().len(), 1);
        assert_eq!(tcp_exchange(&mut a2, &q).await.answers().len(), 1);
        let mut a3 = tcp_from("127.0.0.1", addr).await;
        assert!(closed_at_once(&mut a3).await);
        // another client still gets in, up to the total
        let mut b1 = tcp_from("127.0.0.2", addr).await;
        assert_eq!(tcp_exchange(&mut b1, &q).await.answers().len(), 1);
        let mut c1 = tcp_from("127.0.0.3", addr).await;
        assert!(closed_at_once(&mut c1).await);
        assert_eq!(auth.stats().tcp_refused.load(Ordering::Relaxed), 2);

        // a closed connection frees its slot
        drop(a1);
        let mut again = None;
        for _ in 0..50 {
            let mut s = tcp_from("127.0.0.1", addr).await;
            if !closed_at_once_quick(&mut s).await {
                again = Some(s);
                break;
            }
        }
        let mut a4 = again.expect("the slot was not freed");
        assert_eq!(tcp_exchange(&mut a4, &q).await.answers().len(), 1);

        // three queries per connection, then the server closes it
        assert_eq!(tcp_exchange(&mut b1, &q).await.answers().len(), 1);
        assert_eq!(tcp_exchange(&mut b1, &q).await.answers().len(), 1);
        assert!(closed_at_once(&mut b1).await);
        drop((a2, a4));
    }

    /// True if the server has closed `stream` within 100 ms (an accepted one stays open).
    async fn closed_at_once_quick(stream: &mut TcpStream) -> bool {
        let mut byte = [0u8; 1];
        match tokio::time::timeout(Duration::from_millis(100), stream.read(&mut byte)).await {
            Ok(Ok(0)) => true,
            Ok(Err(_)) => true,
            Ok(Ok(_)) => panic!("data from the server unasked"),
            Err(_) => false,
        }
    }
}
