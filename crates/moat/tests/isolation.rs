//! Tenant isolation and roles over the API: every endpoint called with
//! another tenant's ids answers 404 and changes nothing; each role gets
//! exactly what it should.

mod common;

use common::{Api, Server, user_in};
use reqwest::Method;
use serde_json::{Value, json};

struct Tenant {
    id: String,
    admin: Api,
    user: String,
    device: String,
    channel: String,
    api_key: String,
    device_key: String,
    certificate: String,
    ca: String,
    claim_code: String,
    child: String,
}

async fn tenant(server: &Server, root: &Api, name: &str) -> Tenant {
    let id = root.create("/tenants", json!({"name": name})).await;
    let admin = user_in(server, root, &id, &format!("{name}-admin"), "admin").await;
    let user = admin.create("/users", json!({"username": format!("{name}-viewer"), "password": "a password long enough", "role": "viewer"})).await;
    let device = admin.create("/devices", json!({"name": "d"})).await;
    let channel = admin.create("/channels", json!({"name": "c"})).await;
    let r = admin
        .put(
            &format!("/channels/{channel}/connections/{device}"),
            json!({"publish": true, "subscribe": true}),
        )
        .await;
    assert_eq!(r.status, 200);
    let api_key = admin
        .post("/apikeys", json!({"name": "k", "role": "viewer"}))
        .await
        .body["key"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let device_key = admin
        .post(&format!("/devices/{device}/keys"), json!({}))
        .await
        .body["key"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let certificate = admin
        .post(&format!("/devices/{device}/certificates"), json!({}))
        .await
        .body["certificate"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let ca = admin.get("/pki/cas").await.body[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let claim_code = admin.post("/claim-codes", json!({})).await.body["codes"][0]["code"]
        .as_str()
        .unwrap()
        .to_owned();
    let child = admin
        .create("/tenants", json!({"name": format!("{name}-child")}))
        .await;
    Tenant {
        certificate,
        ca,
        claim_code,
        id,
        admin,
        user,
        device,
        channel,
        api_key,
        device_key,
        child,
    }
}

#[tokio::test]
async fn another_tenants_ids_are_not_found_on_every_endpoint() {
    let server = Server::start();
    let root = Api::bearer(&server, &server.admin_token().await);
    let root_id = root.get("/auth/whoami").await.body["tenant_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let a = tenant(&server, &root, "alpha").await;
    let b = tenant(&server, &root, "bravo").await;
    let before = snapshot(&b).await;

    let calls: Vec<(Method, String, Option<Value>)> = vec![
        (Method::GET, format!("/tenants/{}", b.id), None),
        (
            Method::PATCH,
            format!("/tenants/{}", b.child),
            Some(json!({"name": "x"})),
        ),
        (Method::DELETE, format!("/tenants/{}", b.child), None),
        (Method::GET, format!("/tenants?parent_id={}", b.id), None),
        (
            Method::POST,
            "/tenants".into(),
            Some(json!({"name": "x", "parent_id": b.id})),
        ),
        (Method::GET, format!("/tenants/{root_id}"), None),
        (Method::GET, format!("/users/{}", b.user), None),
        (
            Method::PATCH,
            format!("/users/{}", b.user),
            Some(json!({"role": "admin"})),
        ),
        (Method::DELETE, format!("/users/{}", b.user), None),
        (
            Method::POST,
            format!("/users/{}/sessions/revoke", b.user),
            Some(json!({})),
        ),
        (Method::GET, format!("/users?tenant_id={}", b.id), None),
        (
            Method::POST,
            "/users".into(),
            Some(
                json!({"username": "intruder", "password": "a password long enough", "role": "admin", "tenant_id": b.id}),
            ),
        ),
        (Method::GET, format!("/devices/{}", b.device), None),
        (
            Method::PATCH,
            format!("/devices/{}", b.device),
            Some(json!({"state": "revoked"})),
        ),
        (Method::DELETE, format!("/devices/{}", b.device), None),
        (Method::GET, format!("/devices?tenant_id={}", b.id), None),
        (
            Method::POST,
            "/devices".into(),
            Some(json!({"name": "x", "tenant_id": b.id})),
        ),
        (
            Method::POST,
            format!("/devices/{}/keys", b.device),
            Some(json!({})),
        ),
        (Method::GET, format!("/devices/{}/keys", b.device), None),
        (
            Method::DELETE,
            format!("/devices/{}/keys/{}", b.device, b.device_key),
            None,
        ),
        (
            Method::DELETE,
            format!("/devices/{}/keys/{}", a.device, b.device_key),
            None,
        ),
        (
            Method::GET,
            format!("/devices/{}/connections", b.device),
            None,
        ),
        (Method::GET, format!("/channels/{}", b.channel), None),
        (
            Method::PATCH,
            format!("/channels/{}", b.channel),
            Some(json!({"name": "x"})),
        ),
        (Method::DELETE, format!("/channels/{}", b.channel), None),
        (Method::GET, format!("/channels?tenant_id={}", b.id), None),
        (
            Method::POST,
            "/channels".into(),
            Some(json!({"name": "x", "tenant_id": b.id})),
        ),
        (
            Method::GET,
            format!("/channels/{}/connections", b.channel),
            None,
        ),
        (
            Method::PUT,
            format!("/channels/{}/connections/{}", b.channel, b.device),
            Some(json!({"publish": true, "subscribe": true})),
        ),
        (
            Method::PUT,
            format!("/channels/{}/connections/{}", a.channel, b.device),
            Some(json!({"publish": true, "subscribe": true})),
        ),
        (
            Method::PUT,
            format!("/channels/{}/connections/{}", b.channel, a.device),
            Some(json!({"publish": true, "subscribe": true})),
        ),
        (
            Method::DELETE,
            format!("/channels/{}/connections/{}", b.channel, b.device),
            None,
        ),
        (Method::GET, format!("/apikeys/{}", b.api_key), None),
        (Method::DELETE, format!("/apikeys/{}", b.api_key), None),
        (Method::GET, format!("/apikeys?tenant_id={}", b.id), None),
        (
            Method::POST,
            "/apikeys".into(),
            Some(json!({"name": "x", "role": "admin", "tenant_id": b.id})),
        ),
        (Method::GET, format!("/audit?tenant_id={}", b.id), None),
        (
            Method::POST,
            format!("/devices/{}/certificates", b.device),
            Some(json!({})),
        ),
        (
            Method::GET,
            format!("/devices/{}/certificates", b.device),
            None,
        ),
        (
            Method::POST,
            format!(
                "/devices/{}/certificates/{}/revoke",
                b.device, b.certificate
            ),
            Some(json!({})),
        ),
        (
            Method::POST,
            format!(
                "/devices/{}/certificates/{}/revoke",
                a.device, b.certificate
            ),
            Some(json!({})),
        ),
        (Method::GET, format!("/pki/cas?tenant_id={}", b.id), None),
        (Method::GET, format!("/pki/cas/{}", b.ca), None),
        (
            Method::PATCH,
            format!("/pki/cas/{}", b.ca),
            Some(json!({"jit": "activate"})),
        ),
        (Method::DELETE, format!("/pki/cas/{}", b.ca), None),
        (
            Method::POST,
            "/pki/cas/registration-code".into(),
            Some(json!({"tenant_id": b.id})),
        ),
        (
            Method::GET,
            format!("/pki/expiring?days=3650&tenant_id={}", b.id),
            None,
        ),
        (
            Method::POST,
            format!("/devices/import?tenant_id={}", b.id),
            Some(json!({"devices": [{"name": "x"}]})),
        ),
        (
            Method::POST,
            "/claim-codes".into(),
            Some(json!({"tenant_id": b.id})),
        ),
        (
            Method::GET,
            format!("/claim-codes?tenant_id={}", b.id),
            None,
        ),
        (
            Method::POST,
            "/claims".into(),
            Some(json!({"code": a.claim_code, "tenant_id": b.id})),
        ),
    ];
    for (method, path, body) in calls {
        let r = a.admin.send(method.clone(), &path, body).await;
        assert_eq!(
            r.status, 404,
            "{method} {path} by another tenant's admin: {r:?}"
        );
        assert_eq!(
            r.body["detail"].as_str().map(|d| d.ends_with("not found")),
            Some(true),
            "{method} {path}: {r:?}"
        );
    }
    assert_eq!(snapshot(&b).await, before, "nothing of bravo changed");

    // Another tenant's key is not "replaced" by a key of one's own device.
    let r = a
        .admin
        .post(
            &format!("/devices/{}/keys", a.device),
            json!({"replaces": b.device_key}),
        )
        .await;
    assert_eq!(r.status, 422, "{r:?}");
    // Bravo's code claims into alpha only with alpha's own rights, and then
    // the device is alpha's: the code, not the tenant, was the secret.
    let r = a.admin.post("/claims", json!({"code": b.claim_code})).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["tenant_id"], a.id);

    // The parent reaches into both children; a child admin reaches its own child.
    assert_eq!(
        root.get(&format!("/devices/{}", b.device)).await.status,
        200
    );
    assert_eq!(
        root.patch(
            &format!("/devices/{}", b.device),
            json!({"tags": ["seen-by-root"]})
        )
        .await
        .status,
        200
    );
    assert_eq!(
        b.admin.get(&format!("/tenants/{}", b.child)).await.status,
        200
    );
    assert_eq!(
        b.admin.delete(&format!("/tenants/{}", b.id)).await.status,
        403,
        "a tenant is not deleted by its own admins"
    );
}

async fn snapshot(t: &Tenant) -> Vec<Value> {
    let mut out = Vec::new();
    for path in [
        format!("/tenants/{}", t.id),
        format!("/tenants/{}", t.child),
        format!("/users/{}", t.user),
        format!("/devices/{}", t.device),
        format!("/devices/{}/keys", t.device),
        format!("/devices/{}/certificates", t.device),
        format!("/pki/cas/{}", t.ca),
        "/pki/cas".to_owned(),
        "/claim-codes".to_owned(),
        format!("/channels/{}", t.channel),
        format!("/channels/{}/connections", t.channel),
        format!("/apikeys/{}", t.api_key),
        "/users".to_owned(),
        "/devices".to_owned(),
        "/channels".to_owned(),
        "/tenants".to_owned(),
    ] {
        let r = t.admin.get(&path).await;
        assert_eq!(r.status, 200, "{path}: {r:?}");
        out.push(r.body);
    }
    out
}

#[tokio::test]
async fn each_role_gets_what_it_should() {
    let server = Server::start();
    let root = Api::bearer(&server, &server.admin_token().await);
    let t = root.create("/tenants", json!({"name": "roles"})).await;
    let admin = user_in(&server, &root, &t, "roles-admin", "admin").await;
    let device = admin.create("/devices", json!({"name": "d"})).await;
    let channel = admin.create("/channels", json!({"name": "c"})).await;

    // (role, method, path, body, expected status)
    let cases: Vec<(&str, Method, String, Option<Value>, u16)> = vec![
        ("viewer", Method::GET, "/devices".into(), None, 200),
        (
            "viewer",
            Method::GET,
            format!("/channels/{channel}"),
            None,
            200,
        ),
        (
            "viewer",
            Method::POST,
            "/devices".into(),
            Some(json!({"name": "v"})),
            403,
        ),
        (
            "viewer",
            Method::PATCH,
            format!("/devices/{device}"),
            Some(json!({"name": "v"})),
            403,
        ),
        (
            "viewer",
            Method::PUT,
            format!("/channels/{channel}/connections/{device}"),
            Some(json!({"publish": true, "subscribe": true})),
            403,
        ),
        ("viewer", Method::GET, "/users".into(), None, 403),
        ("viewer", Method::GET, "/audit".into(), None, 403),
        (
            "operator",
            Method::POST,
            "/devices".into(),
            Some(json!({"name": "o"})),
            201,
        ),
        (
            "operator",
            Method::PATCH,
            format!("/devices/{device}"),
            Some(json!({"state": "quarantined"})),
            200,
        ),
        (
            "operator",
            Method::PUT,
            format!("/channels/{channel}/connections/{device}"),
            Some(json!({"publish": true, "subscribe": false})),
            200,
        ),
        (
            "operator",
            Method::POST,
            "/users".into(),
            Some(
                json!({"username": "nope", "password": "a password long enough", "role": "viewer"}),
            ),
            403,
        ),
        (
            "operator",
            Method::POST,
            "/apikeys".into(),
            Some(json!({"name": "k", "role": "viewer"})),
            403,
        ),
        (
            "operator",
            Method::POST,
            format!("/devices/{device}/keys"),
            Some(json!({})),
            403,
        ),
        (
            "operator",
            Method::POST,
            "/tenants".into(),
            Some(json!({"name": "sub"})),
            403,
        ),
        ("operator", Method::GET, "/audit".into(), None, 403),
        ("auditor", Method::GET, "/audit".into(), None, 200),
        ("auditor", Method::GET, "/users".into(), None, 200),
        ("auditor", Method::GET, "/devices".into(), None, 403),
        (
            "auditor",
            Method::POST,
            "/devices".into(),
            Some(json!({"name": "a"})),
            403,
        ),
        (
            "admin",
            Method::POST,
            "/users".into(),
            Some(
                json!({"username": "made-by-admin", "password": "a password long enough", "role": "viewer"}),
            ),
            201,
        ),
        ("admin", Method::GET, "/audit".into(), None, 200),
    ];
    let mut clients = std::collections::HashMap::new();
    for role in ["viewer", "operator", "auditor"] {
        clients.insert(
            role,
            user_in(&server, &admin, &t, &format!("roles-{role}"), role).await,
        );
    }
    clients.insert("admin", admin.clone());
    for (role, method, path, body, want) in cases {
        let r = clients[role].send(method.clone(), &path, body).await;
        assert_eq!(r.status, want, "{role} {method} {path}: {r:?}");
    }

    // Denied changes are audited.
    let denied = admin.get("/audit?outcome=denied").await;
    assert!(
        denied.body["items"].as_array().unwrap().len() >= 8,
        "{denied:?}"
    );
}
