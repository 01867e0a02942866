//! Aggregates: each AGGREGATE message is an element; the merged view of a key is the
//! elements' dicts applied in time order (top-level keys, last write wins).

use super::{Tx, address_key};
use serde_json::{Map, Value};
use sqlx::Row;

pub async fn insert_element(
    tx: &mut Tx<'_>,
    item_hash: &str,
    owner: &str,
    key: &str,
    time: f64,
    content: &Map<String, Value>,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO aggregate_elements (item_hash, owner_key, agg_key, time, content) \
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(item_hash)
    .bind(address_key(owner))
    .bind(key)
    .bind(time)
    .bind(Value::Object(content.clone()).to_string())
    .execute(&mut **tx)
    .await?;
    refresh(tx, owner, key).await
}

/// Removes one element (a forgotten AGGREGATE) and rebuilds its key's merged view.
pub async fn remove_element(tx: &mut Tx<'_>, item_hash: &str) -> sqlx::Result<()> {
    let row = sqlx::query("SELECT owner_key, agg_key FROM aggregate_elements WHERE item_hash = $1")
        .bind(item_hash)
        .fetch_optional(&mut **tx)
        .await?;
    let Some(row) = row else { return Ok(()) };
    let owner: String = row.try_get("owner_key")?;
    let key: String = row.try_get("agg_key")?;
    sqlx::query("DELETE FROM aggregate_elements WHERE item_hash = $1")
        .bind(item_hash)
        .execute(&mut **tx)
        .await?;
    refresh(tx, &owner, &key).await
}

/// Rebuilds the merged view from all elements, so elements arriving out of time
/// order still merge as if they had arrived in order.
async fn refresh(tx: &mut Tx<'_>, owner: &str, key: &str) -> sqlx::Result<()> {
    let owner_key = address_key(owner);
    let rows = sqlx::query(
        "SELECT time, content FROM aggregate_elements WHERE owner_key = $1 AND agg_key = $2 \
         ORDER BY time ASC, item_hash ASC",
    )
    .bind(&owner_key)
    .bind(key)
    .fetch_all(&mut **tx)
    .await?;
    sqlx::query("DELETE FROM aggregates WHERE owner_key = $1 AND agg_key = $2")
        .bind(&owner_key)
        .bind(key)
        .execute(&mut **tx)
        .await?;
    if rows.is_empty() {
        return Ok(());
    }
    let mut merged = Map::new();
    let mut last_time = 0.0;
    for row in &rows {
        let content: String = row.try_get("content")?;
        last_time = row.try_get("time")?;
        if let Ok(Value::Object(element)) = serde_json::from_str(&content) {
            merged.extend(element);
        }
    }
    sqlx::query(
        "INSERT INTO aggregates (owner_key, agg_key, content, last_time) VALUES ($1, $2, $3, $4)",
    )
    .bind(&owner_key)
    .bind(key)
    .bind(Value::Object(merged).to_string())
    .bind(last_time)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The merged aggregates of an owner, optionally limited to some keys.
pub async fn get<'e, E>(
    executor: E,
    owner: &str,
    keys: &[String],
) -> sqlx::Result<Map<String, Value>>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let rows = sqlx::query(
        "SELECT agg_key, content FROM aggregates WHERE owner_key = $1 ORDER BY agg_key",
    )
    .bind(address_key(owner))
    .fetch_all(executor)
    .await?;
    let mut data = Map::new();
    for row in rows {
        let key: String = row.try_get("agg_key")?;
        if !keys.is_empty() && !keys.contains(&key) {
            continue;
        }
        let content: String = row.try_get("content")?;
        data.insert(
            key,
            serde_json::from_str(&content).unwrap_or(Value::Object(Map::new())),
        );
    }
    Ok(data)
}
