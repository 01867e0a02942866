//! The last rejection of each message hash, answered by `GET /api/v0/messages/{hash}`.
//! This is a log of decisions, not message data: a rejected message has no row in
//! `messages`, `aggregates` or anywhere else.

use sqlx::Row;

#[derive(Debug, Clone, PartialEq)]
pub struct RejectionRecord {
    pub item_hash: String,
    pub message: serde_json::Value,
    pub error_code: i64,
    pub details: String,
    pub reception_time: f64,
}

pub async fn upsert<'e, E>(executor: E, record: &RejectionRecord) -> sqlx::Result<()>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    sqlx::query(
        "INSERT INTO rejected_messages (item_hash, message, error_code, details, reception_time) \
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (item_hash) DO UPDATE SET \
         message = $2, error_code = $3, details = $4, reception_time = $5",
    )
    .bind(&record.item_hash)
    .bind(record.message.to_string())
    .bind(record.error_code)
    .bind(&record.details)
    .bind(record.reception_time)
    .execute(executor)
    .await?;
    Ok(())
}

pub async fn get<'e, E>(executor: E, item_hash: &str) -> sqlx::Result<Option<RejectionRecord>>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let row = sqlx::query(
        "SELECT item_hash, message, error_code, details, reception_time \
         FROM rejected_messages WHERE item_hash = $1",
    )
    .bind(item_hash)
    .fetch_optional(executor)
    .await?;
    row.map(|row| {
        let message: String = row.try_get("message")?;
        Ok(RejectionRecord {
            item_hash: row.try_get("item_hash")?,
            message: serde_json::from_str(&message).unwrap_or(serde_json::Value::Null),
            error_code: row.try_get("error_code")?,
            details: row.try_get("details")?,
            reception_time: row.try_get("reception_time")?,
        })
    })
    .transpose()
}

/// Every recorded rejection, as (message, reception time).
pub async fn all<'e, E>(executor: E) -> sqlx::Result<Vec<(serde_json::Value, f64)>>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let rows = sqlx::query("SELECT message, reception_time FROM rejected_messages")
        .fetch_all(executor)
        .await?;
    rows.iter()
        .map(|row| {
            let message: String = row.try_get("message")?;
            Ok((
                serde_json::from_str(&message).unwrap_or(serde_json::Value::Null),
                row.try_get("reception_time")?,
            ))
        })
        .collect()
}

pub async fn delete<'e, E>(executor: E, item_hash: &str) -> sqlx::Result<()>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    sqlx::query("DELETE FROM rejected_messages WHERE item_hash = $1")
        .bind(item_hash)
        .execute(executor)
        .await?;
    Ok(())
}
