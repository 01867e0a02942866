//! Following the CCN's message stream: a new version of a running program's code (a
//! STORE by its owner whose `ref` is the code's original STORE or the version that
//! runs) or an amend of the PROGRAM (`replaces`) stops its VM, so the next request
//! boots the new code.

use super::Pool;
use crate::execution::Execution;
use crate::resources::ProgramMessage;
use futures::StreamExt;
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// Whether `message` (as the CCN streams it) updates what `execution` runs.
pub fn updates(message: &Value, execution: &Execution) -> bool {
    updates_program(message, &execution.program, &execution.prepared.code_ref)
}

/// Whether `message` updates `program`, whose code runs from STORE `code_ref`.
pub fn updates_program(message: &Value, program: &ProgramMessage, code_ref: &str) -> bool {
    let content = &message["content"];
    let owner = content["address"].as_str().unwrap_or_default();
    if !owner.eq_ignore_ascii_case(&program.content.address) {
        return false;
    }
    match message["type"].as_str() {
        Some("STORE") => {
            let Some(reference) = content["ref"].as_str() else {
                return false;
            };
            reference == program.content.code.reference || reference == code_ref
        }
        Some("PROGRAM") => content["replaces"].as_str() == Some(program.item_hash.as_str()),
        _ => false,
    }
}

/// Follows the stream until `stop` turns true, reconnecting when it drops.
pub async fn watch(pool: Arc<Pool>, mut stop: watch::Receiver<bool>) {
    let base = pool.resources().ccn().base().to_string();
    let url = format!(
        "{}/api/ws0/messages?msgTypes=STORE,PROGRAM&history=0",
        base.replacen("http", "ws", 1)
    );
    let mut backoff = Duration::from_millis(200);
    loop {
        let session = async {
            let (mut socket, _) = tokio_tungstenite::connect_async(&url).await?;
            tracing::info!("following the CCN's messages at {url}");
            pool.set_following_updates(true);
            backoff = Duration::from_millis(200);
            while let Some(frame) = socket.next().await {
                let WsMessage::Text(text) = frame? else {
                    continue;
                };
                let Ok(message) = serde_json::from_str::<Value>(&text) else {
                    continue;
                };
                let stopped = pool
                    .stop_where("updated", |execution| updates(&message, execution))
                    .await;
                if stopped > 0 {
                    tracing::info!(
                        "message {} updates {stopped} running program(s): stopped",
                        message["item_hash"]
                    );
                }
            }
            Ok::<_, tokio_tungstenite::tungstenite::Error>(())
        };
        let result = tokio::select! {
            _ = stopped(&mut stop) => return,
            result = session => result,
        };
        pool.set_following_updates(false);
        if let Err(e) = result {
            tracing::debug!("CCN message stream: {e}");
        }
        tokio::select! {
            _ = stopped(&mut stop) => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

/// Resolves once `stop` turns true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn program() -> ProgramMessage {
        ProgramMessage {
            item_hash: "p0".into(),
            content_hash: "p0".into(),
            content: serde_json::from_value(json!({
                "address": "0xOwner",
                "code": {"encoding": "zip", "entrypoint": "main:app", "ref": "c0", "use_latest": true},
                "runtime": {"ref": "r0"},
            }))
            .unwrap(),
        }
    }

    #[test]
    fn code_amends_and_program_amends_by_the_owner_update() {
        let program = program();
        let store = |owner: &str, reference: &str| json!({"type": "STORE", "content": {"address": owner, "ref": reference}});
        assert!(updates_program(&store("0xowner", "c0"), &program, "c0"));
        // An amend of the version that runs (the second update of the code).
        assert!(updates_program(&store("0xOwner", "c1"), &program, "c1"));
        assert!(!updates_program(&store("0xOwner", "other"), &program, "c1"));
        assert!(!updates_program(
            &store("0xSomeoneElse", "c0"),
            &program,
            "c0"
        ));
        assert!(!updates_program(
            &json!({"type": "STORE", "content": {"address": "0xOwner"}}),
            &program,
            "c0"
        ));
        let amend = |replaces: &str| json!({"type": "PROGRAM", "content": {"address": "0xOwner", "replaces": replaces}});
        assert!(updates_program(&amend("p0"), &program, "c0"));
        assert!(!updates_program(&amend("p9"), &program, "c0"));
        assert!(!updates_program(
            &json!({"type": "POST", "content": {"address": "0xOwner", "ref": "c0"}}),
            &program,
            "c0"
        ));
    }
}
