//! The node registry in SQLite: one file, WAL mode, VIPs unique and kept across restarts.

use std::collections::HashSet;
use std::hash::Hash;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::str::FromStr;

use proto::registry::{assign_vips, NodeRecord, Pools, Registration, Registry, RegistryError};
use rusqlite::{params, Connection, OptionalExtension, Row, TransactionBehavior};

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

/// A [`Registry`] stored in an SQLite database.
pub struct SqliteRegistry {
    conn: Connection,
    pools: Pools,
}

impl std::fmt::Debug for SqliteRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteRegistry").field("path", &self.conn.path()).field("pools", &self.pools).finish()
    }
}

fn storage(e: impl std::fmt::Display) -> RegistryError {
    RegistryError::Storage(e.to_string())
}

impl SqliteRegistry {
    /// Opens (or creates) the database at `path`.
    pub fn open(path: impl AsRef<Path>, pools: Pools) -> Result<Self, RegistryError> {
        let path = path.as_ref();
        let conn = Connection::open(path).map_err(|e| storage(format!("{}: {e}", path.display())))?;
        Self::init(conn, pools)
    }

    /// A database in memory (tests).
    pub fn open_in_memory(pools: Pools) -> Result<Self, RegistryError> {
        Self::init(Connection::open_in_memory().map_err(storage)?, pools)
    }

    fn init(conn: Connection, pools: Pools) -> Result<Self, RegistryError> {
        conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(storage)?;
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
        Ok(Self { conn, pools })
    }

    /// The pools new VIPs come from.
    pub fn pools(&self) -> &Pools {
        &self.pools
    }
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

fn used_set<T: FromStr + Eq + Hash>(tx: &rusqlite::Transaction<'_>, col: &str) -> Result<HashSet<T>, RegistryError>
where
    T::Err: std::fmt::Display,
{
    let mut stmt = tx.prepare(&format!("SELECT fqdn, {col} FROM nodes WHERE {col} IS NOT NULL")).map_err(storage)?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))).map_err(storage)?;
    let mut set = HashSet::new();
    for row in rows {
        let (fqdn, ip) = row.map_err(storage)?;
        set.insert(parse_col(&fqdn, col, &ip)?);
    }
    Ok(set)
}

impl Registry for SqliteRegistry {
    fn register(&mut self, reg: &Registration<'_>) -> Result<NodeRecord, RegistryError> {
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(storage)?;
        let existing: Option<(Option<String>, Option<String>)> = tx
            .query_row("SELECT vip4, vip6 FROM nodes WHERE fqdn = ?1", [reg.fqdn], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()
            .map_err(storage)?;
        let (old4, old6) = existing.unwrap_or((None, None));
        let current = (parse_opt(reg.fqdn, "vip4", old4)?, parse_opt(reg.fqdn, "vip6", old6)?);
        let (vip4, vip6) = assign_vips(
            &self.pools,
            current,
            || used_set::<Ipv4Addr>(&tx, "vip4"),
            || used_set::<Ipv6Addr>(&tx, "vip6"),
        )?;

        let addrs = reg.addrs.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(",");
        let last_seen = i64::try_from(reg.now_unix).unwrap_or(i64::MAX);
        tx.execute(
            "INSERT INTO nodes (fqdn, public_key, vip4, vip6, addrs, observed, nat, last_seen)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
             ON CONFLICT (fqdn) DO UPDATE SET
                public_key = excluded.public_key, vip4 = excluded.vip4, vip6 = excluded.vip6,
                addrs = excluded.addrs, observed = excluded.observed, nat = excluded.nat,
                last_seen = excluded.last_seen",
            params![
                reg.fqdn,
                &reg.public_key[..],
                vip4.map(|ip| ip.to_string()),
                vip6.map(|ip| ip.to_string()),
                addrs,
                reg.observed.to_string(),
                reg.nat,
                last_seen,
            ],
        )
        .map_err(storage)?;
        tx.commit().map_err(storage)?;
        tracing::debug!(fqdn = reg.fqdn, ?vip4, ?vip6, "node registered");

        Ok(NodeRecord {
            fqdn: reg.fqdn.to_string(),
            public_key: reg.public_key,
            vip4,
            vip6,
            addrs: reg.addrs.to_vec(),
            observed: Some(reg.observed),
            nat: reg.nat,
            last_seen: reg.now_unix,
        })
    }

    fn get(&self, fqdn: &str) -> Result<Option<NodeRecord>, RegistryError> {
        let row = self
            .conn
            .query_row(&format!("SELECT {COLUMNS} FROM nodes WHERE fqdn = ?1"), [fqdn], RawRow::from_row)
            .optional()
            .map_err(storage)?;
        row.map(RawRow::into_record).transpose()
    }

    fn all(&self) -> Result<Vec<NodeRecord>, RegistryError> {
        let mut stmt = self.conn.prepare(&format!("SELECT {COLUMNS} FROM nodes ORDER BY fqdn")).map_err(storage)?;
        let rows = stmt.query_map([], RawRow::from_row).map_err(storage)?;
        rows.map(|r| r.map_err(storage).and_then(RawRow::into_record)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let mut r = SqliteRegistry::open(&path, pools("100.64.41.0/24", "fd4e:544d:41::/64")).unwrap();
        r.conn.execute("UPDATE nodes SET vip6 = NULL WHERE fqdn = 'a.z'", []).unwrap();
        assert_eq!(r.register(&reg("a.z", &[])).unwrap().vip6, Some("fd4e:544d:41::3".parse().unwrap()));
    }

    #[test]
    fn unique_constraint_guards_vips() {
        let mut r = SqliteRegistry::open_in_memory(pools("100.64.40.0/24", "fd4e:544d:40::/64")).unwrap();
        r.register(&reg("a.z", &[])).unwrap();
        let dup = r.conn.execute("INSERT INTO nodes (fqdn, public_key, vip4) VALUES ('b.z', x'00', '100.64.40.2')", []);
        assert!(dup.is_err());
    }

    #[test]
    fn schema_version_and_wal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dc.sqlite");
        let r = SqliteRegistry::open(&path, pools("100.64.40.0/24", "fd4e:544d:40::/64")).unwrap();
        let v: i64 = r.conn.query_row("PRAGMA user_version", [], |x| x.get(0)).unwrap();
        assert_eq!(v, SCHEMA_VERSION);
        let mode: String = r.conn.query_row("PRAGMA journal_mode", [], |x| x.get(0)).unwrap();
        assert_eq!(mode, "wal");
        r.conn.execute_batch("PRAGMA user_version = 99").unwrap();
        drop(r);
        let err = SqliteRegistry::open(&path, pools("100.64.40.0/24", "fd4e:544d:40::/64")).unwrap_err();
        assert!(err.to_string().contains("99"), "{err}");
    }
}
