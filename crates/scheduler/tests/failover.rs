//! The scheduler end to end, in process: a real CCN, fake CRNs, signed heartbeats and
//! pushes, failover after the grace period, fencing of the node that comes back, FORGET.

mod common;

use aleph_protocol::scheduler::{AllocationEntry, NodeList, VmPage};
use aleph_types::message::MessageType;
use common::*;
use serde_json::json;
use std::time::{Duration, Instant};

const LIMIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistent_program_fails_over_and_the_lost_node_is_fenced() {
    let (user, _) = aleph_protocol::signing::Signer::generate();
    let ccn = Ccn::start(&[&user]).await;
    let dir = tempfile::tempdir().unwrap();
    let scheduler = start_scheduler(&ccn.url(), dir.path()).await;
    let base = scheduler.url();

    let mut a = FakeCrn::start(scheduler.address()).await;
    let mut b = FakeCrn::start(scheduler.address()).await;
    let hash_a = ccn.register_node(&a.operator, "crn-a", &a.url).await;
    let hash_b = ccn.register_node(&b.operator, "crn-b", &b.url).await;
    wait_for(LIMIT, "both nodes registered", || async {
        let (_, body) = get_json(&format!("{base}/api/v1/nodes")).await;
        let list: NodeList = serde_json::from_value(body).ok()?;
        (list.resource_nodes.len() == 2).then_some(())
    })
    .await;

    // Only a heartbeats at first, so the program goes there.
    a.start_heartbeats(&base, &hash_a);
    wait_for(LIMIT, "node a active", || async {
        let (_, node) = get_json(&format!("{base}/api/v1/nodes/{hash_a}")).await;
        (node["status"] == "active").then_some(())
    })
    .await;
    let program = ccn.program(&user, true, 1024).await;
    let first = wait_for(LIMIT, "the program pushed to a", || async {
        a.current()
            .filter(|alloc| alloc.persistent_vms.contains(&program))
    })
    .await;
    let v1 = first.allocation_version.unwrap();
    assert_eq!(first.lease_seconds, Some(LEASE_SECONDS));
    assert!(a.refused.lock().unwrap().is_empty());
    wait_for(LIMIT, "the program dispatched", || async {
        let (_, page) = get_json(&format!("{base}/api/v1/vms?vm_hash={program}")).await;
        let page: VmPage = serde_json::from_value(page).ok()?;
        (page.items.first()?.status == "dispatched").then_some(())
    })
    .await;
    let (status, allocation) = get_json(&format!("{base}/api/v0/allocation/{program}")).await;
    assert_eq!(status, 200, "{allocation}");
    let allocation: AllocationEntry = serde_json::from_value(allocation).unwrap();
    assert_eq!(allocation.node.node_id, hash_a);
    assert_eq!(allocation.node.url, a.url);
    assert_eq!(allocation.vm_type, "persistent_program");

    // A non-persistent program is not the scheduler's business.
    let on_demand = ccn.program(&user, false, 256).await;

    b.start_heartbeats(&base, &hash_b);
    wait_for(LIMIT, "node b active", || async {
        let (_, node) = get_json(&format!("{base}/api/v1/nodes/{hash_b}")).await;
        (node["status"] == "active").then_some(())
    })
    .await;

    // a dies: after grace (not before) the program is on b, with a higher version.
    a.alive.store(false, std::sync::atomic::Ordering::SeqCst);
    let moved = wait_for(LIMIT, "the program pushed to b", || async {
        b.received
            .lock()
            .unwrap()
            .iter()
            .find(|r| r.allocation.persistent_vms.contains(&program))
            .cloned()
    })
    .await;
    let last_beat = a.last_heartbeat.lock().unwrap().unwrap();
    assert!(
        moved.at.duration_since(last_beat) >= GRACE,
        "re-placed {:?} after a's last heartbeat, before the grace period",
        moved.at.duration_since(last_beat)
    );
    let v2 = moved.allocation.allocation_version.unwrap();
    assert!(v2 > v1, "{v2} > {v1}");
    let (_, node_a) = get_json(&format!("{base}/api/v1/nodes/{hash_a}")).await;
    assert_eq!(node_a["status"], "lost", "{node_a}");
    let (_, allocation) = get_json(&format!("{base}/api/v0/allocation/{program}")).await;
    assert_eq!(allocation["node"]["node_id"], json!(hash_b));
    // a is down: its emptied list waits in the pusher.
    assert_eq!(a.applied_version(), v1);
    let (_, page) = get_json(&format!("{base}/api/v1/vms?vm_hash={on_demand}")).await;
    assert_eq!(page["pagination"]["total"], 0, "{page}");

    // a comes back: told it was lost, behind, and fenced by a newer, emptier list.
    let replies_before = a.replies.lock().unwrap().len();
    a.alive.store(true, std::sync::atomic::Ordering::SeqCst);
    let reply = wait_for(LIMIT, "a's next heartbeat answered", || async {
        a.replies.lock().unwrap().get(replies_before).cloned()
    })
    .await;
    assert!(reply.lost, "{reply:?}");
    assert!(reply.allocation_version > v1, "{reply:?}");
    assert_eq!(reply.allocation_version, v2, "{reply:?}");
    let fenced = wait_for(LIMIT, "a's list without the program", || async {
        a.current()
            .filter(|alloc| alloc.allocation_version.unwrap() > v1)
    })
    .await;
    assert!(!fenced.persistent_vms.contains(&program), "{fenced:?}");
    wait_for(LIMIT, "a active again", || async {
        let (_, node) = get_json(&format!("{base}/api/v1/nodes/{hash_a}")).await;
        (node["status"] == "active").then_some(())
    })
    .await;
    // Still on b only.
    let (_, page) = get_json(&format!("{base}/api/v1/vms?owner={}", user.address())).await;
    let page: VmPage = serde_json::from_value(page).unwrap();
    assert_eq!(page.pagination.total, 1);
    assert_eq!(
        page.items[0].allocated_node.as_deref(),
        Some(hash_b.as_str())
    );
    assert_eq!(page.items[0].allocated_url.as_deref(), Some(b.url.as_str()));

    // FORGET: gone from b, removed, no allocation.
    ccn.post(
        &user,
        MessageType::Forget,
        json!({"hashes": [program], "reason": "done"}),
    )
    .await;
    wait_for(LIMIT, "b's list without the program", || async {
        b.current()
            .filter(|alloc| !alloc.persistent_vms.contains(&program))
    })
    .await;
    let (_, page) = get_json(&format!("{base}/api/v1/vms?vm_hash={program}")).await;
    assert_eq!(page["items"][0]["status"], "removed", "{page}");
    let (status, body) = get_json(&format!("{base}/api/v0/allocation/{program}")).await;
    assert_eq!(status, 404, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("removed"),
        "{body}"
    );
    assert!(a.refused.lock().unwrap().is_empty());
    assert!(b.refused.lock().unwrap().is_empty());

    // Versions only grow on each node.
    for crn in [&a, &b] {
        let versions: Vec<u64> = crn
            .received
            .lock()
            .unwrap()
            .iter()
            .map(|r| r.allocation.allocation_version.unwrap())
            .collect();
        assert!(versions.windows(2).all(|w| w[0] <= w[1]), "{versions:?}");
    }
    scheduler.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_must_be_signed_by_the_node_owner_once() {
    let ccn = Ccn::start(&[]).await;
    let dir = tempfile::tempdir().unwrap();
    let scheduler = start_scheduler(&ccn.url(), dir.path()).await;
    let base = scheduler.url();
    let crn = FakeCrn::start(scheduler.address()).await;
    let node_hash = ccn.register_node(&crn.operator, "crn", &crn.url).await;
    wait_for(LIMIT, "the node registered", || async {
        let (status, _) = get_json(&format!("{base}/api/v1/nodes/{node_hash}")).await;
        (status == 200).then_some(())
    })
    .await;
    let url = format!("{base}/api/v1/heartbeat");
    let http = reqwest::Client::new();
    let heartbeat = aleph_protocol::scheduler::Heartbeat {
        node_hash: node_hash.clone(),
        url: crn.url.clone(),
        allocation_version: 0,
        resources: resources(),
        usage: json!({}),
        running: vec![],
    };

    let unsigned = http.post(&url).json(&heartbeat).send().await.unwrap();
    assert_eq!(unsigned.status(), 401);
    let body: serde_json::Value = unsigned.json().await.unwrap();
    assert!(body["error"].is_string(), "{body}");

    let (stranger, _) = aleph_protocol::signing::Signer::generate();
    let wrong = signed_post(&http, &stranger, &url, &heartbeat)
        .await
        .unwrap();
    assert_eq!(wrong.status(), 403);

    let mut unknown = heartbeat.clone();
    unknown.node_hash = "f".repeat(64);
    let response = signed_post(&http, &crn.operator, &url, &unknown)
        .await
        .unwrap();
    assert_eq!(response.status(), 404);

    let response = signed_post(&http, &crn.operator, &url, &json!({"node_hash": 5}))
        .await
        .unwrap();
    assert_eq!(response.status(), 400);

    // A valid one, then the very same request again.
    let bytes = serde_json::to_vec(&heartbeat).unwrap();
    let header = aleph_protocol::auth::eip191_v1::authorization(
        &crn.operator,
        "POST",
        "/api/v1/heartbeat",
        &bytes,
        chrono::Utc::now().timestamp(),
    )
    .unwrap();
    let send = || {
        http.post(&url)
            .header("authorization", header.clone())
            .header("content-type", "application/json")
            .body(bytes.clone())
            .send()
    };
    let ok = send().await.unwrap();
    assert_eq!(ok.status(), 200);
    let reply: aleph_protocol::scheduler::HeartbeatReply = ok.json().await.unwrap();
    assert_eq!(reply.lease_seconds, LEASE_SECONDS);
    assert!(!reply.lost);
    let replayed = send().await.unwrap();
    assert_eq!(replayed.status(), 401);
    let body: serde_json::Value = replayed.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("already used"),
        "{body}"
    );

    let (_, node) = get_json(&format!("{base}/api/v1/nodes/{node_hash}")).await;
    assert_eq!(node["status"], "active");
    assert_eq!(node["resources"]["vcpus"], 4);
    let (status, body) = get_json(&format!("{base}/api/v1/nodes/{}", "0".repeat(64))).await;
    assert_eq!(status, 404);
    assert!(body["error"].is_string());
    let (status, _) = get_json(&format!("{base}/api/v1/vms?page=0")).await;
    assert_eq!(status, 400);
    let (status, _) = get_json(&format!("{base}/api/v1/nowhere")).await;
    assert_eq!(status, 404);

    // Only the operator can drop its node; then its heartbeats are refused.
    let drop_node = |signer| {
        let ccn = &ccn;
        let node_hash = node_hash.clone();
        async move {
            ccn.post(
                signer,
                MessageType::Post,
                json!({"type": "corechan-operation", "ref": node_hash,
                       "content": {"action": "drop-node"}}),
            )
            .await
        }
    };
    drop_node(&stranger).await;
    // A registration posted after it: once the scheduler has read it, it has read the
    // stranger's drop too (same stream, in order).
    let (marker, _) = aleph_protocol::signing::Signer::generate();
    let marker_hash = ccn
        .register_node(&marker, "marker", "http://127.0.0.1:9")
        .await;
    wait_for(LIMIT, "the marker node registered", || async {
        let (status, _) = get_json(&format!("{base}/api/v1/nodes/{marker_hash}")).await;
        (status == 200).then_some(())
    })
    .await;
    let (status, _) = get_json(&format!("{base}/api/v1/nodes/{node_hash}")).await;
    assert_eq!(status, 200, "a stranger dropped the node");
    drop_node(&crn.operator).await;
    wait_for(LIMIT, "the node dropped", || async {
        let (status, _) = get_json(&format!("{base}/api/v1/nodes/{node_hash}")).await;
        (status == 404).then_some(())
    })
    .await;
    let (_, list) = get_json(&format!("{base}/api/v1/nodes")).await;
    assert_eq!(
        list["resource_nodes"].as_array().unwrap().len(),
        1,
        "{list}"
    );
    let response = signed_post(&http, &crn.operator, &url, &heartbeat)
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_scheduler_keeps_its_state_and_versions() {
    let (user, _) = aleph_protocol::signing::Signer::generate();
    let ccn = Ccn::start(&[&user]).await;
    let dir = tempfile::tempdir().unwrap();
    let scheduler = start_scheduler(&ccn.url(), dir.path()).await;
    let address = scheduler.address().to_owned();
    let mut crn = FakeCrn::start(&address).await;
    let node_hash = ccn.register_node(&crn.operator, "crn", &crn.url).await;
    crn.start_heartbeats(&scheduler.url(), &node_hash);
    let program = ccn.program(&user, true, 512).await;
    let first = wait_for(LIMIT, "the program pushed", || async {
        crn.current()
            .filter(|alloc| alloc.persistent_vms.contains(&program))
    })
    .await;
    scheduler.shutdown().await;

    // Same data folder: same key (generated once, 0600), same placement, and the next
    // change gets a higher version.
    let mode = std::fs::metadata(dir.path().join(aleph_scheduler::KEY_FILE))
        .unwrap()
        .permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o600
    );
    let scheduler = start_scheduler(&ccn.url(), dir.path()).await;
    assert_eq!(scheduler.address(), address);
    let base = scheduler.url();
    let (status, allocation) = get_json(&format!("{base}/api/v0/allocation/{program}")).await;
    assert_eq!(status, 200, "{allocation}");
    assert_eq!(allocation["node"]["node_id"], json!(node_hash));
    crn.start_heartbeats(&base, &node_hash);
    let second = ccn.program(&user, true, 512).await;
    let pushed = wait_for(LIMIT, "both programs pushed", || async {
        crn.current().filter(|alloc| {
            alloc.persistent_vms.contains(&program) && alloc.persistent_vms.contains(&second)
        })
    })
    .await;
    assert!(pushed.allocation_version.unwrap() > first.allocation_version.unwrap());
    assert!(crn.refused.lock().unwrap().is_empty());
    let (_, status) = get_json(&format!("{base}/api/v1/status")).await;
    assert_eq!(
        status["vms"]["dispatched"].as_u64().unwrap_or(0)
            + status["vms"]["scheduled"].as_u64().unwrap_or(0),
        2,
        "{status}"
    );
    let _ = Instant::now();
}
