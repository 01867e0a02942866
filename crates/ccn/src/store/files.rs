//! The `files` table: which content-addressed files this node holds.

use sqlx::Row;

#[derive(Debug, Clone, PartialEq)]
pub struct FileRecord {
    pub file_hash: String,
    pub size: i64,
    /// `file` (uploaded bytes) or `json` (`add_json`).
    pub kind: String,
}

pub async fn upsert<'e, E>(executor: E, file: &FileRecord, now: f64) -> sqlx::Result<()>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    sqlx::query(
        "INSERT INTO files (file_hash, size, kind, created) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (file_hash) DO NOTHING",
    )
    .bind(&file.file_hash)
    .bind(file.size)
    .bind(&file.kind)
    .bind(now)
    .execute(executor)
    .await?;
    Ok(())
}

pub async fn get<'e, E>(executor: E, file_hash: &str) -> sqlx::Result<Option<FileRecord>>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let row = sqlx::query("SELECT file_hash, size, kind FROM files WHERE file_hash = $1")
        .bind(file_hash)
        .fetch_optional(executor)
        .await?;
    row.map(|row| {
        Ok(FileRecord {
            file_hash: row.try_get("file_hash")?,
            size: row.try_get("size")?,
            kind: row.try_get("kind")?,
        })
    })
    .transpose()
}

pub async fn delete<'e, E>(executor: E, file_hash: &str) -> sqlx::Result<()>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    sqlx::query("DELETE FROM files WHERE file_hash = $1")
        .bind(file_hash)
        .execute(executor)
        .await?;
    Ok(())
}
