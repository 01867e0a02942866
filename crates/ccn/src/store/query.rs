//! Message queries: the filters of `GET /api/v0/messages.json` and the websocket,
//! applied in SQL for queries and in memory for live streams.

use super::address_key;
use super::messages::{COLUMNS, MessageRecord, status};
use sqlx::AssertSqlSafe;
use std::collections::HashMap;

pub const DEFAULT_PER_PAGE: u32 = 20;
/// Upper bound of `pagination`, so one request cannot ask for the whole table.
pub const MAX_PER_PAGE: u32 = 500;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct MessageFilter {
    pub hashes: Vec<String>,
    pub message_types: Vec<String>,
    /// Senders.
    pub addresses: Vec<String>,
    /// `content.address`.
    pub owners: Vec<String>,
    pub refs: Vec<String>,
    pub content_hashes: Vec<String>,
    pub content_types: Vec<String>,
    pub content_keys: Vec<String>,
    pub channels: Vec<String>,
    pub chains: Vec<String>,
    pub tags: Vec<String>,
    pub payment_types: Vec<String>,
    /// Empty means "processed" (and "removing"), as upstream.
    pub statuses: Vec<String>,
    pub start_date: Option<f64>,
    pub end_date: Option<f64>,
    pub ascending: bool,
    /// Leave out amend POSTs (the posts views show them merged into their original).
    pub exclude_amends: bool,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Page {
    pub per_page: u32,
    /// Starts at 1.
    pub page: u32,
}

impl Default for Page {
    fn default() -> Self {
        Self {
            per_page: DEFAULT_PER_PAGE,
            page: 1,
        }
    }
}

fn list(params: &HashMap<String, String>, names: &[&str]) -> Vec<String> {
    names
        .iter()
        .filter_map(|name| params.get(*name))
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_string)
        .collect()
}

fn number<T: std::str::FromStr>(
    params: &HashMap<String, String>,
    name: &str,
) -> Result<Option<T>, String> {
    match params.get(name).map(|v| v.trim()).filter(|v| !v.is_empty()) {
        None => Ok(None),
        Some(v) => v
            .parse()
            .map(Some)
            .map_err(|_| format!("invalid value for {name}: {v:?}")),
    }
}

const KNOWN_STATUSES: &[&str] = &[
    status::PENDING,
    status::PROCESSED,
    status::REJECTED,
    status::FORGOTTEN,
    status::REMOVING,
    status::REMOVED,
];

impl MessageFilter {
    /// Reads the query parameters of the reference (comma-separated lists).
    pub fn from_params(params: &HashMap<String, String>) -> Result<(Self, Page), String> {
        let mut filter = MessageFilter {
            hashes: list(params, &["hashes", "hash"]),
            message_types: list(params, &["msgTypes", "msgType"])
                .into_iter()
                .map(|t| t.to_ascii_uppercase())
                .collect(),
            addresses: list(params, &["addresses"]),
            owners: list(params, &["owners"]),
            refs: list(params, &["refs"]),
            content_hashes: list(params, &["contentHashes"]),
            content_types: list(params, &["contentTypes"]),
            content_keys: list(params, &["contentKeys"]),
            channels: list(params, &["channels"]),
            chains: list(params, &["chains"]),
            tags: list(params, &["tags"]),
            payment_types: list(params, &["paymentTypes"]),
            statuses: list(params, &["msgStatuses"])
                .into_iter()
                .map(|s| s.to_ascii_lowercase())
                .collect(),
            start_date: number(params, "startDate")?,
            end_date: number(params, "endDate")?,
            ascending: false,
            exclude_amends: false,
        };
        for t in &filter.message_types {
            if !crate::intake::envelope::MESSAGE_TYPES.contains(&t.as_str()) {
                return Err(format!("unknown message type in msgTypes: {t}"));
            }
        }
        for s in &filter.statuses {
            if !KNOWN_STATUSES.contains(&s.as_str()) {
                return Err(format!("unknown status in msgStatuses: {s}"));
            }
        }
        if let Some(sort_by) = params.get("sortBy")
            && !matches!(sort_by.as_str(), "time" | "tx-time" | "")
        {
            return Err(format!("invalid sortBy: {sort_by:?} (use time)"));
        }
        match number::<i64>(params, "sortOrder")? {
            None | Some(-1) => {}
            Some(1) => filter.ascending = true,
            Some(other) => return Err(format!("invalid sortOrder: {other} (use -1 or 1)")),
        }
        let per_page = number::<u32>(params, "pagination")?.unwrap_or(DEFAULT_PER_PAGE);
        if per_page > MAX_PER_PAGE {
            return Err(format!("pagination must be at most {MAX_PER_PAGE}"));
        }
        let page = number::<u32>(params, "page")?.unwrap_or(1);
        if page == 0 {
            return Err("page starts at 1".into());
        }
        Ok((filter, Page { per_page, page }))
    }

    fn effective_statuses(&self) -> Vec<String> {
        if self.statuses.is_empty() {
            vec![status::PROCESSED.into(), status::REMOVING.into()]
        } else {
            self.statuses.clone()
        }
    }

    /// Whether a message passes the filter (used for live websocket streams).
    pub fn matches(&self, m: &MessageRecord) -> bool {
        fn any_of(list: &[String], value: Option<&str>) -> bool {
            list.is_empty() || value.is_some_and(|v| list.iter().any(|x| x == v))
        }
        fn any_address(list: &[String], value: &str) -> bool {
            list.is_empty() || list.iter().any(|x| address_key(x) == address_key(value))
        }
        any_of(&self.hashes, Some(&m.item_hash))
            && any_of(&self.message_types, Some(&m.message_type))
            && any_address(&self.addresses, &m.sender)
            && any_address(&self.owners, &m.owner)
            && any_of(&self.refs, m.content_ref.as_deref())
            && any_of(&self.content_hashes, m.file_hash.as_deref())
            && any_of(&self.content_types, m.content_type.as_deref())
            && any_of(&self.content_keys, m.content_key.as_deref())
            && any_of(&self.channels, m.channel.as_deref())
            && any_of(&self.chains, Some(&m.chain))
            && any_of(&self.payment_types, m.payment_type.as_deref())
            && any_of(&self.effective_statuses(), Some(&m.status))
            && (self.tags.is_empty() || self.tags.iter().any(|t| m.tags.contains(t)))
            && self.start_date.is_none_or(|start| m.time >= start)
            && self.end_date.is_none_or(|end| m.time < end)
            && !(self.exclude_amends && m.content_type.as_deref() == Some("amend"))
    }
}

/// A SQL condition under construction, with numbered placeholders.
#[derive(Default)]
struct Conditions {
    clauses: Vec<String>,
    binds: Vec<Bind>,
}

enum Bind {
    Text(String),
    Double(f64),
}

impl Conditions {
    fn placeholder(&mut self, bind: Bind) -> String {
        self.binds.push(bind);
        format!("${}", self.binds.len())
    }

    fn in_list(&mut self, column: &str, values: &[String]) {
        if values.is_empty() {
            return;
        }
        let placeholders: Vec<String> = values
            .iter()
            .map(|v| self.placeholder(Bind::Text(v.clone())))
            .collect();
        self.clauses
            .push(format!("{column} IN ({})", placeholders.join(", ")));
    }

    fn where_sql(&self) -> String {
        if self.clauses.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", self.clauses.join(" AND "))
        }
    }

    fn bind<'q>(
        &'q self,
        mut query: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>,
    ) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments> {
        for bind in &self.binds {
            query = match bind {
                Bind::Text(t) => query.bind(t.as_str()),
                Bind::Double(d) => query.bind(*d),
            };
        }
        query
    }
}

fn conditions(filter: &MessageFilter) -> Conditions {
    let mut c = Conditions::default();
    let keys = |list: &[String]| list.iter().map(|a| address_key(a)).collect::<Vec<_>>();
    c.in_list("item_hash", &filter.hashes);
    c.in_list("message_type", &filter.message_types);
    c.in_list("sender_key", &keys(&filter.addresses));
    c.in_list("owner_key", &keys(&filter.owners));
    c.in_list("content_ref", &filter.refs);
    c.in_list("file_hash", &filter.content_hashes);
    c.in_list("content_type", &filter.content_types);
    c.in_list("content_key", &filter.content_keys);
    c.in_list("channel", &filter.channels);
    c.in_list("chain", &filter.chains);
    c.in_list("payment_type", &filter.payment_types);
    c.in_list("status", &filter.effective_statuses());
    if !filter.tags.is_empty() {
        let mut alternatives = Vec::new();
        for tag in &filter.tags {
            let escaped = tag.replace('!', "!!").replace('%', "!%").replace('_', "!_");
            let p = c.placeholder(Bind::Text(format!("%,{escaped},%")));
            alternatives.push(format!("tags LIKE {p} ESCAPE '!'"));
        }
        c.clauses.push(format!("({})", alternatives.join(" OR ")));
    }
    if filter.exclude_amends {
        c.clauses
            .push("(content_type IS NULL OR content_type <> 'amend')".into());
    }
    if let Some(start) = filter.start_date {
        let p = c.placeholder(Bind::Double(start));
        c.clauses.push(format!("time >= {p}"));
    }
    if let Some(end) = filter.end_date {
        let p = c.placeholder(Bind::Double(end));
        c.clauses.push(format!("time < {p}"));
    }
    c
}

impl Page {
    pub fn offset(&self) -> u64 {
        u64::from(self.page - 1) * u64::from(self.per_page)
    }
}

/// Matching messages (`limit` of them from `offset`) and the total count of matches.
pub async fn find(
    pool: &sqlx::AnyPool,
    filter: &MessageFilter,
    limit: u32,
    offset: u64,
) -> sqlx::Result<(Vec<MessageRecord>, i64)> {
    let wants_unstored = filter
        .statuses
        .iter()
        .any(|s| s == status::PENDING || s == status::REJECTED);
    if !wants_unstored {
        return find_stored(pool, filter, u64::from(limit), offset).await;
    }
    // Pending and rejected messages live in their own, small tables: merge them
    // with the first `offset + limit` stored matches, in memory.
    let (mut merged, stored_total) =
        find_stored(pool, filter, offset + u64::from(limit), 0).await?;
    let mut unstored = Vec::new();
    if filter.statuses.iter().any(|s| s == status::PENDING) {
        for record in super::pending::all(pool).await? {
            unstored.push(MessageRecord::from_received(
                &record.message,
                status::PENDING,
                record.reception_time,
            ));
        }
    }
    if filter.statuses.iter().any(|s| s == status::REJECTED) {
        for (message, reception_time) in super::rejections::all(pool).await? {
            unstored.push(MessageRecord::from_received(
                &message,
                status::REJECTED,
                reception_time,
            ));
        }
    }
    unstored.retain(|m| filter.matches(m));
    let total = stored_total + unstored.len() as i64;
    merged.extend(unstored);
    merged.sort_by(|a, b| {
        let order = a
            .time
            .total_cmp(&b.time)
            .then_with(|| a.item_hash.cmp(&b.item_hash));
        if filter.ascending {
            order
        } else {
            order.reverse()
        }
    });
    let page = merged
        .into_iter()
        .skip(offset as usize)
        .take(limit as usize)
        .collect();
    Ok((page, total))
}

async fn find_stored(
    pool: &sqlx::AnyPool,
    filter: &MessageFilter,
    limit: u64,
    offset: u64,
) -> sqlx::Result<(Vec<MessageRecord>, i64)> {
    let c = conditions(filter);
    let order = if filter.ascending { "ASC" } else { "DESC" };
    let sql = format!(
        "SELECT {COLUMNS} FROM messages{} ORDER BY time {order}, item_hash {order} LIMIT {limit} OFFSET {offset}",
        c.where_sql(),
    );
    let rows = c
        .bind(sqlx::query(AssertSqlSafe(sql)))
        .fetch_all(pool)
        .await?;
    let messages = rows
        .iter()
        .map(MessageRecord::from_row)
        .collect::<sqlx::Result<Vec<_>>>()?;
    let count_sql = format!("SELECT COUNT(*) AS total FROM messages{}", c.where_sql());
    let total: i64 = sqlx::Row::try_get(
        &c.bind(sqlx::query(AssertSqlSafe(count_sql)))
            .fetch_one(pool)
            .await?,
        "total",
    )?;
    Ok((messages, total))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn parses_lists_and_pagination() {
        let (f, page) = MessageFilter::from_params(&params(&[
            ("msgTypes", "post,STORE"),
            ("addresses", "0xA,0xB"),
            ("pagination", "5"),
            ("page", "3"),
            ("sortOrder", "1"),
        ]))
        .unwrap();
        assert_eq!(f.message_types, vec!["POST", "STORE"]);
        assert_eq!(f.addresses, vec!["0xA", "0xB"]);
        assert!(f.ascending);
        assert_eq!(
            page,
            Page {
                per_page: 5,
                page: 3
            }
        );
    }

    #[test]
    fn rejects_bad_values() {
        assert!(MessageFilter::from_params(&params(&[("page", "0")])).is_err());
        assert!(MessageFilter::from_params(&params(&[("msgTypes", "NOPE")])).is_err());
        assert!(MessageFilter::from_params(&params(&[("sortOrder", "2")])).is_err());
        assert!(MessageFilter::from_params(&params(&[("startDate", "yesterday")])).is_err());
        assert!(MessageFilter::from_params(&params(&[("msgStatuses", "done")])).is_err());
    }

    #[test]
    fn sql_uses_numbered_placeholders_in_order() {
        let (f, _) = MessageFilter::from_params(&params(&[
            ("hashes", "a,b"),
            ("tags", "x_y"),
            ("startDate", "10"),
        ]))
        .unwrap();
        let c = conditions(&f);
        let sql = c.where_sql();
        assert!(sql.contains("item_hash IN ($1, $2)"), "{sql}");
        assert!(sql.contains("status IN ($3, $4)"), "{sql}");
        assert!(sql.contains("tags LIKE $5 ESCAPE '!'"), "{sql}");
        assert!(sql.contains("time >= $6"), "{sql}");
        match &c.binds[4] {
            Bind::Text(t) => assert_eq!(t, "%,x!_y,%"),
            Bind::Double(_) => panic!("tag bound as number"),
        }
    }
}
