//! `GET /api/v0/addresses/{address}/balance`.

use super::State;
use crate::error::ApiError;
use crate::store::{balances, messages};
use axum::Json;
use axum::extract::Path;
use serde_json::{Value, json};

pub async fn get(
    axum::extract::State(ccn): State,
    Path(address): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let mut tx = ccn.db.begin().await?;
    let balance = balances::get(&mut *tx, &address).await?;
    let (locked, credit_per_hour) = messages::owner_costs(&mut tx, &address).await?;
    tx.commit().await?;
    Ok(Json(json!({
        "address": address,
        "balance": balance.balance,
        "locked_amount": locked,
        "credit_balance": balance.credit_balance,
        "credit_per_hour": credit_per_hour,
        "details": {},
    })))
}
