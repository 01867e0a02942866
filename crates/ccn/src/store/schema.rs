//! Schema migrations, written in the SQL subset that SQLite and PostgreSQL share.

use super::Db;
use sqlx::AssertSqlSafe;

/// Each step runs once, in order; its index is recorded in `schema_version`.
const MIGRATIONS: &[&[&str]] = &[&[
    // Processed (and later forgotten) messages. Indexed columns are copies of
    // fields of the content, so queries never parse JSON in SQL.
    "CREATE TABLE IF NOT EXISTS messages (
        item_hash TEXT PRIMARY KEY,
        message_type TEXT NOT NULL,
        chain TEXT NOT NULL,
        sender TEXT NOT NULL,
        sender_key TEXT NOT NULL,
        owner TEXT NOT NULL,
        owner_key TEXT NOT NULL,
        channel TEXT,
        item_type TEXT NOT NULL,
        item_content TEXT,
        content TEXT,
        signature TEXT NOT NULL,
        time DOUBLE PRECISION NOT NULL,
        reception_time DOUBLE PRECISION NOT NULL,
        status TEXT NOT NULL,
        content_type TEXT,
        content_ref TEXT,
        content_key TEXT,
        file_hash TEXT,
        tags TEXT,
        payment_type TEXT,
        hold_cost DOUBLE PRECISION NOT NULL DEFAULT 0,
        credit_per_hour DOUBLE PRECISION NOT NULL DEFAULT 0,
        forgotten_by TEXT
    )",
    "CREATE INDEX IF NOT EXISTS messages_time ON messages (time)",
    "CREATE INDEX IF NOT EXISTS messages_owner ON messages (owner_key, message_type)",
    "CREATE INDEX IF NOT EXISTS messages_sender ON messages (sender_key)",
    "CREATE INDEX IF NOT EXISTS messages_ref ON messages (content_ref)",
    "CREATE INDEX IF NOT EXISTS messages_file ON messages (file_hash)",
    // Messages waiting for their content, file or dependency.
    "CREATE TABLE IF NOT EXISTS pending_messages (
        item_hash TEXT PRIMARY KEY,
        message TEXT NOT NULL,
        reception_time DOUBLE PRECISION NOT NULL,
        attempts BIGINT NOT NULL,
        last_code BIGINT NOT NULL,
        last_error TEXT NOT NULL
    )",
    // The last rejection of each hash, so its status can be asked for.
    "CREATE TABLE IF NOT EXISTS rejected_messages (
        item_hash TEXT PRIMARY KEY,
        message TEXT NOT NULL,
        error_code BIGINT NOT NULL,
        details TEXT NOT NULL,
        reception_time DOUBLE PRECISION NOT NULL
    )",
    // One row per AGGREGATE message; `aggregates` holds the merged view per key.
    "CREATE TABLE IF NOT EXISTS aggregate_elements (
        item_hash TEXT PRIMARY KEY,
        owner_key TEXT NOT NULL,
        agg_key TEXT NOT NULL,
        time DOUBLE PRECISION NOT NULL,
        content TEXT NOT NULL
    )",
    "CREATE INDEX IF NOT EXISTS aggregate_elements_key ON aggregate_elements (owner_key, agg_key)",
    "CREATE TABLE IF NOT EXISTS aggregates (
        owner_key TEXT NOT NULL,
        agg_key TEXT NOT NULL,
        content TEXT NOT NULL,
        last_time DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (owner_key, agg_key)
    )",
    // Files held on disk (content-addressed by sha256).
    "CREATE TABLE IF NOT EXISTS files (
        file_hash TEXT PRIMARY KEY,
        size BIGINT NOT NULL,
        kind TEXT NOT NULL,
        created DOUBLE PRECISION NOT NULL
    )",
    "CREATE TABLE IF NOT EXISTS balances (
        address_key TEXT PRIMARY KEY,
        address TEXT NOT NULL,
        balance DOUBLE PRECISION NOT NULL,
        credit_balance BIGINT NOT NULL
    )",
]];

pub async fn migrate(db: &Db) -> anyhow::Result<()> {
    sqlx::query("CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL)")
        .execute(&db.pool)
        .await?;
    let mut tx = db.begin().await?;
    let current: Option<i64> = sqlx::query_scalar("SELECT MAX(version) FROM schema_version")
        .fetch_one(&mut *tx)
        .await?;
    let current = current.unwrap_or(0) as usize;
    for (index, steps) in MIGRATIONS.iter().enumerate().skip(current) {
        for step in *steps {
            sqlx::query(AssertSqlSafe(*step)).execute(&mut *tx).await?;
        }
        sqlx::query("INSERT INTO schema_version (version) VALUES ($1)")
            .bind(index as i64 + 1)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(())
}
