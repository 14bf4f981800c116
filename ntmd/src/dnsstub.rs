//! The stub resolver (docs/architecture.md, the flow of a name lookup): A/AAAA/ANY queries for NTM names are answered with the
//! peer's VIPs (the daemon builds the tunnel meanwhile); every other query is forwarded verbatim
//! to the upstream resolvers and the answer relayed.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use host::dns::{read_tcp_message, write_tcp_message, Client};
use host::loglimit::LogLimiter;
use proto::dns::parents;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::Semaphore;

/// TTL of the VIP answers: the tunnel behind a VIP may go away at any time.
pub const NTM_TTL: u32 = 1;
/// How long a zone is remembered as an NTM zone.
pub const POSITIVE_TTL: Duration = Duration::from_secs(300);
/// How long a zone is remembered as not an NTM zone (no `_ntm._udp` SRV record).
pub const NEGATIVE_TTL: Duration = Duration::from_secs(30);
/// How long a failed SRV lookup (no upstream answered) counts as "not NTM".
const ERROR_TTL: Duration = Duration::from_secs(5);
/// UDP payload size the stub advertises in its own answers.
const EDNS_PAYLOAD: u16 = 1232;
/// Queries handled at once; more are dropped (the client retries).
const MAX_INFLIGHT: usize = 512;
/// A TCP client that sends nothing for this long is disconnected.
const TCP_IDLE: Duration = Duration::from_secs(10);
/// Malformed queries are logged at most this often.
const MALFORMED_LOG_EVERY: Duration = Duration::from_secs(10);

/// Whether a name is an NTM name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ntm {
    /// One of its parents carries `_ntm._udp` SRV: answered with VIPs.
    Yes,
    /// None does: forwarded to the upstream resolvers.
    No,
    /// A lookup failed and none said yes: it may be an NTM name, so it is answered SERVFAIL,
    /// never with what public DNS says of it (the stub fails closed).
    Unknown,
}

/// What the stub needs from the daemon.
pub trait NtmNames: Send + Sync + 'static {
    /// Is `fqdn` (lowercase, no trailing dot) an NTM name? (The daemon answers from a cache of
    /// SRV lookups of `_ntm._udp.<parent>`: see [`NtmZoneCache`].)
    fn is_ntm(&self, fqdn: &str) -> impl Future<Output = Ntm> + Send;
    /// The peer's VIPs, after (or while) building the tunnel to it.
    fn resolve(&self, fqdn: &str) -> impl Future<Output = Result<(Option<Ipv4Addr>, Option<Ipv6Addr>), String>> + Send;
}

/// Lowercase, without the trailing dot.
fn normalize(name: &Name) -> String {
    let s = name.to_ascii();
    s.strip_suffix('.').unwrap_or(&s).to_ascii_lowercase()
}

/// Counters of the stub, for metrics and tests.
#[derive(Debug, Default)]
pub struct StubStats {
    /// Every message received, over UDP and TCP, malformed ones included.
    pub queries: AtomicU64,
    /// Queries answered with VIPs (or NODATA) for NTM names.
    pub ntm: AtomicU64,
    /// Queries relayed to the upstream resolvers (names that are not NTM names).
    pub forwarded: AtomicU64,
    /// Queries answered SERVFAIL: no tunnel to the NTM name, or no upstream answered.
    pub servfail: AtomicU64,
    /// Messages dropped or answered FORMERR: undecodable, not a query, or not one question.
    pub malformed: AtomicU64,
    /// Dropped because too many queries were in flight.
    pub overload: AtomicU64,
}

/// The stub resolver, bound to its sockets; [`DnsStub::run`] serves.
pub struct DnsStub<N> {
    inner: Arc<Inner<N>>,
    udp: Vec<Arc<UdpSocket>>,
    tcp: Vec<TcpListener>,
}

struct Inner<N> {
    names: Arc<N>,
    upstream: Client,
    stats: Arc<StubStats>,
    inflight: Arc<Semaphore>,
    /// Log lines about malformed queries, and about forwarding failures (both caused from
    /// outside), at a bounded rate.
    malformed_log: LogLimiter,
    forward_log: LogLimiter,
}

impl<N: NtmNames> DnsStub<N> {
    /// Binds UDP and TCP on each `listen` address (with port 0, TCP takes UDP's port).
    pub async fn bind(listen: &[SocketAddr], upstream: Client, names: Arc<N>) -> io::Result<DnsStub<N>> {
        let mut udp = Vec::new();
        let mut tcp = Vec::new();
        for &addr in listen {
            // With port 0, TCP takes the port UDP got; if another socket holds that TCP port,
            // try another one.
            let mut tries = if addr.port() == 0 { 16 } else { 1 };
            let (u, t, bound) = loop {
                let u = UdpSocket::bind(addr).await.map_err(|e| with_addr(e, "UDP", addr))?;
                let bound = u.local_addr()?;
                match TcpListener::bind(bound).await {
                    Ok(t) => break (u, t, bound),
                    Err(e) if e.kind() == io::ErrorKind::AddrInUse && tries > 1 => tries -= 1,
                    Err(e) => return Err(with_addr(e, "TCP", bound)),
                }
            };
            tcp.push(t);
            udp.push(Arc::new(u));
            tracing::info!(%bound, "DNS stub listening (UDP and TCP)");
        }
        let inner = Inner {
            names,
            upstream,
            stats: Arc::default(),
            inflight: Arc::new(Semaphore::new(MAX_INFLIGHT)),
            malformed_log: LogLimiter::new(MALFORMED_LOG_EVERY),
            forward_log: LogLimiter::new(MALFORMED_LOG_EVERY),
        };
        Ok(DnsStub { inner: Arc::new(inner), udp, tcp })
    }

    /// The bound addresses (UDP and TCP share each).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.udp.iter().filter_map(|u| u.local_addr().ok()).collect()
    }

    /// The stub's counters, shared with its serving tasks.
    pub fn stats(&self) -> Arc<StubStats> {
        self.inner.stats.clone()
    }

    /// Serves until a listening socket fails.
    pub async fn run(self) -> io::Result<()> {
        let mut tasks = tokio::task::JoinSet::new();
        for sock in self.udp {
            tasks.spawn(serve_udp(self.inner.clone(), sock));
        }
        for listener in self.tcp {
            tasks.spawn(serve_tcp(self.inner.clone(), listener));
        }
        while let Some(res) = tasks.join_next().await {
            res.map_err(io::Error::other)??;
        }
        Ok(())
    }
}

fn with_addr(e: io::Error, proto: &str, addr: SocketAddr) -> io::Error {
    io::Error::new(e.kind(), format!("DNS stub: binding {proto} {addr}: {e}"))
}

async fn serve_udp<N: NtmNames>(inner: Arc<Inner<N>>, sock: Arc<UdpSocket>) -> io::Result<()> {
    let mut buf = vec![0; 65535];
    loop {
        let (n, from) = match sock.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!("DNS stub: UDP receive: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let Ok(permit) = inner.inflight.clone().try_acquire_owned() else {
            inner.stats.overload.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let query = buf[..n].to_vec();
        let (inner, sock) = (inner.clone(), sock.clone());
        tokio::spawn(async move {
            if let Some(answer) = inner.handle(&query, from, false).await {
                if let Err(e) = sock.send_to(&answer, from).await {
                    tracing::debug!(%from, "DNS stub: UDP send: {e}");
                }
            }
            drop(permit);
        });
    }
}

async fn serve_tcp<N: NtmNames>(inner: Arc<Inner<N>>, listener: TcpListener) -> io::Result<()> {
    loop {
        let (mut stream, from) = match listener.accept().await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!("DNS stub: TCP accept: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let inner = inner.clone();
        tokio::spawn(async move {
            // One query at a time per connection; the connection ends when idle, on EOF or error.
            while let Ok(Ok(query)) = tokio::time::timeout(TCP_IDLE, read_tcp_message(&mut stream)).await {
                let Ok(_permit) = inner.inflight.acquire().await else { return };
                let Some(answer) = inner.handle(&query, from, true).await else { return };
                if write_tcp_message(&mut stream, &answer).await.is_err() {
                    return;
                }
            }
        });
    }
}

impl<N: NtmNames> Inner<N> {
    /// The answer to one query, or `None` to drop it.
    async fn handle(&self, bytes: &[u8], from: SocketAddr, tcp: bool) -> Option<Vec<u8>> {
        self.stats.queries.fetch_add(1, Ordering::Relaxed);
        let msg = match Message::from_vec(bytes) {
            Ok(m) => m,
            Err(e) => {
                self.malformed(from, &e.to_string());
                return None;
            }
        };
        if msg.message_type() != MessageType::Query {
            self.malformed(from, "not a query");
            return None;
        }
        if msg.op_code() == OpCode::Query {
            let [q] = msg.queries() else {
                self.malformed(from, &format!("{} questions", msg.queries().len()));
                return encode(&Message::error_msg(msg.id(), msg.op_code(), ResponseCode::FormErr));
            };
            let address_query = matches!(q.query_type(), RecordType::A | RecordType::AAAA | RecordType::ANY);
            if q.query_class() == DNSClass::IN && address_query {
                let name = normalize(q.name());
                match self.names.is_ntm(&name).await {
                    Ntm::Yes => return encode(&self.answer_ntm(&msg, &name).await),
                    Ntm::No => {}
                    Ntm::Unknown => {
                        self.stats.servfail.fetch_add(1, Ordering::Relaxed);
                        let mut r = Message::error_msg(msg.id(), msg.op_code(), ResponseCode::ServFail);
                        r.add_queries(msg.queries().to_vec());
                        return encode(&r);
                    }
                }
            }
        }
        self.forward(bytes, &msg, tcp).await
    }

    /// Answers an address query for an NTM name with the peer's VIPs.
    async fn answer_ntm(&self, query: &Message, name: &str) -> Message {
        let q = &query.queries()[0];
        let mut r = Message::new();
        r.set_id(query.id())
            .set_message_type(MessageType::Response)
            .set_op_code(OpCode::Query)
            .set_authoritative(true)
            .set_recursion_desired(query.recursion_desired())
            .set_recursion_available(true)
            .add_query(q.clone());
        if query.extensions().is_some() {
            let mut edns = Edns::new();
            edns.set_max_payload(EDNS_PAYLOAD).set_version(0);
            r.set_edns(edns);
        }
        match self.names.resolve(name).await {
            Ok((vip4, vip6)) => {
                self.stats.ntm.fetch_add(1, Ordering::Relaxed);
                let qt = q.query_type();
                let record = |rdata| Record::from_rdata(q.name().clone(), NTM_TTL, rdata);
                if let Some(v4) = vip4.filter(|_| matches!(qt, RecordType::A | RecordType::ANY)) {
                    r.add_answer(record(RData::A(A(v4))));
                }
                if let Some(v6) = vip6.filter(|_| matches!(qt, RecordType::AAAA | RecordType::ANY)) {
                    r.add_answer(record(RData::AAAA(AAAA(v6))));
                }
                tracing::debug!(name, ?qt, ?vip4, ?vip6, "answered NTM name");
            }
            Err(e) => {
                self.stats.servfail.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(name, "cannot resolve NTM name: {e}");
                r.set_response_code(ResponseCode::ServFail);
            }
        }
        r
    }

    /// Relays the upstream answer to `bytes`, or SERVFAIL if no upstream answered.
    async fn forward(&self, bytes: &[u8], msg: &Message, tcp: bool) -> Option<Vec<u8>> {
        self.stats.forwarded.fetch_add(1, Ordering::Relaxed);
        match self.upstream.forward(bytes, tcp).await {
            Ok(answer) if !tcp && answer.len() > usize::from(msg.max_payload()) => {
                // Fetched over TCP after a truncated UDP answer, too big for the client's UDP:
                // tell it to come back over TCP.
                let full = Message::from_vec(&answer).ok()?;
                let mut cut = Message::new();
                cut.set_header(*full.header()).set_truncated(true).add_queries(full.queries().to_vec());
                encode(&cut)
            }
            Ok(answer) => Some(answer),
            Err(e) => {
                self.stats.servfail.fetch_add(1, Ordering::Relaxed);
                let q = msg.query().map(|q| format!("{} {}", q.name(), q.query_type())).unwrap_or_default();
                self.forward_log.hit(|held| tracing::warn!(query = %q, held, "DNS forwarding failed: {e}"));
                let mut r = Message::error_msg(msg.id(), msg.op_code(), ResponseCode::ServFail);
                r.set_recursion_desired(msg.recursion_desired()).add_queries(msg.queries().to_vec());
                encode(&r)
            }
        }
    }

    fn malformed(&self, from: SocketAddr, why: &str) {
        self.stats.malformed.fetch_add(1, Ordering::Relaxed);
        self.malformed_log
            .hit(|held| tracing::warn!(%from, unlogged_since_last = held, "DNS stub: malformed query dropped: {why}"));
    }
}

fn encode(msg: &Message) -> Option<Vec<u8>> {
    msg.to_vec().map_err(|e| tracing::error!("DNS stub: encoding an answer: {e}")).ok()
}

/// Tells NTM names from others: a name is an NTM name when one of its parent domains carries
/// an SRV record `_ntm._udp.<parent>`. Results are cached per parent (positive 300 s, negative
/// 30 s), and concurrent lookups of one parent share one query.
pub struct NtmZoneCache {
    upstream: Client,
    zones: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Option<Cached>>>>>,
}

#[derive(Clone, Copy)]
struct Cached {
    /// `None`: the lookup failed.
    ntm: Option<bool>,
    until: Instant,
}

/// Above this many cached zones, expired ones are purged.
const ZONE_CACHE_PURGE_AT: usize = 1024;

impl NtmZoneCache {
    /// An empty cache whose SRV lookups go to `upstream` (the node's upstream resolvers).
    pub fn new(upstream: Client) -> NtmZoneCache {
        NtmZoneCache { upstream, zones: Mutex::default() }
    }

    /// Is `fqdn` an NTM name? Its parents are tried nearest first; a failed lookup makes the
    /// answer [`Ntm::Unknown`] unless a parent says yes.
    pub async fn is_ntm(&self, fqdn: &str) -> Ntm {
        let mut unknown = false;
        for parent in parents(fqdn) {
            match self.is_ntm_zone(parent).await {
                Some(true) => return Ntm::Yes,
                Some(false) => {}
                None => unknown = true,
            }
        }
        if unknown {
            Ntm::Unknown
        } else {
            Ntm::No
        }
    }

    /// Does `zone` carry `_ntm._udp.<zone>` SRV? `None` if the lookup failed (a zone once
    /// found NTM stays so while its lookups fail).
    pub async fn is_ntm_zone(&self, zone: &str) -> Option<bool> {
        let zone = zone.strip_suffix('.').unwrap_or(zone).to_ascii_lowercase();
        let slot = {
            let Ok(mut zones) = self.zones.lock() else { return None };
            if zones.len() >= ZONE_CACHE_PURGE_AT {
                let now = Instant::now();
                zones.retain(|_, slot| {
                    Arc::strong_count(slot) > 1
                        || slot.try_lock().map(|c| c.is_some_and(|c| c.until > now)).unwrap_or(true)
                });
            }
            zones.entry(zone.clone()).or_default().clone()
        };
        // Holding the slot's lock during the lookup makes concurrent callers wait for its result.
        let mut cached = slot.lock().await;
        if let Some(c) = *cached {
            if c.until > Instant::now() {
                return c.ntm;
            }
        }
        let was_ntm = cached.is_some_and(|c| c.ntm == Some(true));
        let (ntm, ttl) = match self.lookup(&zone).await {
            Ok(true) => (Some(true), POSITIVE_TTL),
            Ok(false) => (Some(false), NEGATIVE_TTL),
            Err(e) if was_ntm => {
                tracing::warn!(zone, "SRV lookup of _ntm._udp.{zone} failed; still an NTM zone: {e}");
                (Some(true), ERROR_TTL)
            }
            Err(e) => {
                tracing::warn!(zone, "SRV lookup of _ntm._udp.{zone} failed; its names get SERVFAIL: {e}");
                (None, ERROR_TTL)
            }
        };
        tracing::debug!(zone, ?ntm, "NTM zone check");
        *cached = Some(Cached { ntm, until: Instant::now() + ttl });
        ntm
    }

    async fn lookup(&self, zone: &str) -> Result<bool, String> {
        let answer =
            self.upstream.lookup(&format!("_ntm._udp.{zone}"), RecordType::SRV).await.map_err(|e| e.to_string())?;
        match answer.rcode {
            ResponseCode::NoError => Ok(!answer.srv.is_empty()),
            ResponseCode::NXDomain => Ok(false),
            rcode => Err(format!("rcode {rcode}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;
    use hickory_proto::rr::rdata::SRV;
    use std::str::FromStr;
    use tokio::net::TcpStream;

    /// A query the fake upstream received: name, type, over TCP, id.
    type Seen = (String, RecordType, bool, u16);

    /// A fake upstream resolver on 127.0.0.1 (UDP and TCP on one port).
    struct FakeUpstream {
        addr: SocketAddr,
        seen: Arc<Mutex<Vec<Seen>>>,
    }

    /// How the fake answers: `www.example.test` A 192.0.2.1; `big.example.test` A: 40 records,
    /// truncated (no records) over UDP; `_ntm._udp.home.ntm.test` SRV; `slow.example.test`
    /// after 300 ms; everything else NXDOMAIN.
    fn fake_answer(query: &Message, tcp: bool) -> Message {
        let q = &query.queries()[0];
        let mut r = Message::new();
        r.set_id(query.id())
            .set_message_type(MessageType::Response)
            .set_op_code(OpCode::Query)
            .set_recursion_desired(query.recursion_desired())
            .set_recursion_available(true)
            .add_query(q.clone());
        let name = normalize(q.name());
        match (name.as_str(), q.query_type()) {
            ("www.example.test" | "slow.example.test", RecordType::A) => {
                r.add_answer(Record::from_rdata(q.name().clone(), 60, RData::A(A::new(192, 0, 2, 1))));
            }
            ("big.example.test", RecordType::A) if !tcp => {
                r.set_truncated(true);
            }
            ("big.example.test", RecordType::A) => {
                for i in 0..40 {
                    r.add_answer(Record::from_rdata(q.name().clone(), 60, RData::A(A::new(192, 0, 2, i))));
                }
            }
            ("_ntm._udp.home.ntm.test", RecordType::SRV) => {
                let target = Name::from_str("dc.home.ntm.test.").unwrap();
                r.add_answer(Record::from_rdata(q.name().clone(), 60, RData::SRV(SRV::new(0, 0, 7500, target))));
            }
            _ => {
                r.set_response_code(ResponseCode::NXDomain);
            }
        }
        r
    }

    impl FakeUpstream {
        async fn start(delay: Duration) -> FakeUpstream {
            let udp = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
            let addr = udp.local_addr().unwrap();
            let tcp = TcpListener::bind(addr).await.unwrap();
            let seen = Arc::new(Mutex::new(Vec::new()));
            let record = {
                let seen = seen.clone();
                move |m: &Message, tcp: bool| {
                    let q = &m.queries()[0];
                    seen.lock().unwrap().push((normalize(q.name()), q.query_type(), tcp, m.id()));
                }
            };
            let rec = record.clone();
            tokio::spawn(async move {
                let mut buf = vec![0; 65535];
                loop {
                    let (n, from) = udp.recv_from(&mut buf).await.unwrap();
                    let m = Message::from_vec(&buf[..n]).unwrap();
                    rec(&m, false);
                    let udp = udp.clone();
                    tokio::spawn(async move {
                        if normalize(m.queries()[0].name()).starts_with("slow.") {
                            tokio::time::sleep(Duration::from_millis(300)).await;
                        }
                        tokio::time::sleep(delay).await;
                        udp.send_to(&fake_answer(&m, false).to_vec().unwrap(), from).await.unwrap();
                    });
                }
            });
            tokio::spawn(async move {
                loop {
                    let (mut s, _) = tcp.accept().await.unwrap();
                    let record = record.clone();
                    tokio::spawn(async move {
                        while let Ok(q) = read_tcp_message(&mut s).await {
                            let m = Message::from_vec(&q).unwrap();
                            record(&m, true);
                            write_tcp_message(&mut s, &fake_answer(&m, true).to_vec().unwrap()).await.unwrap();
                        }
                    });
                }
            });
            FakeUpstream { addr, seen }
        }

        fn seen(&self) -> Vec<Seen> {
            self.seen.lock().unwrap().clone()
        }
    }

    /// NTM names from a real [`NtmZoneCache`] over the fake upstream; fixed VIPs.
    struct FakeNames {
        zones: NtmZoneCache,
    }

    impl NtmNames for FakeNames {
        async fn is_ntm(&self, fqdn: &str) -> Ntm {
            self.zones.is_ntm(fqdn).await
        }
        async fn resolve(&self, fqdn: &str) -> Result<(Option<Ipv4Addr>, Option<Ipv6Addr>), String> {
            match fqdn {
                "rpi.home.ntm.test" => Ok((Some(Ipv4Addr::new(100, 64, 0, 2)), Some("fd4e:544d::2".parse().unwrap()))),
                "cam.home.ntm.test" => Ok((Some(Ipv4Addr::new(100, 64, 0, 3)), None)),
                _ => Err("tunnel could not be built: DC says no such node".into()),
            }
        }
    }

    struct Setup {
        upstream: FakeUpstream,
        stub: SocketAddr,
        stats: Arc<StubStats>,
    }

    async fn setup() -> Setup {
        let upstream = FakeUpstream::start(Duration::ZERO).await;
        let names = FakeNames { zones: NtmZoneCache::new(Client::new(vec![upstream.addr])) };
        let stub = DnsStub::bind(&["127.0.0.1:0".parse().unwrap()], Client::new(vec![upstream.addr]), Arc::new(names))
            .await
            .unwrap();
        let addr = stub.local_addrs()[0];
        let stats = stub.stats();
        tokio::spawn(stub.run());
        Setup { upstream, stub: addr, stats }
    }

    fn query(id: u16, name: &str, rtype: RecordType, edns: bool) -> Vec<u8> {
        let mut m = Message::new();
        m.set_id(id)
            .set_message_type(MessageType::Query)
            .set_op_code(OpCode::Query)
            .set_recursion_desired(true)
            .add_query(Query::query(Name::from_str(name).unwrap(), rtype));
        if edns {
            let mut e = Edns::new();
            e.set_max_payload(4096);
            m.set_edns(e);
        }
        m.to_vec().unwrap()
    }

    async fn ask_udp(stub: SocketAddr, q: &[u8]) -> Option<Message> {
        let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        s.send_to(q, stub).await.unwrap();
        let mut buf = vec![0; 65535];
        let n = tokio::time::timeout(Duration::from_millis(3000), s.recv(&mut buf)).await.ok()?.unwrap();
        Some(Message::from_vec(&buf[..n]).unwrap())
    }

    async fn ask_tcp(stub: SocketAddr, q: &[u8]) -> Message {
        let mut s = TcpStream::connect(stub).await.unwrap();
        write_tcp_message(&mut s, q).await.unwrap();
        Message::from_vec(&read_tcp_message(&mut s).await.unwrap()).unwrap()
    }

    fn addrs(m: &Message) -> Vec<String> {
        m.answers()
            .iter()
            .map(|r| match r.data() {
                Some(RData::A(a)) => a.0.to_string(),
                Some(RData::AAAA(a)) => a.0.to_string(),
                other => format!("{other:?}"),
            })
            .collect()
    }

    #[tokio::test]
    async fn ntm_names_answered_with_vips() {
        let s = setup().await;
        let r = ask_udp(s.stub, &query(0x1111, "rpi.home.ntm.test.", RecordType::A, false)).await.unwrap();
        assert_eq!(r.id(), 0x1111);
        assert_eq!(r.response_code(), ResponseCode::NoError);
        assert_eq!(addrs(&r), ["100.64.0.2"]);
        assert_eq!(r.answers()[0].ttl(), NTM_TTL);
        assert_eq!(r.queries()[0].name(), &Name::from_str("rpi.home.ntm.test.").unwrap());

        let r = ask_udp(s.stub, &query(2, "RPI.Home.ntm.test.", RecordType::AAAA, true)).await.unwrap();
        assert_eq!(addrs(&r), ["fd4e:544d::2"]);
        assert!(r.extensions().is_some(), "EDNS query gets an OPT back");

        let r = ask_udp(s.stub, &query(3, "rpi.home.ntm.test.", RecordType::ANY, false)).await.unwrap();
        assert_eq!(addrs(&r), ["100.64.0.2", "fd4e:544d::2"]);

        // cam has no IPv6 VIP: NODATA.
        let r = ask_udp(s.stub, &query(4, "cam.home.ntm.test.", RecordType::AAAA, false)).await.unwrap();
        assert_eq!(r.response_code(), ResponseCode::NoError);
        assert!(r.answers().is_empty());

        // Only the SRV lookup of the parent zone went upstream, once (then cached).
        let seen = s.upstream.seen();
        assert_eq!(seen.len(), 1, "{seen:?}");
        assert_eq!((seen[0].0.as_str(), seen[0].1), ("_ntm._udp.home.ntm.test", RecordType::SRV));
        assert_eq!(s.stats.ntm.load(Ordering::Relaxed), 4);
    }

    #[tokio::test]
    async fn other_names_are_forwarded() {
        let s = setup().await;
        let r = ask_udp(s.stub, &query(0x4242, "www.example.test.", RecordType::A, false)).await.unwrap();
        assert_eq!(r.id(), 0x4242, "the client's id comes back");
        assert_eq!(addrs(&r), ["192.0.2.1"]);
        let seen = s.upstream.seen();
        let fwd: Vec<_> = seen.iter().filter(|q| q.0 == "www.example.test").collect();
        assert_eq!(fwd.len(), 1, "{seen:?}");
        assert!(!fwd[0].2, "over UDP");
        // The zone checks walked the parents (example.test, test) before forwarding.
        assert!(seen.iter().any(|q| q.0 == "_ntm._udp.example.test"));
        assert!(seen.iter().any(|q| q.0 == "_ntm._udp.test"));

        let r = ask_udp(s.stub, &query(7, "nope.example.test.", RecordType::A, false)).await.unwrap();
        assert_eq!(r.response_code(), ResponseCode::NXDomain);

        // Not an address query, even for an NTM name: forwarded.
        let r = ask_udp(s.stub, &query(8, "rpi.home.ntm.test.", RecordType::TXT, false)).await.unwrap();
        assert_eq!(r.response_code(), ResponseCode::NXDomain);
        assert!(s.upstream.seen().iter().any(|q| q.0 == "rpi.home.ntm.test" && q.1 == RecordType::TXT));
    }

    #[tokio::test]
    async fn tcp_path() {
        let s = setup().await;
        // A client over TCP: NTM names answered, other names forwarded over TCP.
        let r = ask_tcp(s.stub, &query(9, "rpi.home.ntm.test.", RecordType::A, false)).await;
        assert_eq!(addrs(&r), ["100.64.0.2"]);
        let r = ask_tcp(s.stub, &query(10, "www.example.test.", RecordType::A, false)).await;
        assert_eq!((r.id(), addrs(&r)), (10, vec!["192.0.2.1".to_string()]));
        assert!(s.upstream.seen().iter().any(|q| q.0 == "www.example.test" && q.2), "forwarded over TCP");

        // A UDP client, upstream truncates: the stub retries over TCP and the full answer fits.
        let r = ask_udp(s.stub, &query(11, "big.example.test.", RecordType::A, true)).await.unwrap();
        assert!(!r.truncated());
        assert_eq!(r.answers().len(), 40);
        let big: Vec<bool> = s.upstream.seen().iter().filter(|q| q.0 == "big.example.test").map(|q| q.2).collect();
        assert_eq!(big, [false, true]);

        // Without EDNS (512 bytes) it does not fit: the client is told to use TCP, and does.
        let r = ask_udp(s.stub, &query(12, "big.example.test.", RecordType::A, false)).await.unwrap();
        assert!(r.truncated() && r.answers().is_empty());
        assert_eq!(r.id(), 12);
        let r = ask_tcp(s.stub, &query(13, "big.example.test.", RecordType::A, false)).await;
        assert_eq!(r.answers().len(), 40);
    }

    #[tokio::test]
    async fn servfail_when_resolution_or_upstream_fails() {
        let s = setup().await;
        let r = ask_udp(s.stub, &query(20, "gone.home.ntm.test.", RecordType::A, false)).await.unwrap();
        assert_eq!((r.id(), r.response_code()), (20, ResponseCode::ServFail));
        assert!(r.answers().is_empty());

        // Upstreams that never answer: each gets its timeout, then SERVFAIL.
        let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let dead = vec![silent.local_addr().unwrap(), silent.local_addr().unwrap()];
        let names = FakeNames { zones: NtmZoneCache::new(Client::new(dead.clone())) };
        let upstream = Client::new(dead).with_timeout(Duration::from_millis(200));
        let stub = DnsStub::bind(&["127.0.0.1:0".parse().unwrap()], upstream.clone(), Arc::new(names)).await.unwrap();
        let addr = stub.local_addrs()[0];
        tokio::spawn(stub.run());
        // A name with no parent skips the zone check.
        let t = Instant::now();
        let r = ask_udp(addr, &query(21, "localhost.", RecordType::A, false)).await.unwrap();
        assert_eq!((r.id(), r.response_code()), (21, ResponseCode::ServFail));
        assert!(t.elapsed() >= Duration::from_millis(400), "both upstreams tried");
        let e = upstream.forward(&query(1, "x.", RecordType::A, false), false).await.unwrap_err();
        assert!(e.timed_out(), "{e}");
    }

    #[tokio::test]
    async fn garbage_is_dropped_and_counted() {
        let s = setup().await;
        assert!(ask_udp_quick(s.stub, &[1, 2, 3]).await.is_none());
        let mut resp = query(30, "www.example.test.", RecordType::A, false);
        resp[2] |= 0x80; // a response, not a query
        assert!(ask_udp_quick(s.stub, &resp).await.is_none());
        assert_eq!(s.stats.malformed.load(Ordering::Relaxed), 2);

        // No question: FORMERR.
        let mut m = Message::new();
        m.set_id(31).set_message_type(MessageType::Query).set_op_code(OpCode::Query);
        let r = ask_udp(s.stub, &m.to_vec().unwrap()).await.unwrap();
        assert_eq!((r.id(), r.response_code()), (31, ResponseCode::FormErr));

        // Garbage over TCP closes that connection; the stub keeps serving.
        let mut t = TcpStream::connect(s.stub).await.unwrap();
        write_tcp_message(&mut t, b"\x00\x01garbage").await.unwrap();
        assert!(read_tcp_message(&mut t).await.is_err());
        let r = ask_udp(s.stub, &query(32, "rpi.home.ntm.test.", RecordType::A, false)).await.unwrap();
        assert_eq!(addrs(&r), ["100.64.0.2"]);
        assert_eq!(s.stats.malformed.load(Ordering::Relaxed), 4);
    }

    async fn ask_udp_quick(stub: SocketAddr, q: &[u8]) -> Option<Vec<u8>> {
        let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        s.send_to(q, stub).await.unwrap();
        let mut buf = vec![0; 2048];
        let n = tokio::time::timeout(Duration::from_millis(300), s.recv(&mut buf)).await.ok()?.ok()?;
        Some(buf[..n].to_vec())
    }

    #[tokio::test]
    async fn zone_cache_caches_and_deduplicates() {
        let upstream = FakeUpstream::start(Duration::from_millis(100)).await;
        let cache = Arc::new(NtmZoneCache::new(Client::new(vec![upstream.addr])));
        let checks: Vec<_> = (0..8)
            .map(|i| {
                let cache = cache.clone();
                let name = if i % 2 == 0 { "rpi.home.ntm.test" } else { "cam.home.ntm.test." };
                tokio::spawn(async move { cache.is_ntm(name).await })
            })
            .collect();
        for c in checks {
            assert_eq!(c.await.unwrap(), Ntm::Yes);
        }
        assert_eq!(upstream.seen().len(), 1, "concurrent lookups share one query");

        assert_eq!(cache.is_ntm("www.example.test").await, Ntm::No);
        assert_eq!(cache.is_ntm("other.example.test").await, Ntm::No);
        assert_eq!(cache.is_ntm("test").await, Ntm::No);
        let zones: Vec<String> = upstream.seen().into_iter().map(|q| q.0).collect();
        assert_eq!(zones, ["_ntm._udp.home.ntm.test", "_ntm._udp.example.test", "_ntm._udp.test"]);
        assert_eq!(cache.is_ntm("tv.home.ntm.test").await, Ntm::Yes);
        assert_eq!(upstream.seen().len(), 3, "answers are cached");
    }

    #[tokio::test]
    async fn a_failed_zone_check_fails_closed() {
        // An upstream that never answers: nobody can say whether the name is an NTM name.
        let silent = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let up = Client::new(vec![silent.local_addr().unwrap()]).with_timeout(Duration::from_millis(100));
        let cache = NtmZoneCache::new(up);
        assert_eq!(cache.is_ntm("rpi.home.ntm.test").await, Ntm::Unknown);
    }

    #[tokio::test]
    async fn upstream_ids_are_fresh_and_restored() {
        let upstream = FakeUpstream::start(Duration::ZERO).await;
        let up = Client::new(vec![upstream.addr]);
        let a = up.forward(&query(0xbeef, "www.example.test.", RecordType::A, false), false).await.unwrap();
        assert_eq!(u16::from_be_bytes([a[0], a[1]]), 0xbeef);
        let sent_id = upstream.seen()[0].3;
        // A fresh random id went upstream (1 in 65536 that it equals the client's).
        let b = up.forward(&query(0xbeef, "www.example.test.", RecordType::A, false), true).await.unwrap();
        assert_eq!(u16::from_be_bytes([b[0], b[1]]), 0xbeef);
        assert!(sent_id != 0xbeef || upstream.seen()[1].3 != 0xbeef);
        // A slow answer beyond the timeout is not waited for.
        let fast = up.clone().with_timeout(Duration::from_millis(100));
        assert!(fast.forward(&query(1, "slow.example.test.", RecordType::A, false), false).await.is_err());
    }
}
