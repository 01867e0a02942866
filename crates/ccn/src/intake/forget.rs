//! FORGET: the targets lose their content and gain `forgotten_by`; their effects
//! (aggregate elements, stored files) are undone.

use crate::error::{Rejection, code};
use crate::store::messages::{self, status};
use crate::store::{Tx, address_key, aggregates, pending};
use serde_json::Value;

/// What to do once the transaction has committed.
#[derive(Debug, Default)]
pub struct Forgotten {
    /// Files no processed STORE points at any more, to delete from disk.
    pub orphaned_files: Vec<String>,
}

fn list(content: &Value, field: &str) -> Vec<String> {
    content
        .get(field)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_string)
        .collect()
}

/// What a FORGET names, expanded as upstream does: `aggregates[]` names a whole
/// aggregate by any of its elements (every element of that owner and key goes),
/// and a forgotten POST takes its amends with it.
async fn targets(tx: &mut Tx<'_>, content: &Value) -> Result<Vec<String>, Rejection> {
    let db_error = |e: sqlx::Error| Rejection::retry(code::FORGET_TARGET_NOT_FOUND, e.to_string());
    let mut targets = list(content, "hashes");
    for element in list(content, "aggregates") {
        let Some(record) = messages::get(&mut **tx, &element).await.map_err(db_error)? else {
            targets.push(element);
            continue;
        };
        if record.message_type != "AGGREGATE" {
            return Err(Rejection::new(
                code::FORGET_NOT_ALLOWED,
                format!(
                    "{element} in `aggregates` is a {}, not an AGGREGATE",
                    record.message_type
                ),
            ));
        }
        targets.push(element.clone());
        if let Some(key) = &record.content_key {
            targets.extend(
                messages::aggregate_elements(tx, &record.owner, key)
                    .await
                    .map_err(db_error)?,
            );
        }
    }
    let mut amends = Vec::new();
    for target in &targets {
        amends.extend(messages::amends_of(tx, target).await.map_err(db_error)?);
    }
    targets.extend(amends);
    let mut seen = std::collections::HashSet::new();
    targets.retain(|t| seen.insert(t.clone()));
    Ok(targets)
}

pub async fn apply(
    tx: &mut Tx<'_>,
    forget_hash: &str,
    owner: &str,
    content: &Value,
) -> Result<Forgotten, Rejection> {
    let db_error = |e: sqlx::Error| Rejection::retry(code::FORGET_TARGET_NOT_FOUND, e.to_string());
    let mut found = Vec::new();
    // Check every target before changing anything.
    for hash in targets(tx, content).await? {
        let Some(target) = messages::get(&mut **tx, &hash).await.map_err(db_error)? else {
            let waiting = pending::get(&mut **tx, &hash)
                .await
                .map_err(db_error)?
                .is_some();
            return Err(Rejection::retry(
                code::FORGET_TARGET_NOT_FOUND,
                if waiting {
                    format!("target {hash} is still pending")
                } else {
                    format!("target {hash} not found")
                },
            ));
        };
        if target.message_type == "FORGET" {
            return Err(Rejection::new(
                code::FORGET_FORGET,
                format!("{hash} is a FORGET: a FORGET cannot be forgotten"),
            ));
        }
        if address_key(&target.owner) != address_key(owner) {
            return Err(Rejection::new(
                code::FORGET_NOT_ALLOWED,
                format!("{hash} belongs to {}, not to {owner}", target.owner),
            ));
        }
        if target.message_type == "STORE" && target.status == status::PROCESSED {
            let users = messages::vms_using_store(tx, &hash)
                .await
                .map_err(db_error)?;
            if !users.is_empty() {
                return Err(Rejection::new(
                    code::FORGET_NOT_ALLOWED,
                    format!("STORE {hash} is still used by {}", users.join(", ")),
                ));
            }
        }
        found.push(target);
    }
    let mut outcome = Forgotten::default();
    for target in found {
        let mut forgotten_by = target.forgotten_by.clone();
        if !forgotten_by.iter().any(|h| h == forget_hash) {
            forgotten_by.push(forget_hash.to_string());
        }
        messages::mark_forgotten(tx, &target.item_hash, &forgotten_by)
            .await
            .map_err(db_error)?;
        if target.status != status::PROCESSED {
            continue;
        }
        match target.message_type.as_str() {
            "AGGREGATE" => aggregates::remove_element(tx, &target.item_hash)
                .await
                .map_err(db_error)?,
            "STORE" => {
                if let Some(file) = &target.file_hash
                    && !messages::file_still_referenced(tx, file, &target.item_hash)
                        .await
                        .map_err(db_error)?
                {
                    crate::store::files::delete(&mut **tx, file)
                        .await
                        .map_err(db_error)?;
                    outcome.orphaned_files.push(file.clone());
                }
            }
            _ => {}
        }
    }
    Ok(outcome)
}
