//! Channels, devices with keys and connections, and publishing over HTTP:
//! what every message test sets up first.

use serde_json::{Value, json};

use super::{Api, Reply, Server};

/// A device with a key, connected to a channel.
pub struct Publisher {
    pub device: String,
    /// `moat_dk_…`, for `Authorization: Device <key>`.
    pub key: String,
    /// The key's DTLS pre-shared key (`dtls_psk.key` of the answer).
    pub psk: String,
}

/// Creates a device named `name` with a key, connected to `channel` with
/// the given rights (no connection when both are false).
pub async fn device(
    admin: &Api,
    channel: &str,
    name: &str,
    publish: bool,
    subscribe: bool,
) -> Publisher {
    let device = admin.create("/devices", json!({ "name": name })).await;
    let issued = admin
        .post(&format!("/devices/{device}/keys"), json!({}))
        .await;
    assert_eq!(issued.status, 201, "{issued:?}");
    let key = issued.body["token"].as_str().unwrap().to_owned();
    let psk = issued.body["dtls_psk"]["key"].as_str().unwrap().to_owned();
    if publish || subscribe {
        connect(admin, channel, &device, publish, subscribe).await;
    }
    Publisher { device, key, psk }
}

/// Connects `device` to `channel` with the given rights.
pub async fn connect(admin: &Api, channel: &str, device: &str, publish: bool, subscribe: bool) {
    let c = admin
        .put(
            &format!("/channels/{channel}/connections/{device}"),
            json!({ "publish": publish, "subscribe": subscribe }),
        )
        .await;
    assert_eq!(c.status, 200, "{c:?}");
}

/// Publishes `body` as `content_type` (none when empty) to `channel`,
/// `subtopic` appended when not empty, with `auth` as the Authorization
/// header.
pub async fn publish(
    server: &Server,
    auth: &str,
    channel: &str,
    subtopic: &str,
    content_type: &str,
    body: impl Into<reqwest::Body>,
) -> Reply {
    let mut path = format!("/channels/{channel}/messages");
    if !subtopic.is_empty() {
        path = format!("{path}/{subtopic}");
    }
    let mut req = server
        .client()
        .post(server.api(&path))
        .header("authorization", auth)
        .body(body);
    if !content_type.is_empty() {
        req = req.header("content-type", content_type);
    }
    let res = req.send().await.expect("request reaches the server");
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    let bytes = res.bytes().await.unwrap();
    let body = serde_json::from_slice(&bytes)
        .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into()));
    Reply {
        status,
        headers,
        body,
    }
}

/// Every stored message of `channel` (JSON view), following the cursor.
pub async fn all_messages(api: &Api, channel: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..10_000 {
        let mut path = format!("/channels/{channel}/messages?limit=1000");
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let page = api.get(&path).await;
        assert_eq!(page.status, 200, "{page:?}");
        out.extend(page.body["messages"].as_array().unwrap().iter().cloned());
        match page.body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return out,
        }
    }
    panic!("more pages than a test should write");
}

/// A channel named `name` that takes any payload.
pub async fn opaque_channel(admin: &Api, name: &str) -> String {
    admin
        .create(
            "/channels",
            json!({"name": name, "payload_policy": "opaque"}),
        )
        .await
}

/// An opaque channel named `name`, and a device named `device_name` with a
/// key that may publish to it and subscribe to it.
pub async fn opaque_channel_and_device(
    admin: &Api,
    name: &str,
    device_name: &str,
) -> (String, Publisher) {
    let channel = opaque_channel(admin, name).await;
    let dev = device(admin, &channel, device_name, true, true).await;
    (channel, dev)
}
