//! `aleph program` against a real CCN in process: the messages it posts are the
//! ones the CCN accepts, with the content shape of the public network.

mod common;

use common::{Network, file_bytes, key_and_address, stderr};
use serde_json::{Value, json};
use std::path::Path;

const HELLO: &str = "from fastapi import FastAPI\n\napp = FastAPI()\n\n\n@app.get(\"/\")\nasync def root():\n    return {\"message\": \"Hello World\"}\n";

fn write_app(dir: &Path, text: &str) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("main.py"), text).unwrap();
}

/// Stores a stand-in runtime file and returns its STORE hash: the CCN only
/// needs the STORE to exist to accept a PROGRAM that uses it.
async fn store_runtime(net: &Network, seed: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("runtime.squashfs");
    std::fs::write(&path, file_bytes(4096, seed)).unwrap();
    let stored = net
        .funded_json(&["file", "upload", path.to_str().unwrap()])
        .await;
    stored["item_hash"].as_str().unwrap().to_owned()
}

async fn status(net: &Network, hash: &str) -> Value {
    let output = net.aleph(&["message", "get", hash, "--json"]).await;
    serde_json::from_slice(&output.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_program_is_uploaded_listed_updated_and_deleted() {
    let net = Network::start().await;
    let runtime = store_runtime(&net, "runtime for the lifecycle").await;
    let work = tempfile::tempdir().unwrap();
    let app = work.path().join("hello");
    write_app(&app, HELLO);

    let uploaded = net
        .funded_json(&[
            "program",
            "upload",
            app.to_str().unwrap(),
            "main:app",
            "--runtime",
            &runtime,
            "--crn",
            "http://127.0.0.1:4999",
            "--env-vars",
            "GREETING=hi,MODE=test",
        ])
        .await;
    assert_eq!(uploaded["status"], "processed", "{uploaded}");
    let hash = uploaded["item_hash"].as_str().unwrap().to_owned();
    assert_eq!(uploaded["url"], format!("http://127.0.0.1:4999/vm/{hash}/"));
    let hostname = uploaded["hostname"].as_str().unwrap();
    assert_eq!(hostname.len(), 52);
    assert!(
        hostname
            .bytes()
            .all(|b| b.is_ascii_lowercase() || (b'2'..=b'7').contains(&b)),
        "{hostname}"
    );
    assert_eq!(uploaded["encoding"], "zip");
    assert_eq!(uploaded["name"], "hello");
    let code_ref = uploaded["code_ref"].as_str().unwrap().to_owned();

    // The PROGRAM as the CCN holds it has the public network's shape.
    let program = status(&net, &hash).await;
    assert_eq!(program["status"], "processed");
    let message = &program["message"];
    assert_eq!(message["type"], "PROGRAM");
    let content = &message["content"];
    assert_eq!(content["type"], "vm-function");
    assert_eq!(content["address"], net.funded_address);
    assert_eq!(
        content["code"],
        json!({"encoding": "zip", "entrypoint": "main:app", "ref": code_ref, "use_latest": true})
    );
    assert_eq!(
        content["runtime"],
        json!({"ref": runtime, "use_latest": true, "comment": ""})
    );
    assert_eq!(content["on"], json!({"http": true, "persistent": false}));
    assert_eq!(
        content["environment"],
        json!({"reproducible": false, "internet": false, "aleph_api": true, "shared_cache": false})
    );
    assert_eq!(
        content["resources"],
        json!({"vcpus": 1, "memory": 256, "seconds": 30})
    );
    assert_eq!(
        content["variables"],
        json!({"GREETING": "hi", "MODE": "test"})
    );
    assert_eq!(content["volumes"], json!([]));
    assert_eq!(content["allow_amend"], false);
    assert_eq!(content["payment"], json!({"type": "credit"}));
    assert_eq!(content["metadata"], json!({"name": "hello"}));

    // The code STORE pins a zip with main.py at its root.
    let code = status(&net, &code_ref).await;
    assert_eq!(code["message"]["type"], "STORE");
    let zip_path = work.path().join("code.zip");
    net.json(&[
        "file",
        "download",
        code["message"]["content"]["item_hash"].as_str().unwrap(),
        "-o",
        zip_path.to_str().unwrap(),
    ])
    .await;
    let mut zip = zip::ZipArchive::new(std::fs::File::open(&zip_path).unwrap()).unwrap();
    let mut main = String::new();
    std::io::Read::read_to_string(&mut zip.by_name("main.py").unwrap(), &mut main).unwrap();
    assert_eq!(main, HELLO);

    let listed = net.funded_json(&["program", "list"]).await;
    let hashes: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["item_hash"].as_str().unwrap())
        .collect();
    assert_eq!(hashes, [hash.as_str()]);
    assert_eq!(listed[0]["entrypoint"], "main:app");

    // A new version: a STORE whose ref is the original code STORE.
    write_app(&app, &HELLO.replace("Hello World", "Hello again"));
    let updated = net
        .funded_json(&["program", "update", &hash, app.to_str().unwrap()])
        .await;
    assert_eq!(updated["item_hash"], hash);
    assert_eq!(updated["code_ref"], code_ref);
    assert_eq!(updated["status"], "processed");
    let new_code = updated["new_code_ref"].as_str().unwrap().to_owned();
    assert_ne!(new_code, code_ref);
    let amend = status(&net, &new_code).await;
    assert_eq!(amend["status"], "processed");
    assert_eq!(amend["message"]["content"]["ref"], code_ref);
    assert_ne!(
        amend["message"]["content"]["item_hash"],
        code["message"]["content"]["item_hash"]
    );

    // Someone else can neither update nor delete it.
    let (other_key, _) = key_and_address("aleph-cli-test-other");
    let refused = net
        .aleph(&["--private-key", &other_key, "program", "delete", &hash])
        .await;
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("belongs to"),
        "{}",
        stderr(&refused)
    );

    let deleted = net.funded_json(&["program", "delete", &hash]).await;
    assert_eq!(deleted["item_hash"], hash);
    let mut forgotten_code: Vec<String> = deleted["forgotten_code"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h.as_str().unwrap().to_owned())
        .collect();
    forgotten_code.sort();
    let mut expected = vec![code_ref.clone(), new_code.clone()];
    expected.sort();
    assert_eq!(forgotten_code, expected);
    for gone in [&hash, &code_ref, &new_code] {
        assert_eq!(status(&net, gone).await["status"], "forgotten", "{gone}");
    }
    // The runtime is not the program's to forget.
    assert_eq!(status(&net, &runtime).await["status"], "processed");
    assert_eq!(net.funded_json(&["program", "list"]).await, json!([]));

    let again = net
        .aleph(&["--private-key", &net.funded_key, "program", "delete", &hash])
        .await;
    assert!(!again.status.success());
    assert!(stderr(&again).contains("forgotten"), "{}", stderr(&again));

    net.ccn.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_default_runtime_is_the_one_the_vm_images_aggregate_names() {
    let net = Network::start().await;
    let runtime = store_runtime(&net, "default runtime").await;
    let work = tempfile::tempdir().unwrap();
    write_app(work.path(), HELLO);
    let app = work.path().to_str().unwrap();

    // Nothing published yet: the error says how to give one.
    let missing = net
        .aleph(&[
            "--private-key",
            &net.funded_key,
            "program",
            "upload",
            app,
            "main:app",
            "--images-address",
            &net.funded_address,
        ])
        .await;
    assert!(!missing.status.success());
    assert!(
        stderr(&missing).contains("--runtime"),
        "{}",
        stderr(&missing)
    );

    let images = json!({
        "runtimes": {"python3": {"hash": runtime, "display_name": "Python 3 test runtime"}},
        "defaults": {"runtime": "python3"},
    });
    net.funded_json(&["aggregate", "post", "vm-images", &images.to_string()])
        .await;
    let uploaded = net
        .funded_json(&[
            "program",
            "upload",
            app,
            "main:app",
            "--images-address",
            &net.funded_address,
        ])
        .await;
    assert_eq!(uploaded["runtime"], runtime);
    let program = status(&net, uploaded["item_hash"].as_str().unwrap()).await;
    assert_eq!(
        program["message"]["content"]["runtime"],
        json!({"ref": runtime, "use_latest": true, "comment": "Python 3 test runtime"})
    );

    net.ccn.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_code_is_refused_before_anything_is_uploaded() {
    let net = Network::start().await;
    let runtime = store_runtime(&net, "runtime for refusals").await;
    let work = tempfile::tempdir().unwrap();
    write_app(work.path(), HELLO);
    let app = work.path().to_str().unwrap();

    let upload = |path: String, entrypoint: &'static str| {
        let net = &net;
        let runtime = runtime.clone();
        async move {
            net.aleph(&[
                "--private-key",
                &net.funded_key,
                "program",
                "upload",
                &path,
                entrypoint,
                "--runtime",
                &runtime,
            ])
            .await
        }
    };
    let wrong_module = upload(app.to_owned(), "server:app").await;
    assert!(!wrong_module.status.success());
    assert!(
        stderr(&wrong_module).contains("server.py"),
        "{}",
        stderr(&wrong_module)
    );
    let not_asgi = upload(app.to_owned(), "main:").await;
    assert!(
        stderr(&not_asgi).contains("module:app"),
        "{}",
        stderr(&not_asgi)
    );
    let missing = upload(format!("{app}/nothing-here"), "main:app").await;
    assert!(!missing.status.success());
    assert!(
        stderr(&missing).contains("does not exist"),
        "{}",
        stderr(&missing)
    );
    let empty = tempfile::tempdir().unwrap();
    let empty = upload(empty.path().to_str().unwrap().to_owned(), "main:app").await;
    assert!(
        stderr(&empty).contains("empty folder"),
        "{}",
        stderr(&empty)
    );

    // Only the runtime's STORE exists: no code was uploaded for the refusals.
    let stores = net
        .json(&[
            "message",
            "list",
            "--addresses",
            &net.funded_address,
            "--types",
            "store,program",
        ])
        .await;
    let hashes: Vec<&str> = stores["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["item_hash"].as_str().unwrap())
        .collect();
    assert_eq!(hashes, [runtime.as_str()]);

    // A runtime that is no STORE is the CCN's to refuse, with its code.
    let unknown = net
        .aleph(&[
            "--private-key",
            &net.funded_key,
            "--json",
            "program",
            "upload",
            app,
            "main:app",
            "--runtime",
            &"ab".repeat(32),
        ])
        .await;
    assert!(!unknown.status.success());
    let error: Value = serde_json::from_slice(&unknown.stdout).unwrap();
    assert_eq!(error["code"], 300, "{error}");

    net.ccn.shutdown().await;
}
