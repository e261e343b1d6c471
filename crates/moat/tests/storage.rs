//! The embedded store through the real binary: a restart keeps everything,
//! the file is unreadable without the key, a wrong master key is refused
//! with a clear message, and tampering with the audit log is found where
//! it happened.

mod common;

use std::path::Path;
use std::process::Command;

use common::{Api, Options, Server};
use serde_json::json;

#[tokio::test]
async fn a_restart_keeps_everything_and_the_file_is_encrypted() {
    let server = Server::start();
    let api = Api::bearer(&server, &server.admin_token().await);
    let dev = api
        .create(
            "/devices",
            json!({"name": "secret-boiler-4711", "tags": ["plant:north"]}),
        )
        .await;
    let key = api
        .post("/apikeys", json!({"name": "ci", "role": "operator"}))
        .await
        .body["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let ca_before = std::fs::read_to_string(server.ca_path()).unwrap();
    let data = server.data_dir();
    let dir = server.stop();

    for name in ["moat.db", "moat.db-wal"] {
        let path = data.join(name);
        if let Ok(bytes) = std::fs::read(&path) {
            assert!(
                !bytes.starts_with(b"SQLite format 3"),
                "{name} is a plain SQLite file"
            );
            let needle = b"secret-boiler-4711";
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle),
                "{name} holds the device name in clear"
            );
        }
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(data.join("master.key"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
    }

    let server = Server::start_in(dir, Options::default());
    assert!(
        !server.stdout.iter().any(|l| l.contains("bootstrap admin")),
        "no second bootstrap: {:?}",
        server.stdout
    );
    assert_eq!(
        std::fs::read_to_string(server.ca_path()).unwrap(),
        ca_before,
        "same CA after a restart"
    );
    let api = Api::bearer(&server, &server.admin_token().await);
    let got = api.get(&format!("/devices/{dev}")).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.body["name"], "secret-boiler-4711");
    assert_eq!(
        Api::bearer(&server, &key).get("/devices").await.status,
        200,
        "API keys survive a restart"
    );
}

#[tokio::test]
async fn a_wrong_master_key_is_refused_with_a_clear_message() {
    let server = Server::start();
    let data = server.data_dir();
    let dir = server.stop();
    let mut opts = Options::default();
    opts.env.push(("MOAT_MASTER_KEY".into(), "ab".repeat(32)));
    // The harness clears MOAT_MASTER_KEY first, then sets what opts say.
    let Err((_dir, output)) = Server::try_start_in(dir, opts) else {
        panic!("started with the wrong key")
    };
    assert!(output.contains("master key is wrong"), "{output}");
    assert!(!output.contains("panicked"), "{output}");
    assert!(data.join("moat.db").exists());
}

#[tokio::test]
async fn the_bootstrap_password_is_printed_once_when_not_given() {
    let mut cmd = Command::new(common::moat_bin());
    let dir = tempfile::tempdir().unwrap();
    let child = cmd
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--mqtt-listen",
            "127.0.0.1:0",
        ])
        .args(["--coap-listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .env_remove("MOAT_ADMIN_PASSWORD")
        .env_remove("MOAT_MASTER_KEY")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let server = common::Server::adopt(child, dir);
    let line = server
        .stdout
        .iter()
        .find(|l| l.starts_with("bootstrap admin created"))
        .expect("the password is printed");
    let password = line.rsplit(' ').next().unwrap();
    assert_eq!(password.len(), 24);
    server.login("admin", password).await;
    let logs: Vec<String> = server.stderr.try_iter().collect();
    assert!(
        !logs.iter().any(|l| l.contains(password)),
        "the password never reaches the logs"
    );
}

#[tokio::test]
async fn plain_http_exists_only_with_insecure_dev() {
    let server = Server::start();
    assert!(server.plain_url.is_none());
    let dev = Server::start_with(Options {
        args: vec![
            "--insecure-dev".into(),
            "--plain-listen".into(),
            "127.0.0.1:0".into(),
        ],
        ..Options::default()
    });
    let plain = dev.plain_url.clone().expect("a plain listener");
    let r = dev
        .client()
        .get(format!("{plain}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let warned: Vec<String> = dev.stderr.try_iter().collect();
    assert!(warned.iter().any(|l| l.contains("INSECURE")), "{warned:?}");
}

fn db_key(data: &Path) -> String {
    let text = std::fs::read_to_string(data.join("master.key")).unwrap();
    let master = moat_pki::master::MasterKey::parse(&text).unwrap();
    hex(&master.derive(moat_pki::master::Purpose::Database))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn tamper(data: &Path, sql: &str) {
    let conn = rusqlite::Connection::open(data.join("moat.db")).unwrap();
    conn.pragma_update(None, "key", format!("x'{}'", db_key(data)))
        .unwrap();
    conn.pragma_update(
        None,
        "cipher_hmac_algorithm",
        moat_store::PAGE_HMAC_ALGORITHM,
    )
    .unwrap();
    let triggers: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'trigger'")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    for t in triggers {
        conn.execute_batch(&format!("DROP TRIGGER \"{t}\""))
            .unwrap();
    }
    conn.execute_batch(sql).unwrap();
}

fn verify(data: &Path) -> (bool, String) {
    let out = Command::new(common::moat_bin())
        .args(["audit", "verify", "--data-dir"])
        .arg(data)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test]
async fn audit_verify_finds_edits_and_deletions_where_they_are() {
    let server = Server::start();
    let api = Api::bearer(&server, &server.admin_token().await);
    for i in 0..6 {
        api.create("/devices", json!({"name": format!("d{i}")}))
            .await;
    }
    let events = api.get("/audit?action=device.create").await;
    assert_eq!(events.body["items"].as_array().unwrap().len(), 6);
    assert_eq!(events.body["items"][0]["outcome"], "success");
    let data = server.data_dir();
    let dir = server.stop();

    let (ok, out) = verify(&data);
    assert!(ok, "{out}");
    assert!(out.contains("intact"), "{out}");

    tamper(
        &data,
        "UPDATE audit SET actor = 'user:mallory' WHERE seq = 5",
    );
    let (ok, out) = verify(&data);
    assert!(!ok);
    assert!(out.contains("BROKEN at event 5"), "{out}");
    drop(dir);

    let server = Server::start();
    let api = Api::bearer(&server, &server.admin_token().await);
    for i in 0..6 {
        api.create("/devices", json!({"name": format!("d{i}")}))
            .await;
    }
    let data = server.data_dir();
    let _dir = server.stop();
    tamper(&data, "DELETE FROM audit WHERE seq = 4");
    let (ok, out) = verify(&data);
    assert!(!ok);
    assert!(out.contains("BROKEN at event 4"), "{out}");
    assert!(out.contains("missing"), "{out}");
}
