//! `aleph file upload|download`: files in the CCN's content-addressed storage.

use crate::client::{CcnClient, CcnError};
use crate::context::Context;
use aleph_protocol::signing::Signer;
use aleph_types::item_hash::AlephItemHash;
use aleph_types::message::execution::base::Payment;
use aleph_types::message::{MessageType, RawFileRef, StorageBackend, StoreContent};
use anyhow::{Context as _, Result, bail};
use clap::{Subcommand, ValueEnum};
use futures::StreamExt;
use serde_json::json;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Subcommand)]
pub enum FileCommand {
    /// Upload a file and pin it with a signed STORE message.
    Upload {
        path: PathBuf,
        #[arg(long)]
        channel: Option<String>,
        /// A name of your own for the file, to publish new versions under.
        #[arg(long = "ref")]
        reference: Option<String>,
        /// How the storage is paid for.
        #[arg(long, value_enum, default_value_t = PaymentChoice::Credit)]
        payment: PaymentChoice,
    },
    /// Download a stored file by its hash.
    Download {
        hash: String,
        /// Where to write it; default: ./HASH.
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
pub enum PaymentChoice {
    /// Pay with credits.
    Credit,
    /// Hold ALEPH tokens.
    Hold,
}

pub async fn run(ctx: &Context, command: FileCommand) -> Result<()> {
    match command {
        FileCommand::Upload {
            path,
            channel,
            reference,
            payment,
        } => upload(ctx, &path, channel, reference, payment).await,
        FileCommand::Download { hash, output } => download(ctx, &hash, output).await,
    }
}

async fn upload(
    ctx: &Context,
    path: &Path,
    channel: Option<String>,
    reference: Option<String>,
    payment: PaymentChoice,
) -> Result<()> {
    let signer = ctx.signer()?;
    let client = ctx.client()?;
    let stored = store(
        ctx,
        &client,
        &signer,
        path,
        reference.map(RawFileRef::UserDefined),
        payment.into(),
        channel,
    )
    .await?;
    let value = json!({
        "file_hash": stored.file_hash,
        "item_hash": stored.item_hash,
        "size": stored.size,
        "status": stored.status,
    });
    ctx.out.result(&value, || {
        format!(
            "uploaded {}: file {}, STORE message {} ({})",
            path.display(),
            stored.file_hash,
            stored.item_hash,
            stored.status
        )
    });
    Ok(())
}

impl From<PaymentChoice> for Payment {
    fn from(choice: PaymentChoice) -> Self {
        match choice {
            PaymentChoice::Credit => Payment::credits(),
            PaymentChoice::Hold => Payment::hold(),
        }
    }
}

/// A file pinned by a STORE message.
pub struct Stored {
    pub file_hash: String,
    /// The STORE message's hash: what programs reference.
    pub item_hash: String,
    pub size: u64,
    /// `processed` or `pending`.
    pub status: String,
}

/// Uploads the file at `path` with a signed STORE (`reference`: the `ref`
/// field, a name of the user's own or the STORE it is a new version of) and
/// checks that the STORE was not refused.
pub async fn store(
    ctx: &Context,
    client: &CcnClient,
    signer: &Signer,
    path: &Path,
    reference: Option<RawFileRef>,
    payment: Payment,
    channel: Option<String>,
) -> Result<Stored> {
    let (file_hash, size) = hash_file(path).await?;
    let store = StoreContent::new(
        StorageBackend::Storage {
            item_hash: file_hash,
        },
        reference,
        None,
        Some(payment),
    );
    let message = signer.sign(MessageType::Store, &store, channel.as_deref())?;

    let progress = ctx.out.progress(Some(size), "uploading");
    let answer = client.upload_file(path, &message, &progress).await;
    progress.finish_and_clear();
    let answer = answer?;
    let file_hash = file_hash.to_string();
    if let Some(stored) = answer["hash"].as_str()
        && stored != file_hash
    {
        bail!("the CCN stored the file as {stored}, but its sha256 is {file_hash}");
    }

    // The file can be stored while its STORE message is still refused (no
    // credit, say): only the message's status tells whether it is pinned.
    let item_hash = message.item_hash.to_string();
    let status = client.message(&item_hash).await?;
    let status_name = status
        .as_ref()
        .and_then(|s| s["status"].as_str())
        .unwrap_or("unknown")
        .to_owned();
    if status_name == "rejected" {
        let status = status.unwrap_or_default();
        return Err(CcnError {
            http_status: 422,
            error: format!("the STORE message {item_hash} was rejected"),
            code: status["error_code"].as_i64(),
            details: status.get("details").cloned(),
        }
        .into());
    }
    Ok(Stored {
        file_hash,
        item_hash,
        size,
        status: status_name,
    })
}

/// The sha256 of a file (its storage hash) and its size, read in chunks.
async fn hash_file(path: &Path) -> Result<(AlephItemHash, u64)> {
    let mut file = tokio::fs::File::open(path)
        .await
        .with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 256 * 1024];
    let mut size = 0u64;
    loop {
        let read = file.read(&mut buffer).await?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
        size += read as u64;
    }
    Ok((AlephItemHash::new(hasher.finalize().into()), size))
}

async fn download(ctx: &Context, hash: &str, output: Option<PathBuf>) -> Result<()> {
    let target = output.unwrap_or_else(|| PathBuf::from(hash));
    let (size, mut stream) = ctx.client()?.download_file(hash).await?;
    // Written beside the target and renamed once checked, so a failed or
    // corrupted download never leaves a file under the final name.
    let partial = partial_path(&target);
    let mut file = tokio::fs::File::create(&partial)
        .await
        .with_context(|| format!("creating {}", partial.display()))?;
    let progress = ctx.out.progress(size, "downloading");
    let mut hasher = Sha256::new();
    let mut written = 0u64;
    let copied: Result<()> = async {
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            hasher.update(&chunk);
            file.write_all(&chunk).await?;
            written += chunk.len() as u64;
            progress.inc(chunk.len() as u64);
        }
        file.flush().await?;
        Ok(())
    }
    .await;
    progress.finish_and_clear();
    let actual = hex::encode(hasher.finalize());
    if let Err(e) = copied {
        let _ = tokio::fs::remove_file(&partial).await;
        return Err(e.context("downloading the file"));
    }
    // A native storage hash is the sha256 of the bytes; IPFS CIDs are not checked here.
    if is_sha256_hex(hash) && !actual.eq_ignore_ascii_case(hash) {
        let _ = tokio::fs::remove_file(&partial).await;
        bail!("the CCN sent bytes whose sha256 is {actual}, not {hash}");
    }
    tokio::fs::rename(&partial, &target)
        .await
        .with_context(|| format!("writing {}", target.display()))?;
    let value = json!({
        "file_hash": hash,
        "path": target.display().to_string(),
        "size": written,
    });
    ctx.out.result(&value, || {
        format!(
            "downloaded {hash} to {} ({written} bytes)",
            target.display()
        )
    });
    Ok(())
}

fn partial_path(target: &Path) -> PathBuf {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "download".into());
    target.with_file_name(format!(".{name}.part"))
}

fn is_sha256_hex(hash: &str) -> bool {
    hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn file_hash_is_the_sha256_of_its_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"hello").unwrap();
        let (hash, size) = hash_file(&path).await.unwrap();
        assert_eq!(size, 5);
        assert_eq!(
            hash.to_string(),
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
    }

    #[test]
    fn only_native_hashes_are_checked() {
        assert!(is_sha256_hex(&"a".repeat(64)));
        assert!(!is_sha256_hex(
            "QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG"
        ));
    }
}
