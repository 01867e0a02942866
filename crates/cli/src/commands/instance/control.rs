//! The owner's controls (`stop`, `reboot`, `erase`, `reinstall`, `logs`):
//! requests to the instance's CRN signed with an operator key the wallet
//! authorises.

use super::crn::{crn_http, crn_of};
use super::{ControlArgs, parse_hash};
use crate::context::Context;
use aleph_protocol::auth::operator::OperatorKey;
use aleph_protocol::signing::Signer;
use anyhow::{Context as _, Result, bail};
use serde_json::Value;
use std::time::Duration;

/// How long the wallet's authorisation of a control key lasts: one command's worth.
const OPERATOR_KEY_LIFETIME: Duration = Duration::from_secs(600);

/// The owner controls of `/control/machine/{ref}/…`.
#[derive(Clone, Copy)]
pub(super) enum Control {
    Stop,
    Reboot,
    Erase,
    Reinstall,
    Logs,
}

impl Control {
    fn route(self) -> &'static str {
        match self {
            Control::Stop => "stop",
            Control::Reboot => "reboot",
            Control::Erase => "erase",
            Control::Reinstall => "reinstall",
            Control::Logs => "logs",
        }
    }

    fn method(self) -> reqwest::Method {
        match self {
            Control::Logs => reqwest::Method::GET,
            _ => reqwest::Method::POST,
        }
    }
}

pub(super) async fn run(ctx: &Context, args: ControlArgs, control: Control) -> Result<()> {
    let hash = args.hash.trim().to_owned();
    parse_hash(&hash, "the instance")?;
    let signer = ctx.signer()?;
    let crn = crn_of(ctx, &hash, args.crn).await?;
    let answer = send_control(&crn_http()?, &signer, &crn, &hash, control).await?;
    match control {
        Control::Logs => {
            let entries = answer.as_array().cloned().unwrap_or_default();
            ctx.out.result(&answer, || {
                entries
                    .iter()
                    .map(|e| e["message"].as_str().unwrap_or_default().to_owned())
                    .collect::<Vec<_>>()
                    .join("\n")
            });
        }
        _ => {
            let status = answer["status"].as_str().unwrap_or("done").to_owned();
            ctx.out
                .result(&answer, || format!("instance {hash} on {crn}: {status}"));
        }
    }
    Ok(())
}

/// One signed request to `/control/machine/{hash}/{route}`; the CRN's JSON answer.
async fn send_control(
    http: &reqwest::Client,
    signer: &Signer,
    crn: &str,
    hash: &str,
    control: Control,
) -> Result<Value> {
    let url = reqwest::Url::parse(&format!(
        "{}/control/machine/{hash}/{}",
        crn.trim_end_matches('/'),
        control.route()
    ))
    .with_context(|| format!("{crn:?} is not a CRN URL"))?;
    // The CRN checks the operation against its domain (else the Host it was
    // asked by, without port) and the request's path: sign what is sent.
    let domain = url
        .host_str()
        .context("the CRN URL has no host")?
        .to_owned();
    let key = OperatorKey::generate(signer, OPERATOR_KEY_LIFETIME)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default();
    let method = control.method();
    let mut request = http.request(method.clone(), url.clone());
    for (name, value) in key.headers(method.as_str(), &domain, url.path(), now) {
        request = request.header(name, value);
    }
    let response = request
        .send()
        .await
        .with_context(|| format!("cannot reach the CRN at {crn}"))?;
    let status = response.status();
    let body = response.text().await?;
    let parsed: Option<Value> = serde_json::from_str(&body).ok();
    if !status.is_success() {
        let error = parsed
            .as_ref()
            .and_then(|v| v["error"].as_str().map(str::to_owned))
            .unwrap_or_else(|| body.trim().to_owned());
        bail!(
            "the CRN at {crn} refused {} {}: HTTP {status}: {error}",
            method,
            url.path()
        );
    }
    parsed.with_context(|| format!("the CRN at {crn} sent an answer that is not JSON: {body}"))
}
