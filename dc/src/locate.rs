//! Finding the DC of a name: the SRV record `_ntm._udp.<zone>` of its nearest NTM parent zone.

use std::net::SocketAddr;

use host::dns::{Client, ClientError};
use proto::dns::{self, Answer, RecordType, ResponseCode};

/// Why the DC of a name could not be found.
#[derive(Debug, thiserror::Error)]
pub enum LocateError {
    /// No parent domain of this FQDN has an `_ntm._udp` SRV record.
    #[error("{0} is not in an NTM zone (no _ntm._udp SRV record in its parent domains)")]
    NotNtm(String),
    /// The resolver failed a query with an rcode other than NOERROR or NXDOMAIN (e.g.
    /// SERVFAIL), so a nearer zone could not be ruled out.
    #[error("resolver answered {rcode} for {name}")]
    Rcode {
        /// The name queried.
        name: String,
        /// The resolver's response code.
        rcode: ResponseCode,
    },
    /// The zone has an SRV record, but none of its targets has an A or AAAA record.
    #[error("the DC of zone {zone} has no address")]
    NoAddress {
        /// The NTM zone found.
        zone: String,
    },
    /// No server gave a usable answer to a query (timeouts, refused connections, answers
    /// that do not match the question).
    #[error("{name}: {source}")]
    Lookup {
        /// The name queried.
        name: String,
        /// What the DNS client reported.
        source: ClientError,
    },
}

/// Finds the DC responsible for `fqdn`: walks its parent domains, nearest first, and returns
/// the first zone with an `_ntm._udp` SRV record and the DC's socket addresses. NXDOMAIN and
/// NODATA move on to the next parent; any other failure stops the walk (the nearer zone could
/// not be ruled out).
pub async fn locate_dc(resolver: &Client, fqdn: &str) -> Result<(String, Vec<SocketAddr>), LocateError> {
    for parent in dns::parents(fqdn) {
        let name = format!("_ntm._udp.{parent}");
        let ans = lookup(resolver, &name, RecordType::SRV).await?;
        match ans.rcode {
            ResponseCode::NXDomain => continue,
            ResponseCode::NoError if ans.srv.is_empty() => continue,
            ResponseCode::NoError => {}
            rcode => return Err(LocateError::Rcode { name, rcode }),
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

async fn lookup(resolver: &Client, name: &str, rtype: RecordType) -> Result<Answer, LocateError> {
    resolver.lookup(name, rtype).await.map_err(|source| LocateError::Lookup { name: name.to_string(), source })
}

/// The socket addresses of the SRV targets, by priority then weight; glue from the
/// additional section is used when present, else the target's A and AAAA are queried.
async fn srv_addrs(resolver: &Client, ans: &Answer) -> Result<Vec<SocketAddr>, LocateError> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::tests::{authority, big_extra, spawn_servers};
    use crate::dns::TcpOptions;
    use hickory_proto::op::{Message, MessageType};
    use hickory_proto::rr::rdata::{A, SRV};
    use hickory_proto::rr::{Name, RData, Record};
    use std::net::Ipv4Addr;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;
    use tokio::net::UdpSocket;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[tokio::test]
    async fn finds_the_dc_of_a_node() {
        let resolver = spawn_servers(authority(""), TcpOptions::default()).await;
        let (zone, addrs) = locate_dc(&Client::new(vec![resolver]), "rpi.home.ntm.test").await.unwrap();
        assert_eq!(zone, "home.ntm.test");
        assert_eq!(addrs, [sa("198.18.40.2:7500"), sa("[2001:db8:40::2]:7500")]);
        // NXDOMAIN at deeper parents moves up; the case of the name does not matter
        let (zone, _) = locate_dc(&Client::new(vec![resolver]), "a.b.c.HOME.ntm.test.").await.unwrap();
        assert_eq!(zone, "home.ntm.test");
        // a name outside the zone: the authority refuses, which stops the walk
        let err = locate_dc(&Client::new(vec![resolver]), "www.example.test").await.unwrap_err();
        assert!(matches!(err, LocateError::Rcode { rcode: ResponseCode::Refused, .. }), "{err}");
    }

    #[tokio::test]
    async fn falls_back_to_tcp_when_truncated() {
        let resolver = spawn_servers(authority(&big_extra()), TcpOptions::default()).await;
        let (zone, addrs) = locate_dc(&Client::new(vec![resolver]), "rpi.home.ntm.test").await.unwrap();
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
        let err = locate_dc(&Client::new(vec![resolver]), "www.example.test").await.unwrap_err();
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
        let (zone, addrs) = locate_dc(&Client::new(vec![resolver]), "x.sub.zone.test").await.unwrap();
        assert_eq!(zone, "zone.test");
        assert_eq!(addrs, [sa("192.0.2.7:7600")]);
    }

    #[tokio::test]
    async fn ignores_spoofed_answers_and_times_out() {
        // answers with the wrong id only: a query and its retransmission, then a timeout
        let (resolver, count) = responder(|q| {
            let mut r = reply(q, ResponseCode::NoError);
            r.set_id(q.id().wrapping_add(1));
            Some(r)
        })
        .await;
        let started = std::time::Instant::now();
        let err = lookup(&Client::new(vec![resolver]), "a.test", RecordType::SRV).await.unwrap_err();
        assert!(matches!(&err, LocateError::Lookup { source, .. } if source.timed_out()), "{err}");
        assert_eq!(count.load(Ordering::SeqCst), 2);
        assert!(started.elapsed() >= host::dns::DEFAULT_TIMEOUT);
    }

    #[tokio::test]
    async fn server_failure_stops_the_walk() {
        let (resolver, count) = responder(|q| Some(reply(q, ResponseCode::ServFail))).await;
        let err = locate_dc(&Client::new(vec![resolver]), "rpi.home.ntm.test").await.unwrap_err();
        assert!(matches!(err, LocateError::Rcode { rcode: ResponseCode::ServFail, .. }), "{err}");
        assert_eq!(count.load(Ordering::SeqCst), 1);
    }
}
