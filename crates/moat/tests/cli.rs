//! The `moat` command line against a real server: README's CLI quickstart as
//! written, and each command group with its table and JSON output, errors,
//! API keys, token refresh, completions and logout.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::{ADMIN_PASSWORD, Api, Options, Server, moat_bin};
use serde_json::Value;

use common::cli::Cli;

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// The first ```sh block after the "### 2. With the CLI" heading.
fn cli_quickstart() -> String {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md")).unwrap();
    let section = readme
        .split("### 2. With the CLI")
        .nth(1)
        .expect("README has a CLI quickstart");
    let block = section.split("```sh\n").nth(1).unwrap();
    block.split("```").next().unwrap().to_owned()
}

#[tokio::test]
async fn the_cli_quickstart_works_as_written() {
    let server = Server::start();
    let cli = Cli::new();
    let port = server.url.rsplit(':').next().unwrap();
    // Passwords come from here-strings (the CLI reads them from stdin when it
    // is not a terminal); `alias` does not work in a script, a function does.
    let alice = "alice's long password";
    let script: String = cli_quickstart()
        .lines()
        .map(|l| {
            let l = l
                .replace(
                    "alias moat=target/release/moat",
                    &format!("moat() {{ {} \"$@\"; }}", moat_bin()),
                )
                .replace("localhost:8443", &format!("localhost:{port}"))
                .replace("moat-data/ca.pem", server.ca_path().to_str().unwrap());
            let code = l.split(" #").next().unwrap().trim_end().to_owned();
            if code.contains("--username admin") {
                format!("{code} <<< '{ADMIN_PASSWORD}'")
            } else if code.contains("--username alice") || code.contains("user create alice") {
                format!("{code} <<< \"{alice}\"")
            } else {
                code
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    let out = tokio::process::Command::new("bash")
        .arg("-c")
        .arg(format!("set -euo pipefail\n{script}"))
        .env("MOAT_CREDENTIALS", &cli.creds)
        .output()
        .await
        .expect("bash runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout: {stdout}\nstderr: {stderr}");
    assert!(stderr.contains("signed in as alice (admin)"), "{stderr}");
    assert_eq!(mode(&cli.creds), 0o600);
    // The device list (JSON) names the device; the audit table shows the
    // connection that was made.
    let list_start = stdout.find("{\n").expect("the device list is JSON");
    let list: Value = serde_json::Deserializer::from_str(&stdout[list_start..])
        .into_iter()
        .next()
        .unwrap()
        .unwrap();
    assert_eq!(list["items"][0]["name"], "boiler-1");
    assert_eq!(list["items"][0]["tags"][0], "site:lyon");
    assert!(
        stdout.contains("connection.put") || stdout.contains("channel.connect"),
        "{stdout}"
    );
    assert!(
        stdout.contains("moat_dk_"),
        "the device key is printed: {stdout}"
    );
}

#[tokio::test]
async fn every_command_group_works_over_the_api() {
    let server = Server::start();
    let cli = Cli::new();

    // Not signed in yet.
    let r = cli.run(&["device", "list"], "").await;
    assert!(!r.ok && r.stderr.contains("not signed in"), "{}", r.stderr);

    cli.login(&server, "admin", ADMIN_PASSWORD).await;
    assert_eq!(mode(&cli.creds), 0o600);
    assert_eq!(mode(cli.creds.parent().unwrap()), 0o700);
    let saved = std::fs::read_to_string(&cli.creds).unwrap();
    assert!(saved.contains("refresh_token"));

    let me = cli.ok(&["whoami", "--output", "json"]).await.json();
    assert_eq!(me["name"], "admin");

    // Tenants and users, by name.
    let acme = cli
        .ok(&[
            "tenant",
            "create",
            "acme",
            "--tag",
            "tier:gold",
            "--output",
            "json",
        ])
        .await
        .json();
    let acme_id = acme["id"].as_str().unwrap().to_owned();
    let table = cli.ok(&["tenant", "list"]).await.stdout;
    assert!(
        table.contains("acme") && table.contains("tier:gold"),
        "{table}"
    );
    let bob = cli
        .run(
            &[
                "user",
                "create",
                "bob",
                "--tenant",
                "acme",
                "--role",
                "operator",
                "--password-stdin",
                "--output",
                "json",
            ],
            "bob's long password\n",
        )
        .await;
    assert!(bob.ok, "{}", bob.stderr);
    assert_eq!(bob.json()["tenant_id"], acme_id.as_str());
    let bob = cli
        .ok(&[
            "user", "update", "bob", "--tenant", "acme", "--role", "viewer", "--output", "json",
        ])
        .await
        .json();
    assert_eq!(bob["role"], "viewer");

    // Devices, channels and connections, by name within the tenant.
    let dev = cli
        .ok(&[
            "device",
            "create",
            "pump-7",
            "--tenant",
            "acme",
            "--tag",
            "site:lyon",
            "--metadata",
            r#"{"model":"X1"}"#,
            "--output",
            "json",
        ])
        .await
        .json();
    assert_eq!(dev["metadata"]["model"], "X1");
    // A second device whose name contains the first: names resolve exactly.
    cli.ok(&["device", "create", "pump-70", "--tenant", "acme"])
        .await;
    cli.ok(&[
        "channel",
        "create",
        "telemetry",
        "--tenant",
        "acme",
        "--policy",
        "json",
        "--retention-days",
        "7",
    ])
    .await;
    let conn = cli
        .ok(&[
            "connect",
            "pump-7",
            "telemetry",
            "--publish",
            "--tenant",
            "acme",
            "--output",
            "json",
        ])
        .await
        .json();
    assert_eq!(conn["device_id"], dev["id"]);
    assert_eq!(
        (conn["publish"].as_bool(), conn["subscribe"].as_bool()),
        (Some(true), Some(false))
    );
    let conns = cli
        .ok(&[
            "connections",
            "--channel",
            "telemetry",
            "--tenant",
            "acme",
            "--output",
            "json",
        ])
        .await
        .json();
    assert_eq!(conns["items"].as_array().unwrap().len(), 1);
    let listed = cli
        .ok(&[
            "device",
            "list",
            "--tenant",
            "acme",
            "--tag",
            "site:lyon",
            "--output",
            "json",
        ])
        .await
        .json();
    assert_eq!(listed["items"].as_array().unwrap().len(), 1);
    let got = cli
        .ok(&[
            "device",
            "update",
            "pump-7",
            "--tenant",
            "acme",
            "--state",
            "quarantined",
            "--output",
            "json",
        ])
        .await
        .json();
    assert_eq!(got["state"], "quarantined");

    // Paging: --limit 1 leaves a cursor, --all collects everything.
    let page = cli
        .ok(&["device", "list", "--tenant", "acme", "--limit", "1"])
        .await;
    assert!(page.stderr.contains("--cursor"), "{}", page.stderr);
    let all = cli
        .ok(&[
            "device", "list", "--tenant", "acme", "--limit", "1", "--all", "--output", "json",
        ])
        .await
        .json();
    assert_eq!(all["items"].as_array().unwrap().len(), 2);

    // A device key is printed alone on stdout and works.
    let key = cli
        .ok(&["device", "key", "create", "pump-70", "--tenant", "acme"])
        .await;
    let token = key.stdout.trim();
    assert!(
        token.starts_with("moat_dk_") && !token.contains('\n'),
        "{token}"
    );
    assert!(key.stderr.contains("only time"), "{}", key.stderr);
    let whoami = Api::device(&server, token).get("/auth/whoami").await;
    assert_eq!(whoami.status, 200, "{:?}", whoami.body);
    let keys = cli
        .ok(&[
            "device", "key", "list", "pump-70", "--tenant", "acme", "--output", "json",
        ])
        .await
        .json();
    let key_id = keys.as_array().or(keys["items"].as_array()).unwrap()[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    cli.ok(&[
        "device", "key", "revoke", "pump-70", &key_id, "--tenant", "acme",
    ])
    .await;
    assert_eq!(
        Api::device(&server, token).get("/auth/whoami").await.status,
        401
    );

    // An API key works through --api-key, and its role holds.
    let ak = cli
        .ok(&[
            "apikey", "create", "ci", "--role", "viewer", "--tenant", "acme",
        ])
        .await
        .stdout
        .trim()
        .to_owned();
    assert!(ak.starts_with("moat_ak_"));
    let viewer = cli
        .ok(&["--api-key", &ak, "device", "list", "--output", "json"])
        .await
        .json();
    assert_eq!(
        viewer["items"].as_array().unwrap().len(),
        2,
        "a tenant's key sees its tenant"
    );
    let denied = cli
        .run(&["--api-key", &ak, "device", "create", "nope"], "")
        .await;
    assert!(
        !denied.ok && denied.stderr.contains("403"),
        "{}",
        denied.stderr
    );

    // Errors read like sentences and exit non-zero.
    let bad = cli
        .run(&["device", "create", "", "--tenant", "acme"], "")
        .await;
    assert!(!bad.ok);
    assert!(
        bad.stderr.contains("422") && bad.stderr.contains("name:"),
        "{}",
        bad.stderr
    );
    let missing = cli
        .run(&["device", "get", "no-such-device", "--tenant", "acme"], "")
        .await;
    assert!(
        !missing.ok && missing.stderr.contains("no device named"),
        "{}",
        missing.stderr
    );
    let dup = cli.run(&["tenant", "create", "acme"], "").await;
    assert!(!dup.ok && dup.stderr.contains("409"), "{}", dup.stderr);

    // The audit log over the CLI.
    let audit = cli
        .ok(&[
            "audit",
            "list",
            "--action",
            "device.create",
            "--outcome",
            "success",
            "--output",
            "json",
        ])
        .await
        .json();
    assert_eq!(audit["items"].as_array().unwrap().len(), 2, "{audit}");

    // Deletions.
    cli.ok(&["disconnect", "pump-7", "telemetry", "--tenant", "acme"])
        .await;
    cli.ok(&["channel", "delete", "telemetry", "--tenant", "acme"])
        .await;
    cli.ok(&["device", "delete", "pump-70", "--tenant", "acme"])
        .await;
    cli.ok(&["user", "delete", "bob", "--tenant", "acme"]).await;

    // Logout revokes the refresh token and deletes the file.
    let refresh = serde_json::from_str::<Value>(&saved).unwrap()["refresh_token"]
        .as_str()
        .unwrap()
        .to_owned();
    cli.ok(&["logout"]).await;
    assert!(!cli.creds.exists());
    let reuse = Api::anonymous(&server)
        .post(
            "/auth/refresh",
            serde_json::json!({"refresh_token": refresh}),
        )
        .await;
    assert_eq!(reuse.status, 401);
    let r = cli.run(&["whoami"], "").await;
    assert!(!r.ok && r.stderr.contains("not signed in"));
}

#[tokio::test]
async fn an_expired_access_token_is_refreshed_and_saved() {
    let mut opts = Options::default();
    opts.env.push(("MOAT_ACCESS_TOKEN_TTL".into(), "1s".into()));
    let server = Server::start_with(opts);
    let cli = Cli::new();
    cli.login(&server, "admin", ADMIN_PASSWORD).await;
    let before = std::fs::read_to_string(&cli.creds).unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let me = cli.ok(&["whoami", "--output", "json"]).await.json();
    assert_eq!(me["name"], "admin");
    let after = std::fs::read_to_string(&cli.creds).unwrap();
    assert_ne!(before, after, "the rotated tokens are saved");
    assert_eq!(mode(&cli.creds), 0o600);
}

#[tokio::test]
async fn help_and_completions_need_no_server() {
    let cli = Cli::new();
    let help = cli.ok(&["--help"]).await.stdout;
    for cmd in [
        "serve",
        "login",
        "tenant",
        "user",
        "device",
        "channel",
        "connect",
        "apikey",
        "audit",
        "completions",
    ] {
        assert!(help.contains(cmd), "--help lists {cmd}");
    }
    let connect = cli.ok(&["connect", "--help"]).await.stdout;
    assert!(connect.contains("--publish") && connect.contains("name or id"));
    for shell in ["bash", "zsh", "fish"] {
        let script = cli.ok(&["completions", shell]).await.stdout;
        assert!(
            script.contains("moat") && script.contains("device"),
            "{shell}"
        );
    }
    let bad = cli.run(&["device", "create"], "").await;
    assert!(!bad.ok && bad.stderr.contains("<NAME>"), "{}", bad.stderr);
}
