//! The access log, in Apache's combined format, one line per request:
//!
//! `client - - [10/Oct/2000:13:55:36 +0000] "GET /path HTTP/1.1" 200 2326 "referer" "user-agent"`
//!
//! Requests hand their entry to a bounded channel and go on; a writer thread formats and writes
//! them, flushing whenever the channel is empty. When the writer falls behind, entries are
//! dropped and counted (`nps_access_log_dropped_total`) rather than slowing requests down.

use std::fmt::Write as _;
use std::fs::OpenOptions;
use std::io::{self, BufWriter, Write};
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderValue, Method, Version};
use tokio::sync::{mpsc, oneshot};

use crate::config::LogTarget;
use crate::metrics::Metrics;

/// Entries waiting for the writer; more are dropped.
const QUEUE: usize = 16 * 1024;

/// One request, as logged.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The client's address (an IPv4-mapped IPv6 address is logged as IPv4).
    pub client: IpAddr,
    /// When the request arrived (logged in UTC).
    pub time: SystemTime,
    /// The request method, as sent.
    pub method: Method,
    /// The request target as the client sent it (origin-form path and query, or absolute-form).
    pub target: String,
    /// The HTTP version the client spoke (`HTTP/1.1`, `HTTP/2.0`...).
    pub version: Version,
    /// The status code sent to the client: the node's, or the NPS's own error page.
    pub status: u16,
    /// Response body bytes sent.
    pub bytes: u64,
    /// The request's `Referer` header, if any (logged as `-` otherwise).
    pub referer: Option<HeaderValue>,
    /// The request's `User-Agent` header, if any (logged as `-` otherwise).
    pub user_agent: Option<HeaderValue>,
}

enum Msg {
    Line(Box<Entry>),
    Flush(oneshot::Sender<()>),
}

/// The sending side; cheap to share.
pub struct AccessLog {
    tx: mpsc::Sender<Msg>,
    metrics: Arc<Metrics>,
}

impl AccessLog {
    /// Opens (appends to, creating) the log and starts its writer thread.
    pub fn open(target: &LogTarget, metrics: Arc<Metrics>) -> io::Result<AccessLog> {
        let out: Box<dyn Write + Send> = match target {
            LogTarget::Stdout => Box::new(io::stdout()),
            LogTarget::File(path) => {
                let file =
                    OpenOptions::new().create(true).append(true).open(path).map_err(|e| {
                        io::Error::new(e.kind(), format!("cannot open access log {}: {e}", path.display()))
                    })?;
                Box::new(file)
            }
        };
        let (tx, rx) = mpsc::channel(QUEUE);
        let name = target.to_string();
        std::thread::Builder::new().name("nps-access-log".into()).spawn(move || writer(rx, out, name))?;
        Ok(AccessLog { tx, metrics })
    }

    /// Queues `entry`; never blocks.
    pub fn log(&self, entry: Entry) {
        if self.tx.try_send(Msg::Line(Box::new(entry))).is_err() {
            self.metrics.access_log_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Waits (at most `limit`) until every entry queued so far is written out.
    pub async fn flush(&self, limit: Duration) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Msg::Flush(done)).await.is_ok() {
            let _ = tokio::time::timeout(limit, wait).await;
        }
    }
}

fn writer(mut rx: mpsc::Receiver<Msg>, out: Box<dyn Write + Send>, name: String) {
    let mut out = BufWriter::with_capacity(64 * 1024, out);
    let mut line = String::with_capacity(512);
    let mut failed = false;
    while let Some(mut msg) = rx.blocking_recv() {
        let mut flushed = Vec::new();
        loop {
            match msg {
                Msg::Line(entry) => {
                    line.clear();
                    format_entry(&entry, &mut line);
                    if let Err(e) = out.write_all(line.as_bytes()) {
                        if !failed {
                            tracing::error!(log = %name, "cannot write the access log: {e}");
                            failed = true;
                        }
                    }
                }
                Msg::Flush(done) => flushed.push(done),
            }
            match rx.try_recv() {
                Ok(next) => msg = next,
                Err(_) => break,
            }
        }
        match out.flush() {
            Ok(()) => failed = false,
            Err(e) if !failed => {
                tracing::error!(log = %name, "cannot write the access log: {e}");
                failed = true;
            }
            Err(_) => {}
        }
        for done in flushed {
            let _ = done.send(());
        }
    }
    let _ = out.flush();
}

/// Appends the combined-format line for `e` (with its newline) to `out`.
pub fn format_entry(e: &Entry, out: &mut String) {
    let client = match e.client {
        IpAddr::V6(v6) => v6.to_canonical(),
        v4 => v4,
    };
    let _ = write!(out, "{client} - - [");
    format_time(e.time, out);
    out.push_str("] \"");
    escape_into(e.method.as_str().as_bytes(), out);
    out.push(' ');
    escape_into(e.target.as_bytes(), out);
    let version = match e.version {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2.0",
        Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/?",
    };
    let _ = write!(out, " {version}\" {} ", e.status);
    if e.bytes == 0 {
        out.push('-');
    } else {
        let _ = write!(out, "{}", e.bytes);
    }
    for h in [&e.referer, &e.user_agent] {
        out.push_str(" \"");
        match h {
            Some(v) => escape_into(v.as_bytes(), out),
            None => out.push('-'),
        }
        out.push('"');
    }
    out.push('\n');
}

/// Apache's escaping: `"` and `\` backslashed, bytes outside printable ASCII as `\xhh`.
fn escape_into(bytes: &[u8], out: &mut String) {
    for &b in bytes {
        match b {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            0x20..=0x7e => out.push(char::from(b)),
            _ => {
                let _ = write!(out, "\\x{b:02x}");
            }
        }
    }
}

/// `10/Oct/2000:13:55:36 +0000` (UTC).
fn format_time(t: SystemTime, out: &mut String) {
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let secs = t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    let _ = write!(
        out,
        "{d:02}/{}/{y:04}:{:02}:{:02}:{:02} +0000",
        MONTHS[(m - 1) as usize],
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    );
}

/// Days since 1970-01-01 to (year, month 1..=12, day 1..=31) (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn combined_format() {
        let e = Entry {
            client: "::ffff:198.18.10.2".parse().unwrap(),
            time: UNIX_EPOCH + Duration::from_secs(971_186_136),
            method: Method::GET,
            target: "/a\"b\\c\u{7f}".into(),
            version: Version::HTTP_11,
            status: 200,
            bytes: 2326,
            referer: None,
            user_agent: Some(HeaderValue::from_static("curl/8.0")),
        };
        let mut s = String::new();
        format_entry(&e, &mut s);
        assert_eq!(s, "198.18.10.2 - - [10/Oct/2000:13:55:36 +0000] \"GET /a\\\"b\\\\c\\x7f HTTP/1.1\" 200 2326 \"-\" \"curl/8.0\"\n");
        let mut s = String::new();
        format_entry(
            &Entry { bytes: 0, version: Version::HTTP_2, client: "2001:db8::1".parse().unwrap(), ..e },
            &mut s,
        );
        assert!(s.starts_with("2001:db8::1 - - ["), "{s}");
        assert!(s.contains(" HTTP/2.0\" 200 - \"-\""), "{s}");
    }

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(civil_from_days(20_000), (2024, 10, 4));
    }
}
