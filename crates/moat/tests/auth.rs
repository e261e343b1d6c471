//! Authentication end to end: passwords, rotating refresh tokens, signing out
//! everywhere, API keys, device keys, brute-force protection.

mod common;

use common::{ADMIN_PASSWORD, Api, Server, user_in};
use serde_json::json;

async fn login(api: &Api, username: &str, password: &str) -> common::Reply {
    api.post(
        "/auth/login",
        json!({"username": username, "password": password}),
    )
    .await
}

#[tokio::test]
async fn refresh_tokens_rotate_and_a_reused_one_revokes_the_family() {
    let server = Server::start();
    let anon = Api::anonymous(&server);
    let first = login(&anon, "admin", ADMIN_PASSWORD).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.body["token_type"], "Bearer");
    assert_eq!(first.body["expires_in"], 3600);
    assert!(
        first.body["user"]["password_hash"].is_null(),
        "the hash never leaves the server"
    );
    let rt1 = first.body["refresh_token"].as_str().unwrap().to_owned();

    let second = anon
        .post("/auth/refresh", json!({"refresh_token": rt1}))
        .await;
    assert_eq!(second.status, 200, "{second:?}");
    let rt2 = second.body["refresh_token"].as_str().unwrap().to_owned();
    assert_ne!(rt1, rt2);
    let me = Api::bearer(&server, second.body["access_token"].as_str().unwrap())
        .get("/auth/whoami")
        .await;
    assert_eq!(me.body["role"], "admin");
    assert_eq!(me.body["subject"]["kind"], "user");

    // rt1 again: theft. The family (rt2 too) is revoked.
    assert_eq!(
        anon.post("/auth/refresh", json!({"refresh_token": rt1}))
            .await
            .status,
        401
    );
    assert_eq!(
        anon.post("/auth/refresh", json!({"refresh_token": rt2}))
            .await
            .status,
        401
    );

    let third = login(&anon, "admin", ADMIN_PASSWORD).await;
    let rt3 = third.body["refresh_token"].as_str().unwrap().to_owned();
    assert_eq!(
        anon.post("/auth/logout", json!({"refresh_token": rt3}))
            .await
            .status,
        204
    );
    assert_eq!(
        anon.post("/auth/refresh", json!({"refresh_token": rt3}))
            .await
            .status,
        401
    );
    assert_eq!(
        anon.post("/auth/refresh", json!({"refresh_token": "moat_rt_garbage"}))
            .await
            .status,
        401
    );
}

#[tokio::test]
async fn revoking_all_sessions_stops_access_tokens_already_issued() {
    let server = Server::start();
    let admin = Api::bearer(&server, &server.admin_token().await);
    let root = admin.get("/auth/whoami").await.body["tenant_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let op = user_in(&server, &admin, &root, "olivia", "operator").await;
    assert_eq!(op.get("/devices").await.status, 200);
    let olivia = admin.get("/users?name=olivia").await.body["items"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        admin
            .post(&format!("/users/{olivia}/sessions/revoke"), json!({}))
            .await
            .status,
        204
    );
    let r = op.get("/devices").await;
    assert_eq!(r.status, 401, "{r:?}");
    assert!(r.headers.contains_key("www-authenticate"));

    // Disabling does the same, and refuses new sign-ins.
    let fresh = Api::bearer(
        &server,
        &server.login("olivia", "a password long enough").await,
    );
    assert_eq!(
        admin
            .patch(&format!("/users/{olivia}"), json!({"disabled": true}))
            .await
            .status,
        200
    );
    assert_eq!(fresh.get("/devices").await.status, 401);
    assert_eq!(
        login(&Api::anonymous(&server), "olivia", "a password long enough")
            .await
            .status,
        401
    );
}

#[tokio::test]
async fn changing_ones_own_password_needs_the_current_one() {
    let server = Server::start();
    let admin = Api::bearer(&server, &server.admin_token().await);
    let me = admin.get("/auth/whoami").await.body["subject"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = admin
        .patch(
            &format!("/users/{me}"),
            json!({"password": "a brand new password"}),
        )
        .await;
    assert_eq!(r.status, 422);
    let r = admin
        .patch(
            &format!("/users/{me}"),
            json!({"password": "a brand new password", "current_password": "nope nope nope"}),
        )
        .await;
    assert_eq!(r.status, 403);
    let r = admin
        .patch(
            &format!("/users/{me}"),
            json!({"password": "a brand new password", "current_password": ADMIN_PASSWORD}),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        login(&Api::anonymous(&server), "admin", ADMIN_PASSWORD)
            .await
            .status,
        401
    );
    assert_eq!(
        login(&Api::anonymous(&server), "admin", "a brand new password")
            .await
            .status,
        200
    );
    let r = admin
        .patch(&format!("/users/{me}"), json!({"role": "viewer"}))
        .await;
    assert_eq!(
        r.status, 401,
        "the password change signed the old token out"
    );
}

#[tokio::test]
async fn api_keys_are_shown_once_scoped_to_a_role_and_revocable() {
    let server = Server::start();
    let admin = Api::bearer(&server, &server.admin_token().await);
    let created = admin
        .post(
            "/apikeys",
            json!({"name": "grafana", "role": "viewer", "expires_in_days": 30}),
        )
        .await;
    assert_eq!(created.status, 201, "{created:?}");
    let token = created.body["token"].as_str().unwrap().to_owned();
    assert!(token.starts_with("moat_ak_"));
    let id = created.body["key"]["id"].as_str().unwrap().to_owned();
    assert!(created.body["key"]["secret_hash"].is_null());
    let listed = admin.get("/apikeys").await;
    assert!(
        !listed.body.to_string().contains(&token[8..]),
        "the secret is never listed"
    );

    let key = Api::bearer(&server, &token);
    assert_eq!(
        key.get("/auth/whoami").await.body["subject"]["kind"],
        "api_key"
    );
    assert_eq!(key.get("/devices").await.status, 200);
    assert_eq!(
        key.post("/devices", json!({"name": "x"})).await.status,
        403,
        "a viewer key changes nothing"
    );

    assert_eq!(
        admin
            .post(
                "/apikeys",
                json!({"name": "k", "role": "admin", "expires_in_days": 400})
            )
            .await
            .status,
        422
    );
    assert_eq!(admin.delete(&format!("/apikeys/{id}")).await.status, 204);
    assert_eq!(key.get("/devices").await.status, 401);
    let mut forged = token.clone();
    forged.replace_range(forged.len() - 4.., "0000");
    assert_eq!(
        Api::bearer(&server, &forged).get("/devices").await.status,
        401
    );
}

#[tokio::test]
async fn device_keys_identify_a_device_to_itself_only() {
    let server = Server::start();
    let admin = Api::bearer(&server, &server.admin_token().await);
    let d1 = admin.create("/devices", json!({"name": "meter-1"})).await;
    let d2 = admin.create("/devices", json!({"name": "meter-2"})).await;
    let issued = admin.post(&format!("/devices/{d1}/keys"), json!({})).await;
    assert_eq!(issued.status, 201, "{issued:?}");
    let token = issued.body["token"].as_str().unwrap().to_owned();
    assert!(token.starts_with("moat_dk_"));
    let key_id = issued.body["key"]["id"].as_str().unwrap().to_owned();

    let dev = Api::device(&server, &token);
    let me = dev.get("/auth/whoami").await;
    assert_eq!(me.body["subject"]["kind"], "device");
    assert_eq!(me.body["subject"]["id"], d1.as_str());
    assert_eq!(dev.get(&format!("/devices/{d1}")).await.status, 200);
    assert_eq!(dev.get(&format!("/devices/{d2}")).await.status, 403);
    assert_eq!(dev.get("/devices").await.status, 403);
    assert_eq!(
        Api::bearer(&server, &token)
            .get("/auth/whoami")
            .await
            .status,
        401,
        "device keys go with the Device scheme"
    );

    // Quarantine cuts it off; reactivation restores it; revoking the key ends it.
    admin
        .patch(&format!("/devices/{d1}"), json!({"state": "quarantined"}))
        .await;
    assert_eq!(dev.get("/auth/whoami").await.status, 401);
    admin
        .patch(&format!("/devices/{d1}"), json!({"state": "active"}))
        .await;
    assert_eq!(dev.get("/auth/whoami").await.status, 200);
    assert_eq!(
        admin
            .get(&format!("/devices/{d1}/keys"))
            .await
            .body
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        admin
            .delete(&format!("/devices/{d1}/keys/{key_id}"))
            .await
            .status,
        204
    );
    assert_eq!(dev.get("/auth/whoami").await.status, 401);
}

#[tokio::test]
async fn repeated_failures_are_throttled_then_locked_out_with_retry_after() {
    let server = Server::start();
    let anon = Api::anonymous(&server);
    for i in 0..6 {
        let r = login(&anon, "admin", "not the password").await;
        assert_eq!(r.status, 401, "attempt {i}: {r:?}");
        assert_eq!(r.body["detail"], "invalid username or password");
    }
    // The sixth failure started a delay: even the right password waits.
    let r = login(&anon, "admin", ADMIN_PASSWORD).await;
    assert_eq!(r.status, 429, "{r:?}");
    let retry: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry), "{retry}");
    // Other accounts are not locked by it.
    assert_eq!(
        login(&anon, "nobody-here", "whatever password")
            .await
            .status,
        401
    );

    // Every failure is in the audit log.
    tokio::time::sleep(std::time::Duration::from_secs(retry)).await;
    let admin = Api::bearer(&server, &server.admin_token().await);
    let events = admin
        .get("/audit?action=auth.login&outcome=failure&limit=100")
        .await;
    assert!(
        events.body["items"].as_array().unwrap().len() >= 8,
        "{events:?}"
    );
}

#[tokio::test]
async fn requests_without_valid_credentials_are_refused_and_audited() {
    let server = Server::start();
    let anon = Api::anonymous(&server);
    assert_eq!(anon.get("/devices").await.status, 401);
    assert_eq!(
        Api::bearer(&server, "eyJhbGciOiJIUzI1NiJ9.e30.x")
            .get("/devices")
            .await
            .status,
        401
    );
    let mut basic = Api::anonymous(&server);
    basic.auth = Some("Basic YWRtaW46YWRtaW4=".into());
    assert_eq!(basic.get("/devices").await.status, 401);
    let admin = Api::bearer(&server, &server.admin_token().await);
    let events = admin.get("/audit?action=auth.&outcome=failure").await;
    assert!(
        events.body["items"].as_array().unwrap().len() >= 2,
        "{events:?}"
    );
}
