//! Balances: ALEPH held and credits, per address. Seeded from the configured
//! funded accounts (there is no chain to read them from here).

use super::address_key;
use sqlx::Row;

#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Balance {
    pub balance: f64,
    pub credit_balance: i64,
}

pub async fn set(
    pool: &sqlx::AnyPool,
    address: &str,
    balance: f64,
    credit_balance: i64,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO balances (address_key, address, balance, credit_balance) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (address_key) DO UPDATE SET address = $2, balance = $3, credit_balance = $4",
    )
    .bind(address_key(address))
    .bind(address)
    .bind(balance)
    .bind(credit_balance)
    .execute(pool)
    .await?;
    Ok(())
}

pub async fn get<'e, E>(executor: E, address: &str) -> sqlx::Result<Balance>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let row = sqlx::query("SELECT balance, credit_balance FROM balances WHERE address_key = $1")
        .bind(address_key(address))
        .fetch_optional(executor)
        .await?;
    match row {
        None => Ok(Balance::default()),
        Some(row) => Ok(Balance {
            balance: row.try_get("balance")?,
            credit_balance: row.try_get("credit_balance")?,
        }),
    }
}
