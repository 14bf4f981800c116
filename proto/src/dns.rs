//! DNS helpers without I/O: build a query, read a response, walk a name's parent domains.
//! Shared by the DC (finding other zones' DCs) and the node daemon.

use std::net::IpAddr;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RData, Record};
use hickory_proto::serialize::binary::BinEncodable;

pub use hickory_proto::op::ResponseCode;
pub use hickory_proto::rr::RecordType;

/// UDP payload size advertised in queries (EDNS0), the DNS flag day 2020 value.
pub const EDNS_PAYLOAD: u16 = 1232;

/// How many CNAMEs `Answer::addrs_of` follows.
const MAX_CNAME_CHAIN: usize = 8;

/// Why a query could not be built or a response could not be used.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// The name to query is not a valid DNS name.
    #[error("invalid DNS name {name:?}: {reason}")]
    BadName {
        /// The name as given.
        name: String,
        /// What the DNS name parser objected to.
        reason: String,
    },
    /// The bytes are not a DNS message.
    #[error("malformed DNS message: {0}")]
    Malformed(String),
    /// The message has the QR bit clear.
    #[error("DNS message is a query, not a response")]
    NotResponse,
    /// A response to another query (late, or spoofed).
    #[error("DNS response id {got} does not match query id {expected}")]
    IdMismatch {
        /// The id of the query sent.
        expected: u16,
        /// The id of the response received.
        got: u16,
    },
    /// The query could not be serialized.
    #[error("encoding DNS message: {0}")]
    Encode(String),
}

/// An SRV record of the answer section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Srv {
    /// Lower is preferred (RFC 2782).
    pub priority: u16,
    /// Among targets of one priority, higher gets more of the load.
    pub weight: u16,
    /// The service's port on the target (a DC's signaling port).
    pub port: u16,
    /// Lowercase, without the trailing dot ("" for the root, i.e. "no service").
    pub target: String,
    /// Seconds the record may be cached.
    pub ttl: u32,
}

/// An A or AAAA record from the answer or additional section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Addr {
    /// Owner name, lowercase, without the trailing dot.
    pub name: String,
    /// The address (A gives IPv4, AAAA IPv6).
    pub addr: IpAddr,
    /// Seconds the record may be cached (1 for a VIP from `ntmd`).
    pub ttl: u32,
}

/// What a DNS response says, reduced to what NTM uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The response code (NOERROR, NXDOMAIN, SERVFAIL...).
    pub rcode: ResponseCode,
    /// AA bit: the server is authoritative for the name.
    pub authoritative: bool,
    /// TC bit: the response was cut, retry over TCP.
    pub truncated: bool,
    /// The question echoed by the server (lowercase name without trailing dot, type).
    pub question: Option<(String, RecordType)>,
    /// SRV records of the answer section, in the server's order.
    pub srv: Vec<Srv>,
    /// A and AAAA records of the answer and additional (glue) sections, in that order.
    pub addrs: Vec<Addr>,
    /// CNAME records of the answer section: (owner, target).
    pub cnames: Vec<(String, String)>,
    /// Number of records in the answer section, of any type.
    pub answer_count: usize,
}

impl Answer {
    /// The name does not exist (NXDOMAIN).
    pub fn is_nxdomain(&self) -> bool {
        self.rcode == ResponseCode::NXDomain
    }

    /// NOERROR with an empty answer section.
    pub fn is_nodata(&self) -> bool {
        self.rcode == ResponseCode::NoError && self.answer_count == 0
    }

    /// The addresses recorded for `name` (following CNAMEs found in the answer), in order.
    pub fn addrs_of(&self, name: &str) -> Vec<IpAddr> {
        let mut name = normalize(name);
        for _ in 0..=MAX_CNAME_CHAIN {
            let found: Vec<IpAddr> = self.addrs.iter().filter(|a| a.name == name).map(|a| a.addr).collect();
            if !found.is_empty() {
                return found;
            }
            match self.cnames.iter().find(|(owner, _)| *owner == name) {
                Some((_, target)) => name = target.clone(),
                None => break,
            }
        }
        Vec::new()
    }
}

/// Encodes a recursive (RD) query for `name` and `rtype`, class IN, with an EDNS0 OPT record.
pub fn query(id: u16, name: &str, rtype: RecordType) -> Result<Vec<u8>, DnsError> {
    let mut qname =
        Name::from_ascii(name).map_err(|e| DnsError::BadName { name: name.to_string(), reason: e.to_string() })?;
    qname.set_fqdn(true);
    let mut edns = Edns::new();
    edns.set_max_payload(EDNS_PAYLOAD).set_version(0);
    let mut msg = Message::new();
    msg.set_id(id)
        .set_message_type(MessageType::Query)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(true)
        .add_query(Query::query(qname, rtype))
        .set_edns(edns);
    msg.to_bytes().map_err(|e| DnsError::Encode(e.to_string()))
}

/// Decodes a response to the query with id `id`.
pub fn parse_response(bytes: &[u8], id: u16) -> Result<Answer, DnsError> {
    let msg = Message::from_vec(bytes).map_err(|e| DnsError::Malformed(e.to_string()))?;
    if msg.message_type() != MessageType::Response {
        return Err(DnsError::NotResponse);
    }
    if msg.id() != id {
        return Err(DnsError::IdMismatch { expected: id, got: msg.id() });
    }
    let mut answer = Answer {
        rcode: msg.response_code(),
        authoritative: msg.authoritative(),
        truncated: msg.truncated(),
        question: msg.query().map(|q| (name_string(q.name()), q.query_type())),
        srv: Vec::new(),
        addrs: Vec::new(),
        cnames: Vec::new(),
        answer_count: msg.answers().len(),
    };
    for rec in msg.answers() {
        match rec.data() {
            Some(RData::SRV(srv)) => answer.srv.push(Srv {
                priority: srv.priority(),
                weight: srv.weight(),
                port: srv.port(),
                target: name_string(srv.target()),
                ttl: rec.ttl(),
            }),
            Some(RData::CNAME(cname)) => answer.cnames.push((name_string(rec.name()), name_string(&cname.0))),
            _ => push_addr(&mut answer.addrs, rec),
        }
    }
    for rec in msg.additionals() {
        push_addr(&mut answer.addrs, rec);
    }
    Ok(answer)
}

fn push_addr(addrs: &mut Vec<Addr>, rec: &Record) {
    let addr = match rec.data() {
        Some(RData::A(a)) => IpAddr::V4(a.0),
        Some(RData::AAAA(a)) => IpAddr::V6(a.0),
        _ => return,
    };
    addrs.push(Addr { name: name_string(rec.name()), addr, ttl: rec.ttl() });
}

fn name_string(name: &Name) -> String {
    normalize(&name.to_ascii())
}

/// Lowercase, without the trailing dot.
fn normalize(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

/// The parent domains of `fqdn`, nearest first, without the root:
/// "rpi.home.ntm.test" gives "home.ntm.test", "ntm.test", "test". A trailing dot is ignored.
pub fn parents(fqdn: &str) -> impl Iterator<Item = &str> {
    let fqdn = fqdn.strip_suffix('.').unwrap_or(fqdn);
    std::iter::successors(parent(fqdn), |s| parent(s))
}

fn parent(name: &str) -> Option<&str> {
    name.split_once('.').map(|(_, rest)| rest).filter(|r| !r.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::rr::rdata::{A, AAAA, CNAME, SRV};
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn name(s: &str) -> Name {
        Name::from_ascii(s).unwrap()
    }

    fn response_to(query: &[u8]) -> Message {
        let q = Message::from_vec(query).unwrap();
        let mut r = Message::new();
        r.set_id(q.id())
            .set_message_type(MessageType::Response)
            .set_op_code(OpCode::Query)
            .set_authoritative(true)
            .add_queries(q.queries().to_vec());
        r
    }

    #[test]
    fn parents_walks_up_to_the_tld() {
        assert_eq!(parents("rpi.home.ntm.test").collect::<Vec<_>>(), ["home.ntm.test", "ntm.test", "test"]);
        assert_eq!(parents("rpi.home.ntm.test.").collect::<Vec<_>>(), ["home.ntm.test", "ntm.test", "test"]);
        assert_eq!(parents("test").count(), 0);
        assert_eq!(parents("").count(), 0);
        assert_eq!(parents(".").count(), 0);
        assert_eq!(parents("a.").count(), 0);
    }

    #[test]
    fn query_encodes_rd_question_and_edns() {
        let bytes = query(0x1234, "_ntm._udp.Home.ntm.test", RecordType::SRV).unwrap();
        let msg = Message::from_vec(&bytes).unwrap();
        assert_eq!(msg.id(), 0x1234);
        assert_eq!(msg.message_type(), MessageType::Query);
        assert!(msg.recursion_desired());
        assert_eq!(msg.queries().len(), 1);
        let q = &msg.queries()[0];
        assert_eq!(q.name(), &name("_ntm._udp.home.ntm.test."));
        assert_eq!(q.query_type(), RecordType::SRV);
        assert_eq!(msg.extensions().as_ref().map(|e| e.max_payload()), Some(EDNS_PAYLOAD));
    }

    #[test]
    fn query_rejects_bad_names() {
        assert!(matches!(query(1, "a..b", RecordType::A), Err(DnsError::BadName { .. })));
        assert!(matches!(query(1, &"x".repeat(64), RecordType::A), Err(DnsError::BadName { .. })));
        assert!(matches!(query(1, "sp ace.test", RecordType::A), Err(DnsError::BadName { .. })));
    }

    #[test]
    fn parses_srv_with_additional_addresses() {
        let q = query(7, "_ntm._udp.home.ntm.test", RecordType::SRV).unwrap();
        let mut r = response_to(&q);
        r.add_answer(Record::from_rdata(
            name("_ntm._udp.home.ntm.test."),
            60,
            RData::SRV(SRV::new(0, 5, 7500, name("DC.home.ntm.test."))),
        ));
        r.add_additional(Record::from_rdata(name("dc.home.ntm.test."), 60, RData::A(A(Ipv4Addr::new(198, 18, 40, 2)))));
        r.add_additional(Record::from_rdata(
            name("dc.home.ntm.test."),
            60,
            RData::AAAA(AAAA("2001:db8:40::2".parse::<Ipv6Addr>().unwrap())),
        ));
        let a = parse_response(&r.to_vec().unwrap(), 7).unwrap();
        assert_eq!(a.rcode, ResponseCode::NoError);
        assert!(a.authoritative && !a.truncated && !a.is_nodata());
        assert_eq!(a.question, Some(("_ntm._udp.home.ntm.test".to_string(), RecordType::SRV)));
        assert_eq!(a.srv, [Srv { priority: 0, weight: 5, port: 7500, target: "dc.home.ntm.test".into(), ttl: 60 }]);
        assert_eq!(
            a.addrs_of("dc.home.ntm.test."),
            [IpAddr::from([198, 18, 40, 2]), "2001:db8:40::2".parse::<IpAddr>().unwrap()]
        );
        assert!(a.addrs_of("other.test").is_empty());
    }

    #[test]
    fn follows_cnames_and_reports_rcodes() {
        let q = query(9, "www.example.test", RecordType::A).unwrap();
        let mut r = response_to(&q);
        r.add_answer(Record::from_rdata(name("www.example.test."), 30, RData::CNAME(CNAME(name("web.example.test.")))));
        r.add_answer(Record::from_rdata(name("web.example.test."), 30, RData::A(A(Ipv4Addr::new(192, 0, 2, 1)))));
        let a = parse_response(&r.to_vec().unwrap(), 9).unwrap();
        assert_eq!(a.addrs_of("WWW.example.test"), [IpAddr::from([192, 0, 2, 1])]);

        let mut nx = response_to(&q);
        nx.set_response_code(ResponseCode::NXDomain);
        let a = parse_response(&nx.to_vec().unwrap(), 9).unwrap();
        assert!(a.is_nxdomain() && !a.is_nodata());

        let a = parse_response(&response_to(&q).to_vec().unwrap(), 9).unwrap();
        assert!(a.is_nodata());
    }

    #[test]
    fn rejects_wrong_id_queries_and_garbage() {
        let q = query(3, "a.test", RecordType::A).unwrap();
        let r = response_to(&q).to_vec().unwrap();
        assert!(matches!(parse_response(&r, 4), Err(DnsError::IdMismatch { expected: 4, got: 3 })));
        assert!(matches!(parse_response(&q, 3), Err(DnsError::NotResponse)));
        assert!(matches!(parse_response(&[1, 2, 3], 3), Err(DnsError::Malformed(_))));
        assert!(matches!(parse_response(&r[..r.len() - 3], 3), Err(DnsError::Malformed(_))));
        assert!(matches!(parse_response(&[], 3), Err(DnsError::Malformed(_))));
    }
}
