//! `ntmctl`: show the state of the local `ntmd`, stream its events, and make keys.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::{Parser, Subcommand};
use ntmd::config::DEFAULT_CONTROL_SOCKET;
use ntmd::control::{Client, ClientError, MonitorItem, Request};
use ntmd::status::{path_str, state_str, Status};
use proto::keys::SecretKey;

#[derive(Parser)]
#[command(name = "ntmctl", version, about = "Inspect the NTM node daemon and make keys")]
struct Cli {
    /// ntmd's control socket [default: $NTMCTL_SOCKET, else /run/ntm/ntmd.sock]
    #[arg(long, global = true, value_name = "PATH")]
    socket: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Source {
    Auto,
    Kernel,
    Daemon,
}

#[derive(Subcommand)]
enum Cmd {
    /// The node, its peers (built / building / none) and its tunnels.
    Show {
        /// Print the daemon's JSON instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// Stream events, one per line, until interrupted: the kernel module's own notifications
    /// (its generic netlink `events` group) when ntm.ko is loaded, else the daemon's.
    Monitor {
        /// Print one JSON object per line.
        #[arg(long)]
        json: bool,
        /// Where events come from: `kernel` (the module's multicast group), `daemon` (ntmd's
        /// control socket: also peer states and registrations), or `auto`.
        #[arg(long, value_enum, default_value_t = Source::Auto)]
        source: Source,
    },
    /// Print a new base64 X25519 private key.
    Genkey,
    /// Read a base64 private key on stdin, print its public key.
    Pubkey,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let socket = cli
        .socket
        .or_else(|| std::env::var_os("NTMCTL_SOCKET").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONTROL_SOCKET));
    let result = match cli.cmd {
        Cmd::Genkey => {
            println!("{}", SecretKey::generate().to_base64());
            Ok(())
        }
        Cmd::Pubkey => pubkey(),
        Cmd::Show { json } => block_on(show(socket, json)),
        Cmd::Monitor { json, source } => match source {
            Source::Daemon => block_on(monitor(socket, json)),
            Source::Kernel => block_on(monitor_kernel(json)),
            Source::Auto if ntmd::dataplane::kernel::available() => block_on(monitor_kernel(json)),
            Source::Auto => block_on(monitor(socket, json)),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ntmctl: {e}");
            ExitCode::FAILURE
        }
    }
}

fn block_on(f: impl std::future::Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(f)
}

fn pubkey() -> anyhow::Result<()> {
    let mut input = String::new();
    std::io::stdin().read_to_string(&mut input)?;
    let key = SecretKey::from_base64(input.trim()).map_err(|e| anyhow::anyhow!("private key on stdin: {e}"))?;
    println!("{}", key.public().to_base64());
    Ok(())
}

async fn show(socket: PathBuf, json: bool) -> anyhow::Result<()> {
    let (status, line) = Client::show(&socket).await?;
    let out = if json { format!("{line}\n") } else { render_status(&status) };
    write_stdout(&out)
}

async fn monitor(socket: PathBuf, json: bool) -> anyhow::Result<()> {
    let mut client = Client::connect(&socket, Request::Monitor).await?;
    while let Some((item, line)) = client.next_monitor().await? {
        let out = if json {
            format!("{line}\n")
        } else {
            let ts = timestamp(SystemTime::now());
            match item {
                MonitorItem::Event(e) => format!("{ts} {e}\n"),
                MonitorItem::Lost(n) => format!("{ts} ({n} events lost: ntmctl fell behind)\n"),
            }
        };
        write_stdout(&out)?;
    }
    Err(ClientError::Daemon("ntmd closed the connection".into()).into())
}

/// Prints the module's notifications, like `ip monitor`.
async fn monitor_kernel(json: bool) -> anyhow::Result<()> {
    use ntmd::dataplane::genl::{NtmAttr, TunnelAttr};
    use ntmd::dataplane::nlsock::{EventSocket, GenlSocket, NlError};
    use ntmd::status::{DestroyReason, Event};
    use proto::netlink::cmd;

    let nl = GenlSocket::open()?;
    let group = nl.events_group().ok_or_else(|| anyhow::anyhow!("the ntm family has no events group"))?;
    let ev = EventSocket::open(group)?;
    loop {
        let batch = match ev.recv().await {
            Ok(b) => b,
            Err(NlError::Overrun) => {
                write_stdout(&format!("{} (events lost: socket overrun)\n", timestamp(SystemTime::now())))?;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        for m in batch {
            let t = m.tunnel().unwrap_or_default();
            let label = t.iter().find_map(|a| if let TunnelAttr::Label(l) = a { Some(l.clone()) } else { None });
            let local_id = t.iter().find_map(|a| if let TunnelAttr::LocalId(v) = a { Some(*v) } else { None });
            let vip = t.iter().find_map(|a| match a {
                TunnelAttr::Vip4(v) => Some(v.to_string()),
                TunnelAttr::Vip6(v) => Some(v.to_string()),
                _ => None,
            });
            let event = match m.cmd {
                cmd::TUNNEL_DESTROYED_NTF => {
                    let r = t.iter().find_map(|a| {
                        if let TunnelAttr::Reason(v) = a {
                            DestroyReason::from_u32(*v)
                        } else {
                            None
                        }
                    });
                    Event::TunnelDestroyed {
                        fqdn: label.unwrap_or_default(),
                        vip,
                        reason: r.unwrap_or(DestroyReason::Error),
                        local_id: local_id.unwrap_or(0),
                    }
                }
                cmd::TUNNEL_MISS_NTF => {
                    let vip = m.attrs.iter().find_map(|a| match a {
                        NtmAttr::MissVip4(v) => Some(v.to_string()),
                        NtmAttr::MissVip6(v) => Some(v.to_string()),
                        _ => None,
                    });
                    Event::TunnelMiss { vip: vip.unwrap_or_default() }
                }
                cmd::ENDPOINT_CHANGED_NTF => {
                    let ip = t.iter().find_map(|a| match a {
                        TunnelAttr::EndpointIp4(v) => Some(std::net::IpAddr::V4(*v)),
                        TunnelAttr::EndpointIp6(v) => Some(std::net::IpAddr::V6(*v)),
                        _ => None,
                    });
                    let port = t.iter().find_map(|a| if let TunnelAttr::EndpointPort(p) = a { Some(*p) } else { None });
                    let endpoint = ip.map(|ip| std::net::SocketAddr::new(ip, port.unwrap_or(0)).to_string());
                    Event::EndpointChanged { fqdn: label.unwrap_or_default(), endpoint: endpoint.unwrap_or_default() }
                }
                _ => continue,
            };
            let out = if json {
                format!("{}\n", serde_json::to_string(&event)?)
            } else {
                format!("{} {event}\n", timestamp(SystemTime::now()))
            };
            write_stdout(&out)?;
        }
    }
}

/// Writes and flushes; a closed stdout (e.g. `| head`) ends the program quietly.
fn write_stdout(s: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(s.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        r => Ok(r?),
    }
}

fn dash(o: &Option<String>) -> String {
    o.clone().unwrap_or_else(|| "-".into())
}

/// The `show` text: a header line, then the peers and tunnels tables.
fn render_status(s: &Status) -> String {
    let mut out = format!(
        "node {}  {}  vip4 {}  vip6 {}  dataplane {}",
        s.fqdn,
        if s.registered { "registered" } else { "NOT REGISTERED" },
        dash(&s.vip4),
        dash(&s.vip6),
        s.dataplane
    );
    if let Some(dc) = &s.dc {
        out += &format!("  dc {dc}");
    }
    if let Some(nat) = &s.nat_outer {
        out += &format!("  nat {nat}{}", if s.nat_one_to_one { " (1:1)" } else { "" });
    }
    out.push('\n');
    if !s.addresses.is_empty() {
        out += &format!("addresses {}\n", s.addresses.join(" "));
    }
    let d = &s.signaling_drops;
    if d.total() > 0 || s.data_drops > 0 {
        out += &format!(
            "dropped: malformed {}  unauthorized {}  replayed {}  unexpected {}  data without tunnel {}\n",
            d.malformed, d.unauthorized, d.replayed, d.unexpected, s.data_drops
        );
    }

    out += &format!("\npeers: {}\n", s.peers.len());
    if !s.peers.is_empty() {
        let rows = s.peers.iter().map(|p| {
            vec![
                p.fqdn.clone(),
                dash(&p.vip),
                state_str(p.state).to_owned(),
                p.path.map_or("-", path_str).to_string(),
                dash(&p.endpoint),
                p.idle_s.map(|s| format!("{s}s")).unwrap_or_else(|| "-".into()),
            ]
        });
        out += &table(&["FQDN", "VIP", "STATE", "PATH", "ENDPOINT", "IDLE"], rows);
    }

    out += &format!("\ntunnels: {}\n", s.tunnels.len());
    if !s.tunnels.is_empty() {
        let rows = s.tunnels.iter().map(|t| {
            vec![
                t.fqdn.clone(),
                dash(&t.vip),
                t.endpoint.clone(),
                format!("{:#010x}", t.local_id),
                format!("{:#010x}", t.remote_id),
                format!("{} ({} pkts)", bytes(t.tx_bytes), t.tx_packets),
                format!("{} ({} pkts)", bytes(t.rx_bytes), t.rx_packets),
                t.rx_dropped.to_string(),
                format!("{}s", t.idle_s),
            ]
        });
        let headers = ["FQDN", "VIP", "ENDPOINT", "LOCAL ID", "REMOTE ID", "TX", "RX", "DROPPED", "IDLE"];
        out += &table(&headers, rows);
    }
    out
}

/// Left-aligned columns two spaces apart.
fn table(headers: &[&str], rows: impl Iterator<Item = Vec<String>>) -> String {
    let rows: Vec<Vec<String>> = std::iter::once(headers.iter().map(|h| h.to_string()).collect()).chain(rows).collect();
    let widths: Vec<usize> =
        (0..headers.len()).map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        out += line.join("  ").trim_end();
        out.push('\n');
    }
    out
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// UTC, RFC 3339 with milliseconds.
fn timestamp(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86400, secs % 86400);
    // Howard Hinnant's civil_from_days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use ntmd::status::{PeerState, PeerStatus, TunnelStatus};
    use std::time::Duration;

    #[test]
    fn timestamps_are_utc_rfc3339() {
        assert_eq!(timestamp(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_709_251_199_123); // leap year, last second of Feb 29
        assert_eq!(timestamp(t), "2024-02-29T23:59:59.123Z");
        let t = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(timestamp(t), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn byte_counts_are_human() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(5 * 1024 * 1024 * 1024), "5.0 GiB");
    }

    #[test]
    fn show_renders_header_and_tables() {
        let s = Status {
            fqdn: "nps.proxy.ntm.test".into(),
            registered: true,
            vip4: Some("100.64.0.1".into()),
            vip6: None,
            dc: Some("198.18.30.2:7500".into()),
            nat_outer: None,
            nat_one_to_one: false,
            addresses: vec!["198.18.30.10:7600".into()],
            dataplane: "userspace".into(),
            signaling_drops: Default::default(),
            data_drops: 0,
            peers: vec![
                PeerStatus {
                    fqdn: "rpi.home.ntm.test".into(),
                    vip: Some("100.64.1.2".into()),
                    vip4: Some("100.64.1.2".into()),
                    vip6: None,
                    state: PeerState::Built,
                    path: Some(ntmd::status::PathKind::Direct),
                    endpoint: Some("198.18.60.2:7600".into()),
                    idle_s: Some(3),
                },
                PeerStatus {
                    fqdn: "tv.home.ntm.test".into(),
                    vip: None,
                    vip4: None,
                    vip6: None,
                    state: PeerState::None,
                    path: None,
                    endpoint: None,
                    idle_s: None,
                },
            ],
            tunnels: vec![TunnelStatus {
                fqdn: "rpi.home.ntm.test".into(),
                vip: Some("100.64.1.2".into()),
                endpoint: "198.18.60.2:7600".into(),
                local_id: 0xa,
                remote_id: 0xb,
                tx_packets: 10,
                tx_bytes: 2048,
                rx_packets: 9,
                rx_bytes: 900,
                rx_dropped: 1,
                idle_s: 3,
            }],
        };
        let out = render_status(&s);
        let want = "\
node nps.proxy.ntm.test  registered  vip4 100.64.0.1  vip6 -  dataplane userspace  dc 198.18.30.2:7500
addresses 198.18.30.10:7600

peers: 2
FQDN               VIP         STATE  PATH    ENDPOINT          IDLE
rpi.home.ntm.test  100.64.1.2  built  direct  198.18.60.2:7600  3s
tv.home.ntm.test   -           none   -       -                 -

tunnels: 1
FQDN               VIP         ENDPOINT          LOCAL ID    REMOTE ID   TX                 RX              DROPPED  IDLE
rpi.home.ntm.test  100.64.1.2  198.18.60.2:7600  0x0000000a  0x0000000b  2.0 KiB (10 pkts)  900 B (9 pkts)  1        3s
";
        assert_eq!(out, want, "\n{out}");
    }
}
