//! The control socket: a Unix stream socket where `ntmctl` sends one JSON request line,
//! `{"cmd":"show"}` (answered with one [`Status`] line) or `{"cmd":"monitor"}` (answered with one
//! [`Event`] per line until the client leaves). Errors come back as `{"error":"..."}`.

use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::status::{Event, Status};

/// How the server reaches the daemon.
#[derive(Clone)]
pub struct ControlHandle {
    /// Each `show` sends a oneshot here; the daemon answers with its status.
    pub show: mpsc::Sender<oneshot::Sender<Status>>,
    /// `monitor` clients subscribe here.
    pub events: broadcast::Sender<Event>,
}

/// A request line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "lowercase")]
pub enum Request {
    /// `{"cmd":"show"}`: one [`Status`] line, then the server closes the connection.
    Show,
    /// `{"cmd":"monitor"}`: one [`Event`] per line (or a [`Lost`] line) for as long as the
    /// client stays connected.
    Monitor,
}

/// A line of the monitor stream that is not an event: the client fell behind and `lost` events
/// were skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lost {
    /// How many events this client missed.
    pub lost: u64,
}

/// An error line from the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorLine {
    /// What went wrong, in words: a bad request, or a daemon that did not answer in time.
    pub error: String,
}

/// One line of the monitor stream.
#[derive(Debug, Clone, PartialEq)]
pub enum MonitorItem {
    /// An event from the daemon.
    Event(Event),
    /// The client fell behind and this many events were skipped.
    Lost(u64),
}

/// Longest request line accepted.
const MAX_REQUEST: u64 = 4096;
/// How long a client may take to send its request, and the daemon to produce a status.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the server could not bind or serve its socket.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// A filesystem or socket call on the control socket failed.
    #[error("control socket {path}: {source}")]
    Io {
        /// The control socket's path.
        path: PathBuf,
        /// What the call returned.
        source: io::Error,
    },
    /// A live daemon already answers on this path (it accepted a connection).
    #[error("control socket {0}: another ntmd is listening there")]
    InUse(PathBuf),
}

/// A bound control socket.
pub struct ControlServer {
    listener: UnixListener,
    path: PathBuf,
}

impl ControlServer {
    /// Binds `path` with mode 0600, creating its directory and replacing a stale socket.
    pub async fn bind(path: impl AsRef<Path>) -> Result<ControlServer, ControlError> {
        let path = path.as_ref().to_owned();
        let io_err = |source| ControlError::Io { path: path.clone(), source };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io_err)?;
        }
        match std::fs::symlink_metadata(&path) {
            Ok(meta) if meta.file_type().is_socket() => {
                if UnixStream::connect(&path).await.is_ok() {
                    return Err(ControlError::InUse(path));
                }
                tracing::info!(path = %path.display(), "removing stale control socket");
                std::fs::remove_file(&path).map_err(io_err)?;
            }
            Ok(_) => return Err(io_err(io::Error::new(io::ErrorKind::AlreadyExists, "exists and is not a socket"))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(e)),
        }
        let listener = UnixListener::bind(&path).map_err(io_err)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(io_err)?;
        tracing::info!(path = %path.display(), "control socket listening");
        Ok(ControlServer { listener, path })
    }

    /// The path the socket is bound at.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Serves clients until the listener fails.
    pub async fn run(self, handle: ControlHandle) -> Result<(), ControlError> {
        loop {
            let (stream, _) =
                self.listener.accept().await.map_err(|source| ControlError::Io { path: self.path.clone(), source })?;
            let handle = handle.clone();
            tokio::spawn(async move {
                if let Err(e) = serve_client(stream, handle).await {
                    tracing::debug!("control client: {e}");
                }
            });
        }
    }
}

/// Binds the control socket at `path` and serves it.
pub async fn serve(path: impl AsRef<Path>, handle: ControlHandle) -> Result<(), ControlError> {
    ControlServer::bind(path).await?.run(handle).await
}

async fn serve_client(stream: UnixStream, handle: ControlHandle) -> io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    let mut line = String::new();
    let got = tokio::time::timeout(REQUEST_TIMEOUT, (&mut read).take(MAX_REQUEST).read_line(&mut line)).await;
    let request = match got {
        Ok(Ok(_)) => serde_json::from_str::<Request>(line.trim()).map_err(|e| format!("bad request: {e}")),
        Ok(Err(e)) => return Err(e),
        Err(_) => Err("no request received".to_owned()),
    };
    match request {
        Ok(Request::Show) => show(&mut write, &handle).await,
        Ok(Request::Monitor) => monitor(read.into_inner(), write, &handle).await,
        Err(error) => write_line(&mut write, &ErrorLine { error }).await,
    }
}

async fn show(write: &mut OwnedWriteHalf, handle: &ControlHandle) -> io::Result<()> {
    let (tx, rx) = oneshot::channel();
    let status = async {
        handle.show.send(tx).await.ok()?;
        rx.await.ok()
    };
    match tokio::time::timeout(REQUEST_TIMEOUT, status).await {
        Ok(Some(status)) => write_line(write, &status).await,
        _ => write_line(write, &ErrorLine { error: "the daemon did not answer".into() }).await,
    }
}

async fn monitor(mut read: OwnedReadHalf, mut write: OwnedWriteHalf, handle: &ControlHandle) -> io::Result<()> {
    let mut events = handle.events.subscribe();
    let mut scratch = [0u8; 256];
    loop {
        tokio::select! {
            ev = events.recv() => match ev {
                Ok(ev) => write_line(&mut write, &ev).await?,
                Err(broadcast::error::RecvError::Lagged(n)) => write_line(&mut write, &Lost { lost: n }).await?,
                Err(broadcast::error::RecvError::Closed) => return Ok(()),
            },
            // The client sends nothing more: EOF (or an error) means it left.
            n = read.read(&mut scratch) => if matches!(n, Ok(0) | Err(_)) { return Ok(()) },
        }
    }
}

async fn write_line(write: &mut OwnedWriteHalf, value: &impl Serialize) -> io::Result<()> {
    let mut line = serde_json::to_vec(value).map_err(io::Error::other)?;
    line.push(b'\n');
    write.write_all(&line).await
}

/// Why `ntmctl` got no usable answer from the daemon.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket could not be connected to (no daemon, wrong path, no permission: it is
    /// mode 0600).
    #[error("cannot reach ntmd at {path}: {source}")]
    Connect {
        /// The control socket's path.
        path: PathBuf,
        /// What `connect` returned.
        source: io::Error,
    },
    /// Writing the request or reading an answer failed.
    #[error("control socket: {0}")]
    Io(#[from] io::Error),
    /// The daemon answered with an error line; this is its text.
    #[error("ntmd: {0}")]
    Daemon(String),
    /// The daemon closed the connection before answering `show`.
    #[error("ntmd closed the connection without an answer")]
    NoAnswer,
    /// An answer line that does not parse (a daemon of another version?): the JSON error and
    /// the line.
    #[error("unexpected answer from ntmd ({0}): {1}")]
    Decode(serde_json::Error, String),
}

/// A client connection: one request sent, answer lines to read.
pub struct Client {
    lines: tokio::io::Lines<BufReader<OwnedReadHalf>>,
    _write: OwnedWriteHalf,
}

impl Client {
    /// Connects to the daemon at `path` and sends `request`.
    pub async fn connect(path: &Path, request: Request) -> Result<Client, ClientError> {
        let stream =
            UnixStream::connect(path).await.map_err(|source| ClientError::Connect { path: path.to_owned(), source })?;
        let (read, mut write) = stream.into_split();
        write_line(&mut write, &request).await?;
        Ok(Client { lines: BufReader::new(read).lines(), _write: write })
    }

    /// The next raw answer line (`None` when the daemon closed); error lines become errors.
    pub async fn next_line(&mut self) -> Result<Option<String>, ClientError> {
        let Some(line) = self.lines.next_line().await? else { return Ok(None) };
        if let Ok(ErrorLine { error }) = serde_json::from_str(&line) {
            return Err(ClientError::Daemon(error));
        }
        Ok(Some(line))
    }

    /// Asks for the daemon's status; returns it with its raw JSON line.
    pub async fn show(path: &Path) -> Result<(Status, String), ClientError> {
        let mut c = Client::connect(path, Request::Show).await?;
        let line = c.next_line().await?.ok_or(ClientError::NoAnswer)?;
        let status = serde_json::from_str(&line).map_err(|e| ClientError::Decode(e, line.clone()))?;
        Ok((status, line))
    }

    /// The next monitor line, parsed, with its raw JSON.
    pub async fn next_monitor(&mut self) -> Result<Option<(MonitorItem, String)>, ClientError> {
        let Some(line) = self.next_line().await? else { return Ok(None) };
        let item = match serde_json::from_str::<Lost>(&line) {
            Ok(Lost { lost }) => MonitorItem::Lost(lost),
            Err(_) => {
                MonitorItem::Event(serde_json::from_str(&line).map_err(|e| ClientError::Decode(e, line.clone()))?)
            }
        };
        Ok(Some((item, line)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{DestroyReason, PathKind, PeerState, PeerStatus, TunnelStatus};

    /// Reads until the server closes the connection.
    async fn drain(r: &mut UnixStream) -> Vec<u8> {
        let mut v = Vec::new();
        let _ = r.read_to_end(&mut v).await;
        v
    }

    fn status() -> Status {
        Status {
            fqdn: "nps.proxy.ntm.test".into(),
            registered: true,
            vip4: Some("100.64.0.1".into()),
            vip6: Some("fd4e:544d::1".into()),
            dc: Some("198.18.30.2:7500".into()),
            nat_outer: None,
            nat_one_to_one: false,
            addresses: vec!["198.18.30.10:7600".into()],
            dataplane: "userspace".into(),
            signaling_drops: Default::default(),
            data_drops: 0,
            peers: vec![PeerStatus {
                fqdn: "rpi.home.ntm.test".into(),
                vip: Some("100.64.1.2".into()),
                vip4: Some("100.64.1.2".into()),
                vip6: None,
                state: PeerState::Built,
                path: Some(PathKind::Direct),
                endpoint: Some("198.18.60.2:7600".into()),
                idle_s: Some(3),
            }],
            tunnels: vec![TunnelStatus {
                fqdn: "rpi.home.ntm.test".into(),
                vip: Some("100.64.1.2".into()),
                endpoint: "198.18.60.2:7600".into(),
                local_id: 1,
                remote_id: 2,
                tx_packets: 10,
                tx_bytes: 1000,
                rx_packets: 9,
                rx_bytes: 900,
                rx_dropped: 0,
                idle_s: 3,
            }],
        }
    }

    /// Starts a server on a temp socket with a fake daemon answering `show`.
    async fn start() -> (tempfile::TempDir, PathBuf, broadcast::Sender<Event>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/ntmd.sock");
        let (show_tx, mut show_rx) = mpsc::channel::<oneshot::Sender<Status>>(4);
        let (events, _) = broadcast::channel(4);
        tokio::spawn(async move {
            while let Some(reply) = show_rx.recv().await {
                let _ = reply.send(status());
            }
        });
        let server = ControlServer::bind(&path).await.unwrap();
        tokio::spawn(server.run(ControlHandle { show: show_tx, events: events.clone() }));
        (dir, path, events)
    }

    #[tokio::test]
    async fn show_round_trip() {
        let (_dir, path, _events) = start().await;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let (got, line) = Client::show(&path).await.unwrap();
        assert_eq!(serde_json::to_string(&got).unwrap(), serde_json::to_string(&status()).unwrap());
        assert!(line.contains("\"state\":\"built\""), "{line}");

        // One line, then the server closes.
        let mut c = Client::connect(&path, Request::Show).await.unwrap();
        assert!(c.next_line().await.unwrap().is_some());
        assert!(c.next_line().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn monitor_round_trip_and_lag() {
        let (_dir, path, events) = start().await;
        let mut c = Client::connect(&path, Request::Monitor).await.unwrap();
        // Wait until the server subscribed.
        while events.receiver_count() == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let ev = Event::TunnelDestroyed {
            fqdn: "rpi.home.ntm.test".into(),
            vip: Some("100.64.1.2".into()),
            reason: DestroyReason::Idle,
            local_id: 7,
        };
        events.send(ev.clone()).unwrap();
        let (item, line) = c.next_monitor().await.unwrap().unwrap();
        assert_eq!(item, MonitorItem::Event(ev));
        assert!(line.contains("\"event\":\"tunnel-destroyed\""), "{line}");

        // Overflow the channel (capacity 4) before the server can forward: a lost line, then
        // the newest events.
        let sent: Vec<Event> = (0..10).map(|i| Event::TunnelMiss { vip: format!("100.64.0.{i}") }).collect();
        for ev in &sent {
            events.send(ev.clone()).unwrap();
        }
        let mut got = Vec::new();
        while got.len() < 5 {
            match c.next_monitor().await.unwrap().unwrap().0 {
                MonitorItem::Lost(n) => got.push(format!("lost {n}")),
                MonitorItem::Event(e) => got.push(e.to_string()),
            }
            if got.iter().any(|g| g == "tunnel miss vip 100.64.0.9") {
                break;
            }
        }
        assert!(got.iter().any(|g| g.starts_with("lost ")), "{got:?}");
        assert_eq!(got.last().unwrap(), "tunnel miss vip 100.64.0.9");

        // The client leaves: the server unsubscribes.
        drop(c);
        for _ in 0..200 {
            if events.receiver_count() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(events.receiver_count(), 0);
    }

    #[tokio::test]
    async fn bad_request_and_stale_socket() {
        let (_dir, path, _events) = start().await;
        let mut s = UnixStream::connect(&path).await.unwrap();
        s.write_all(b"{\"cmd\":\"reboot\"}\n").await.unwrap();
        let answer = String::from_utf8(drain(&mut s).await).unwrap();
        assert!(answer.starts_with("{\"error\":\"bad request"), "{answer}");

        // A live socket is not taken over.
        assert!(matches!(ControlServer::bind(&path).await, Err(ControlError::InUse(_))));

        // A stale one (nobody listening) is replaced.
        let dir = tempfile::tempdir().unwrap();
        let stale = dir.path().join("stale.sock");
        drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
        assert!(stale.exists());
        let server = ControlServer::bind(&stale).await.unwrap();
        assert_eq!(server.path(), stale);

        let e = Client::show(&dir.path().join("missing.sock")).await.unwrap_err();
        assert!(e.to_string().starts_with("cannot reach ntmd at "), "{e}");
    }
}
