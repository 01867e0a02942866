//! `aleph-node bench ccn`: signed messages accepted per second by a CCN (verified,
//! stored and queryable), with latency percentiles, against the same run's
//! signature-verification rate as the baseline.

use aleph_ccn::{CcnConfig, CcnOptions};
use aleph_protocol::signing::Signer;
use aleph_types::message::MessageType;
use aleph_types::timestamp::Timestamp;
use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct Args {
    /// Messages to post.
    #[arg(long, default_value_t = 3000)]
    messages: usize,
    /// Concurrent clients.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Database URL (default: SQLite in a temporary folder).
    #[arg(long)]
    database_url: Option<String>,
}

/// A POST of about 200 bytes, its time fixed by `index` so the messages differ.
fn signed_post(signer: &Signer, index: usize) -> Result<Value> {
    let message = signer.sign_at(
        MessageType::Post,
        json!({"type": "bench", "content": {"index": index, "body": "x".repeat(200)}}),
        Some("BENCH"),
        Timestamp::from(1.7e9 + index as f64),
    )?;
    Ok(serde_json::to_value(&message)?)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

pub async fn run(args: Args) -> Result<()> {
    ensure!(
        args.messages > 0 && args.concurrency > 0,
        "messages and concurrency must be > 0"
    );
    let dir = tempfile::tempdir()?;
    let handle = aleph_ccn::start_with_options(
        CcnConfig {
            listen: "127.0.0.1:0".parse()?,
            data_dir: dir.path().to_path_buf(),
            database_url: args.database_url.clone(),
            funded: Vec::new(),
        },
        CcnOptions::default(),
    )
    .await?;
    let backend = if args.database_url.is_some() {
        "given database"
    } else {
        "SQLite"
    };

    let signers: Vec<Signer> = (0..8).map(|_| Signer::generate().0).collect();
    let messages = (0..args.messages)
        .map(|i| signed_post(&signers[i % signers.len()], i))
        .collect::<Result<Vec<Value>>>()?;

    // Baseline: the checks that need no database (envelope, hash, EIP-191
    // recovery), on one core, for the same messages.
    let started = Instant::now();
    for message in &messages {
        handle
            .ccn()
            .verify(message)
            .map_err(|r| anyhow::anyhow!("{r}"))?;
    }
    let verify_rate = messages.len() as f64 / started.elapsed().as_secs_f64();

    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .build()?;
    let url = format!("{}/api/v0/messages", handle.url());
    let messages = Arc::new(messages);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..args.concurrency {
        let (client, url, messages, next) =
            (client.clone(), url.clone(), messages.clone(), next.clone());
        workers.spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                let Some(message) = messages.get(index) else {
                    break;
                };
                let sent = Instant::now();
                let response = client
                    .post(&url)
                    .json(&json!({"sync": true, "message": message}))
                    .send()
                    .await?;
                let status = response.status();
                let body = response.text().await?;
                ensure!(
                    status.as_u16() == 200,
                    "message {index} not accepted ({status}): {body}"
                );
                latencies.push(sent.elapsed());
            }
            Ok::<_, anyhow::Error>(latencies)
        });
    }
    let mut latencies = Vec::with_capacity(messages.len());
    while let Some(result) = workers.join_next().await {
        latencies.extend(result??);
    }
    let elapsed = started.elapsed();

    // Everything accepted must be queryable.
    let listed: Value = client
        .get(format!(
            "{}/api/v0/messages.json?channels=BENCH&pagination=1",
            handle.url()
        ))
        .send()
        .await?
        .json()
        .await?;
    let stored = listed["pagination_total"]
        .as_u64()
        .context("no pagination_total")?;
    ensure!(
        stored == messages.len() as u64,
        "only {stored} of {} messages are queryable",
        messages.len()
    );
    let sample = &messages[messages.len() / 2]["item_hash"];
    let got: Value = client
        .get(format!(
            "{}/api/v0/messages/{}",
            handle.url(),
            sample.as_str().unwrap_or("")
        ))
        .send()
        .await?
        .json()
        .await?;
    ensure!(
        got["status"] == "processed",
        "sample message not processed: {got}"
    );

    latencies.sort();
    let rate = messages.len() as f64 / elapsed.as_secs_f64();
    println!(
        "CCN intake benchmark ({backend}, {} messages, {} clients, sync: true)",
        messages.len(),
        args.concurrency
    );
    println!(
        "  accepted:           {rate:.0} messages/s ({:.2} s total)",
        elapsed.as_secs_f64()
    );
    println!(
        "  latency:            p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        ms(percentile(&latencies, 0.50)),
        ms(percentile(&latencies, 0.99)),
        ms(*latencies.last().unwrap_or(&Duration::ZERO))
    );
    println!("  baseline (verify only, 1 core): {verify_rate:.0} messages/s");
    println!(
        "  ratio accepted / verify-only:   {:.2}",
        rate / verify_rate
    );
    println!(
        "  queryable after the run:        {stored}/{}",
        messages.len()
    );
    handle.shutdown().await;
    Ok(())
}
