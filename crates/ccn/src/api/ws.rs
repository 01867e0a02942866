//! `GET /api/ws0/messages`: the last `history` matching messages, then each new
//! processed message that matches, as JSON text frames.

use super::{State, query_map};
use crate::Ccn;
use crate::error::ApiError;
use crate::store::query::{self, MAX_PER_PAGE, MessageFilter};
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::http::Uri;
use axum::response::Response;
use std::collections::HashSet;
use std::sync::Arc;
use tokio::sync::broadcast::error::RecvError;

pub const DEFAULT_HISTORY: u32 = 10;

pub async fn messages(
    axum::extract::State(ccn): State,
    uri: Uri,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let params = query_map(&uri)?;
    let (filter, _) = MessageFilter::from_params(&params).map_err(ApiError::bad_request)?;
    let history = match params.get("history") {
        None => DEFAULT_HISTORY,
        Some(h) => h
            .parse::<u32>()
            .ok()
            .filter(|h| *h <= MAX_PER_PAGE)
            .ok_or_else(|| ApiError::bad_request(format!("history must be 0..={MAX_PER_PAGE}")))?,
    };
    // Filters are checked first, so a bad query gets its own message.
    let upgrade = upgrade.map_err(|e| {
        ApiError::bad_request(format!("this route expects a websocket upgrade: {e}"))
    })?;
    Ok(upgrade.on_upgrade(move |socket| stream(ccn, socket, filter, history)))
}

async fn stream(ccn: Arc<Ccn>, mut socket: WebSocket, filter: MessageFilter, history: u32) {
    // Subscribe before reading history so nothing processed in between is missed;
    // `sent` drops the duplicates this overlap can cause.
    let mut events = ccn.events.subscribe();
    let mut stop = ccn.stopping();
    let mut sent = HashSet::new();
    if history > 0 {
        let mut newest_first = filter.clone();
        newest_first.ascending = false;
        match query::find(&ccn.db.pool, &newest_first, history, 0).await {
            Ok((records, _)) => {
                for record in records.iter().rev() {
                    sent.insert(record.item_hash.clone());
                    let text = record.to_api_json().to_string();
                    if socket.send(Message::Text(text.into())).await.is_err() {
                        return;
                    }
                }
            }
            Err(e) => {
                tracing::warn!("websocket history query failed: {e}");
                let _ = socket.send(Message::Close(None)).await;
                return;
            }
        }
    }
    loop {
        tokio::select! {
            event = events.recv() => match event {
                Ok(record) => {
                    if !filter.matches(&record) || sent.contains(&record.item_hash) {
                        continue;
                    }
                    let text = record.to_api_json().to_string();
                    if socket.send(Message::Text(text.into())).await.is_err() {
                        return;
                    }
                }
                Err(RecvError::Lagged(missed)) => {
                    tracing::warn!("websocket subscriber lagged, {missed} messages skipped");
                }
                Err(RecvError::Closed) => return,
            },
            incoming = socket.recv() => match incoming {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
            },
            _ = stopped(&mut stop) => break,
        }
    }
    let _ = socket.send(Message::Close(None)).await;
}

async fn stopped(stop: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = stop.wait_for(|stopped| *stopped).await;
}
