//! Execution records in SQLite (`DATA/records.sqlite`): one row per execution that
//! ended, with its times and what its VM used. Served newest first by
//! `/about/executions/records`.

use crate::execution::metering::Usage;
use crate::execution::state::Times;
use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions};
use sqlx::{Row, sqlite::SqliteRow};
use std::path::Path;
use std::str::FromStr;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecutionRecord {
    pub uuid: String,
    pub vm_hash: String,
    pub time_defined: Option<DateTime<Utc>>,
    pub time_prepared: Option<DateTime<Utc>>,
    pub time_started: Option<DateTime<Utc>>,
    pub time_stopping: Option<DateTime<Utc>>,
    pub time_stopped: Option<DateTime<Utc>>,
    pub cpu_time_user: f64,
    pub cpu_time_system: f64,
    pub io_read_count: i64,
    pub io_write_count: i64,
    pub io_read_bytes: i64,
    pub io_write_bytes: i64,
    /// Peak resident memory of the VM, bytes.
    pub memory_peak: i64,
    pub vcpus: i64,
    /// Memory given to the guest, MiB.
    pub memory: i64,
    /// How it ended: `idle`, `updated`, `failed`, `stopped`, ...
    pub reason: String,
    /// The PROGRAM content that ran.
    pub message: serde_json::Value,
}

impl ExecutionRecord {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        uuid: &str,
        vm_hash: &str,
        times: &Times,
        usage: &Usage,
        vcpus: u32,
        memory_mib: u64,
        reason: &str,
        message: serde_json::Value,
    ) -> Self {
        let int = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        Self {
            uuid: uuid.into(),
            vm_hash: vm_hash.into(),
            time_defined: times.defined_at,
            time_prepared: times.prepared_at,
            time_started: times.started_at,
            time_stopping: times.stopping_at,
            time_stopped: times.stopped_at,
            cpu_time_user: usage.cpu_time_user,
            cpu_time_system: usage.cpu_time_system,
            io_read_count: int(usage.io_read_count),
            io_write_count: int(usage.io_write_count),
            io_read_bytes: int(usage.io_read_bytes),
            io_write_bytes: int(usage.io_write_bytes),
            memory_peak: int(usage.memory_peak_bytes),
            vcpus: vcpus.into(),
            memory: int(memory_mib),
            reason: reason.into(),
            message,
        }
    }
}

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS executions (
    uuid TEXT PRIMARY KEY,
    vm_hash TEXT NOT NULL,
    time_defined TEXT, time_prepared TEXT, time_started TEXT,
    time_stopping TEXT, time_stopped TEXT,
    cpu_time_user REAL NOT NULL, cpu_time_system REAL NOT NULL,
    io_read_count INTEGER NOT NULL, io_write_count INTEGER NOT NULL,
    io_read_bytes INTEGER NOT NULL, io_write_bytes INTEGER NOT NULL,
    memory_peak INTEGER NOT NULL, vcpus INTEGER NOT NULL, memory INTEGER NOT NULL,
    reason TEXT NOT NULL, message TEXT NOT NULL,
    seq INTEGER
)";

#[derive(Clone)]
pub struct Records {
    pool: SqlitePool,
}

impl Records {
    pub async fn open(path: &Path) -> Result<Self> {
        let options = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))?
            .create_if_missing(true)
            .busy_timeout(std::time::Duration::from_secs(5));
        let pool = SqlitePoolOptions::new()
            .max_connections(2)
            .connect_with(options)
            .await
            .with_context(|| format!("opening {}", path.display()))?;
        sqlx::query(SCHEMA).execute(&pool).await?;
        Ok(Self { pool })
    }

    pub async fn insert(&self, record: &ExecutionRecord) -> Result<()> {
        let time = |t: &Option<DateTime<Utc>>| t.map(|t| t.to_rfc3339());
        sqlx::query(
            "INSERT OR REPLACE INTO executions VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,
             (SELECT COALESCE(MAX(seq), 0) + 1 FROM executions))",
        )
        .bind(&record.uuid)
        .bind(&record.vm_hash)
        .bind(time(&record.time_defined))
        .bind(time(&record.time_prepared))
        .bind(time(&record.time_started))
        .bind(time(&record.time_stopping))
        .bind(time(&record.time_stopped))
        .bind(record.cpu_time_user)
        .bind(record.cpu_time_system)
        .bind(record.io_read_count)
        .bind(record.io_write_count)
        .bind(record.io_read_bytes)
        .bind(record.io_write_bytes)
        .bind(record.memory_peak)
        .bind(record.vcpus)
        .bind(record.memory)
        .bind(&record.reason)
        .bind(record.message.to_string())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Newest first.
    pub async fn list(&self, limit: u32) -> Result<Vec<ExecutionRecord>> {
        let rows = sqlx::query("SELECT * FROM executions ORDER BY seq DESC LIMIT ?")
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(from_row).collect()
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

fn from_row(row: &SqliteRow) -> Result<ExecutionRecord> {
    let time = |name: &str| -> Result<Option<DateTime<Utc>>> {
        let text: Option<String> = row.try_get(name)?;
        Ok(text
            .map(|t| DateTime::parse_from_rfc3339(&t).map(|t| t.with_timezone(&Utc)))
            .transpose()?)
    };
    let message: String = row.try_get("message")?;
    Ok(ExecutionRecord {
        uuid: row.try_get("uuid")?,
        vm_hash: row.try_get("vm_hash")?,
        time_defined: time("time_defined")?,
        time_prepared: time("time_prepared")?,
        time_started: time("time_started")?,
        time_stopping: time("time_stopping")?,
        time_stopped: time("time_stopped")?,
        cpu_time_user: row.try_get("cpu_time_user")?,
        cpu_time_system: row.try_get("cpu_time_system")?,
        io_read_count: row.try_get("io_read_count")?,
        io_write_count: row.try_get("io_write_count")?,
        io_read_bytes: row.try_get("io_read_bytes")?,
        io_write_bytes: row.try_get("io_write_bytes")?,
        memory_peak: row.try_get("memory_peak")?,
        vcpus: row.try_get("vcpus")?,
        memory: row.try_get("memory")?,
        reason: row.try_get("reason")?,
        message: serde_json::from_str(&message)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::execution::state::{Lifecycle, State};

    #[tokio::test]
    async fn records_survive_reopening_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("records.sqlite");
        let records = Records::open(&path).await.unwrap();
        let mut life = Lifecycle::new();
        life.advance(State::Stopping).unwrap();
        life.advance(State::Stopped).unwrap();
        let usage = Usage {
            cpu_time_user: 1.5,
            memory_peak_bytes: 300 << 20,
            io_read_bytes: 4096,
            ..Usage::default()
        };
        for (uuid, hash) in [("a", "h1"), ("b", "h2")] {
            let record = ExecutionRecord::new(
                uuid,
                hash,
                life.times(),
                &usage,
                1,
                256,
                "idle",
                serde_json::json!({"k": uuid}),
            );
            records.insert(&record).await.unwrap();
        }
        records.close().await;

        let records = Records::open(&path).await.unwrap();
        let listed = records.list(10).await.unwrap();
        assert_eq!(listed.len(), 2);
        assert_eq!(listed[0].uuid, "b");
        assert_eq!(listed[1].cpu_time_user, 1.5);
        assert_eq!(listed[1].memory_peak, 300 << 20);
        assert_eq!(
            listed[1].time_stopped,
            life.times().stopped_at.map(|t| {
                DateTime::parse_from_rfc3339(&t.to_rfc3339())
                    .unwrap()
                    .with_timezone(&Utc)
            })
        );
        assert_eq!(listed[0].message["k"], "b");
        assert_eq!(records.list(1).await.unwrap().len(), 1);
    }
}
