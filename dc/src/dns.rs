//! Authoritative DNS for the DC's zone: a sans-IO [`Authority`] and thin tokio UDP/TCP servers.
//!
//! Zone contents (from the config): SOA and NS at the apex, the DC's own A/AAAA, the SRV record
//! `_ntm._udp.<zone>` pointing at the DC's signaling port, and, for every enrolled node served
//! through an NPS, that NPS's A/AAAA. Other enrolled nodes exist without data (NODATA).

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, NS, SOA, SRV};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;

use host::loglimit::LogLimiter;

use crate::config::Config;

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
    /// UDP answers sent with the TC bit.
    pub truncated: AtomicU64,
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
    soa: Record,
    /// Every name that exists in the zone (lowercase), with its records; empty for names
    /// without data (enrolled nodes without NPS, empty non-terminals).
    names: HashMap<Name, Vec<Record>>,
    stats: DnsStats,
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
        Ok(Self { zone, soa, names, stats: DnsStats::default() })
    }

    /// The zone's apex, lowercase and fully qualified.
    pub fn zone(&self) -> &Name {
        &self.zone
    }

    /// The counters of the queries answered so far, shared by the UDP and TCP servers.
    pub fn stats(&self) -> &DnsStats {
        &self.stats
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
        let Some(records) = self.names.get(&qname) else {
            self.stats.nxdomain.fetch_add(1, Ordering::Relaxed);
            resp.set_response_code(ResponseCode::NXDomain);
            resp.add_name_server(self.soa.clone());
            return resp;
        };
        let found: Vec<&Record> =
            records.iter().filter(|r| qtype == RecordType::ANY || r.record_type() == qtype).collect();
        if found.is_empty() {
            resp.add_name_server(self.soa.clone());
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
            for glue in target.iter().filter_map(|t| self.names.get(t)).flatten() {
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

/// Serves DNS over UDP on `sock` until a non-transient socket error.
pub async fn serve_udp(sock: UdpSocket, authority: Arc<Authority>) -> io::Result<()> {
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
        match authority.answer_udp(&buf[..n]) {
            Some(resp) => {
                if let Err(e) = sock.send_to(&resp, peer).await {
                    if let Some(suppressed) = errors.check() {
                        tracing::warn!(%peer, error = %e, suppressed, "DNS UDP send");
                    }
                }
            }
            None => {
                if let Some(suppressed) = drops.check() {
                    tracing::warn!(%peer, len = n, suppressed, "dropped a malformed DNS datagram");
                }
            }
        }
    }
}

/// Limits of the TCP server.
#[derive(Debug, Clone, Copy)]
pub struct TcpOptions {
    /// A connection idle this long (or this slow to send a query or take an answer) is closed.
    pub idle_timeout: Duration,
    /// Connections served at once; one more is closed as soon as it is accepted.
    pub max_connections: usize,
}

impl Default for TcpOptions {
    fn default() -> Self {
        Self { idle_timeout: Duration::from_secs(10), max_connections: 128 }
    }
}

/// Serves DNS over TCP (RFC 7766: 2-byte length prefix, several queries per connection).
pub async fn serve_tcp(listener: TcpListener, authority: Arc<Authority>) -> io::Result<()> {
    serve_tcp_with(listener, authority, TcpOptions::default()).await
}

/// [`serve_tcp`] with explicit limits (the tests use short timeouts and few slots).
pub async fn serve_tcp_with(listener: TcpListener, authority: Arc<Authority>, opts: TcpOptions) -> io::Result<()> {
    let slots = Arc::new(Semaphore::new(opts.max_connections));
    let drops = Arc::new(LogLimiter::new(Duration::from_secs(1)));
    let errors = LogLimiter::new(Duration::from_secs(1));
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
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            if let Some(suppressed) = errors.check() {
                tracing::warn!(%peer, suppressed, "too many DNS TCP connections, closing");
            }
            continue;
        };
        let authority = authority.clone();
        let drops = drops.clone();
        tokio::spawn(async move {
            if let Err(e) = serve_conn(stream, peer, &authority, &drops, opts.idle_timeout).await {
                tracing::debug!(%peer, error = %e, "DNS TCP connection");
            }
            drop(permit);
        });
    }
}

async fn serve_conn(
    mut stream: TcpStream,
    peer: SocketAddr,
    authority: &Authority,
    drops: &LogLimiter,
    idle: Duration,
) -> io::Result<()> {
    let timed_out = || io::Error::new(io::ErrorKind::TimedOut, "idle");
    loop {
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
        let r = ask(&auth, "dc.home.ntm.test.", RecordType::ANY);
        assert_eq!(r.answers().len(), 2);
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
        let auth = Arc::new(auth);
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
        let opts = TcpOptions { idle_timeout: Duration::from_millis(300), max_connections: 4 };
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
}
