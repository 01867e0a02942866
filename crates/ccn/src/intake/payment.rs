//! Payment checks: can the owner pay for what a message asks?

use super::internal;
use crate::error::{Rejection, code};
use crate::pricing::{self, Cost};
use crate::store::messages;
use crate::store::{Tx, balances};

/// Hold: the balance must cover everything held plus this. Credit: the credits
/// must cover 24 h of everything credit-paid plus this. Pay-as-you-go streams
/// cannot be seen without a chain and are accepted.
pub async fn check(tx: &mut Tx<'_>, owner: &str, cost: &Cost) -> Result<(), Rejection> {
    let balance = balances::get(&mut **tx, owner).await.map_err(internal)?;
    let (held, credit_per_hour) = messages::owner_costs(tx, owner).await.map_err(internal)?;
    match cost.payment_type.as_str() {
        "hold" if cost.hold > 0.0 => {
            let required = held + cost.hold;
            if balance.balance < required {
                return Err(Rejection::new(
                    code::BALANCE_INSUFFICIENT,
                    format!(
                        "insufficient balance: {owner} holds {} ALEPH, {required} needed ({held} already locked, {} for this message)",
                        balance.balance, cost.hold
                    ),
                ));
            }
        }
        "credit" if cost.credits_per_hour > 0.0 => {
            let required =
                (credit_per_hour + cost.credits_per_hour) * pricing::CREDIT_HOURS_REQUIRED;
            if (balance.credit_balance as f64) < required {
                return Err(Rejection::new(
                    code::CREDIT_INSUFFICIENT,
                    format!(
                        "insufficient credit: {owner} has {} credits, {required} needed for {} h ({} credits/h for this message, {credit_per_hour} credits/h already used)",
                        balance.credit_balance,
                        pricing::CREDIT_HOURS_REQUIRED,
                        cost.credits_per_hour
                    ),
                ));
            }
        }
        "hold" | "credit" | "superfluid" => {}
        other => {
            return Err(Rejection::new(
                code::INVALID_PAYMENT_METHOD,
                format!("unknown payment type {other:?}"),
            ));
        }
    }
    Ok(())
}
