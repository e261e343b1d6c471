//! Operability: logs at the most verbose level never carry a secret, and
//! SIGTERM stops the server cleanly.

mod common;

use common::{ADMIN_PASSWORD, Api, Options, Server};
use serde_json::json;

#[tokio::test]
async fn trace_logs_hold_no_secret_and_sigterm_exits_cleanly() {
    let mut opts = Options::default();
    opts.env.push(("MOAT_LOG".into(), "trace".into()));
    let server = Server::start_with(opts);
    let anon = Api::anonymous(&server);

    // Every kind of secret crosses the API once: passwords (right and
    // wrong), access and refresh tokens, API keys and device keys.
    let login = anon
        .post(
            "/auth/login",
            json!({"username": "admin", "password": ADMIN_PASSWORD}),
        )
        .await;
    assert_eq!(login.status, 200);
    let access = login.body["access_token"].as_str().unwrap().to_owned();
    let refresh = login.body["refresh_token"].as_str().unwrap().to_owned();
    let wrong = "a wrong password that must not be logged";
    assert_eq!(
        anon.post(
            "/auth/login",
            json!({"username": "admin", "password": wrong})
        )
        .await
        .status,
        401
    );
    let admin = Api::bearer(&server, &access);
    let new_user_password = "the new user's secret password";
    admin
        .create(
            "/users",
            json!({"username": "carol", "password": new_user_password, "role": "viewer"}),
        )
        .await;
    let ak = admin
        .post("/apikeys", json!({"name": "ci", "role": "viewer"}))
        .await;
    let api_key = ak.body["token"].as_str().unwrap().to_owned();
    assert_eq!(
        Api::bearer(&server, &api_key).get("/devices").await.status,
        200
    );
    let device = admin.create("/devices", json!({"name": "d1"})).await;
    let dk = admin
        .post(&format!("/devices/{device}/keys"), json!({}))
        .await;
    let device_key = dk.body["token"].as_str().unwrap().to_owned();
    assert_eq!(
        Api::device(&server, &device_key)
            .get("/auth/whoami")
            .await
            .status,
        200
    );
    let rotated = anon
        .post("/auth/refresh", json!({"refresh_token": refresh}))
        .await;
    assert_eq!(rotated.status, 200);
    let refresh2 = rotated.body["refresh_token"].as_str().unwrap().to_owned();
    // A bad token in a header, too.
    assert_eq!(
        Api::bearer(&server, "moat_ak_notarealkeybutstillsecret")
            .get("/devices")
            .await
            .status,
        401
    );

    let (status, stderr) = server.terminate();
    assert!(status.success(), "SIGTERM exits 0, got {status:?}");
    let log = stderr.join("\n");
    assert!(log.contains("shutting down"), "the shutdown is logged");
    assert!(log.lines().count() > 20, "trace logging is on: {log}");
    for (what, secret) in [
        ("admin password", ADMIN_PASSWORD),
        ("wrong password", wrong),
        ("new user's password", new_user_password),
        ("access token", access.as_str()),
        ("refresh token", refresh.as_str()),
        ("rotated refresh token", refresh2.as_str()),
        ("API key", api_key.as_str()),
        ("device key", device_key.as_str()),
        ("bad API key", "moat_ak_notarealkeybutstillsecret"),
    ] {
        assert!(!log.contains(secret), "the {what} appears in the log");
    }
    // Nor do the parts of a JWT (its signature) or of a key (its secret half).
    let signature = access.rsplit('.').next().unwrap();
    assert!(
        !log.contains(signature),
        "a JWT signature appears in the log"
    );
}
