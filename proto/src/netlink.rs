//! The `ntm` generic netlink family of ntm.ko, from userspace and without I/O: its numbers and
//! typed attributes, generated from the contract `kmod/spec/ntm.yaml` by `scripts/gen-netlink`
//! (into `netlink_gen.rs`, re-exported here), and the framing of attributes (netlink TLVs:
//! length, type, payload, padded to 4 bytes). The node daemon's kernel backend sends and reads
//! them in generic netlink messages.

#[path = "netlink_gen.rs"]
mod gen;

pub use gen::*;

impl DestroyReason {
    /// Every reason, in the order of their numbers.
    pub fn all() -> impl Iterator<Item = DestroyReason> {
        (0..).map_while(DestroyReason::from_u32)
    }
}

/// In JSON (ntmd's control socket) a reason is its name in the spec (`device-down`).
impl serde::Serialize for DestroyReason {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> serde::Deserialize<'de> for DestroyReason {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        DestroyReason::all()
            .find(|r| r.name() == name)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown destroy reason {name:?}")))
    }
}

/// The type flag of a nest that holds attributes (the kernel requires it in requests).
pub const NLA_F_NESTED: u16 = 0x8000;
/// The type bits of an attribute (without NLA_F_NESTED and NLA_F_NET_BYTEORDER).
const NLA_TYPE_MASK: u16 = 0x3fff;
const NLA_HDRLEN: usize = 4;

/// An attribute that does not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AttrError {
    /// Fewer bytes than an attribute header, or a length that does not fit.
    #[error("attribute of {len} bytes where {left} are left")]
    Truncated {
        /// The attribute's length field (or the bytes left, when even the header is cut).
        len: usize,
        /// What the buffer had left.
        left: usize,
    },
    /// A payload of the wrong size for its type.
    #[error("{what}: a payload of {len} bytes is the wrong size for its type")]
    Size {
        /// The attribute, by its name in the spec.
        what: &'static str,
        /// The payload's length.
        len: usize,
    },
}

/// A typed attribute of one attribute set: its type number, its payload and their decoding.
pub trait Attribute: Sized {
    /// The type, with NLA_F_NESTED for nests.
    fn kind(&self) -> u16;
    /// The payload's length, without padding.
    fn value_len(&self) -> usize;
    /// Writes the payload into `b`, exactly `value_len()` bytes.
    fn emit_value(&self, b: &mut [u8]);
    /// Decodes a payload of type `kind` (flags removed).
    fn parse(kind: u16, b: &[u8]) -> Result<Self, AttrError>;
}

fn align(n: usize) -> usize {
    (n + 3) & !3
}

/// The bytes `attrs` take, padding included.
pub fn attrs_len<A: Attribute>(attrs: &[A]) -> usize {
    attrs.iter().map(|a| align(NLA_HDRLEN + a.value_len())).sum()
}

/// Writes `attrs` into `buf`, which holds `attrs_len(attrs)` bytes.
pub fn emit_attrs<A: Attribute>(attrs: &[A], buf: &mut [u8]) {
    let mut at = 0;
    for a in attrs {
        let len = NLA_HDRLEN + a.value_len();
        let header_len = u16::try_from(len).expect("a netlink attribute holds at most 64 KiB");
        buf[at..at + 2].copy_from_slice(&header_len.to_ne_bytes());
        buf[at + 2..at + 4].copy_from_slice(&a.kind().to_ne_bytes());
        a.emit_value(&mut buf[at + NLA_HDRLEN..at + len]);
        buf[at + len..at + align(len)].fill(0);
        at += align(len);
    }
}

/// Reads attributes until `buf` ends (a last attribute may go without its padding).
pub fn parse_attrs<A: Attribute>(buf: &[u8]) -> Result<Vec<A>, AttrError> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < buf.len() {
        let left = buf.len() - at;
        if left < NLA_HDRLEN {
            return Err(AttrError::Truncated { len: left, left });
        }
        let len = u16::from_ne_bytes([buf[at], buf[at + 1]]) as usize;
        let kind = u16::from_ne_bytes([buf[at + 2], buf[at + 3]]) & NLA_TYPE_MASK;
        if len < NLA_HDRLEN || len > left {
            return Err(AttrError::Truncated { len, left });
        }
        out.push(A::parse(kind, &buf[at + NLA_HDRLEN..at + len])?);
        at += align(len).min(left);
    }
    Ok(out)
}

/// A payload of exactly `N` bytes.
fn fixed<const N: usize>(b: &[u8], what: &'static str) -> Result<[u8; N], AttrError> {
    b.try_into().map_err(|_| AttrError::Size { what, len: b.len() })
}

/// An unsigned integer of 4 or 8 bytes, as the sender chose (the kernel's `uint`).
fn uint(b: &[u8], what: &'static str) -> Result<u64, AttrError> {
    match b.len() {
        4 => Ok(u32::from_ne_bytes(b.try_into().expect("4 bytes")) as u64),
        8 => Ok(u64::from_ne_bytes(b.try_into().expect("8 bytes"))),
        len => Err(AttrError::Size { what, len }),
    }
}

/// A NUL-terminated string (what follows the first NUL is ignored; invalid UTF-8 is replaced).
fn string(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

/// Writes `s` and its terminating NUL into `b` (`s.len() + 1` bytes).
fn emit_string(s: &str, b: &mut [u8]) {
    b[..s.len()].copy_from_slice(s.as_bytes());
    b[s.len()] = 0;
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;
    use std::path::Path;
    use std::process::Command;

    use super::*;

    fn emit<A: Attribute>(attrs: &[A]) -> Vec<u8> {
        let mut b = vec![0xaa; attrs_len(attrs)];
        emit_attrs(attrs, &mut b);
        b
    }

    /// A tunnel-new request's attributes, byte for byte as the module reads them: ifindex 3, then
    /// a nest (NLA_F_NESTED) with local-id, vip4, endpoint-port (big-endian) and a label padded
    /// to 4 bytes.
    #[test]
    fn captured_bytes() {
        let attrs = vec![
            NtmAttr::Ifindex(3),
            NtmAttr::Tunnel(vec![
                TunnelAttr::LocalId(0x0102_0304),
                TunnelAttr::Vip4(Ipv4Addr::new(100, 64, 40, 2)),
                TunnelAttr::EndpointPort(7600),
                TunnelAttr::Label("rpi".into()),
            ]),
        ];
        let mut want = Vec::new();
        want.extend([8, 0, 1, 0, 3, 0, 0, 0]); // ifindex
        want.extend([36, 0, 5, 0x80]); // tunnel | NLA_F_NESTED
        want.extend([8, 0, 1, 0, 4, 3, 2, 1]); // local-id, host order
        want.extend([8, 0, 3, 0, 100, 64, 40, 2]); // vip4, network order
        want.extend([6, 0, 7, 0, 0x1d, 0xb0, 0, 0]); // endpoint-port 7600, network order, padded
        want.extend([8, 0, 10, 0, b'r', b'p', b'i', 0]); // label, NUL-terminated
        assert_eq!(emit(&attrs), want);
        assert_eq!(parse_attrs::<NtmAttr>(&want).unwrap(), attrs);
    }

    #[test]
    fn round_trip_every_attribute() {
        let tunnel = vec![
            TunnelAttr::LocalId(1),
            TunnelAttr::RemoteId(2),
            TunnelAttr::Vip4(Ipv4Addr::new(100, 64, 0, 2)),
            TunnelAttr::Vip6("fd4e:544d:40::2".parse().unwrap()),
            TunnelAttr::EndpointIp4(Ipv4Addr::new(198, 18, 60, 2)),
            TunnelAttr::EndpointIp6("2001:db8::1".parse().unwrap()),
            TunnelAttr::EndpointPort(40000),
            TunnelAttr::SendKey([1; KEY_LEN]),
            TunnelAttr::RecvKey([2; KEY_LEN]),
            TunnelAttr::Label("cam.home.ntm.test".into()),
            TunnelAttr::IdleMs(2500),
            TunnelAttr::TxPackets(3),
            TunnelAttr::TxBytes(1 << 40),
            TunnelAttr::RxPackets(4),
            TunnelAttr::RxBytes(5),
            TunnelAttr::RxDropped(6),
            TunnelAttr::Reason(DestroyReason::DeviceDown as u32),
            TunnelAttr::Other { kind: 30, value: vec![9, 9, 9] },
        ];
        let attrs = vec![
            NtmAttr::Ifindex(7),
            NtmAttr::SockFd4(-1),
            NtmAttr::SockFd6(12),
            NtmAttr::IdleTimeoutMs(180_000),
            NtmAttr::Tunnel(tunnel),
            NtmAttr::MissVip4(Ipv4Addr::new(100, 64, 1, 1)),
            NtmAttr::MissVip6("fd4e::1".parse().unwrap()),
            NtmAttr::RxOrphans(u64::MAX),
        ];
        assert_eq!(parse_attrs::<NtmAttr>(&emit(&attrs)).unwrap(), attrs);
    }

    #[test]
    fn malformed_attributes_are_errors() {
        // vip6 of 4 bytes
        let b = [8, 0, tunnel::VIP6 as u8, 0, 1, 2, 3, 4];
        assert!(matches!(parse_attrs::<TunnelAttr>(&b), Err(AttrError::Size { what: "vip6", len: 4 })));
        // a length beyond the buffer, and one shorter than the header
        assert!(matches!(parse_attrs::<TunnelAttr>(&[12, 0, 1, 0, 0, 0, 0, 0]), Err(AttrError::Truncated { .. })));
        assert!(matches!(parse_attrs::<TunnelAttr>(&[2, 0, 1, 0]), Err(AttrError::Truncated { .. })));
        assert!(matches!(parse_attrs::<TunnelAttr>(&[8, 0]), Err(AttrError::Truncated { .. })));
        // a uint of 4 bytes is fine, of 2 is not
        assert_eq!(parse_attrs::<TunnelAttr>(&[8, 0, 12, 0, 5, 0, 0, 0]).unwrap(), [TunnelAttr::TxPackets(5)]);
        assert!(parse_attrs::<TunnelAttr>(&[6, 0, 12, 0, 5, 0, 0, 0]).is_err());
    }

    #[test]
    fn destroy_reasons() {
        for r in [DestroyReason::Idle, DestroyReason::Deleted, DestroyReason::DeviceDown, DestroyReason::Error] {
            assert_eq!(DestroyReason::from_u32(r as u32), Some(r));
        }
        assert_eq!(DestroyReason::DeviceDown.name(), "device-down");
        assert_eq!(DestroyReason::from_u32(4), None);
    }

    /// The generated files (this crate's, the module's, the shim's, the test client's) are what
    /// `scripts/gen-netlink` makes of the spec today: nobody edited one by hand, and nobody
    /// changed the spec without regenerating. Needs python3 with PyYAML (scripts/deps).
    #[test]
    fn generated_files_match_the_spec() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        // The first python3 that has PyYAML: the one on PATH, or the distribution's (where
        // scripts/deps installs python3-yaml) when PATH leads to another.
        let python = ["python3", "/usr/bin/python3"]
            .into_iter()
            .find(|p| Command::new(p).args(["-c", "import yaml"]).output().is_ok_and(|o| o.status.success()))
            .unwrap_or("python3");
        let out = Command::new(python)
            .arg(root.join("scripts/gen-netlink"))
            .arg("--check")
            .output()
            .expect("python3 runs scripts/gen-netlink (install python3 and python3-yaml: scripts/deps)");
        assert!(
            out.status.success(),
            "scripts/gen-netlink --check failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
