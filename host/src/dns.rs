//! The DNS client every daemon uses: the node's stub resolver forwarding to its upstreams, the
//! DC finding other zones' DCs, the NPS asking the local `ntmd` for a node's VIP.
//!
//! One retry policy: the servers are tried in order, each within its own time budget. To one
//! server, a query goes over UDP and is retransmitted (the first wait [`FIRST_RETRY`], doubled
//! each time) until an answer or the end of the budget; an answer with the TC bit is asked again
//! over TCP in what is left of the budget. Every query leaves with a fresh random id, and only an
//! answer with that id, the response bit and the same question is taken: anything else (late,
//! spoofed, garbage) is ignored while the wait goes on.

use std::fmt;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::Message;
use proto::dns::{parse_response, Answer, DnsError, RecordType, ResponseCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::{timeout_at, Instant};

/// The default budget of one server: its UDP tries and, after a truncated answer, TCP.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
/// The first UDP retransmission; doubled after each one.
pub const FIRST_RETRY: Duration = Duration::from_millis(1000);
/// The largest message read over UDP.
const MAX_UDP: usize = 65535;

/// Why a query got no answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// There is no server to ask.
    #[error("no DNS server is configured")]
    NoServers,
    /// The query to send (or to forward) is not a DNS query we can send.
    #[error("the query is malformed: {0}")]
    BadQuery(String),
    /// Every server failed; one entry per server, in order.
    #[error("no DNS server answered ({})", Failures(.0))]
    NoAnswer(Vec<(SocketAddr, Failure)>),
}

impl ClientError {
    /// Every server was asked, and none answered in time (as opposed to refusing the
    /// connection, or answering garbage).
    pub fn timed_out(&self) -> bool {
        matches!(self, ClientError::NoAnswer(f) if f.iter().all(|(_, f)| matches!(f, Failure::Timeout)))
    }
}

/// What went wrong with one server.
#[derive(Debug)]
pub enum Failure {
    /// No valid answer within the server's budget.
    Timeout,
    /// A socket error (unreachable, refused, reset).
    Io(io::Error),
    /// Over TCP, an answer that is not ours (over UDP such answers are ignored).
    BadAnswer(String),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Timeout => f.write_str("timed out"),
            Failure::Io(e) => write!(f, "{e}"),
            Failure::BadAnswer(e) => write!(f, "bad answer: {e}"),
        }
    }
}

struct Failures<'a>(&'a [(SocketAddr, Failure)]);

impl fmt::Display for Failures<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (server, failure)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{server}: {failure}")?;
        }
        Ok(())
    }
}

/// A client of a list of DNS servers (recursive resolvers, or a stub). Cheap to clone.
#[derive(Debug, Clone)]
pub struct Client {
    servers: Arc<[SocketAddr]>,
    timeout: Duration,
}

/// A question: lowercase name without the trailing dot, and type; none for a message without
/// one (a forwarded NOTIFY or DSO message, say).
type Question = Option<(String, RecordType)>;

impl Client {
    /// A client of `servers`, each with the [`DEFAULT_TIMEOUT`] budget.
    pub fn new(servers: Vec<SocketAddr>) -> Client {
        Client { servers: servers.into(), timeout: DEFAULT_TIMEOUT }
    }

    /// Replaces the budget of each server.
    pub fn with_timeout(mut self, timeout: Duration) -> Client {
        self.timeout = timeout;
        self
    }

    /// The servers, in the order they are tried.
    pub fn servers(&self) -> &[SocketAddr] {
        &self.servers
    }

    /// Asks `rtype` records of `name` (recursion desired, EDNS0).
    pub async fn lookup(&self, name: &str, rtype: RecordType) -> Result<Answer, ClientError> {
        let question = Some((normalize(name), rtype));
        self.ask(&question, false, |id| {
            proto::dns::query(id, name, rtype).map_err(|e| ClientError::BadQuery(e.to_string()))
        })
        .await
        .map(|(_, answer)| answer)
    }

    /// Forwards a client's query verbatim (over TCP only when `tcp`) and returns the answer
    /// under the query's own id. The query leaves with a fresh id of ours.
    pub async fn forward(&self, query: &[u8], tcp: bool) -> Result<Vec<u8>, ClientError> {
        let msg = Message::from_vec(query).map_err(|e| ClientError::BadQuery(e.to_string()))?;
        let question = msg.query().map(|q| (normalize(&q.name().to_ascii()), q.query_type()));
        let (mut bytes, _) = self
            .ask(&question, tcp, |id| {
                let mut q = query.to_vec();
                q[..2].copy_from_slice(&id.to_be_bytes());
                Ok(q)
            })
            .await?;
        bytes[..2].copy_from_slice(&msg.id().to_be_bytes());
        Ok(bytes)
    }

    /// Sends the query `encode(id)` to each server in turn until one answers.
    async fn ask(
        &self,
        question: &Question,
        tcp: bool,
        encode: impl Fn(u16) -> Result<Vec<u8>, ClientError>,
    ) -> Result<(Vec<u8>, Answer), ClientError> {
        if self.servers.is_empty() {
            return Err(ClientError::NoServers);
        }
        let mut failures = Vec::new();
        for &server in self.servers.iter() {
            let id: u16 = rand::random();
            let query = encode(id)?;
            let deadline = Instant::now() + self.timeout;
            let check = |bytes: &[u8]| check(bytes, id, question);
            let attempt = async {
                if !tcp {
                    let (bytes, answer) = udp(server, &query, deadline, check).await?;
                    if !answer.truncated {
                        return Ok((bytes, answer));
                    }
                    tracing::debug!(%server, "truncated answer, asking again over TCP");
                }
                over_tcp(server, &query, check).await
            };
            match timeout_at(deadline, attempt).await {
                Ok(Ok(found)) => return Ok(found),
                Ok(Err(f)) => failures.push((server, f)),
                Err(_) => failures.push((server, Failure::Timeout)),
            }
        }
        Err(ClientError::NoAnswer(failures))
    }
}

/// Is `bytes` the answer to our query: our id, a response, the same question?
fn check(bytes: &[u8], id: u16, question: &Question) -> Result<Answer, String> {
    let answer = parse_response(bytes, id).map_err(|e: DnsError| e.to_string())?;
    match &answer.question {
        q if q == question => Ok(answer),
        // Some servers leave the question out of error answers.
        None if answer.rcode != ResponseCode::NoError => Ok(answer),
        other => Err(format!("answer to another question ({other:?})")),
    }
}

/// UDP: send, wait, retransmit with a doubling wait until `deadline` (the caller's timeout
/// ends the loop).
async fn udp(
    server: SocketAddr,
    query: &[u8],
    deadline: Instant,
    check: impl Fn(&[u8]) -> Result<Answer, String>,
) -> Result<(Vec<u8>, Answer), Failure> {
    let bind: SocketAddr =
        if server.is_ipv4() { (Ipv4Addr::UNSPECIFIED, 0).into() } else { (Ipv6Addr::UNSPECIFIED, 0).into() };
    let sock = UdpSocket::bind(bind).await.map_err(Failure::Io)?;
    sock.connect(server).await.map_err(Failure::Io)?;
    let mut buf = vec![0; MAX_UDP];
    let mut wait = FIRST_RETRY;
    loop {
        sock.send(query).await.map_err(Failure::Io)?;
        let until = (Instant::now() + wait).min(deadline);
        loop {
            let n = match timeout_at(until, sock.recv(&mut buf)).await {
                Ok(r) => r.map_err(Failure::Io)?,
                Err(_) => break,
            };
            match check(&buf[..n]) {
                Ok(answer) => return Ok((buf[..n].to_vec(), answer)),
                Err(e) => tracing::debug!(%server, "ignoring a DNS datagram: {e}"),
            }
        }
        if Instant::now() >= deadline {
            return Err(Failure::Timeout);
        }
        wait *= 2;
    }
}

async fn over_tcp(
    server: SocketAddr,
    query: &[u8],
    check: impl Fn(&[u8]) -> Result<Answer, String>,
) -> Result<(Vec<u8>, Answer), Failure> {
    let mut stream = TcpStream::connect(server).await.map_err(Failure::Io)?;
    stream.set_nodelay(true).map_err(Failure::Io)?;
    write_tcp_message(&mut stream, query).await.map_err(Failure::Io)?;
    let bytes = read_tcp_message(&mut stream).await.map_err(Failure::Io)?;
    let answer = check(&bytes).map_err(Failure::BadAnswer)?;
    Ok((bytes, answer))
}

/// Writes one DNS message with its two-byte length (RFC 1035 4.2.2).
pub async fn write_tcp_message<S: AsyncWriteExt + Unpin>(stream: &mut S, msg: &[u8]) -> io::Result<()> {
    let len =
        u16::try_from(msg.len()).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "DNS message too long"))?;
    let mut framed = Vec::with_capacity(msg.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(msg);
    stream.write_all(&framed).await
}

/// Reads one DNS message with its two-byte length.
pub async fn read_tcp_message<S: AsyncReadExt + Unpin>(stream: &mut S) -> io::Result<Vec<u8>> {
    let len = stream.read_u16().await?;
    let mut msg = vec![0; usize::from(len)];
    stream.read_exact(&mut msg).await?;
    Ok(msg)
}

/// A name as [`Answer::question`] has it: lowercase, without the trailing dot.
fn normalize(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::{MessageType, OpCode, Query};
    use hickory_proto::rr::rdata::A;
    use hickory_proto::rr::{Name, RData, Record};
    use std::str::FromStr;
    use std::sync::atomic::{AtomicU32, Ordering};
    use tokio::net::TcpListener;

    /// What a fake server does with each UDP query.
    #[derive(Clone, Copy, PartialEq)]
    enum Udp {
        Answer,
        /// Drops the first query, answers the retransmission.
        DropFirst,
        /// Answers with the TC bit (the full answer comes over TCP).
        Truncate,
        /// Answers first with a wrong id, then with a wrong question, then right.
        Spoofed,
    }

    fn answer(q: &Message, tc: bool, id: u16, name: Option<&str>) -> Vec<u8> {
        let query = &q.queries()[0];
        let qname = name.map(|n| Name::from_str(n).unwrap()).unwrap_or_else(|| query.name().clone());
        let mut r = Message::new();
        r.set_id(id).set_message_type(MessageType::Response).set_op_code(OpCode::Query);
        r.add_query(Query::query(qname.clone(), query.query_type()));
        r.set_truncated(tc);
        if !tc {
            r.add_answer(Record::from_rdata(qname, 60, RData::A(A::new(192, 0, 2, 7))));
        }
        r.to_vec().unwrap()
    }

    /// A server on 127.0.0.1 (UDP and TCP, one port); counts the UDP queries it got.
    async fn server(mode: Udp) -> (SocketAddr, Arc<AtomicU32>) {
        let udp = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let addr = udp.local_addr().unwrap();
        let tcp = TcpListener::bind(addr).await.unwrap();
        let seen = Arc::new(AtomicU32::new(0));
        let n = seen.clone();
        tokio::spawn(async move {
            let mut buf = vec![0; 4096];
            loop {
                let (len, from) = udp.recv_from(&mut buf).await.unwrap();
                let q = Message::from_vec(&buf[..len]).unwrap();
                let i = n.fetch_add(1, Ordering::SeqCst);
                let id = q.id();
                let replies = match mode {
                    Udp::Answer => vec![answer(&q, false, id, None)],
                    Udp::DropFirst if i == 0 => vec![],
                    Udp::DropFirst => vec![answer(&q, false, id, None)],
                    Udp::Truncate => vec![answer(&q, true, id, None)],
                    Udp::Spoofed => vec![
                        answer(&q, false, id.wrapping_add(1), None),
                        answer(&q, false, id, Some("evil.example.")),
                        answer(&q, false, id, None),
                    ],
                };
                for r in replies {
                    udp.send_to(&r, from).await.unwrap();
                }
            }
        });
        tokio::spawn(async move {
            loop {
                let (mut s, _) = tcp.accept().await.unwrap();
                tokio::spawn(async move {
                    while let Ok(q) = read_tcp_message(&mut s).await {
                        let q = Message::from_vec(&q).unwrap();
                        write_tcp_message(&mut s, &answer(&q, false, q.id(), None)).await.unwrap();
                    }
                });
            }
        });
        (addr, seen)
    }

    #[tokio::test]
    async fn udp_answer_with_fresh_ids_restored_on_forward() {
        let (addr, _) = server(Udp::Answer).await;
        let c = Client::new(vec![addr]);
        let a = c.lookup("www.example.test", RecordType::A).await.unwrap();
        assert_eq!(a.addrs_of("www.example.test"), vec!["192.0.2.7".parse::<std::net::IpAddr>().unwrap()]);
        let q = proto::dns::query(4242, "www.example.test", RecordType::A).unwrap();
        let r = c.forward(&q, false).await.unwrap();
        assert_eq!(Message::from_vec(&r).unwrap().id(), 4242);
    }

    #[tokio::test]
    async fn lost_query_is_retransmitted() {
        let (addr, seen) = server(Udp::DropFirst).await;
        let a = Client::new(vec![addr]).with_timeout(Duration::from_secs(5)).lookup("a.test", RecordType::A).await;
        assert!(a.is_ok(), "{a:?}");
        assert_eq!(seen.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn truncated_goes_to_tcp_and_spoofs_are_ignored() {
        let (addr, _) = server(Udp::Truncate).await;
        let a = Client::new(vec![addr]).lookup("big.test", RecordType::A).await.unwrap();
        assert!(!a.truncated && a.answer_count == 1);
        let (addr, _) = server(Udp::Spoofed).await;
        let a = Client::new(vec![addr]).lookup("a.test", RecordType::A).await.unwrap();
        assert_eq!(a.question, Some(("a.test".into(), RecordType::A)));
    }

    #[tokio::test]
    async fn silent_servers_time_out_then_the_next_answers() {
        let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let (good, _) = server(Udp::Answer).await;
        let c = Client::new(vec![silent.local_addr().unwrap(), good]).with_timeout(Duration::from_millis(300));
        assert!(c.lookup("a.test", RecordType::A).await.is_ok());
        let c = Client::new(vec![silent.local_addr().unwrap()]).with_timeout(Duration::from_millis(300));
        let e = c.lookup("a.test", RecordType::A).await.unwrap_err();
        assert!(e.timed_out(), "{e}");
        assert!(e.to_string().contains("timed out"), "{e}");
        assert!(matches!(Client::new(vec![]).lookup("a.test", RecordType::A).await, Err(ClientError::NoServers)));
    }
}
