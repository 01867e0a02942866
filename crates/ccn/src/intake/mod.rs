//! Message intake: every check a message goes through, then its effects, in one
//! transaction. Envelope, hash and signature checks need no database and run
//! before the writer lock; everything that reads state runs under it, so two
//! messages never decide on the same balance or aggregate at once.

pub mod content;
pub mod dependencies;
pub mod envelope;
pub mod forget;
pub mod payment;
pub mod permissions;

use crate::Ccn;
use crate::error::{Rejection, code};
use crate::pricing;
use crate::store::messages::{self, MessageRecord, status};
use crate::store::{Tx, aggregates, pending, rejections};
use envelope::{Envelope, ItemType};
use serde_json::{Value, json};

/// What became of a submitted message.
#[derive(Debug, Clone)]
pub enum Outcome {
    Processed(MessageRecord),
    /// Kept pending: its content, file or a dependency is not there yet.
    Pending(Rejection),
    Rejected(Rejection),
    /// It was forgotten before; it stays forgotten.
    Forgotten(MessageRecord),
}

impl Outcome {
    pub fn status(&self) -> &'static str {
        match self {
            Outcome::Processed(_) => status::PROCESSED,
            Outcome::Pending(_) => status::PENDING,
            Outcome::Rejected(_) => status::REJECTED,
            Outcome::Forgotten(_) => status::FORGOTTEN,
        }
    }
}

pub(crate) fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// An internal failure (database, disk) while processing: the message stays pending.
fn internal(e: impl std::fmt::Display) -> Rejection {
    Rejection::retry(code::CONTENT_UNAVAILABLE, format!("internal error: {e}"))
}

impl Ccn {
    /// Checks a message and, with `sync`, processes it before answering; without,
    /// queues it for the background worker.
    pub async fn submit(&self, raw: Value, sync: bool) -> Outcome {
        let envelope = match self.verify(&raw) {
            Ok(envelope) => envelope,
            Err(rejection) => return Outcome::Rejected(rejection),
        };
        if let Some(done) = self.already_done(&envelope.item_hash).await {
            return done;
        }
        if !sync {
            let record = pending::PendingRecord {
                item_hash: envelope.item_hash.clone(),
                message: raw,
                reception_time: now(),
                attempts: 0,
                last_code: -1,
                last_error: "not processed yet".into(),
            };
            let written = {
                let _writer = self.writer.lock().await;
                pending::upsert(&self.db.pool, &record).await
            };
            if let Err(e) = written {
                return Outcome::Rejected(internal(e));
            }
            self.pending_notify.notify_one();
            return Outcome::Pending(Rejection::retry(-1, "queued"));
        }
        let reception_time = match pending::get(&self.db.pool, &envelope.item_hash).await {
            Ok(Some(existing)) => existing.reception_time,
            _ => now(),
        };
        self.process_verified(envelope, reception_time, 1).await
    }

    /// The checks that need no state: envelope, item hash, signature.
    pub fn verify(&self, raw: &Value) -> Result<Envelope, Rejection> {
        let envelope = envelope::parse(raw)?;
        envelope::check_inline_hash(&envelope)?;
        envelope::check_signature(&envelope)?;
        Ok(envelope)
    }

    async fn already_done(&self, item_hash: &str) -> Option<Outcome> {
        match messages::get(&self.db.pool, item_hash).await {
            Ok(Some(record)) if record.status == status::FORGOTTEN => {
                Some(Outcome::Forgotten(record))
            }
            Ok(Some(record)) => Some(Outcome::Processed(record)),
            _ => None,
        }
    }

    /// Processes a verified message; a retryable failure leaves it pending, and
    /// becomes a rejection once the retry window is over.
    pub(crate) async fn process_verified(
        &self,
        envelope: Envelope,
        reception_time: f64,
        attempts: i64,
    ) -> Outcome {
        let result = self.process(&envelope, reception_time).await;
        match result {
            Ok(outcome) => outcome,
            Err(rejection) if rejection.retryable => {
                let window = self.options.pending_retry_window.as_secs_f64();
                if now() - reception_time < window {
                    let record = pending::PendingRecord {
                        item_hash: envelope.item_hash.clone(),
                        message: envelope.raw.clone(),
                        reception_time,
                        attempts,
                        last_code: rejection.code,
                        last_error: rejection.message.clone(),
                    };
                    let _writer = self.writer.lock().await;
                    if let Err(e) = pending::upsert(&self.db.pool, &record).await {
                        tracing::warn!("cannot keep {} pending: {e}", envelope.item_hash);
                    }
                    return Outcome::Pending(rejection);
                }
                let rejection = Rejection::new(
                    rejection.code,
                    format!("{} (gave up after {attempts} attempts)", rejection.message),
                );
                self.record_rejection(&envelope, &rejection, reception_time)
                    .await;
                Outcome::Rejected(rejection)
            }
            Err(rejection) => {
                self.record_rejection(&envelope, &rejection, reception_time)
                    .await;
                Outcome::Rejected(rejection)
            }
        }
    }

    /// Records a verified sender's rejected message (so its status can be asked
    /// for) and drops it from the pending queue, in one transaction.
    async fn record_rejection(&self, envelope: &Envelope, rejection: &Rejection, at: f64) {
        let record = rejections::RejectionRecord {
            item_hash: envelope.item_hash.clone(),
            message: envelope.raw.clone(),
            error_code: rejection.code,
            details: rejection.message.clone(),
            reception_time: at,
        };
        let _writer = self.writer.lock().await;
        let result = async {
            let mut tx = self.db.begin().await?;
            pending::delete(&mut *tx, &envelope.item_hash).await?;
            rejections::upsert(&mut *tx, &record).await?;
            tx.commit().await
        }
        .await;
        if let Err(e) = result {
            tracing::warn!("cannot record rejection of {}: {e}", envelope.item_hash);
        }
    }

    async fn content_bytes(&self, envelope: &Envelope) -> Result<Vec<u8>, Rejection> {
        match envelope.item_type {
            ItemType::Inline => Ok(envelope
                .item_content
                .clone()
                .unwrap_or_default()
                .into_bytes()),
            ItemType::Storage => {
                let bytes = self
                    .files
                    .read(&envelope.item_hash)
                    .await
                    .map_err(internal)?
                    .ok_or_else(|| {
                        Rejection::retry(
                            code::CONTENT_UNAVAILABLE,
                            format!(
                                "content file {} not found: upload it to /api/v0/storage/add_json or add_file",
                                envelope.item_hash
                            ),
                        )
                    })?;
                let computed = envelope::sha256_hex(&bytes);
                if computed != envelope.item_hash {
                    return Err(Rejection::format(format!(
                        "item_hash does not match the stored content ({computed})"
                    )));
                }
                Ok(bytes)
            }
            ItemType::Ipfs => Err(Rejection::retry(
                code::CONTENT_UNAVAILABLE,
                "IPFS content is not available on this node",
            )),
        }
    }

    async fn process(
        &self,
        envelope: &Envelope,
        reception_time: f64,
    ) -> Result<Outcome, Rejection> {
        let bytes = self.content_bytes(envelope).await?;
        let content = content::parse(envelope.message_type, &bytes)?;
        let _writer = self.writer.lock().await;
        if let Some(done) = self.already_done(&envelope.item_hash).await {
            return Ok(done);
        }
        let mut tx = self.db.begin().await.map_err(internal)?;
        permissions::check(&mut tx, envelope, &content).await?;
        let mut record = self.record(envelope, &content, reception_time);
        let mut orphaned_files = Vec::new();
        match envelope.type_name() {
            "POST" => self.check_amend(&mut tx, &content).await?,
            "AGGREGATE" => {
                let key = permissions::aggregate_key(&content)
                    .ok_or_else(|| Rejection::format("AGGREGATE content needs a key"))?;
                let element = content
                    .value
                    .get("content")
                    .and_then(Value::as_object)
                    .cloned()
                    .unwrap_or_default();
                aggregates::insert_element(
                    &mut tx,
                    &envelope.item_hash,
                    &content.address,
                    &key,
                    content.time,
                    &element,
                )
                .await
                .map_err(internal)?;
            }
            "STORE" => {
                let size = self.store_file_size(&record).await?;
                let cost = pricing::file_cost(size, &content.value);
                payment::check(&mut tx, &content.address, &cost).await?;
                record.hold_cost = if cost.payment_type == "hold" {
                    cost.hold
                } else {
                    0.0
                };
                record.credit_per_hour = if cost.payment_type == "credit" {
                    cost.credits_per_hour
                } else {
                    0.0
                };
                if let Some(Value::Object(stored)) = &mut record.content {
                    stored.insert("size".into(), json!(size));
                    stored.insert("content_type".into(), json!("file"));
                }
            }
            "PROGRAM" | "INSTANCE" => {
                let value = Value::Object(content.value.clone());
                dependencies::check(
                    &mut tx,
                    &self.files,
                    envelope.type_name(),
                    &content.address,
                    &value,
                )
                .await?;
                let cost = pricing::vm_cost(envelope.type_name(), &content.value);
                payment::check(&mut tx, &content.address, &cost).await?;
                match cost.payment_type.as_str() {
                    "hold" => record.hold_cost = cost.hold,
                    "credit" => record.credit_per_hour = cost.credits_per_hour,
                    _ => {}
                }
            }
            "FORGET" => {
                let value = Value::Object(content.value.clone());
                let outcome =
                    forget::apply(&mut tx, &envelope.item_hash, &content.address, &value).await?;
                orphaned_files = outcome.orphaned_files;
            }
            other => return Err(Rejection::format(format!("unknown message type {other}"))),
        }
        messages::insert(&mut tx, &record).await.map_err(internal)?;
        pending::delete(&mut *tx, &envelope.item_hash)
            .await
            .map_err(internal)?;
        rejections::delete(&mut *tx, &envelope.item_hash)
            .await
            .map_err(internal)?;
        tx.commit().await.map_err(internal)?;
        drop(_writer);
        for file in orphaned_files {
            if let Err(e) = self.files.remove(&file).await {
                tracing::warn!("cannot remove forgotten file {file}: {e}");
            }
        }
        // Nobody listening is fine.
        let _ = self.events.send(std::sync::Arc::new(record.clone()));
        Ok(Outcome::Processed(record))
    }

    /// The stored message with the fields that queries filter on.
    fn record(
        &self,
        envelope: &Envelope,
        content: &content::Content,
        reception_time: f64,
    ) -> MessageRecord {
        let type_name = envelope.type_name();
        let index = messages::IndexFields::of(type_name, &content.value);
        MessageRecord {
            item_hash: envelope.item_hash.clone(),
            message_type: type_name.to_string(),
            chain: envelope.chain.to_string(),
            sender: envelope.sender.clone(),
            owner: content.address.clone(),
            channel: envelope.channel.clone(),
            item_type: envelope.item_type.as_str().to_string(),
            item_content: envelope.item_content.clone(),
            content: Some(Value::Object(content.value.clone())),
            signature: envelope.signature.clone(),
            time: envelope.time,
            reception_time,
            status: status::PROCESSED.to_string(),
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

    async fn check_amend(
        &self,
        tx: &mut Tx<'_>,
        content: &content::Content,
    ) -> Result<(), Rejection> {
        if content.str_field("type") != Some("amend") {
            return Ok(());
        }
        let target = content.str_field("ref").unwrap_or_default();
        match messages::get(&mut **tx, target).await.map_err(internal)? {
            Some(original)
                if original.message_type == "POST" && original.status == status::PROCESSED =>
            {
                if crate::store::address_key(&original.owner)
                    != crate::store::address_key(&content.address)
                {
                    return Err(Rejection::new(
                        code::PERMISSION,
                        format!("cannot amend {target}: it belongs to {}", original.owner),
                    ));
                }
                Ok(())
            }
            Some(_) => Err(Rejection::format(format!(
                "{target} is not a processed POST"
            ))),
            None => Err(Rejection::retry(
                code::CONTENT_UNAVAILABLE,
                format!("amended POST {target} not found"),
            )),
        }
    }

    /// The size of a STORE's file, which must be on this node.
    async fn store_file_size(&self, record: &MessageRecord) -> Result<u64, Rejection> {
        let file_hash = record.file_hash.clone().unwrap_or_default();
        if !envelope::is_native_hash(&file_hash) {
            return Err(Rejection::retry(
                code::FILE_UNAVAILABLE,
                format!("IPFS file {file_hash} is not available on this node"),
            ));
        }
        self.files.size(&file_hash).await.ok_or_else(|| {
            Rejection::retry(
                code::FILE_UNAVAILABLE,
                format!("file {file_hash} not found: upload it to /api/v0/storage/add_file"),
            )
        })
    }

    /// One pass over the pending queue (run by the background worker).
    pub async fn retry_pending(&self) {
        let queue = match pending::all(&self.db.pool).await {
            Ok(queue) => queue,
            Err(e) => {
                tracing::warn!("cannot read pending messages: {e}");
                return;
            }
        };
        for record in queue {
            let envelope = match self.verify(&record.message) {
                Ok(envelope) => envelope,
                Err(rejection) => {
                    // Queued without being verifiable (should not happen): drop it.
                    tracing::warn!(
                        "dropping unverifiable pending {}: {rejection}",
                        record.item_hash
                    );
                    let _writer = self.writer.lock().await;
                    let _ = pending::delete(&self.db.pool, &record.item_hash).await;
                    continue;
                }
            };
            self.process_verified(envelope, record.reception_time, record.attempts + 1)
                .await;
        }
    }
}
