//! Finding the DC of a name: the SRV record `_ntm._udp.<zone>` of its nearest NTM parent zone.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use proto::dns::{self, Answer, DnsError, RecordType, ResponseCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::{timeout, timeout_at, Instant};

/// How long one UDP try waits for its answer.
pub const UDP_TIMEOUT: Duration = Duration::from_secs(1);
pub const UDP_TRIES: u32 = 2;
/// Budget of a whole TCP exchange (after a truncated UDP answer).
pub const TCP_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum LocateError {
    #[error("{0} is not in an NTM zone (no _ntm._udp SRV record in its parent domains)")]
    NotNtm(String),
    #[error("no answer from resolver {resolver} for {name}")]
    Timeout { resolver: SocketAddr, name: String },
    #[error("resolver {resolver} answered {rcode} for {name}")]
    Rcode { resolver: SocketAddr, name: String, rcode: ResponseCode },
    #[error("the DC of zone {zone} has no address")]
    NoAddress { zone: String },
    #[error("resolver {resolver}: {source}")]
    Io { resolver: SocketAddr, source: io::Error },
    #[error("resolver {resolver}: {source}")]
    Dns { resolver: SocketAddr, source: DnsError },
}

/// Finds the DC responsible for `fqdn`: walks its parent domains, nearest first, and returns
/// the first zone with an `_ntm._udp` SRV record and the DC's socket addresses. NXDOMAIN and
/// NODATA move on to the next parent; any other failure stops the walk (the nearer zone could
/// not be ruled out).
pub async fn locate_dc(resolver: SocketAddr, fqdn: &str) -> Result<(String, Vec<SocketAddr>), LocateError> {
    for parent in dns::parents(fqdn) {
        let name = format!("_ntm._udp.{parent}");
        let ans = lookup(resolver, &name, RecordType::SRV).await?;
        match ans.rcode {
            ResponseCode::NXDomain => continue,
            ResponseCode::NoError if ans.srv.is_empty() => continue,
            ResponseCode::NoError => {}
            rcode => return Err(LocateError::Rcode { resolver, name, rcode }),
        }
        let zone = parent.to_ascii_lowercase();
        let addrs = srv_addrs(resolver, &ans).await?;
        if addrs.is_empty() {
            return Err(LocateError::NoAddress { zone });
        }
        tracing::debug!(fqdn, zone, ?addrs, "located DC");
        return Ok((zone, addrs));
    }
    Err(LocateError::NotNtm(fqdn.to_string()))
}

/// The socket addresses of the SRV targets, by priority then weight; glue from the
/// additional section is used when present, else the target's A and AAAA are queried.
async fn srv_addrs(resolver: SocketAddr, ans: &Answer) -> Result<Vec<SocketAddr>, LocateError> {
    let mut srv = ans.srv.clone();
    srv.sort_by_key(|s| (s.priority, std::cmp::Reverse(s.weight)));
    let mut out = Vec::new();
    let mut last_err = None;
    // The root target means "no service here".
    for s in srv.iter().filter(|s| !s.target.is_empty()) {
        let mut ips = ans.addrs_of(&s.target);
        if ips.is_empty() {
            let (a, aaaa) =
                tokio::join!(lookup(resolver, &s.target, RecordType::A), lookup(resolver, &s.target, RecordType::AAAA));
            for r in [a, aaaa] {
                match r {
                    Ok(ans) => ips.extend(ans.addrs_of(&s.target)),
                    Err(e) => last_err = Some(e),
                }
            }
        }
        for ip in ips {
            let sa = SocketAddr::new(ip, s.port);
            if !out.contains(&sa) {
                out.push(sa);
            }
        }
    }
    match last_err {
        Some(e) if out.is_empty() => Err(e),
        _ => Ok(out),
    }
}

/// One DNS lookup at `resolver`: UDP (1 s per try, 2 tries), then TCP if the answer was
/// truncated. Replies with the wrong id or question are ignored.
pub async fn lookup(resolver: SocketAddr, name: &str, rtype: RecordType) -> Result<Answer, LocateError> {
    let mut last_err = None;
    for _ in 0..UDP_TRIES {
        let id: u16 = rand::random();
        let query = dns::query(id, name, rtype).map_err(|source| LocateError::Dns { resolver, source })?;
        match udp_try(resolver, &query, id, name, rtype).await {
            Ok(Some(ans)) if ans.truncated => return tcp_lookup(resolver, name, rtype).await,
            Ok(Some(ans)) => return Ok(ans),
            Ok(None) => {}
            Err(source) => {
                tracing::debug!(%resolver, name, error = %source, "DNS over UDP");
                last_err = Some(LocateError::Io { resolver, source });
            }
        }
    }
    Err(last_err.unwrap_or_else(|| LocateError::Timeout { resolver, name: name.to_string() }))
}

fn matches_question(ans: &Answer, name: &str, rtype: RecordType) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    match &ans.question {
        Some((qname, qtype)) => qname.eq_ignore_ascii_case(name) && *qtype == rtype,
        // Some servers leave the question out of error responses.
        None => ans.rcode != ResponseCode::NoError,
    }
}

/// `Ok(None)`: no valid answer within `UDP_TIMEOUT`.
async fn udp_try(
    resolver: SocketAddr,
    query: &[u8],
    id: u16,
    name: &str,
    rtype: RecordType,
) -> io::Result<Option<Answer>> {
    let local: SocketAddr = match resolver.ip() {
        IpAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        IpAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let sock = UdpSocket::bind(local).await?;
    sock.connect(resolver).await?;
    sock.send(query).await?;
    let deadline = Instant::now() + UDP_TIMEOUT;
    let mut buf = vec![0u8; 4096];
    loop {
        let n = match timeout_at(deadline, sock.recv(&mut buf)).await {
            Err(_) => return Ok(None),
            Ok(r) => r?,
        };
        match dns::parse_response(&buf[..n], id) {
            Ok(ans) if matches_question(&ans, name, rtype) => return Ok(Some(ans)),
            Ok(_) => tracing::debug!(%resolver, name, "DNS answer to another question, ignored"),
            Err(e) => tracing::debug!(%resolver, name, error = %e, "bad DNS answer, ignored"),
        }
    }
}

async fn tcp_lookup(resolver: SocketAddr, name: &str, rtype: RecordType) -> Result<Answer, LocateError> {
    let id: u16 = rand::random();
    let query = dns::query(id, name, rtype).map_err(|source| LocateError::Dns { resolver, source })?;
    let io_err = |source| LocateError::Io { resolver, source };
    let bytes = match timeout(TCP_TIMEOUT, tcp_exchange(resolver, &query)).await {
        Err(_) => return Err(LocateError::Timeout { resolver, name: name.to_string() }),
        Ok(r) => r.map_err(io_err)?,
    };
    let ans = dns::parse_response(&bytes, id).map_err(|source| LocateError::Dns { resolver, source })?;
    if !matches_question(&ans, name, rtype) {
        let source = DnsError::Malformed("answer to another question".into());
        return Err(LocateError::Dns { resolver, source });
    }
    Ok(ans)
}

async fn tcp_exchange(resolver: SocketAddr, query: &[u8]) -> io::Result<Vec<u8>> {
    let mut stream = TcpStream::connect(resolver).await?;
    let len = u16::try_from(query.len()).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "query too long"))?;
    let mut out = Vec::with_capacity(query.len() + 2);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(query);
    stream.write_all(&out).await?;
    let mut len = [0u8; 2];
    stream.read_exact(&mut len).await?;
    let mut resp = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut resp).await?;
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::tests::{authority, big_extra, spawn_servers};
    use crate::dns::TcpOptions;
    use hickory_proto::op::{Message, MessageType};
    use hickory_proto::rr::rdata::{A, SRV};
    use hickory_proto::rr::{Name, RData, Record};
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[tokio::test]
    async fn finds_the_dc_of_a_node() {
        let resolver = spawn_servers(authority(""), TcpOptions::default()).await;
        let (zone, addrs) = locate_dc(resolver, "rpi.home.ntm.test").await.unwrap();
        assert_eq!(zone, "home.ntm.test");
        assert_eq!(addrs, [sa("198.18.40.2:7500"), sa("[2001:db8:40::2]:7500")]);
        // NXDOMAIN at deeper parents moves up; the case of the name does not matter
        let (zone, _) = locate_dc(resolver, "a.b.c.HOME.ntm.test.").await.unwrap();
        assert_eq!(zone, "home.ntm.test");
        // a name outside the zone: the authority refuses, which stops the walk
        let err = locate_dc(resolver, "www.example.test").await.unwrap_err();
        assert!(matches!(err, LocateError::Rcode { rcode: ResponseCode::Refused, .. }), "{err}");
    }

    #[tokio::test]
    async fn falls_back_to_tcp_when_truncated() {
        let resolver = spawn_servers(authority(&big_extra()), TcpOptions::default()).await;
        let (zone, addrs) = locate_dc(resolver, "rpi.home.ntm.test").await.unwrap();
        assert_eq!(zone, "home.ntm.test");
        assert_eq!(addrs.len(), 60);
        assert!(addrs.iter().all(|a| a.port() == 7500));
    }

    /// A UDP server answering every query through `f`; counts queries.
    async fn responder(f: impl Fn(&Message) -> Option<Message> + Send + 'static) -> (SocketAddr, Arc<AtomicU32>) {
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = sock.local_addr().unwrap();
        let count = Arc::new(AtomicU32::new(0));
        let c = count.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            while let Ok((n, peer)) = sock.recv_from(&mut buf).await {
                c.fetch_add(1, Ordering::SeqCst);
                let Ok(q) = Message::from_vec(&buf[..n]) else { continue };
                if let Some(r) = f(&q) {
                    let _ = sock.send_to(&r.to_vec().unwrap(), peer).await;
                }
            }
        });
        (addr, count)
    }

    fn reply(q: &Message, rcode: ResponseCode) -> Message {
        let mut r = Message::new();
        r.set_id(q.id())
            .set_message_type(MessageType::Response)
            .set_response_code(rcode)
            .add_queries(q.queries().to_vec());
        r
    }

    #[tokio::test]
    async fn no_srv_anywhere_is_not_ntm() {
        let (resolver, count) = responder(|q| Some(reply(q, ResponseCode::NXDomain))).await;
        let err = locate_dc(resolver, "www.example.test").await.unwrap_err();
        assert!(matches!(err, LocateError::NotNtm(_)), "{err}");
        assert_eq!(count.load(Ordering::SeqCst), 2); // example.test, test
    }

    #[tokio::test]
    async fn queries_the_target_when_there_is_no_glue() {
        let (resolver, _) = responder(|q| {
            let query = q.query()?;
            let mut r = reply(q, ResponseCode::NoError);
            let name = query.name().to_ascii();
            match query.query_type() {
                RecordType::SRV if name == "_ntm._udp.zone.test." => {
                    let srv = SRV::new(0, 0, 7600, Name::from_ascii("dc.elsewhere.test.").ok()?);
                    r.add_answer(Record::from_rdata(query.name().clone(), 60, RData::SRV(srv)));
                }
                RecordType::SRV => {
                    r.set_response_code(ResponseCode::NXDomain);
                }
                RecordType::A if name == "dc.elsewhere.test." => {
                    let a = RData::A(A(Ipv4Addr::new(192, 0, 2, 7)));
                    r.add_answer(Record::from_rdata(query.name().clone(), 60, a));
                }
                _ => {}
            }
            Some(r)
        })
        .await;
        let (zone, addrs) = locate_dc(resolver, "x.sub.zone.test").await.unwrap();
        assert_eq!(zone, "zone.test");
        assert_eq!(addrs, [sa("192.0.2.7:7600")]);
    }

    #[tokio::test]
    async fn ignores_spoofed_answers_and_times_out() {
        // answers with the wrong id only: two tries of one second, then a timeout
        let (resolver, count) = responder(|q| {
            let mut r = reply(q, ResponseCode::NoError);
            r.set_id(q.id().wrapping_add(1));
            Some(r)
        })
        .await;
        let started = std::time::Instant::now();
        let err = lookup(resolver, "a.test", RecordType::SRV).await.unwrap_err();
        assert!(matches!(err, LocateError::Timeout { .. }), "{err}");
        assert_eq!(count.load(Ordering::SeqCst), 2);
        assert!(started.elapsed() >= 2 * UDP_TIMEOUT);
    }

    #[tokio::test]
    async fn server_failure_stops_the_walk() {
        let (resolver, count) = responder(|q| Some(reply(q, ResponseCode::ServFail))).await;
        let err = locate_dc(resolver, "rpi.home.ntm.test").await.unwrap_err();
        assert!(matches!(err, LocateError::Rcode { rcode: ResponseCode::ServFail, .. }), "{err}");
        assert_eq!(count.load(Ordering::SeqCst), 1);
    }
}
