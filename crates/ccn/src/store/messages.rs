//! The `messages` table: processed and forgotten messages with their indexed fields.

use super::{Tx, address_key};
use serde_json::{Value, json};
use sqlx::any::AnyRow;
use sqlx::{Executor, Row};

/// Message statuses as the API spells them.
pub mod status {
    pub const PENDING: &str = "pending";
    pub const PROCESSED: &str = "processed";
    pub const REJECTED: &str = "rejected";
    pub const FORGOTTEN: &str = "forgotten";
    pub const REMOVING: &str = "removing";
    pub const REMOVED: &str = "removed";
}

/// A stored message and the fields that queries filter on.
#[derive(Debug, Clone, PartialEq)]
pub struct MessageRecord {
    pub item_hash: String,
    pub message_type: String,
    pub chain: String,
    pub sender: String,
    pub owner: String,
    pub channel: Option<String>,
    pub item_type: String,
    pub item_content: Option<String>,
    pub content: Option<Value>,
    /// A string for EVM chains, an object for chains that embed a public key.
    pub signature: Value,
    pub time: f64,
    pub reception_time: f64,
    pub status: String,
    /// `content.type` (POST type, program type), for `contentTypes`.
    pub content_type: Option<String>,
    /// `content.ref`, for `refs`.
    pub content_ref: Option<String>,
    /// `content.key` of an AGGREGATE, for `contentKeys`.
    pub content_key: Option<String>,
    /// `content.item_hash` of a STORE, for `contentHashes`.
    pub file_hash: Option<String>,
    pub tags: Vec<String>,
    pub payment_type: Option<String>,
    /// ALEPH held while this message is active (hold payment).
    pub hold_cost: f64,
    /// Credits consumed per hour while this message is active (credit payment).
    pub credit_per_hour: f64,
    pub forgotten_by: Vec<String>,
}

pub(crate) const COLUMNS: &str = "item_hash, message_type, chain, sender, owner, channel, item_type, \
    item_content, content, signature, time, reception_time, status, content_type, content_ref, \
    content_key, file_hash, tags, payment_type, hold_cost, credit_per_hour, forgotten_by";

impl MessageRecord {
    /// The message as the API serves it (the shape `aleph-message` and the SDKs parse).
    pub fn to_api_json(&self) -> Value {
        let mut message = json!({
            "chain": self.chain,
            "sender": self.sender,
            "type": self.message_type,
            "channel": self.channel,
            "item_type": self.item_type,
            "item_content": self.item_content,
            "item_hash": self.item_hash,
            "signature": self.signature,
            "time": self.time,
            "confirmed": false,
            "confirmations": [],
        });
        if let Some(content) = &self.content {
            message["content"] = content.clone();
        }
        if !self.forgotten_by.is_empty() {
            message["forgotten_by"] = json!(self.forgotten_by);
        }
        message
    }

    /// The skeleton served for a forgotten message (no content).
    pub fn to_forgotten_json(&self) -> Value {
        json!({
            "chain": self.chain,
            "sender": self.sender,
            "type": self.message_type,
            "channel": self.channel,
            "item_type": self.item_type,
            "item_hash": self.item_hash,
            "signature": self.signature,
            "time": self.time,
        })
    }

    pub(crate) fn from_row(row: &AnyRow) -> sqlx::Result<Self> {
        let content: Option<String> = row.try_get("content")?;
        let signature: String = row.try_get("signature")?;
        let tags: Option<String> = row.try_get("tags")?;
        let forgotten_by: Option<String> = row.try_get("forgotten_by")?;
        Ok(Self {
            item_hash: row.try_get("item_hash")?,
            message_type: row.try_get("message_type")?,
            chain: row.try_get("chain")?,
            sender: row.try_get("sender")?,
            owner: row.try_get("owner")?,
            channel: row.try_get("channel")?,
            item_type: row.try_get("item_type")?,
            item_content: row.try_get("item_content")?,
            content: content.and_then(|c| serde_json::from_str(&c).ok()),
            signature: serde_json::from_str(&signature).unwrap_or(Value::String(signature)),
            time: row.try_get("time")?,
            reception_time: row.try_get("reception_time")?,
            status: row.try_get("status")?,
            content_type: row.try_get("content_type")?,
            content_ref: row.try_get("content_ref")?,
            content_key: row.try_get("content_key")?,
            file_hash: row.try_get("file_hash")?,
            tags: decode_list(tags.as_deref()),
            payment_type: row.try_get("payment_type")?,
            hold_cost: row.try_get("hold_cost")?,
            credit_per_hour: row.try_get("credit_per_hour")?,
            forgotten_by: forgotten_by
                .and_then(|f| serde_json::from_str(&f).ok())
                .unwrap_or_default(),
        })
    }
}

/// The fields of a content that queries filter on.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct IndexFields {
    pub content_type: Option<String>,
    pub content_ref: Option<String>,
    pub content_key: Option<String>,
    pub file_hash: Option<String>,
    pub tags: Vec<String>,
    pub payment_type: Option<String>,
}

impl IndexFields {
    pub fn of(message_type: &str, content: &serde_json::Map<String, Value>) -> Self {
        let text = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_string);
        IndexFields {
            content_type: match message_type {
                "POST" | "PROGRAM" => text(content.get("type")),
                _ => None,
            },
            content_ref: text(content.get("ref")),
            content_key: match (message_type, content.get("key")) {
                ("AGGREGATE", Some(Value::String(key))) => Some(key.clone()),
                ("AGGREGATE", Some(Value::Object(dict))) => text(dict.get("name")),
                _ => None,
            },
            file_hash: match message_type {
                "STORE" => text(content.get("item_hash")),
                _ => None,
            },
            tags: content
                .get("content")
                .and_then(|c| c.get("tags"))
                .and_then(Value::as_array)
                .map(|tags| {
                    tags.iter()
                        .filter_map(Value::as_str)
                        // Commas separate stored tags; a tag with one cannot be matched.
                        .filter(|t| !t.contains(','))
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default(),
            payment_type: match message_type {
                "PROGRAM" | "INSTANCE" | "STORE" => Some(
                    content
                        .get("payment")
                        .and_then(|p| p.get("type"))
                        .and_then(Value::as_str)
                        .unwrap_or("hold")
                        .to_string(),
                ),
                _ => None,
            },
        }
    }
}

impl MessageRecord {
    /// A message not (yet) stored (pending or rejected), described from the
    /// message as received so the same filters apply to it.
    pub fn from_received(raw: &Value, status: &str, reception_time: f64) -> MessageRecord {
        let text = |k: &str| raw.get(k).and_then(Value::as_str).map(str::to_string);
        let message_type = text("type").unwrap_or_default();
        let sender = text("sender").unwrap_or_default();
        let content: Option<Value> = text("item_content")
            .and_then(|c| serde_json::from_str(&c).ok())
            .filter(Value::is_object);
        let empty = serde_json::Map::new();
        let map = content
            .as_ref()
            .and_then(Value::as_object)
            .unwrap_or(&empty);
        let index = IndexFields::of(&message_type, map);
        MessageRecord {
            item_hash: text("item_hash").unwrap_or_default(),
            chain: text("chain").unwrap_or_default(),
            owner: map
                .get("address")
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or_else(|| sender.clone()),
            sender,
            channel: text("channel"),
            item_type: text("item_type").unwrap_or_else(|| "inline".into()),
            item_content: text("item_content"),
            content,
            signature: raw.get("signature").cloned().unwrap_or(Value::Null),
            time: raw.get("time").and_then(Value::as_f64).unwrap_or(0.0),
            reception_time,
            status: status.to_string(),
            message_type,
            content_type: index.content_type,
            content_ref: index.content_ref,
            content_key: index.content_key,
            file_hash: index.file_hash,
            tags: index.tags,
            payment_type: index.payment_type,
            hold_cost: 0.0,
            credit_per_hour: 0.0,
            forgotten_by: Vec::new(),
        }
    }
}

/// Tags are stored as `,a,b,` so one `LIKE '%,a,%'` finds a tag.
pub(crate) fn encode_list(items: &[String]) -> Option<String> {
    if items.is_empty() {
        None
    } else {
        Some(format!(",{},", items.join(",")))
    }
}

fn decode_list(stored: Option<&str>) -> Vec<String> {
    stored
        .map(|s| {
            s.split(',')
                .filter(|t| !t.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

pub async fn insert(tx: &mut Tx<'_>, record: &MessageRecord) -> sqlx::Result<()> {
    let sql = format!(
        "INSERT INTO messages ({COLUMNS}, sender_key, owner_key) VALUES \
         ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23, $24)"
    );
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(&record.item_hash)
        .bind(&record.message_type)
        .bind(&record.chain)
        .bind(&record.sender)
        .bind(&record.owner)
        .bind(record.channel.clone())
        .bind(&record.item_type)
        .bind(record.item_content.clone())
        .bind(record.content.as_ref().map(Value::to_string))
        .bind(record.signature.to_string())
        .bind(record.time)
        .bind(record.reception_time)
        .bind(&record.status)
        .bind(record.content_type.clone())
        .bind(record.content_ref.clone())
        .bind(record.content_key.clone())
        .bind(record.file_hash.clone())
        .bind(encode_list(&record.tags))
        .bind(record.payment_type.clone())
        .bind(record.hold_cost)
        .bind(record.credit_per_hour)
        .bind(if record.forgotten_by.is_empty() {
            None
        } else {
            Some(serde_json::to_string(&record.forgotten_by).unwrap_or_default())
        })
        .bind(address_key(&record.sender))
        .bind(address_key(&record.owner))
        .execute(&mut **tx)
        .await?;
    Ok(())
}

pub async fn get<'e, E>(executor: E, item_hash: &str) -> sqlx::Result<Option<MessageRecord>>
where
    E: Executor<'e, Database = sqlx::Any>,
{
    let sql = format!("SELECT {COLUMNS} FROM messages WHERE item_hash = $1");
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(item_hash)
        .fetch_optional(executor)
        .await?;
    row.as_ref().map(MessageRecord::from_row).transpose()
}

/// Marks a message forgotten: its content is dropped, `forgotten_by` records who did it.
pub async fn mark_forgotten(
    tx: &mut Tx<'_>,
    item_hash: &str,
    forgotten_by: &[String],
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE messages SET status = $1, content = NULL, item_content = NULL, \
         hold_cost = 0, credit_per_hour = 0, forgotten_by = $2 WHERE item_hash = $3",
    )
    .bind(status::FORGOTTEN)
    .bind(serde_json::to_string(forgotten_by).unwrap_or_default())
    .bind(item_hash)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The newest processed STORE that amends `original` through `content.ref`, or the
/// original itself: what a `use_latest` reference resolves to.
pub async fn processed_store(
    tx: &mut Tx<'_>,
    item_hash: &str,
) -> sqlx::Result<Option<MessageRecord>> {
    let sql = format!(
        "SELECT {COLUMNS} FROM messages WHERE item_hash = $1 AND message_type = 'STORE' AND status = $2"
    );
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(item_hash)
        .bind(status::PROCESSED)
        .fetch_optional(&mut **tx)
        .await?;
    row.as_ref().map(MessageRecord::from_row).transpose()
}

/// Processed VMs (PROGRAM, INSTANCE) that use `store_hash` as code, runtime, data or volume.
pub async fn vms_using_store(tx: &mut Tx<'_>, store_hash: &str) -> sqlx::Result<Vec<String>> {
    // Dependencies are kept in the content JSON; a LIKE on the quoted hash narrows the
    // candidates and the caller's exact check is done on parsed content.
    let pattern = format!("%\"{store_hash}\"%");
    let rows = sqlx::query(
        "SELECT item_hash, content FROM messages WHERE status = $1 \
         AND message_type IN ('PROGRAM', 'INSTANCE') AND content LIKE $2",
    )
    .bind(status::PROCESSED)
    .bind(pattern)
    .fetch_all(&mut **tx)
    .await?;
    let mut users = Vec::new();
    for row in rows {
        let hash: String = row.try_get("item_hash")?;
        let content: Option<String> = row.try_get("content")?;
        let content: Value = content
            .and_then(|c| serde_json::from_str(&c).ok())
            .unwrap_or(Value::Null);
        if crate::intake::dependencies::referenced_hashes(&content)
            .iter()
            .any(|r| r == store_hash)
        {
            users.push(hash);
        }
    }
    Ok(users)
}

/// Totals that balance checks compare against: ALEPH held and credits per hour
/// of every active message of an owner.
pub async fn owner_costs(tx: &mut Tx<'_>, owner: &str) -> sqlx::Result<(f64, f64)> {
    let row = sqlx::query(
        "SELECT COALESCE(SUM(hold_cost), 0.0) AS hold, COALESCE(SUM(credit_per_hour), 0.0) AS credit \
         FROM messages WHERE owner_key = $1 AND status = $2",
    )
    .bind(address_key(owner))
    .bind(status::PROCESSED)
    .fetch_one(&mut **tx)
    .await?;
    Ok((row.try_get("hold")?, row.try_get("credit")?))
}

/// Whether another processed STORE still points at this file.
pub async fn file_still_referenced(
    tx: &mut Tx<'_>,
    file_hash: &str,
    except_message: &str,
) -> sqlx::Result<bool> {
    let count: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM messages WHERE file_hash = $1 AND status = $2 AND item_hash <> $3",
    )
    .bind(file_hash)
    .bind(status::PROCESSED)
    .bind(except_message)
    .fetch_one(&mut **tx)
    .await?;
    Ok(count > 0)
}

/// A stored file as its owner's STOREs describe it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredFile {
    pub store_hash: String,
    pub file_hash: String,
    pub owner: String,
    pub content_ref: Option<String>,
    pub size: i64,
    pub created: f64,
}

const STORED_FILE_COLUMNS: &str = "m.item_hash, m.file_hash, m.owner, m.content_ref, \
    COALESCE(f.size, 0) AS size, m.reception_time";

fn stored_file(row: &AnyRow) -> sqlx::Result<StoredFile> {
    Ok(StoredFile {
        store_hash: row.try_get("item_hash")?,
        file_hash: row
            .try_get::<Option<String>, _>("file_hash")?
            .unwrap_or_default(),
        owner: row.try_get("owner")?,
        content_ref: row.try_get("content_ref")?,
        size: row.try_get("size")?,
        created: row.try_get("reception_time")?,
    })
}

/// Processed STOREs of an owner, newest first (or oldest first with `ascending`).
pub async fn files_of(
    pool: &sqlx::AnyPool,
    owner: &str,
    ascending: bool,
) -> sqlx::Result<Vec<StoredFile>> {
    let order = if ascending { "ASC" } else { "DESC" };
    let sql = format!(
        "SELECT {STORED_FILE_COLUMNS} FROM messages m LEFT JOIN files f ON f.file_hash = m.file_hash \
         WHERE m.owner_key = $1 AND m.message_type = 'STORE' AND m.status = $2 \
         ORDER BY m.time {order}, m.item_hash {order}"
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(address_key(owner))
        .bind(status::PROCESSED)
        .fetch_all(pool)
        .await?;
    rows.iter().map(stored_file).collect()
}

/// The file of a processed STORE message.
pub async fn file_of_store(
    pool: &sqlx::AnyPool,
    store_hash: &str,
) -> sqlx::Result<Option<StoredFile>> {
    let sql = format!(
        "SELECT {STORED_FILE_COLUMNS} FROM messages m LEFT JOIN files f ON f.file_hash = m.file_hash \
         WHERE m.item_hash = $1 AND m.message_type = 'STORE' AND m.status = $2"
    );
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(store_hash)
        .bind(status::PROCESSED)
        .fetch_optional(pool)
        .await?;
    row.as_ref().map(stored_file).transpose()
}

/// The newest processed STORE with this `ref` (of this owner, when given).
pub async fn file_by_ref(
    pool: &sqlx::AnyPool,
    reference: &str,
    owner: Option<&str>,
) -> sqlx::Result<Option<StoredFile>> {
    let owner_clause = if owner.is_some() {
        " AND m.owner_key = $3"
    } else {
        ""
    };
    let sql = format!(
        "SELECT {STORED_FILE_COLUMNS} FROM messages m LEFT JOIN files f ON f.file_hash = m.file_hash \
         WHERE m.content_ref = $1 AND m.message_type = 'STORE' AND m.status = $2{owner_clause} \
         ORDER BY m.time DESC LIMIT 1"
    );
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(reference)
        .bind(status::PROCESSED);
    if let Some(owner) = owner {
        query = query.bind(address_key(owner));
    }
    let row = query.fetch_optional(pool).await?;
    row.as_ref().map(stored_file).transpose()
}

/// Processed AGGREGATE messages of an owner's key.
pub async fn aggregate_elements(
    tx: &mut Tx<'_>,
    owner: &str,
    key: &str,
) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar(
        "SELECT item_hash FROM messages WHERE owner_key = $1 AND content_key = $2 \
         AND message_type = 'AGGREGATE' AND status = $3",
    )
    .bind(address_key(owner))
    .bind(key)
    .bind(status::PROCESSED)
    .fetch_all(&mut **tx)
    .await
}

/// Processed amends (POSTs of type `amend`) of a POST.
pub async fn amends_of(tx: &mut Tx<'_>, post_hash: &str) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar(
        "SELECT item_hash FROM messages WHERE content_ref = $1 AND message_type = 'POST' \
         AND content_type = 'amend' AND status = $2",
    )
    .bind(post_hash)
    .bind(status::PROCESSED)
    .fetch_all(&mut **tx)
    .await
}

/// The newest processed amend of a POST by its owner.
pub async fn latest_amend(
    pool: &sqlx::AnyPool,
    post_hash: &str,
    owner: &str,
) -> sqlx::Result<Option<MessageRecord>> {
    let sql = format!(
        "SELECT {COLUMNS} FROM messages WHERE content_ref = $1 AND owner_key = $2 \
         AND message_type = 'POST' AND content_type = 'amend' AND status = $3 \
         ORDER BY time DESC, item_hash DESC LIMIT 1"
    );
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(post_hash)
        .bind(address_key(owner))
        .bind(status::PROCESSED)
        .fetch_optional(pool)
        .await?;
    row.as_ref().map(MessageRecord::from_row).transpose()
}
