//! `GET /api/v0/posts.json` and `GET /api/v1/posts.json`: POSTs with their newest
//! amend applied (what the official CLI's `post list` reads).

use super::{State, iso_time, query_map};
use crate::error::ApiError;
use crate::store::messages::{self, MessageRecord};
use crate::store::query::{self, MessageFilter};
use axum::Json;
use axum::http::Uri;
use serde_json::{Value, json};
use std::collections::HashMap;

/// The posts filters, in terms of message filters: `types` are POST types and
/// `addresses` are owners.
fn filter(params: &HashMap<String, String>) -> Result<(MessageFilter, query::Page), ApiError> {
    let mut renamed = params.clone();
    renamed.remove("msgTypes");
    renamed.remove("msgStatuses");
    renamed.remove("owners");
    if let Some(types) = renamed.remove("types") {
        renamed.insert("contentTypes".into(), types);
    }
    if let Some(addresses) = renamed.remove("addresses") {
        renamed.insert("owners".into(), addresses);
    }
    renamed.insert("msgTypes".into(), "POST".into());
    let (mut filter, page) = MessageFilter::from_params(&renamed).map_err(ApiError::bad_request)?;
    filter.exclude_amends = true;
    Ok((filter, page))
}

struct Post {
    original: MessageRecord,
    latest: Option<MessageRecord>,
}

impl Post {
    fn current(&self) -> &MessageRecord {
        self.latest.as_ref().unwrap_or(&self.original)
    }

    fn body(&self) -> Value {
        self.current()
            .content
            .as_ref()
            .and_then(|c| c.get("content"))
            .cloned()
            .unwrap_or(Value::Null)
    }

    fn field(record: &MessageRecord, name: &str) -> Value {
        record
            .content
            .as_ref()
            .and_then(|c| c.get(name))
            .cloned()
            .unwrap_or(Value::Null)
    }

    fn v1(&self) -> Value {
        let original = &self.original;
        json!({
            "item_hash": self.current().item_hash,
            "content": self.body(),
            "original_item_hash": original.item_hash,
            "original_type": original.content_type,
            "address": original.owner,
            "ref": Self::field(original, "ref"),
            "channel": original.channel,
            "created": iso_time(original.time),
            "last_updated": iso_time(self.current().time),
        })
    }

    fn v0(&self) -> Value {
        let original = &self.original;
        let current = self.current();
        json!({
            "chain": current.chain,
            "item_hash": current.item_hash,
            "sender": current.sender,
            "type": original.content_type,
            "channel": original.channel,
            "confirmed": false,
            "confirmations": [],
            "content": self.body(),
            "time": current.time,
            "original_item_hash": original.item_hash,
            "original_type": original.content_type,
            "hash": current.item_hash,
            "address": original.owner,
            "ref": Self::field(original, "ref"),
        })
    }
}

async fn posts(ccn: &crate::Ccn, uri: &Uri, lean: bool) -> Result<Json<Value>, ApiError> {
    let params = query_map(uri)?;
    let (filter, page) = filter(&params)?;
    let cursor = params.get("cursor");
    let offset = match cursor {
        Some(c) if !c.is_empty() => c
            .parse()
            .map_err(|_| ApiError::bad_request(format!("invalid cursor {c:?}")))?,
        Some(_) => 0,
        None => page.offset(),
    };
    let (originals, total) = query::find(&ccn.db.pool, &filter, page.per_page, offset).await?;
    let mut rendered = Vec::with_capacity(originals.len());
    for original in originals {
        let latest =
            messages::latest_amend(&ccn.db.pool, &original.item_hash, &original.owner).await?;
        let post = Post { original, latest };
        rendered.push(if lean { post.v1() } else { post.v0() });
    }
    let mut body = json!({
        "posts": rendered,
        "pagination_page": page.page,
        "pagination_total": total,
        "pagination_per_page": page.per_page,
        "pagination_item": "posts",
    });
    if cursor.is_some() {
        let next = offset + body["posts"].as_array().map_or(0, Vec::len) as u64;
        body["next_cursor"] = json!((next < total as u64).then(|| next.to_string()));
    }
    Ok(Json(body))
}

pub async fn v0(axum::extract::State(ccn): State, uri: Uri) -> Result<Json<Value>, ApiError> {
    posts(&ccn, &uri, false).await
}

pub async fn v1(axum::extract::State(ccn): State, uri: Uri) -> Result<Json<Value>, ApiError> {
    posts(&ccn, &uri, true).await
}
