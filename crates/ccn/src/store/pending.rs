//! Messages kept pending until their content, file or dependency arrives.

use sqlx::Row;

#[derive(Debug, Clone, PartialEq)]
pub struct PendingRecord {
    pub item_hash: String,
    pub message: serde_json::Value,
    pub reception_time: f64,
    pub attempts: i64,
    pub last_code: i64,
    pub last_error: String,
}

pub async fn upsert<'e, E>(executor: E, record: &PendingRecord) -> sqlx::Result<()>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    // A repeated submission keeps the first reception time: the retry window
    // counts from when the node first saw the message.
    sqlx::query(
        "INSERT INTO pending_messages (item_hash, message, reception_time, attempts, last_code, last_error) \
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (item_hash) DO UPDATE SET \
         attempts = $4, last_code = $5, last_error = $6",
    )
    .bind(&record.item_hash)
    .bind(record.message.to_string())
    .bind(record.reception_time)
    .bind(record.attempts)
    .bind(record.last_code)
    .bind(&record.last_error)
    .execute(executor)
    .await?;
    Ok(())
}

fn from_row(row: &sqlx::any::AnyRow) -> sqlx::Result<PendingRecord> {
    let message: String = row.try_get("message")?;
    Ok(PendingRecord {
        item_hash: row.try_get("item_hash")?,
        message: serde_json::from_str(&message).unwrap_or(serde_json::Value::Null),
        reception_time: row.try_get("reception_time")?,
        attempts: row.try_get("attempts")?,
        last_code: row.try_get("last_code")?,
        last_error: row.try_get("last_error")?,
    })
}

pub async fn get<'e, E>(executor: E, item_hash: &str) -> sqlx::Result<Option<PendingRecord>>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let row = sqlx::query(
        "SELECT item_hash, message, reception_time, attempts, last_code, last_error \
         FROM pending_messages WHERE item_hash = $1",
    )
    .bind(item_hash)
    .fetch_optional(executor)
    .await?;
    row.as_ref().map(from_row).transpose()
}

pub async fn all<'e, E>(executor: E) -> sqlx::Result<Vec<PendingRecord>>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let rows = sqlx::query(
        "SELECT item_hash, message, reception_time, attempts, last_code, last_error \
         FROM pending_messages ORDER BY reception_time ASC",
    )
    .fetch_all(executor)
    .await?;
    rows.iter().map(from_row).collect()
}

pub async fn delete<'e, E>(executor: E, item_hash: &str) -> sqlx::Result<()>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    sqlx::query("DELETE FROM pending_messages WHERE item_hash = $1")
        .bind(item_hash)
        .execute(executor)
        .await?;
    Ok(())
}
