//! The REST API end to end: the real binary over HTTPS with a client that
//! trusts the CA it generated.

mod common;

use common::{Api, Server};
use serde_json::json;

async fn admin(server: &Server) -> Api {
    Api::bearer(server, &server.admin_token().await)
}

#[tokio::test]
async fn health_readiness_metrics_and_openapi() {
    let server = Server::start();
    let anon = Api::anonymous(&server);
    let client = server.client();
    assert_eq!(
        client
            .get(format!("{}/healthz", server.url))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        client
            .get(format!("{}/readyz", server.url))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    let spec = anon.get("/openapi.json").await;
    assert_eq!(spec.status, 200);
    assert!(
        spec.body["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        spec.body["openapi"]
    );
    for path in [
        "/api/v1/devices",
        "/api/v1/devices/{id}",
        "/api/v1/auth/login",
        "/api/v1/audit",
        "/api/v1/channels/{id}/connections/{device_id}",
    ] {
        assert!(
            spec.body["paths"][path].is_object(),
            "{path} missing from the OpenAPI document"
        );
    }

    // A failed login shows up in the metrics.
    anon.post(
        "/auth/login",
        json!({"username": "admin", "password": "wrong password!"}),
    )
    .await;
    let metrics = client
        .get(format!("{}/metrics", server.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("moat_http_requests_total"), "{metrics}");
    assert!(metrics.contains("moat_http_request_duration_seconds"));
    assert!(
        metrics.contains("moat_auth_failures_total{kind=\"login\"}"),
        "{metrics}"
    );
}

#[tokio::test]
async fn devices_channels_and_connections_round_trip() {
    let server = Server::start();
    let api = admin(&server).await;

    let dev = api
        .post("/devices", json!({"name": "boiler-1", "tags": ["site:lyon", "kind:boiler"], "metadata": {"floor": 2}}))
        .await;
    assert_eq!(dev.status, 201, "{dev:?}");
    assert_eq!(dev.body["state"], "active");
    let dev_id = dev.id();
    let ch_id = api
        .create(
            "/channels",
            json!({"name": "telemetry", "retention_days": 30}),
        )
        .await;

    let got = api.get(&format!("/devices/{dev_id}")).await;
    assert_eq!(got.body["name"], "boiler-1");
    assert_eq!(got.body["metadata"]["floor"], 2);
    let ch = api.get(&format!("/channels/{ch_id}")).await;
    assert_eq!(ch.body["payload_policy"], "senml");

    let upd = api
        .patch(
            &format!("/devices/{dev_id}"),
            json!({"name": "boiler-one", "state": "quarantined"}),
        )
        .await;
    assert_eq!(upd.status, 200, "{upd:?}");
    assert_eq!(upd.body["state"], "quarantined");

    let conn = api
        .put(
            &format!("/channels/{ch_id}/connections/{dev_id}"),
            json!({"publish": true, "subscribe": false}),
        )
        .await;
    assert_eq!(conn.status, 200, "{conn:?}");
    let by_channel = api.get(&format!("/channels/{ch_id}/connections")).await;
    assert_eq!(by_channel.body["items"][0]["device_id"], dev_id.as_str());
    assert_eq!(by_channel.body["items"][0]["publish"], true);
    let by_device = api.get(&format!("/devices/{dev_id}/connections")).await;
    assert_eq!(by_device.body["items"][0]["channel_id"], ch_id.as_str());

    assert_eq!(
        api.delete(&format!("/channels/{ch_id}/connections/{dev_id}"))
            .await
            .status,
        204
    );
    assert_eq!(
        api.delete(&format!("/channels/{ch_id}/connections/{dev_id}"))
            .await
            .status,
        404
    );
    assert_eq!(api.delete(&format!("/devices/{dev_id}")).await.status, 204);
    assert_eq!(api.get(&format!("/devices/{dev_id}")).await.status, 404);
    assert_eq!(api.delete(&format!("/channels/{ch_id}")).await.status, 204);
}

#[tokio::test]
async fn lists_page_with_cursors_and_filter_by_name_tag_and_state() {
    let server = Server::start();
    let api = admin(&server).await;
    for i in 0..5 {
        let tags = if i % 2 == 0 {
            json!(["even"])
        } else {
            json!(["odd"])
        };
        let state = if i == 4 { "pending" } else { "active" };
        api.create(
            "/devices",
            json!({"name": format!("sensor-{i}"), "tags": tags, "state": state}),
        )
        .await;
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            Some(c) => format!("/devices?limit=2&cursor={c}"),
            None => "/devices?limit=2".to_owned(),
        };
        let page = api.get(&path).await;
        assert_eq!(page.status, 200, "{page:?}");
        pages += 1;
        for d in page.body["items"].as_array().unwrap() {
            seen.push(d["name"].as_str().unwrap().to_owned());
        }
        match page.body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(
        seen,
        ["sensor-0", "sensor-1", "sensor-2", "sensor-3", "sensor-4"]
    );

    let even = api.get("/devices?tag=even").await;
    assert_eq!(even.body["items"].as_array().unwrap().len(), 3);
    let named = api.get("/devices?name=SENSOR-3").await;
    assert_eq!(
        named.body["items"].as_array().unwrap().len(),
        1,
        "name filter is case-insensitive"
    );
    let pending = api.get("/devices?state=pending").await;
    assert_eq!(pending.body["items"][0]["name"], "sensor-4");
    assert_eq!(api.get("/devices?limit=0").await.status, 422);
    assert_eq!(api.get("/devices?limit=9999").await.status, 422);
    assert_eq!(api.get("/devices?cursor=not-a-cursor").await.status, 422);
    assert_eq!(api.get("/devices?state=sleepy").await.status, 400);
}

#[tokio::test]
async fn bad_input_gets_problem_json_with_the_right_status() {
    let server = Server::start();
    let api = admin(&server).await;

    let r = api
        .post(
            "/devices",
            json!({"name": "", "tags": ["ok", "no spaces"], "metadata": [1]}),
        )
        .await;
    assert_eq!(r.status, 422);
    assert_eq!(r.headers["content-type"], "application/problem+json");
    assert_eq!(r.body["status"], 422);
    let fields: Vec<_> = r.body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(fields, ["name", "tags[1]", "metadata"]);

    assert_eq!(
        api.post("/devices", json!({"name": "x", "colour": "red"}))
            .await
            .status,
        422,
        "unknown fields are refused"
    );
    assert_eq!(
        api.post("/devices", json!({"name": "x", "state": "sleepy"}))
            .await
            .status,
        422
    );

    let raw = server
        .client()
        .post(server.api("/devices"))
        .header("authorization", api.auth.clone().unwrap())
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), 400);
    assert_eq!(raw.headers()["content-type"], "application/problem+json");
    let no_type = server
        .client()
        .post(server.api("/devices"))
        .header("authorization", api.auth.clone().unwrap())
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(no_type.status(), 415);
    let huge = server
        .client()
        .post(server.api("/devices"))
        .header("authorization", api.auth.clone().unwrap())
        .header("content-type", "application/json")
        .body(format!("{{\"name\":\"{}\"}}", "x".repeat(2 * 1024 * 1024)))
        .send()
        .await;
    // The server answers 413 as soon as the limit is crossed and closes;
    // a client still writing the rest may see the reset instead.
    match huge {
        Ok(r) => assert_eq!(r.status(), 413),
        Err(e) => assert!(e.is_request() || e.is_body(), "{e:?}"),
    }

    assert_eq!(api.get("/devices/not-a-uuid").await.status, 400);
    assert_eq!(
        api.get(&format!("/devices/{}", uuid::Uuid::now_v7()))
            .await
            .status,
        404
    );
    let unknown = api.get("/no/such/thing").await;
    assert_eq!(unknown.status, 404);
    assert_eq!(unknown.body["status"], 404);
    assert_eq!(
        api.send(reqwest::Method::PUT, "/devices", Some(json!({})))
            .await
            .status,
        405
    );

    api.create("/devices", json!({"name": "twin"})).await;
    let dup = api.post("/devices", json!({"name": "twin"})).await;
    assert_eq!(dup.status, 409, "{dup:?}");

    let ch = api.create("/channels", json!({"name": "c"})).await;
    let d = api.create("/devices", json!({"name": "d"})).await;
    let none = api
        .put(
            &format!("/channels/{ch}/connections/{d}"),
            json!({"publish": false, "subscribe": false}),
        )
        .await;
    assert_eq!(none.status, 422);
    assert_eq!(
        api.post("/channels", json!({"name": "r", "retention_days": 99999}))
            .await
            .status,
        422
    );

    let revoked = api
        .patch(&format!("/devices/{d}"), json!({"state": "revoked"}))
        .await;
    assert_eq!(revoked.status, 200);
    assert_eq!(
        api.patch(&format!("/devices/{d}"), json!({"state": "active"}))
            .await
            .status,
        409,
        "revocation is final"
    );
}

#[tokio::test]
async fn tenants_nest_and_refuse_deletion_while_not_empty() {
    let server = Server::start();
    let api = admin(&server).await;
    let parent = api.create("/tenants", json!({"name": "acme"})).await;
    let child = api
        .create(
            "/tenants",
            json!({"name": "acme-lyon", "parent_id": parent}),
        )
        .await;
    let got = api.get(&format!("/tenants/{child}")).await;
    assert_eq!(got.body["parent_id"], parent.as_str());
    assert_eq!(
        got.body["path"].as_array().unwrap().len(),
        3,
        "root / acme / acme-lyon"
    );
    let kids = api.get(&format!("/tenants?parent_id={parent}")).await;
    assert_eq!(kids.body["items"][0]["name"], "acme-lyon");
    assert_eq!(
        api.post("/tenants", json!({"name": "acme"})).await.status,
        409,
        "sibling names are unique"
    );

    api.create("/devices", json!({"name": "d", "tenant_id": child}))
        .await;
    assert_eq!(api.delete(&format!("/tenants/{parent}")).await.status, 409);
    let r = api.delete(&format!("/tenants/{child}")).await;
    assert_eq!(r.status, 409, "{r:?}");
}
