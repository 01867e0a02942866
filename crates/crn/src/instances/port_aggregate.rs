//! The owners' `port-forwarding` aggregates: read from the CCN, and read again while
//! their instances run, at most once per [`REREAD_INTERVAL`] per owner (the CCN's
//! aggregate route is cheap, but a node may run many instances of one owner).

use super::port_plan::AGGREGATE_KEY;
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

/// How often a running instance's owner's aggregate is read again.
pub const REREAD_INTERVAL: Duration = Duration::from_secs(30);

/// How long the CCN gets to answer; on a start it is waited for.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum AggregateError {
    #[error("owner address {0:?} does not look like an address")]
    BadOwner(String),
    #[error("cannot read {url}: {detail}")]
    Unreadable { url: String, detail: String },
}

/// Reads owners' `port-forwarding` aggregates from a CCN.
#[derive(Clone)]
pub struct AggregateReader {
    ccn_url: String,
    http: reqwest::Client,
}

impl AggregateReader {
    pub fn new(ccn_url: &str) -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(READ_TIMEOUT)
            .timeout(READ_TIMEOUT)
            .build()
            .expect("a default HTTP client");
        Self {
            ccn_url: ccn_url.trim_end_matches('/').to_string(),
            http,
        }
    }

    /// The value of `owner`'s `port-forwarding` key; `None` when the owner has no
    /// aggregate or not that key.
    pub async fn read(&self, owner: &str) -> Result<Option<Value>, AggregateError> {
        // It goes into the URL's path.
        if owner.is_empty() || !owner.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(AggregateError::BadOwner(owner.to_string()));
        }
        let url = format!(
            "{}/api/v0/aggregates/{owner}.json?keys={AGGREGATE_KEY}",
            self.ccn_url
        );
        let fail = |detail: String| AggregateError::Unreadable {
            url: url.clone(),
            detail,
        };
        let response = self
            .http
            .get(&url)
            .send()
            .await
            .map_err(|e| fail(e.to_string()))?;
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !response.status().is_success() {
            return Err(fail(response.status().to_string()));
        }
        let body: Value = response.json().await.map_err(|e| fail(e.to_string()))?;
        Ok(body
            .get("data")
            .and_then(|data| data.get(AGGREGATE_KEY))
            .cloned())
    }
}

/// Which owners' aggregates are due to be read again, and which reads are under way.
#[derive(Debug)]
pub struct ReadSchedule {
    interval: Duration,
    last_read: HashMap<String, Instant>,
    reading: HashSet<String>,
}

impl ReadSchedule {
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            last_read: HashMap::new(),
            reading: HashSet::new(),
        }
    }

    /// Of `owners` (those with a running instance), the ones due at `now`: not read
    /// for `interval` and no read under way. They count as under way until [`done`];
    /// owners not listed are forgotten.
    ///
    /// [`done`]: Self::done
    pub fn claim_due(&mut self, owners: &HashSet<String>, now: Instant) -> Vec<String> {
        self.last_read.retain(|owner, _| owners.contains(owner));
        let mut due: Vec<String> = owners
            .iter()
            .filter(|owner| !self.reading.contains(*owner))
            .filter(|owner| {
                self.last_read
                    .get(*owner)
                    .is_none_or(|last| now.saturating_duration_since(*last) >= self.interval)
            })
            .cloned()
            .collect();
        due.sort();
        self.reading.extend(due.iter().cloned());
        due
    }

    /// `owner`'s aggregate was read (or tried) at `at`.
    pub fn done(&mut self, owner: &str, at: Instant) {
        self.reading.remove(owner);
        self.last_read.insert(owner.to_string(), at);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owners(names: &[&str]) -> HashSet<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn an_owner_is_read_again_once_per_interval_and_never_twice_at_once() {
        let mut schedule = ReadSchedule::new(Duration::from_secs(30));
        let t0 = Instant::now();
        let both = owners(&["a", "b"]);
        assert_eq!(schedule.claim_due(&both, t0), ["a", "b"]);
        // Under way: not claimed again.
        assert!(
            schedule
                .claim_due(&both, t0 + Duration::from_secs(60))
                .is_empty()
        );
        schedule.done("a", t0 + Duration::from_secs(1));
        assert!(
            schedule
                .claim_due(&both, t0 + Duration::from_secs(30))
                .is_empty()
        );
        assert_eq!(
            schedule.claim_due(&both, t0 + Duration::from_secs(31)),
            ["a"]
        );
        schedule.done("b", t0 + Duration::from_secs(31));
        schedule.done("a", t0 + Duration::from_secs(31));
        // An owner started again after leaving is due at once.
        assert!(
            schedule
                .claim_due(&owners(&["b"]), t0 + Duration::from_secs(32))
                .is_empty()
        );
        assert_eq!(
            schedule.claim_due(&both, t0 + Duration::from_secs(33)),
            ["a"]
        );
    }

    #[tokio::test]
    async fn an_owner_that_cannot_be_put_in_a_url_is_refused_before_any_request() {
        let reader = AggregateReader::new("http://127.0.0.1:9");
        for owner in ["", "../x", "0xabc?keys=security", "a b"] {
            assert!(
                matches!(reader.read(owner).await, Err(AggregateError::BadOwner(_))),
                "{owner:?}"
            );
        }
    }

    #[tokio::test]
    async fn reads_the_key_and_takes_a_missing_aggregate_as_none() {
        use axum::routing::get;
        let app = axum::Router::new().route(
            "/api/v0/aggregates/{owner}",
            get(
                |axum::extract::Path(owner): axum::extract::Path<String>,
                 axum::extract::RawQuery(query): axum::extract::RawQuery| async move {
                    assert_eq!(query.as_deref(), Some("keys=port-forwarding"));
                    match owner.as_str() {
                        "0xAbc.json" => Ok(axum::Json(serde_json::json!({
                            "address": "0xAbc",
                            "data": {"port-forwarding": {"h": {"ports": {"80": {"tcp": true}}}}},
                        }))),
                        "0xEmpty.json" => Ok(axum::Json(serde_json::json!({
                            "address": "0xEmpty", "data": {},
                        }))),
                        "0xBroken.json" => Err(axum::http::StatusCode::BAD_GATEWAY),
                        _ => Err(axum::http::StatusCode::NOT_FOUND),
                    }
                },
            ),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        let reader = AggregateReader::new(&format!("http://{address}/"));
        assert_eq!(
            reader.read("0xAbc").await.unwrap(),
            Some(serde_json::json!({"h": {"ports": {"80": {"tcp": true}}}}))
        );
        assert_eq!(reader.read("0xEmpty").await.unwrap(), None);
        assert_eq!(reader.read("0xNobody").await.unwrap(), None);
        assert!(matches!(
            reader.read("0xBroken").await,
            Err(AggregateError::Unreadable { .. })
        ));
    }
}
