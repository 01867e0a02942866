//! The scheduler's database: one `sqlx::AnyPool`, so the same SQL runs on SQLite (the
//! default, a file in the data folder) and PostgreSQL (by URL), as the CCN does.
//!
//! Memory ([`crate::state::Core`]) is the working copy; every change it makes is written
//! here in one transaction before the change is acted on (pushed, answered), so a
//! restarted scheduler resumes from the same nodes, VMs, allocation version and CCN
//! cursors. SQL is the subset both engines share: `$n` placeholders, `BIGINT`,
//! `DOUBLE PRECISION`, `TEXT`, `ON CONFLICT ... DO UPDATE`.

use anyhow::Context;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, Executor, Row};
use std::path::Path;
use std::str::FromStr;

#[derive(Clone, Debug)]
pub struct Db {
    pub pool: AnyPool,
}

/// The default database URL: a SQLite file in the data folder.
pub fn default_url(data_dir: &Path) -> String {
    format!(
        "sqlite://{}?mode=rwc",
        data_dir.join("scheduler.sqlite").display()
    )
}

/// Each step runs once, in order; its index is recorded in `schema_version`.
const MIGRATIONS: &[&[&str]] = &[&[
    "CREATE TABLE IF NOT EXISTS nodes (
        hash TEXT PRIMARY KEY,
        owner TEXT NOT NULL,
        name TEXT NOT NULL,
        address TEXT NOT NULL,
        registered_time DOUBLE PRECISION NOT NULL,
        status TEXT NOT NULL,
        last_heartbeat DOUBLE PRECISION,
        resources TEXT,
        running TEXT,
        allocation_version BIGINT NOT NULL,
        applied_version BIGINT NOT NULL
    )",
    "CREATE TABLE IF NOT EXISTS vms (
        vm_hash TEXT PRIMARY KEY,
        vm_type TEXT NOT NULL,
        owner TEXT NOT NULL,
        content TEXT NOT NULL,
        status TEXT NOT NULL,
        node TEXT,
        since DOUBLE PRECISION NOT NULL,
        reason TEXT
    )",
    "CREATE INDEX IF NOT EXISTS vms_owner ON vms (owner)",
    // Hashes that must never come back: forgotten or replaced messages, dropped nodes.
    "CREATE TABLE IF NOT EXISTS retired (hash TEXT PRIMARY KEY)",
    // The allocation version and the CCN cursors.
    "CREATE TABLE IF NOT EXISTS counters (
        name TEXT PRIMARY KEY,
        value DOUBLE PRECISION NOT NULL
    )",
]];

/// A node row.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeRow {
    pub hash: String,
    pub owner: String,
    pub name: String,
    pub address: String,
    pub registered_time: f64,
    pub status: String,
    pub last_heartbeat: Option<f64>,
    /// JSON of `NodeResources`.
    pub resources: Option<String>,
    /// JSON of `Vec<RunningVm>`.
    pub running: Option<String>,
    pub allocation_version: u64,
    pub applied_version: u64,
}

/// A VM row.
#[derive(Debug, Clone, PartialEq)]
pub struct VmRow {
    pub vm_hash: String,
    pub vm_type: String,
    pub owner: String,
    /// The message content, JSON.
    pub content: String,
    pub status: String,
    pub node: Option<String>,
    pub since: f64,
    pub reason: Option<String>,
}

/// Everything a scheduler starts from.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub nodes: Vec<NodeRow>,
    pub vms: Vec<VmRow>,
    pub retired: Vec<String>,
    pub counters: Vec<(String, f64)>,
}

/// The rows one state change writes.
#[derive(Debug, Default)]
pub struct Changes {
    pub nodes: Vec<NodeRow>,
    pub deleted_nodes: Vec<String>,
    pub vms: Vec<VmRow>,
    pub retired: Vec<String>,
    pub counters: Vec<(String, f64)>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
            && self.deleted_nodes.is_empty()
            && self.vms.is_empty()
            && self.retired.is_empty()
            && self.counters.is_empty()
    }
}

fn version_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Db {
    /// Connects and brings the schema up to date.
    pub async fn open(url: &str) -> anyhow::Result<Db> {
        sqlx::any::install_default_drivers();
        let sqlite = url.starts_with("sqlite:");
        if !sqlite && !url.starts_with("postgres:") && !url.starts_with("postgresql:") {
            anyhow::bail!("unsupported database URL {url:?}: use sqlite:// or postgres://");
        }
        let options = AnyConnectOptions::from_str(url)
            .with_context(|| format!("invalid database URL {:?}", redact(url)))?;
        let mut pool_options = AnyPoolOptions::new().max_connections(if sqlite { 2 } else { 4 });
        if sqlite {
            pool_options = pool_options.after_connect(|conn, _meta| {
                Box::pin(async move {
                    conn.execute("PRAGMA journal_mode = WAL").await?;
                    conn.execute("PRAGMA synchronous = NORMAL").await?;
                    conn.execute("PRAGMA busy_timeout = 10000").await?;
                    Ok(())
                })
            });
        }
        let pool = pool_options
            .connect_with(options)
            .await
            .with_context(|| format!("cannot connect to {}", redact(url)))?;
        let db = Db { pool };
        db.migrate().await?;
        Ok(db)
    }

    async fn migrate(&self) -> anyhow::Result<()> {
        sqlx::query("CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL)")
            .execute(&self.pool)
            .await?;
        let mut tx = self.pool.begin().await?;
        let current: Option<i64> = sqlx::query_scalar("SELECT MAX(version) FROM schema_version")
            .fetch_one(&mut *tx)
            .await?;
        let current = current.unwrap_or(0) as usize;
        for (index, steps) in MIGRATIONS.iter().enumerate().skip(current) {
            for step in *steps {
                sqlx::query(sqlx::AssertSqlSafe(*step))
                    .execute(&mut *tx)
                    .await?;
            }
            sqlx::query("INSERT INTO schema_version (version) VALUES ($1)")
                .bind(index as i64 + 1)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Reads everything back.
    pub async fn load(&self) -> anyhow::Result<Snapshot> {
        let mut snapshot = Snapshot::default();
        for row in sqlx::query(
            "SELECT hash, owner, name, address, registered_time, status, last_heartbeat,
                    resources, running, allocation_version, applied_version
             FROM nodes ORDER BY hash",
        )
        .fetch_all(&self.pool)
        .await?
        {
            snapshot.nodes.push(NodeRow {
                hash: row.try_get("hash")?,
                owner: row.try_get("owner")?,
                name: row.try_get("name")?,
                address: row.try_get("address")?,
                registered_time: row.try_get("registered_time")?,
                status: row.try_get("status")?,
                last_heartbeat: row.try_get("last_heartbeat")?,
                resources: row.try_get("resources")?,
                running: row.try_get("running")?,
                allocation_version: row.try_get::<i64, _>("allocation_version")?.max(0) as u64,
                applied_version: row.try_get::<i64, _>("applied_version")?.max(0) as u64,
            });
        }
        for row in sqlx::query(
            "SELECT vm_hash, vm_type, owner, content, status, node, since, reason
             FROM vms ORDER BY vm_hash",
        )
        .fetch_all(&self.pool)
        .await?
        {
            snapshot.vms.push(VmRow {
                vm_hash: row.try_get("vm_hash")?,
                vm_type: row.try_get("vm_type")?,
                owner: row.try_get("owner")?,
                content: row.try_get("content")?,
                status: row.try_get("status")?,
                node: row.try_get("node")?,
                since: row.try_get("since")?,
                reason: row.try_get("reason")?,
            });
        }
        snapshot.retired = sqlx::query_scalar("SELECT hash FROM retired")
            .fetch_all(&self.pool)
            .await?;
        for row in sqlx::query("SELECT name, value FROM counters")
            .fetch_all(&self.pool)
            .await?
        {
            snapshot
                .counters
                .push((row.try_get("name")?, row.try_get("value")?));
        }
        Ok(snapshot)
    }

    /// Writes one state change, all of it or nothing.
    pub async fn apply(&self, changes: &Changes) -> anyhow::Result<()> {
        if changes.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        for node in &changes.nodes {
            sqlx::query(
                "INSERT INTO nodes (hash, owner, name, address, registered_time, status,
                    last_heartbeat, resources, running, allocation_version, applied_version)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
                 ON CONFLICT (hash) DO UPDATE SET owner = excluded.owner,
                    name = excluded.name, address = excluded.address,
                    registered_time = excluded.registered_time, status = excluded.status,
                    last_heartbeat = excluded.last_heartbeat, resources = excluded.resources,
                    running = excluded.running,
                    allocation_version = excluded.allocation_version,
                    applied_version = excluded.applied_version",
            )
            .bind(&node.hash)
            .bind(&node.owner)
            .bind(&node.name)
            .bind(&node.address)
            .bind(node.registered_time)
            .bind(&node.status)
            .bind(node.last_heartbeat)
            .bind(node.resources.clone())
            .bind(node.running.clone())
            .bind(version_i64(node.allocation_version))
            .bind(version_i64(node.applied_version))
            .execute(&mut *tx)
            .await?;
        }
        for hash in &changes.deleted_nodes {
            sqlx::query("DELETE FROM nodes WHERE hash = $1")
                .bind(hash)
                .execute(&mut *tx)
                .await?;
        }
        for vm in &changes.vms {
            sqlx::query(
                "INSERT INTO vms (vm_hash, vm_type, owner, content, status, node, since, reason)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                 ON CONFLICT (vm_hash) DO UPDATE SET vm_type = excluded.vm_type,
                    owner = excluded.owner, content = excluded.content,
                    status = excluded.status, node = excluded.node, since = excluded.since,
                    reason = excluded.reason",
            )
            .bind(&vm.vm_hash)
            .bind(&vm.vm_type)
            .bind(&vm.owner)
            .bind(&vm.content)
            .bind(&vm.status)
            .bind(vm.node.clone())
            .bind(vm.since)
            .bind(vm.reason.clone())
            .execute(&mut *tx)
            .await?;
        }
        for hash in &changes.retired {
            sqlx::query("INSERT INTO retired (hash) VALUES ($1) ON CONFLICT (hash) DO NOTHING")
                .bind(hash)
                .execute(&mut *tx)
                .await?;
        }
        for (name, value) in &changes.counters {
            sqlx::query(
                "INSERT INTO counters (name, value) VALUES ($1, $2)
                 ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            )
            .bind(name)
            .bind(*value)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

/// Hides a password in a database URL before it is shown.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            match userinfo.find(':') {
                Some(colon) => format!(
                    "{}{}:***{}",
                    &url[..scheme_end + 3],
                    &userinfo[..colon],
                    &url[at..]
                ),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_hides_the_password() {
        assert_eq!(
            redact("postgres://u:secret@127.0.0.1/db"),
            "postgres://u:***@127.0.0.1/db"
        );
        assert_eq!(redact("sqlite://x.db"), "sqlite://x.db");
    }
}
