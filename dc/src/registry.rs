//! The node registry in SQLite: one file, WAL mode, VIPs unique and kept across restarts.
//!
//! The DC's core never waits on the disk: the registry lives in memory (read whole from the
//! database at start) and every change goes to a writer thread, which coalesces what came in
//! meanwhile into one transaction. A database that is locked or fails keeps the changes
//! pending: they are retried every second and the failure is logged and counted
//! ([`WriterStats`]), while the DC goes on answering from memory.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use proto::registry::{MemRegistry, NodeRecord, Pools, Registration, Registry, RegistryError};
use rusqlite::{params, Connection, Row, TransactionBehavior};

/// The schema this code writes, kept in `PRAGMA user_version`.
pub const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS nodes (
    fqdn       TEXT PRIMARY KEY COLLATE NOCASE,
    public_key BLOB NOT NULL,
    vip4       TEXT UNIQUE,
    vip6       TEXT UNIQUE,
    addrs      TEXT NOT NULL DEFAULT '',
    observed   TEXT,
    nat        INTEGER NOT NULL DEFAULT 0,
    last_seen  INTEGER NOT NULL DEFAULT 0
);
";

const COLUMNS: &str = "fqdn, public_key, vip4, vip6, addrs, observed, nat, last_seen";

/// How long one write waits for a lock held by another process before it fails (and is retried).
const BUSY_WAIT: Duration = Duration::from_secs(2);

/// Pending changes are written again this long after a failed write.
const RETRY: Duration = Duration::from_secs(1);

/// A [`Registry`] kept in memory and stored in an SQLite database by a writer thread.
pub struct SqliteRegistry {
    mem: MemRegistry,
    path: PathBuf,
    writer: Option<Writer>,
    stats: Arc<WriterStats>,
}

struct Writer {
    tx: mpsc::Sender<Op>,
    thread: JoinHandle<()>,
}

enum Op {
    Put(NodeRecord),
    Remove(String),
    Flush(mpsc::SyncSender<()>),
}

/// What the writer thread has done, for the DC's metrics.
#[derive(Debug, Default)]
pub struct WriterStats {
    /// Transactions committed.
    pub commits: AtomicU64,
    /// Transactions that failed (locked, read-only or broken database); their changes stay
    /// pending and are written again.
    pub failures: AtomicU64,
    /// Nodes whose change is not on disk yet.
    pub pending: AtomicU64,
}

impl std::fmt::Debug for SqliteRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteRegistry").field("path", &self.path).field("pools", self.mem.pools()).finish()
    }
}

fn storage(e: impl std::fmt::Display) -> RegistryError {
    RegistryError::Storage(e.to_string())
}

impl SqliteRegistry {
    /// Opens (or creates) the database at `path` and reads every record. A database that is
    /// locked for longer than a short wait, unreadable or of an unknown schema is an error
    /// that names the file.
    pub fn open(path: impl AsRef<Path>, pools: Pools) -> Result<Self, RegistryError> {
        let path = path.as_ref();
        let named = |e: &dyn std::fmt::Display| storage(format!("{}: {e}", path.display()));
        let conn = Connection::open(path).map_err(|e| named(&e))?;
        Self::init(conn, pools, path.to_path_buf()).map_err(|e| match e {
            RegistryError::Storage(m) => named(&m),
            e => e,
        })
    }

    /// A database in memory (tests).
    pub fn open_in_memory(pools: Pools) -> Result<Self, RegistryError> {
        Self::init(Connection::open_in_memory().map_err(storage)?, pools, PathBuf::from(":memory:"))
    }

    fn init(conn: Connection, pools: Pools, path: PathBuf) -> Result<Self, RegistryError> {
        conn.busy_timeout(BUSY_WAIT).map_err(storage)?;
        // Returns the resulting mode ("memory" for in-memory databases).
        let _mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0)).map_err(storage)?;
        let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(storage)?;
        match version {
            0 => {
                conn.execute_batch(&format!("BEGIN; {SCHEMA} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"))
                    .map_err(storage)?;
            }
            SCHEMA_VERSION => {}
            v => {
                return Err(storage(format!(
                    "database schema version {v} is not supported (this dc knows {SCHEMA_VERSION})"
                )))
            }
        }
        let records = {
            let mut stmt = conn.prepare(&format!("SELECT {COLUMNS} FROM nodes")).map_err(storage)?;
            let rows = stmt.query_map([], RawRow::from_row).map_err(storage)?;
            rows.map(|r| r.map_err(storage).and_then(RawRow::into_record)).collect::<Result<Vec<_>, _>>()?
        };
        let stats = Arc::new(WriterStats::default());
        let (tx, rx) = mpsc::channel();
        let thread = {
            let stats = stats.clone();
            std::thread::Builder::new()
                .name("registry".into())
                .spawn(move || write_loop(conn, rx, &stats))
                .map_err(storage)?
        };
        Ok(Self { mem: MemRegistry::with_records(pools, records), path, writer: Some(Writer { tx, thread }), stats })
    }

    /// The writer thread's counters.
    pub fn stats(&self) -> &WriterStats {
        &self.stats
    }

    /// Waits until every change made so far is on disk, or `timeout` passed; true if it is.
    /// (Tests and shutdown; the DC's core never calls it.)
    pub fn flush(&self, timeout: Duration) -> bool {
        let Some(w) = &self.writer else { return true };
        let (done, wait) = mpsc::sync_channel(1);
        w.tx.send(Op::Flush(done)).is_ok() && wait.recv_timeout(timeout).is_ok()
    }

    fn send(&self, op: Op) {
        if let Some(w) = &self.writer {
            if w.tx.send(op).is_err() {
                tracing::error!(path = %self.path.display(), "the registry writer is gone: changes are no longer stored");
            }
        }
    }
}

impl Drop for SqliteRegistry {
    /// Writes what is pending (a few tries) before the DC exits.
    fn drop(&mut self) {
        if let Some(Writer { tx, thread }) = self.writer.take() {
            drop(tx);
            let _ = thread.join();
        }
    }
}

impl Registry for SqliteRegistry {
    fn register(&mut self, reg: &Registration<'_>) -> Result<NodeRecord, RegistryError> {
        let rec = self.mem.register(reg)?;
        self.send(Op::Put(rec.clone()));
        tracing::debug!(fqdn = reg.fqdn, vip4 = ?rec.vip4, vip6 = ?rec.vip6, "node registered");
        Ok(rec)
    }

    fn get(&self, fqdn: &str) -> Result<Option<NodeRecord>, RegistryError> {
        self.mem.get(&fqdn.to_ascii_lowercase())
    }

    fn all(&self) -> Result<Vec<NodeRecord>, RegistryError> {
        let mut v = self.mem.all()?;
        v.sort_by(|a, b| a.fqdn.cmp(&b.fqdn));
        Ok(v)
    }

    fn remove(&mut self, fqdn: &str) -> Result<Option<NodeRecord>, RegistryError> {
        let fqdn = fqdn.to_ascii_lowercase();
        let old = self.mem.remove(&fqdn)?;
        if old.is_some() {
            self.send(Op::Remove(fqdn));
        }
        Ok(old)
    }

    fn pools(&self) -> &Pools {
        self.mem.pools()
    }
}

/// The writer thread: takes every change that came in, writes them in one transaction, and on
/// failure keeps them and tries again after [`RETRY`]. Ends when the registry is dropped, after
/// a last few tries.
fn write_loop(mut conn: Connection, rx: mpsc::Receiver<Op>, stats: &WriterStats) {
    // By node: the record to store, or None to delete the row.
    let mut pending: BTreeMap<String, Option<NodeRecord>> = BTreeMap::new();
    let mut waiters: Vec<mpsc::SyncSender<()>> = Vec::new();
    let mut closing = false;
    let mut last_log: Option<Instant> = None;
    let mut final_tries = 3;
    loop {
        let first = if closing {
            None
        } else if pending.is_empty() {
            match rx.recv() {
                Ok(op) => Some(op),
                Err(_) => {
                    closing = true;
                    None
                }
            }
        } else {
            match rx.recv_timeout(RETRY) {
                Ok(op) => Some(op),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    closing = true;
                    None
                }
            }
        };
        let mut absorb = |op: Op| match op {
            Op::Put(r) => {
                pending.insert(r.fqdn.clone(), Some(r));
            }
            Op::Remove(f) => {
                pending.insert(f, None);
            }
            Op::Flush(w) => waiters.push(w),
        };
        first.into_iter().for_each(&mut absorb);
        while let Ok(op) = rx.try_recv() {
            absorb(op);
        }
        if !pending.is_empty() {
            match write_batch(&mut conn, &pending) {
                Ok(()) => {
                    stats.commits.fetch_add(1, Relaxed);
                    pending.clear();
                }
                Err(e) => {
                    stats.failures.fetch_add(1, Relaxed);
                    if last_log.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                        last_log = Some(Instant::now());
                        tracing::error!(
                            pending = pending.len(),
                            "registry write failed (the DC goes on from memory, retrying every second): {e}"
                        );
                    }
                }
            }
        }
        stats.pending.store(pending.len() as u64, Relaxed);
        if pending.is_empty() {
            waiters.drain(..).for_each(|w| {
                let _ = w.try_send(());
            });
        }
        if closing {
            if pending.is_empty() {
                return;
            }
            final_tries -= 1;
            if final_tries == 0 {
                tracing::error!(lost = pending.len(), "registry changes not stored at exit");
                return;
            }
            std::thread::sleep(RETRY);
        }
    }
}

/// Writes one batch: deletions first (a VIP freed by one may be given to another), then the
/// records.
fn write_batch(conn: &mut Connection, pending: &BTreeMap<String, Option<NodeRecord>>) -> rusqlite::Result<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    {
        let mut del = tx.prepare_cached("DELETE FROM nodes WHERE fqdn = ?1")?;
        for fqdn in pending.keys() {
            // Every changed node's row goes first: a VIP moving between two nodes in one
            // batch must not collide with the row it leaves.
            del.execute([fqdn])?;
        }
        let mut put = tx.prepare_cached(
            "INSERT INTO nodes (fqdn, public_key, vip4, vip6, addrs, observed, nat, last_seen)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )?;
        for rec in pending.values().flatten() {
            let addrs = rec.addrs.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(",");
            put.execute(params![
                rec.fqdn,
                &rec.public_key[..],
                rec.vip4.map(|ip| ip.to_string()),
                rec.vip6.map(|ip| ip.to_string()),
                addrs,
                rec.observed.map(|o| o.to_string()),
                rec.nat,
                i64::try_from(rec.last_seen).unwrap_or(i64::MAX),
            ])?;
        }
    }
    tx.commit()
}

/// Parses the stored address column, naming the node on error.
fn parse_col<T: FromStr>(fqdn: &str, col: &str, s: &str) -> Result<T, RegistryError>
where
    T::Err: std::fmt::Display,
{
    s.parse().map_err(|e| storage(format!("node {fqdn}: bad {col} {s:?}: {e}")))
}

fn parse_opt<T: FromStr>(fqdn: &str, col: &str, s: Option<String>) -> Result<Option<T>, RegistryError>
where
    T::Err: std::fmt::Display,
{
    s.map(|s| parse_col(fqdn, col, &s)).transpose()
}

struct RawRow {
    fqdn: String,
    public_key: Vec<u8>,
    vip4: Option<String>,
    vip6: Option<String>,
    addrs: String,
    observed: Option<String>,
    nat: bool,
    last_seen: i64,
}

impl RawRow {
    fn from_row(r: &Row<'_>) -> rusqlite::Result<Self> {
        Ok(Self {
            fqdn: r.get(0)?,
            public_key: r.get(1)?,
            vip4: r.get(2)?,
            vip6: r.get(3)?,
            addrs: r.get(4)?,
            observed: r.get(5)?,
            nat: r.get(6)?,
            last_seen: r.get(7)?,
        })
    }

    fn into_record(self) -> Result<NodeRecord, RegistryError> {
        let fqdn = self.fqdn;
        let public_key: [u8; 32] = self
            .public_key
            .as_slice()
            .try_into()
            .map_err(|_| storage(format!("node {fqdn}: public key is {} bytes", self.public_key.len())))?;
        let addrs = self
            .addrs
            .split(',')
            .filter(|s| !s.is_empty())
            .map(|s| parse_col(&fqdn, "addr", s))
            .collect::<Result<Vec<SocketAddr>, _>>()?;
        Ok(NodeRecord {
            vip4: parse_opt(&fqdn, "vip4", self.vip4)?,
            vip6: parse_opt(&fqdn, "vip6", self.vip6)?,
            observed: parse_opt(&fqdn, "observed", self.observed)?,
            addrs,
            public_key,
            nat: self.nat,
            last_seen: u64::try_from(self.last_seen).unwrap_or(0),
            fqdn,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn raw(path: &Path) -> Connection {
        Connection::open(path).unwrap()
    }

    fn pools(v4: &str, v6: &str) -> Pools {
        Pools { v4: Some(v4.parse().unwrap()), v6: Some(v6.parse().unwrap()) }
    }

    fn reg<'a>(fqdn: &'a str, addrs: &'a [SocketAddr]) -> Registration<'a> {
        Registration {
            fqdn,
            public_key: [7; 32],
            addrs,
            observed: "198.18.70.2:40000".parse().unwrap(),
            nat: true,
            now_unix: 1_700_000_000,
        }
    }

    #[test]
    fn vips_survive_a_restart_and_are_unique() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dc.sqlite");
        let p = pools("100.64.40.0/24", "fd4e:544d:40::/64");
        let addrs: Vec<SocketAddr> =
            vec!["198.18.60.2:7600".parse().unwrap(), "[2001:db8:61::2]:7600".parse().unwrap()];
        let (rpi, cam) = {
            let mut r = SqliteRegistry::open(&path, p.clone()).unwrap();
            let rpi = r.register(&reg("rpi.home.ntm.test", &addrs)).unwrap();
            let cam = r.register(&reg("cam.home.ntm.test", &[])).unwrap();
            assert_eq!(rpi.vip4, Some("100.64.40.2".parse().unwrap()));
            assert_eq!(rpi.vip6, Some("fd4e:544d:40::2".parse().unwrap()));
            assert_ne!(rpi.vip4, cam.vip4);
            assert_ne!(rpi.vip6, cam.vip6);
            // re-registering keeps the VIPs and updates the rest
            let mut again = reg("rpi.home.ntm.test", &addrs[..1]);
            again.nat = false;
            let rpi2 = r.register(&again).unwrap();
            assert_eq!((rpi2.vip4, rpi2.vip6), (rpi.vip4, rpi.vip6));
            (rpi2, cam)
        };
        let r = SqliteRegistry::open(&path, p).unwrap();
        assert_eq!(r.get("rpi.home.ntm.test").unwrap().as_ref(), Some(&rpi));
        assert_eq!(r.get("RPI.Home.ntm.test").unwrap().map(|n| n.vip4), Some(rpi.vip4));
        assert_eq!(r.get("cam.home.ntm.test").unwrap().as_ref(), Some(&cam));
        assert_eq!(r.get("nope.home.ntm.test").unwrap(), None);
        assert_eq!(r.all().unwrap(), [cam, rpi]);
    }

    #[test]
    fn reopen_then_allocate_skips_used() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dc.sqlite");
        let p = pools("100.64.40.0/24", "fd4e:544d:40::/64");
        let a = SqliteRegistry::open(&path, p.clone()).unwrap().register(&reg("a.z", &[])).unwrap();
        let b = SqliteRegistry::open(&path, p).unwrap().register(&reg("b.z", &[])).unwrap();
        assert_eq!(a.vip4, Some("100.64.40.2".parse().unwrap()));
        assert_eq!(b.vip4, Some("100.64.40.3".parse().unwrap()));
        assert_eq!(b.vip6, Some("fd4e:544d:40::3".parse().unwrap()));
    }

    #[test]
    fn pool_exhaustion() {
        // a /29 has 8 addresses: network, gateway, 5 VIPs, broadcast
        let mut r =
            SqliteRegistry::open_in_memory(Pools { v4: Some("100.64.40.0/29".parse().unwrap()), v6: None }).unwrap();
        let mut seen = HashSet::new();
        for i in 0..5 {
            let rec = r.register(&reg(&format!("n{i}.z"), &[])).unwrap();
            assert!(seen.insert(rec.vip4.unwrap()));
            assert_eq!(rec.vip6, None);
        }
        assert!(matches!(r.register(&reg("n5.z", &[])), Err(RegistryError::PoolExhausted("IPv4"))));
        // a known node still registers
        assert!(r.register(&reg("n0.z", &[])).is_ok());
        assert_eq!(r.all().unwrap().len(), 5);
    }

    #[test]
    fn vip_outside_a_changed_pool_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dc.sqlite");
        let old = SqliteRegistry::open(&path, pools("100.64.40.0/24", "fd4e:544d:40::/64"))
            .unwrap()
            .register(&reg("a.z", &[]))
            .unwrap();
        let mut r = SqliteRegistry::open(&path, pools("100.64.41.0/24", "fd4e:544d:41::/64")).unwrap();
        let a = r.register(&reg("a.z", &[])).unwrap();
        assert_eq!((a.vip4, a.vip6), (old.vip4, old.vip6));
        let b = r.register(&reg("b.z", &[])).unwrap();
        assert_eq!(b.vip4, Some("100.64.41.2".parse().unwrap()));
        // a pool added later gives existing nodes a VIP of that family
        drop(r);
        raw(&path).execute("UPDATE nodes SET vip6 = NULL WHERE fqdn = 'a.z'", []).unwrap();
        let mut r = SqliteRegistry::open(&path, pools("100.64.41.0/24", "fd4e:544d:41::/64")).unwrap();
        assert_eq!(r.register(&reg("a.z", &[])).unwrap().vip6, Some("fd4e:544d:41::3".parse().unwrap()));
    }

    #[test]
    fn unique_constraint_guards_vips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dc.sqlite");
        let mut r = SqliteRegistry::open(&path, pools("100.64.40.0/24", "fd4e:544d:40::/64")).unwrap();
        r.register(&reg("a.z", &[])).unwrap();
        assert!(r.flush(Duration::from_secs(5)));
        let dup =
            raw(&path).execute("INSERT INTO nodes (fqdn, public_key, vip4) VALUES ('b.z', x'00', '100.64.40.2')", []);
        assert!(dup.is_err());
    }

    #[test]
    fn schema_version_and_wal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dc.sqlite");
        let r = SqliteRegistry::open(&path, pools("100.64.40.0/24", "fd4e:544d:40::/64")).unwrap();
        drop(r);
        let c = raw(&path);
        let v: i64 = c.query_row("PRAGMA user_version", [], |x| x.get(0)).unwrap();
        assert_eq!(v, SCHEMA_VERSION);
        let mode: String = c.query_row("PRAGMA journal_mode", [], |x| x.get(0)).unwrap();
        assert_eq!(mode, "wal");
        c.execute_batch("PRAGMA user_version = 99").unwrap();
        drop(c);
        let err = SqliteRegistry::open(&path, pools("100.64.40.0/24", "fd4e:544d:40::/64")).unwrap_err();
        assert!(err.to_string().contains("99"), "{err}");
    }

    #[test]
    fn a_locked_database_never_stalls_registrations() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dc.sqlite");
        let mut r = SqliteRegistry::open(&path, pools("100.64.40.0/24", "fd4e:544d:40::/64")).unwrap();
        // Another process holds the write lock.
        let other = raw(&path);
        other.execute_batch("BEGIN EXCLUSIVE").unwrap();
        let t = Instant::now();
        for i in 0..50 {
            r.register(&reg(&format!("n{i}.z"), &[])).unwrap();
        }
        assert!(t.elapsed() < Duration::from_millis(500), "registrations waited on the lock: {:?}", t.elapsed());
        assert_eq!(r.get("n7.z").unwrap().unwrap().vip4, Some("100.64.40.9".parse().unwrap()));
        assert!(!r.flush(Duration::from_millis(2500)), "written through an exclusive lock?");
        assert!(r.stats().failures.load(Relaxed) >= 1);
        assert!(r.stats().pending.load(Relaxed) >= 1);
        // The lock goes: everything pending lands.
        other.execute_batch("ROLLBACK").unwrap();
        assert!(r.flush(Duration::from_secs(10)));
        drop(r);
        let r = SqliteRegistry::open(&path, pools("100.64.40.0/24", "fd4e:544d:40::/64")).unwrap();
        assert_eq!(r.all().unwrap().len(), 50);
    }

    #[test]
    fn removed_nodes_free_their_vips_on_disk_too() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dc.sqlite");
        let p = pools("100.64.40.0/24", "fd4e:544d:40::/64");
        let mut r = SqliteRegistry::open(&path, p.clone()).unwrap();
        let a = r.register(&reg("a.z", &[])).unwrap();
        assert!(r.remove("A.z").unwrap().is_some());
        // Removed and given away in the same batch: no UNIQUE collision.
        let b = r.register(&reg("b.z", &[])).unwrap();
        assert_eq!(b.vip4, a.vip4);
        drop(r);
        let r = SqliteRegistry::open(&path, p).unwrap();
        assert_eq!(r.get("a.z").unwrap(), None);
        assert_eq!(r.get("b.z").unwrap().unwrap().vip4, a.vip4);
    }

    #[test]
    fn a_corrupt_database_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dc.sqlite");
        std::fs::write(&path, vec![0x5a; 8192]).unwrap();
        let err = SqliteRegistry::open(&path, pools("100.64.40.0/24", "fd4e:544d:40::/64")).unwrap_err().to_string();
        assert!(err.contains("dc.sqlite") && err.contains("not a database"), "{err}");
    }
}
