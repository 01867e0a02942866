//! Delegation: a sender that is not the content's owner must be authorized in the
//! owner's `security` aggregate for this chain, channel, type, post type or key.

use super::content::Content;
use super::envelope::Envelope;
use crate::error::{Rejection, code};
use crate::store::{Tx, address_key, aggregates};
use serde_json::Value;

pub const SECURITY_KEY: &str = "security";

pub async fn check(
    tx: &mut Tx<'_>,
    envelope: &Envelope,
    content: &Content,
) -> Result<(), Rejection> {
    let is_owner = address_key(&envelope.sender) == address_key(&content.address);
    let aggregate_key = aggregate_key(content);
    if !is_owner && aggregate_key.as_deref() == Some(SECURITY_KEY) {
        return Err(Rejection::new(
            code::PERMISSION,
            "only the owner can change its security aggregate",
        ));
    }
    if is_owner {
        return Ok(());
    }
    let security = aggregates::get(&mut **tx, &content.address, &[SECURITY_KEY.to_string()])
        .await
        .map_err(|e| Rejection::retry(code::PERMISSION, format!("cannot read permissions: {e}")))?;
    let authorizations = security
        .get(SECURITY_KEY)
        .and_then(|s| s.get("authorizations"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let post_type = (envelope.type_name() == "POST")
        .then(|| content.str_field("type").map(str::to_string))
        .flatten();
    if authorizations.iter().any(|authorization| {
        allows(
            authorization,
            envelope,
            post_type.as_deref(),
            aggregate_key.as_deref(),
        )
    }) {
        Ok(())
    } else {
        Err(Rejection::new(
            code::PERMISSION,
            format!(
                "{} is not authorized to send this {} on behalf of {}",
                envelope.sender,
                envelope.type_name(),
                content.address
            ),
        ))
    }
}

/// The aggregate key of an AGGREGATE content (a string, or a dict with `name`).
pub fn aggregate_key(content: &Content) -> Option<String> {
    match content.value.get("key")? {
        Value::String(key) => Some(key.clone()),
        Value::Object(dict) => dict.get("name").and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}

fn list_allows(authorization: &Value, field: &str, value: Option<&str>) -> bool {
    match authorization.get(field).and_then(Value::as_array) {
        None => true,
        Some(list) if list.is_empty() => true,
        Some(list) => value.is_some_and(|v| list.iter().any(|x| x.as_str() == Some(v))),
    }
}

fn allows(
    authorization: &Value,
    envelope: &Envelope,
    post_type: Option<&str>,
    aggregate_key: Option<&str>,
) -> bool {
    let Some(address) = authorization.get("address").and_then(Value::as_str) else {
        return false;
    };
    if address_key(address) != address_key(&envelope.sender) {
        return false;
    }
    if let Some(chain) = authorization.get("chain").and_then(Value::as_str)
        && chain != envelope.chain.to_string()
    {
        return false;
    }
    list_allows(authorization, "channels", envelope.channel.as_deref())
        && list_allows(authorization, "types", Some(envelope.type_name()))
        && (post_type.is_none() || list_allows(authorization, "post_types", post_type))
        && (aggregate_key.is_none() || list_allows(authorization, "aggregate_keys", aggregate_key))
}
