//! PROGRAM and INSTANCE: dependencies, updates, payment checks, prices, balances.

mod common;

use aleph_ccn::{CcnConfig, FundedAccount};
use common::{TestNode, Wallet, assert_rejected};
use serde_json::{Value, json};

on_both_backends!(
    program_with_dependencies_and_price,
    instance_paid_with_credits,
    updates_follow_allow_amend,
    volume_smaller_than_its_file,
);

fn hash(message: &Value) -> String {
    message["item_hash"].as_str().unwrap().to_string()
}

fn program(wallet: &Wallet, code: &str, runtime: &str, extra: Value) -> Value {
    let mut content = json!({
        "type": "vm-function", "allow_amend": false,
        "code": {"encoding": "zip", "entrypoint": "main:app", "ref": code, "use_latest": false},
        "runtime": {"ref": runtime, "use_latest": true, "comment": "python"},
        "on": {"http": true},
        "environment": {"internet": true, "aleph_api": false, "reproducible": false, "shared_cache": false},
        "resources": {"vcpus": 1, "memory": 256, "seconds": 30},
        "variables": {"GREETING": "hello"},
        "volumes": [{"ephemeral": true, "size_mib": 100, "mount": "/tmp/x"}]
    });
    for (k, v) in extra.as_object().unwrap() {
        content[k] = v.clone();
    }
    wallet.message("PROGRAM", content)
}

async fn program_with_dependencies_and_price(node: TestNode) {
    let alice = Wallet::random();
    let code = node.upload_stored(&alice, b"zip".to_vec()).await;
    let runtime = node.upload_stored(&alice, b"squashfs".to_vec()).await;
    let message = program(&alice, &code, &runtime, json!({}));

    // On-demand with internet: 2 CU at 200 ALEPH held each.
    node.fund(&alice, 399.0, 0).await;
    let (status, body) = node.post_message(&message, true).await;
    assert_rejected(status, &body, 422, 5);
    node.fund(&alice, 400.0, 0).await;
    node.accept(&message).await;
    let (_, got) = node
        .get_json(&format!("/api/v0/messages/{}", hash(&message)))
        .await;
    let parsed: aleph_types::message::Message =
        serde_json::from_value(got["message"].clone()).unwrap();
    assert!(matches!(
        parsed.content(),
        aleph_types::message::MessageContentEnum::Program(_)
    ));

    let (status, price) = node
        .get_json(&format!("/api/v0/price/{}", hash(&message)))
        .await;
    assert_eq!(status, 200, "{price}");
    assert_eq!(price["payment_type"], "hold");
    assert_eq!(price["required_tokens"], 400.0);
    assert_eq!(price["compute_units"], 2);

    let estimate: Value = node
        .http
        .post(node.url("/api/v0/price/estimate"))
        .json(&json!({"message": program(&alice, &code, &runtime, json!({"resources": {"vcpus": 4, "memory": 2048}}))}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(estimate["required_tokens"], 1600.0, "{estimate}");

    let (_, balance) = node
        .get_json(&format!("/api/v0/addresses/{}/balance", alice.address()))
        .await;
    assert_eq!(balance["balance"], 400.0);
    assert_eq!(balance["locked_amount"], 400.0);

    // Nothing left to hold another one.
    let second = program(
        &alice,
        &code,
        &runtime,
        json!({"metadata": {"name": "second"}}),
    );
    let (status, body) = node.post_message(&second, true).await;
    assert_rejected(status, &body, 422, 5);

    let (_, listed) = node
        .get_json(
            "/api/v0/messages.json?msgTypes=PROGRAM&contentTypes=vm-function&paymentTypes=hold",
        )
        .await;
    assert_eq!(listed["pagination_total"], 1);
}

async fn instance_paid_with_credits(node: TestNode) {
    let alice = Wallet::random();
    let rootfs = node.upload_stored(&alice, b"debian".to_vec()).await;
    let instance = |vcpus: u64, name: &str| {
        alice.message(
            "INSTANCE",
            json!({
                "allow_amend": false,
                "metadata": {"name": name},
                "authorized_keys": ["ssh-ed25519 AAAA test"],
                "resources": {"vcpus": vcpus, "memory": 2048 * vcpus, "seconds": 30},
                "environment": {"internet": true, "aleph_api": true, "hypervisor": "qemu"},
                "rootfs": {"parent": {"ref": rootfs, "use_latest": true}, "persistence": "host", "size_mib": 20480},
                "payment": {"type": "credit"},
                "requirements": {"node": {"node_hash": "a".repeat(64)}},
                "volumes": [{"persistence": "host", "name": "data", "size_mib": 1024, "mount": "/data"}]
            }),
        )
    };
    // 1 CU + 1 GiB extra disk: (14,250 + 102.4) credits/h; 24 h of two of them.
    let per_hour = 14_250.0 + 1024.0 * 0.1;
    node.fund(&alice, 0.0, (per_hour * 24.0 * 2.0) as i64 + 1)
        .await;
    node.accept(&instance(1, "one")).await;
    node.accept(&instance(1, "two")).await;
    let third = instance(1, "three");
    let (status, body) = node.post_message(&third, true).await;
    assert_rejected(status, &body, 422, 6);
    let (_, balance) = node
        .get_json(&format!("/api/v0/addresses/{}/balance", alice.address()))
        .await;
    assert!(
        (balance["credit_per_hour"].as_f64().unwrap() - 2.0 * per_hour).abs() < 1e-6,
        "{balance}"
    );

    // Credit payment without a node hash: invalid payment method.
    let mut content: Value = serde_json::from_str(third["item_content"].as_str().unwrap()).unwrap();
    content.as_object_mut().unwrap().remove("requirements");
    let no_node = alice.message("INSTANCE", content);
    let (status, body) = node.post_message(&no_node, true).await;
    assert_rejected(status, &body, 422, 202);
}

async fn updates_follow_allow_amend(node: TestNode) {
    let alice = Wallet::random();
    node.fund(&alice, 10_000.0, 0).await;
    let code = node.upload_stored(&alice, b"zip".to_vec()).await;
    let runtime = node.upload_stored(&alice, b"rt".to_vec()).await;
    let fixed = program(&alice, &code, &runtime, json!({}));
    node.accept(&fixed).await;
    let amendable = program(&alice, &code, &runtime, json!({"allow_amend": true}));
    node.accept(&amendable).await;

    let update = program(&alice, &code, &runtime, json!({"replaces": hash(&fixed)}));
    let (status, body) = node.post_message(&update, true).await;
    assert_rejected(status, &body, 422, 302);

    let update = program(
        &alice,
        &code,
        &runtime,
        json!({"replaces": hash(&amendable), "allow_amend": true}),
    );
    node.accept(&update).await;
    let update_of_update = program(&alice, &code, &runtime, json!({"replaces": hash(&update)}));
    let (status, body) = node.post_message(&update_of_update, true).await;
    assert_rejected(status, &body, 422, 303);
}

async fn volume_smaller_than_its_file(node: TestNode) {
    let alice = Wallet::random();
    node.fund(&alice, 10_000.0, 0).await;
    let code = node.upload_stored(&alice, b"zip".to_vec()).await;
    let runtime = node.upload_stored(&alice, b"rt".to_vec()).await;
    let parent = node
        .upload_stored(&alice, vec![0u8; 2 * 1024 * 1024 + 1])
        .await;
    let message = program(
        &alice,
        &code,
        &runtime,
        json!({"volumes": [{"parent": {"ref": parent, "use_latest": true}, "persistence": "host",
                             "name": "data", "size_mib": 2, "mount": "/data"}]}),
    );
    let (status, body) = node.post_message(&message, true).await;
    assert_rejected(status, &body, 422, 304);
    let missing = program(
        &alice,
        &code,
        &runtime,
        json!({"volumes": [{"ref": "d".repeat(64), "mount": "/opt/x", "use_latest": true}]}),
    );
    let (status, body) = node.post_message(&missing, true).await;
    assert_rejected(status, &body, 422, 301);
}

/// `start` with funded accounts: balances are stored and served.
#[tokio::test]
async fn funded_accounts_are_served_by_start() {
    let dir = tempfile::tempdir().unwrap();
    let handle = aleph_ccn::start(CcnConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.path().to_path_buf(),
        database_url: None,
        funded: vec![FundedAccount {
            address: "0xAbCdEf0000000000000000000000000000000001".into(),
            balance: 12.5,
            credit_balance: 1_000_000,
        }],
    })
    .await
    .unwrap();
    assert!(handle.url().starts_with("http://127.0.0.1:"));
    let body: Value = reqwest::get(format!(
        "{}/api/v0/addresses/0xabcdef0000000000000000000000000000000001/balance",
        handle.url()
    ))
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(body["balance"], 12.5);
    assert_eq!(body["credit_balance"], 1_000_000);
    assert_eq!(body["locked_amount"], 0.0);
    handle.shutdown().await;
    assert!(dir.path().join("ccn.sqlite").exists());
}
