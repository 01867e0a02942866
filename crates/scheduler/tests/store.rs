//! The scheduler's storage on SQLite, and on PostgreSQL when `ALEPH_TEST_POSTGRES_URL`
//! points at a server where the test may create (and drops) a database.

mod common;

use aleph_scheduler::placement::Policy;
use aleph_scheduler::state::{Core, Settings};
use aleph_scheduler::store::{Changes, Db, NodeRow, VmRow};
use common::POSTGRES_ENV;
use std::time::{Duration, Instant};

/// A fresh PostgreSQL database, dropped at the end.
struct PgDatabase {
    admin_url: String,
    name: String,
    url: String,
}

impl PgDatabase {
    async fn create() -> Option<PgDatabase> {
        let admin_url = match std::env::var(POSTGRES_ENV) {
            Ok(url) if !url.is_empty() => url,
            _ => {
                eprintln!("{POSTGRES_ENV} is not set: PostgreSQL test skipped");
                return None;
            }
        };
        sqlx::any::install_default_drivers();
        let name = format!(
            "aleph_scheduler_test_{}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        );
        let admin = sqlx::AnyPool::connect(&admin_url)
            .await
            .expect("cannot connect to ALEPH_TEST_POSTGRES_URL");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&admin)
            .await
            .expect("cannot create a test database");
        admin.close().await;
        let (base, query) = match admin_url.split_once('?') {
            Some((base, query)) => (base.to_owned(), format!("?{query}")),
            None => (admin_url.clone(), String::new()),
        };
        let authority = base.find("://").map_or(0, |i| i + 3);
        let server = match base[authority..].find('/') {
            Some(i) => base[..authority + i].to_owned(),
            None => base.clone(),
        };
        let url = format!("{server}/{name}{query}");
        Some(PgDatabase {
            admin_url,
            name,
            url,
        })
    }

    async fn drop_database(self) {
        if let Ok(admin) = sqlx::AnyPool::connect(&self.admin_url).await {
            let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            )))
            .execute(&admin)
            .await;
            admin.close().await;
        }
    }
}

fn node(hash: &str, status: &str, version: u64) -> NodeRow {
    NodeRow {
        hash: hash.into(),
        owner: "0xowner".into(),
        name: hash.into(),
        address: format!("http://{hash}"),
        registered_time: 1.5,
        status: status.into(),
        last_heartbeat: Some(2.25),
        resources: Some(serde_json::to_string(&common::resources()).unwrap()),
        running: Some("[]".into()),
        allocation_version: version,
        applied_version: version,
    }
}

fn vm(hash: &str, node: Option<&str>, status: &str) -> VmRow {
    VmRow {
        vm_hash: hash.into(),
        vm_type: "persistent_program".into(),
        owner: "0xuser".into(),
        content: r#"{"resources":{"vcpus":1,"memory":512}}"#.into(),
        status: status.into(),
        node: node.map(str::to_owned),
        since: 3.5,
        reason: None,
    }
}

async fn round_trip(url: &str) {
    let db = Db::open(url).await.unwrap();
    let big = 1_763_900_000_123u64;
    db.apply(&Changes {
        nodes: vec![node("a", "active", big), node("b", "lost", 7)],
        vms: vec![
            vm("v1", Some("a"), "dispatched"),
            vm("v2", None, "missing"),
            vm("v3", None, "removed"),
        ],
        retired: vec!["v3".into(), "v3".into()],
        counters: vec![("allocation_version".into(), big as f64)],
        ..Default::default()
    })
    .await
    .unwrap();
    // Upserts and deletes.
    db.apply(&Changes {
        nodes: vec![node("b", "active", 8)],
        deleted_nodes: vec!["a".into()],
        retired: vec!["v3".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    db.apply(&Changes {
        nodes: vec![node("a", "active", big)],
        ..Default::default()
    })
    .await
    .unwrap();
    db.close().await;

    // A second opening migrates nothing and reads the same.
    let db = Db::open(url).await.unwrap();
    let snapshot = db.load().await.unwrap();
    assert_eq!(snapshot.nodes.len(), 2);
    assert_eq!(snapshot.nodes[0], node("a", "active", big));
    assert_eq!(snapshot.nodes[1], node("b", "active", 8));
    assert_eq!(snapshot.vms.len(), 3);
    assert_eq!(snapshot.vms[0], vm("v1", Some("a"), "dispatched"));
    assert_eq!(snapshot.retired, vec!["v3".to_string()]);
    assert_eq!(
        snapshot.counters,
        vec![("allocation_version".to_string(), big as f64)]
    );

    let core = Core::restore(
        Settings {
            grace: Duration::from_secs(10),
            lease_seconds: 6,
            policy: Policy::BinPack,
        },
        snapshot,
        Instant::now(),
    );
    assert_eq!(core.version(), big);
    assert_eq!(core.vm("v1").unwrap().node.as_deref(), Some("a"));
    assert_eq!(core.allocation_of("a").persistent_vms, vec!["v1"]);
    assert!(core.vm("v2").unwrap().hold_until.is_some());
    assert_eq!(core.vm("v3").unwrap().status, "removed");
    db.close().await;
}

#[tokio::test]
async fn storage_round_trip_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    round_trip(&aleph_scheduler::store::default_url(dir.path())).await;
}

#[tokio::test]
async fn storage_round_trip_postgres() {
    let Some(pg) = PgDatabase::create().await else {
        return;
    };
    round_trip(&pg.url).await;
    pg.drop_database().await;
}

/// The whole scheduler on PostgreSQL: a program placed, the scheduler restarted on the
/// same database, the placement kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduler_on_postgres() {
    let Some(pg) = PgDatabase::create().await else {
        return;
    };
    let (user, _) = aleph_protocol::signing::Signer::generate();
    let ccn = common::Ccn::start(&[&user]).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::scheduler_config(&ccn.url(), dir.path());
    config.database_url = Some(pg.url.clone());
    let scheduler = aleph_scheduler::start(config.clone()).await.unwrap();
    let mut crn = common::FakeCrn::start(scheduler.address()).await;
    let node_hash = ccn.register_node(&crn.operator, "crn", &crn.url).await;
    crn.start_heartbeats(&scheduler.url(), &node_hash);
    let program = ccn.program(&user, true, 512).await;
    common::wait_for(Duration::from_secs(30), "the program pushed", || async {
        crn.current()
            .filter(|alloc| alloc.persistent_vms.contains(&program))
    })
    .await;
    scheduler.shutdown().await;
    let scheduler = aleph_scheduler::start(config).await.unwrap();
    let (status, body) =
        common::get_json(&format!("{}/api/v0/allocation/{program}", scheduler.url())).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["node"]["node_id"], serde_json::json!(node_hash));
    assert!(
        !dir.path().join("scheduler.sqlite").exists(),
        "no SQLite file next to a PostgreSQL database"
    );
    scheduler.shutdown().await;
    pg.drop_database().await;
}
