//! "Never a 500 for anything a client sends", checked by schemathesis: its
//! `st` command reads the OpenAPI document the server publishes, generates
//! requests for every operation (valid ones, and ones that break every
//! constraint it knows of) and fails on any 5xx. It also checks that every
//! response matches the schema and the content type the document gives it,
//! and that methods the document does not name get 405.
//!
//! `st` comes from PyPI: `scripts/install-test-deps` installs the pinned
//! version, and this test fails, rather than skips, without it.
//!
//! The fuzzer reads ids back from list responses and uses them, so it
//! revokes, disables and deletes real users, keys and devices, its own
//! credentials included if it can see them. Each operation is in one of
//! four passes, each with a credential nothing in that pass can revoke:
//! 1. everything not below, with an admin API key: nothing done to users
//!    touches an API key;
//! 2. the API key operations, revocation included, with an admin user's
//!    access token, which revoking keys cannot touch;
//! 3. a device's own operations, with that device's key;
//! 4. sign-in, refresh and sign-out, anonymous as clients call them, and
//!    last: every refused credential counts against the source address
//!    (127.0.0.1), which after 20 refusals gets 429 for everything.

mod common;

use std::fs::File;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::{Api, Server};
use serde_json::json;

/// Fixed, so that a run can be repeated; `st` prints it with its report.
/// `MOAT_FUZZ_SEED` picks another, to look further.
const SEED: &str = "20261";
/// Test cases per operation and phase: enough to reach every validation
/// branch, few enough that the test stays well under two minutes.
/// `MOAT_FUZZ_EXAMPLES` asks for more.
const EXAMPLES: &str = "60";
/// A pass that has not finished by then is stuck, not slow.
const PASS_DEADLINE: Duration = Duration::from_secs(300);
/// The operations of passes 2, 3 and 4.
const API_KEYS: &str = "^/api/v1/apikeys";
const DEVICE_SELF: &str = "^/api/v1/device/";
const SIGN_IN: &str = "^/api/v1/auth/(login|refresh|logout)$";

#[tokio::test]
async fn no_request_gets_a_server_error() {
    let version = schemathesis_version();
    let server = Server::start();
    let admin = Api::bearer(&server, &server.admin_token().await);

    // A little of everything, so that ids in paths can name something real.
    let tenant = admin.create("/tenants", json!({"name": "acme"})).await;
    let device = admin
        .create(
            "/devices",
            json!({"name": "boiler-1", "tenant_id": tenant, "tags": ["site:lyon"]}),
        )
        .await;
    let channel = admin
        .create(
            "/channels",
            json!({"name": "telemetry", "tenant_id": tenant}),
        )
        .await;
    let r = admin
        .put(
            &format!("/channels/{channel}/connections/{device}"),
            json!({"publish": true, "subscribe": true}),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    admin
        .create(
            "/users",
            json!({"username": "alice", "password": "a long enough password",
                   "role": "operator", "tenant_id": tenant}),
        )
        .await;
    token_of(
        admin
            .post(&format!("/devices/{device}/keys"), json!({}))
            .await,
    );
    token_of(
        admin
            .post("/apikeys", json!({"name": "spare", "role": "viewer"}))
            .await,
    );
    let key = token_of(
        admin
            .post("/apikeys", json!({"name": "fuzzer", "role": "admin"}))
            .await,
    );

    let work = tempfile::tempdir().unwrap();
    let st = |pass, auth: Option<String>, filter: &[&str]| {
        schemathesis(&server, work.path(), pass, auth.as_deref(), filter)
    };
    let mut reports = vec![st(
        "1 (admin API key)",
        Some(format!("Bearer {key}")),
        // One regex: with a second exclusion of another kind (by name), `st`
        // 4.32 excluded nothing at all.
        &[
            "--exclude-path-regex",
            &format!("{API_KEYS}|{DEVICE_SELF}|{SIGN_IN}"),
        ],
    )];

    // Pass 1 may have disabled or deleted every user and device; its key
    // still works.
    let by_key = Api::bearer(&server, &key);
    let password = "the key keeper's password";
    by_key
        .create(
            "/users",
            json!({"username": "key-keeper", "password": password, "role": "admin"}),
        )
        .await;
    let token = server.login("key-keeper", password).await;
    reports.push(st(
        "2 (admin access token)",
        Some(format!("Bearer {token}")),
        &["--include-path-regex", API_KEYS],
    ));

    let device = by_key
        .create("/devices", json!({"name": "fuzzed-device"}))
        .await;
    let device_key = token_of(
        by_key
            .post(&format!("/devices/{device}/keys"), json!({}))
            .await,
    );
    reports.push(st(
        "3 (device key)",
        Some(format!("Device {device_key}")),
        &["--include-path-regex", DEVICE_SELF],
    ));

    reports.push(st(
        "4 (anonymous)",
        None,
        &["--include-path-regex", SIGN_IN],
    ));

    for r in &reports {
        // Its summary: operations, phases, warnings and test case counts.
        let summary = r
            .output
            .find("API Operations:")
            .map_or("", |i| &r.output[i..]);
        eprintln!(
            "schemathesis {version}, pass {}: {} in {:.1} s\n{summary}",
            r.pass,
            r.status,
            r.took.as_secs_f64(),
        );
    }
    let failed: Vec<_> = reports
        .iter()
        .filter(|r| !r.status.success())
        .map(|r| {
            format!(
                "schemathesis pass {} failed ({}):\n$ {}\n{}",
                r.pass, r.status, r.command, r.output
            )
        })
        .collect();
    assert!(failed.is_empty(), "{}", failed.join("\n\n"));
    let health = server
        .client()
        .get(format!("{}/healthz", server.url))
        .send()
        .await
        .expect("the server is still up");
    assert_eq!(health.status(), 200);
}

/// The secret of a key just created.
fn token_of(r: common::Reply) -> String {
    assert_eq!(r.status, 201, "{r:?}");
    r.body["token"].as_str().unwrap().to_owned()
}

/// The version of the `st` on PATH; panics unless it is schemathesis 4.
fn schemathesis_version() -> String {
    const INSTALL: &str = "run scripts/install-test-deps to install it";
    let out = Command::new("st")
        .arg("--version")
        .output()
        .unwrap_or_else(|e| panic!("schemathesis's `st` command is missing ({e}); {INSTALL}"));
    let said = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    match said.strip_prefix("st, version ") {
        Some(v) if out.status.success() && v.starts_with("4.") => v.to_owned(),
        _ => panic!(
            "`st --version` said {said:?} {}: this test needs schemathesis 4; {INSTALL}",
            String::from_utf8_lossy(&out.stderr).trim()
        ),
    }
}

struct Report {
    pass: &'static str,
    /// The command, to run it again by hand (credentials left out).
    command: String,
    status: ExitStatus,
    took: Duration,
    /// What `st` printed: its report, with every failure and how to
    /// reproduce it.
    output: String,
}

/// Runs one schemathesis pass against `server`'s own OpenAPI document,
/// with `auth` as the `Authorization` header and `filter` choosing the
/// operations.
fn schemathesis(
    server: &Server,
    work: &Path,
    pass: &'static str,
    auth: Option<&str>,
    filter: &[&str],
) -> Report {
    let ca = server.ca_path();
    let seed = std::env::var("MOAT_FUZZ_SEED").unwrap_or(SEED.into());
    let examples = std::env::var("MOAT_FUZZ_EXAMPLES").unwrap_or(EXAMPLES.into());
    let mut args: Vec<String> = [
        "run",
        &format!("{}/api/v1/openapi.json", server.url),
        "--tls-verify",
        ca.to_str().unwrap(),
        "--checks",
        "not_a_server_error,response_schema_conformance,content_type_conformance,unsupported_method",
        // The stateful phase needs links the document does not have, and
        // runs as long as it is let.
        "--phases",
        "examples,coverage,fuzzing",
        "--max-examples",
        &examples,
        "--seed",
        &seed,
        "--workers",
        "1",
        // No examples replayed from an earlier run: every run is the same.
        "--generation-database",
        "none",
        // Our credentials, not made-up ones that would get the source
        // throttled.
        "--generation-with-security-parameters",
        "false",
        // Those check how fast data is generated, which depends on load.
        "--suppress-health-check",
        "all",
        "--request-timeout",
        "20",
        "--no-color",
    ]
    .map(String::from)
    .into();
    if let Some(a) = auth {
        args.push("--header".into());
        args.push(format!("Authorization: {a}"));
    }
    args.extend(filter.iter().map(|s| s.to_string()));
    let mut command = vec!["st".to_owned()];
    command.extend(args.iter().map(|a| shell_quoted(a)));
    let mut command = command.join(" ");
    if let Some((scheme, secret)) = auth.and_then(|a| a.split_once(' ')) {
        command = command.replace(secret, &format!("<{} credential>", scheme.to_lowercase()));
    }

    let log = work.join(format!("st-{}.log", &pass[..1]));
    let out = File::create(&log).unwrap();
    let start = Instant::now();
    let mut cmd = Command::new("st");
    cmd.args(&args)
        // Its caches stay out of the work tree.
        .current_dir(work)
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out);
    // Nothing but 127.0.0.1 is ever contacted.
    for var in ["HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"] {
        cmd.env_remove(var).env_remove(var.to_lowercase());
    }
    cmd.env("NO_PROXY", "127.0.0.1")
        .env("no_proxy", "127.0.0.1");
    let mut child = cmd.spawn().expect("start st");
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > PASS_DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "schemathesis pass {pass} still ran after {PASS_DEADLINE:?}:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    Report {
        pass,
        command,
        status,
        took: start.elapsed(),
        output: std::fs::read_to_string(&log).unwrap_or_default(),
    }
}

/// `arg` as a shell would need it, for printing the command.
fn shell_quoted(arg: &str) -> String {
    if arg
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_.,/:=".contains(c))
    {
        arg.to_owned()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}
