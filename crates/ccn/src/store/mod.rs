//! The database: one `sqlx::AnyPool` so the same SQL runs on SQLite and PostgreSQL.
//!
//! SQL here must be accepted by both: numbered `$n` placeholders (SQLite reads them
//! as indexes), `DOUBLE PRECISION`/`BIGINT`/`TEXT` columns, no `RETURNING`-only
//! tricks, no database-specific upserts beyond `ON CONFLICT ... DO UPDATE`, which both have.

pub mod aggregates;
pub mod balances;
pub mod files;
pub mod messages;
pub mod pending;
pub mod query;
pub mod rejections;
mod schema;

use anyhow::Context;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, Executor};
use std::path::Path;
use std::str::FromStr;

/// A transaction on the store; every multi-row change runs inside one.
pub type Tx<'a> = sqlx::Transaction<'a, sqlx::Any>;

#[derive(Clone, Debug)]
pub struct Db {
    pub pool: AnyPool,
    pub backend: Backend,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The default database URL: a SQLite file under the data folder.
pub fn default_url(data_dir: &Path) -> String {
    format!(
        "sqlite://{}?mode=rwc",
        data_dir.join("ccn.sqlite").display()
    )
}

impl Db {
    /// Connects and brings the schema up to date.
    pub async fn open(url: &str) -> anyhow::Result<Db> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Backend::Postgres
        } else {
            anyhow::bail!("unsupported database URL {url:?}: use sqlite:// or postgres://");
        };
        let options = AnyConnectOptions::from_str(url)
            .with_context(|| format!("invalid database URL {url:?}"))?;
        let mut pool_options = AnyPoolOptions::new().max_connections(match backend {
            Backend::Sqlite => 4,
            Backend::Postgres => 8,
        });
        if backend == Backend::Sqlite {
            // WAL lets readers run while the single writer commits; the busy timeout
            // covers the short moments when two connections both want the write lock.
            pool_options = pool_options.after_connect(|conn, _meta| {
                Box::pin(async move {
                    conn.execute("PRAGMA journal_mode = WAL").await?;
                    conn.execute("PRAGMA synchronous = NORMAL").await?;
                    conn.execute("PRAGMA busy_timeout = 10000").await?;
                    conn.execute("PRAGMA foreign_keys = ON").await?;
                    Ok(())
                })
            });
        }
        let pool = pool_options
            .connect_with(options)
            .await
            .with_context(|| format!("cannot connect to {}", redact(url)))?;
        let db = Db { pool, backend };
        schema::migrate(&db).await?;
        Ok(db)
    }

    pub async fn begin(&self) -> sqlx::Result<Tx<'static>> {
        self.pool.begin().await
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Hides a password in a database URL before it is logged.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            match userinfo.find(':') {
                Some(colon) => format!(
                    "{}{}:***{}",
                    &url[..scheme_end + 3],
                    &userinfo[..colon],
                    &url[at..]
                ),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

/// The key under which an address is stored and compared: EVM addresses are
/// case-insensitive (EIP-55 checksums only change letter case), others are exact.
pub fn address_key(address: &str) -> String {
    if address.starts_with("0x") || address.starts_with("0X") {
        address.to_ascii_lowercase()
    } else {
        address.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_hides_password_only() {
        assert_eq!(
            redact("postgres://u:secret@127.0.0.1/db"),
            "postgres://u:***@127.0.0.1/db"
        );
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact("sqlite://x.db"), "sqlite://x.db");
    }

    #[test]
    fn evm_addresses_compare_without_case() {
        assert_eq!(address_key("0xAbC"), "0xabc");
        assert_eq!(address_key("SoLAddr"), "SoLAddr");
    }
}
